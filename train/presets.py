"""Training configuration: the presets, the options that override them, and ``TrainConfig``.

This module imports neither torch nor click, so the command line can list the options cheaply.
Resolution order: preset < stored training arguments (when resuming) < options given explicitly.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from ulffn_deploy.config import MAX_INPUT_SIZE, OUTPUT_STRIDE, VARIANTS, ModelConfig
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.preprocess import FIT_MODES

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adam", "sgd")
# fields a resumed run does not take over from the stored training arguments
MAX_WIDTH = 256  # the model's weights grow with the width squared: 256 is 16x the paper's model, already ~GBs to train
_NOT_INHERITED = frozenset({"data", "out", "preset", "resume", "overwrite", "max_steps", "quiet"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; plain data, stored in every checkpoint as ``train_args``."""

    data: str
    out: str
    preset: str = "paper"
    year: int = 2016
    variant: str = "w-ac"
    width: int = 64
    size: int = 512
    fit_mode: str = "paper"
    epochs: int = 100
    batch_size: int = 8  # global: split evenly across the processes
    optimizer: str = "adam"  # the paper's; "sgd" (momentum 0.9) as an alternative
    lr: float = 1e-4
    lr_step: int = 20  # epochs between learning-rate decays
    lr_gamma: float = 0.9
    val_count: int | None = None  # images held out for validation; None: round(val_fraction * images)
    val_fraction: float = 200 / 900  # the paper's 200 of the 900 ISIC 2016 training images
    seed: int = 0
    workers: int = 4  # data-loader worker processes per training process
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)
    augment: bool = True
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    max_steps: int | None = None  # stop (with a snapshot in last.pt) after this many optimizer steps; None: no limit
    snapshot_every: int = 0  # also write last.pt every this many steps within an epoch; 0: at epoch ends only
    quiet: bool = False

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(variant=self.variant, width=self.width)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # paper section 4.4: Adam 1e-4 x0.9 every 20 epochs, 100 epochs, global batch 8, 512 crops, w=64
    "paper": {},
    # trains in minutes on a 2-core CPU (the quickstart's synthetic set); not a paper result
    "cpu-demo": {
        "width": 8,
        "size": 96,
        "epochs": 30,
        "batch_size": 8,
        "lr": 3e-3,
        "lr_step": 10,
        "lr_gamma": 0.5,
        "val_fraction": 0.1,
        "workers": 0,
    },
}


@dataclass(frozen=True)
class Option:
    """One command-line option overriding a TrainConfig field (``flag`` options take --x/--no-x)."""

    field: str
    type: type
    help: str
    flag: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS = (
    Option("preset", str, "starting point (default paper)", choices=tuple(PRESETS)),
    Option("year", int, "ISIC year of the training set: 2016 (default) or 2017"),
    Option("variant", str, "model variant (paper Table 4; default w-ac)", choices=VARIANTS),
    Option("width", int, "base width of the model (paper 64)"),
    Option("size", int, f"network input size, a multiple of {OUTPUT_STRIDE} (paper 512)"),
    Option("fit_mode", str, "size x size inputs: paper (shorter side + centre crop) or full (whole image)",
           choices=FIT_MODES),
    Option("epochs", int, "number of epochs"),
    Option("batch_size", int, "GLOBAL batch size, split evenly across processes"),
    Option("optimizer", str, "adam (the paper's) or sgd with momentum 0.9", choices=OPTIMIZERS),
    Option("lr", float, "initial learning rate"),
    Option("lr_step", int, "epochs between learning-rate decays"),
    Option("lr_gamma", float, "learning-rate decay factor"),
    Option("val_count", int, "training images held out for validation"),
    Option("val_fraction", float, "fraction held out for validation when --val-count is not given"),
    Option("seed", int, "seed of the split, the initial weights, the sample order and the augmentation"),
    Option("workers", int, "data-loader worker processes per training process"),
    Option("grad_clip", float, "clip the gradient norm to this value (0: off)"),
    Option("amp", bool, "mixed precision on CUDA", flag=True),
    Option("augment", bool, "flips, 90-degree rotations and colour jitter", flag=True),
    Option("device", str, "auto: cuda when available", choices=DEVICES),
    Option("max_steps", int, "stop after this many optimizer steps, writing last.pt (resume later)"),
    Option("snapshot_every", int, "also write last.pt every N steps within an epoch"),
)


def make_config(data: str, out: str, preset: str | None = None, base: Mapping[str, Any] | None = None,
                **overrides: Any) -> TrainConfig:
    """A validated TrainConfig: ``preset`` values, then ``base`` (e.g. stored args), then non-None overrides."""
    name = preset or (base or {}).get("preset") or "paper"
    if name not in PRESETS:
        raise UlffnError(f"unknown preset {name!r}", f"use one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UlffnError(f"unknown training option(s): {', '.join(unknown)}")
    values: dict[str, Any] = dict(PRESETS[name])
    values.update({k: v for k, v in (base or {}).items() if k in known and k not in _NOT_INHERITED})
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("val_count") is None and overrides.get("val_fraction") is not None:
        values["val_count"] = None  # an explicit fraction wins over a stored count
    config = TrainConfig(data=str(data), out=str(out), preset=name, **values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise a UlffnError naming the first option whose value cannot work."""
    config.model_config  # noqa: B018 - validates variant and width
    checks = [
        (config.width <= MAX_WIDTH, "--width", f"a multiple of 8 up to {MAX_WIDTH} (the paper's is 64)"),
        (config.year in (2016, 2017), "--year", "2016 or 2017"),
        (0 < config.size <= MAX_INPUT_SIZE and config.size % OUTPUT_STRIDE == 0, "--size",
         f"a positive multiple of {OUTPUT_STRIDE} up to {MAX_INPUT_SIZE}"),
        (config.fit_mode in FIT_MODES, "--fit-mode", " or ".join(FIT_MODES)),
        (config.epochs >= 1, "--epochs", "at least 1"),
        (config.batch_size >= 1, "--batch-size", "at least 1"),
        (config.optimizer in OPTIMIZERS, "--optimizer", " or ".join(OPTIMIZERS)),
        (config.lr > 0, "--lr", "positive"),
        (config.lr_step >= 1, "--lr-step", "at least 1"),
        (0 < config.lr_gamma <= 1, "--lr-gamma", "in (0, 1]"),
        (config.val_count is None or config.val_count >= 1, "--val-count", "at least 1"),
        (0 < config.val_fraction < 1, "--val-fraction", "between 0 and 1"),
        (config.workers >= 0, "--workers", "0 or more"),
        (config.grad_clip >= 0, "--grad-clip", "0 (off) or positive"),
        (config.device in DEVICES, "--device", " or ".join(DEVICES)),
        (config.max_steps is None or config.max_steps >= 1, "--max-steps", "a positive number (leave it out for no limit)"),
        (config.snapshot_every >= 0, "--snapshot-every", "0 (off) or positive"),
    ]
    for ok, option, expected in checks:
        if not ok:
            value = getattr(config, option[2:].replace("-", "_"))
            raise UlffnError(f"{option} {value} is not valid", f"use {expected}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m ulffn_deploy.train`` (what torchrun runs on every process)."""
    parser = argparse.ArgumentParser(
        prog="python -m ulffn_deploy.train",
        description="Train ULFFN on an ISIC folder; run it under torchrun for several processes.",
    )
    parser.add_argument("--data", required=True, help="folder holding the unzipped ISIC folders")
    parser.add_argument("--out", required=True, help="run folder: best.pt, last.pt, metrics.csv")
    for option in OPTIONS:
        if option.flag:
            parser.add_argument(option.name, action=argparse.BooleanOptionalAction, default=None, help=option.help)
        else:
            parser.add_argument(option.name, type=option.type, default=None, choices=option.choices, help=option.help)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    return parser


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """Command-line arguments -> the options given (None for the others), resolved by ``make_config``."""
    return vars(build_parser().parse_args(list(argv)))


def to_argv(values: Mapping[str, Any]) -> list[str]:
    """The inverse of the parser, for handing options on to torchrun; None values are left out."""
    argv = ["--data", str(values["data"]), "--out", str(values["out"])]
    for option in OPTIONS:
        value = values.get(option.field)
        if value is None:
            continue
        if option.flag:
            argv.append(option.name if value else "--no-" + option.name[2:])
        else:
            argv += [option.name, str(value)]
    argv += [f"--{name}" for name in ("resume", "overwrite", "quiet") if values.get(name)]
    return argv
