"""Checkpoints: plain dicts of tensors and plain data, written atomically, read with ``weights_only=True``.

Keys (``version`` 1):
- ``format`` ("ulffn-deploy-checkpoint"), ``version``, ``toolkit_version``, ``kind`` ("last" or "best");
- ``model_config`` {variant, width}, ``normalization`` {mean, std}, ``input_size``, ``fit_mode``;
- ``state_dict``: the model's weights and BatchNorm buffers (contiguous CPU tensors);
- ``epoch``: epochs completed; ``step``: optimizer steps done into the next epoch (0 at an epoch end);
  ``global_step``; ``history`` (one dict of floats per epoch); ``best`` {epoch, jaccard};
- ``train_args`` (the TrainConfig as a dict), ``world_size``, ``split`` {train_ids, val_ids};
- in ``last.pt`` only, to resume: ``optimizer``, ``scheduler``, ``scaler`` (state dicts) and ``rng``
  {torch: ByteTensor}.
Nothing in a checkpoint is a pickled Python object, so loading never runs code from the file.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulffn_deploy import __version__
from ulffn_deploy.config import ModelConfig
from ulffn_deploy.deps import require
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import atomic_path
from ulffn_deploy.runtime.metadata import check_input_size

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # every function here needs torch: without it, importing this module is the one-line install hint
    torch = require("torch")
    nn = torch.nn

FORMAT = "ulffn-deploy-checkpoint"
VERSION = 1
REQUIRED = ("model_config", "normalization", "input_size", "fit_mode", "state_dict")
STATE_KEYS = ("state_dict", "optimizer", "scheduler", "scaler", "rng")  # tensors: left out of the info


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Mapping[str, Any]) -> None:
    """Write ``checkpoint`` (format marker and toolkit version added) to ``path`` atomically."""
    payload = {**checkpoint, "format": FORMAT, "version": VERSION, "toolkit_version": __version__}
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory first: torch's file writer reports a full disk without its errno
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _read(path: Path) -> Any:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # torch.save's zip archive, or a pickle
        raise UlffnError(f"{path}: not a PyTorch checkpoint", "pass a best.pt or last.pt written by 'ulffn-deploy train'")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise UlffnError(f"{path}: not a PyTorch checkpoint (starts like a zip archive but is not one)",
                         "pass a best.pt or last.pt written by 'ulffn-deploy train'; the file may be truncated")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notes about foreign files
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler trips on, the file is not ours
        if "Weights only load failed" in str(exc):
            raise UlffnError(f"{path}: refused to load: the file holds Python objects, which loading would run "
                             "(not an ulffn-deploy checkpoint)",
                             "load only checkpoints written by 'ulffn-deploy train'") from None
        first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UlffnError(f"{path}: not a PyTorch checkpoint ({first_line})",
                         "pass a best.pt or last.pt written by 'ulffn-deploy train'") from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict at ``path``, on the CPU; a UlffnError if it is not an ulffn-deploy checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UlffnError(f"{path}: no such checkpoint file", "train one with 'ulffn-deploy train'")
    checkpoint = _read(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UlffnError(f"{path}: not an ulffn-deploy checkpoint (no {FORMAT!r} format marker)",
                         "pass a best.pt or last.pt written by 'ulffn-deploy train'")
    version = checkpoint.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UlffnError(f"{path}: checkpoint format version {version!r} is newer than this toolkit reads ({VERSION})",
                         "upgrade ulffn-deploy")
    missing = [key for key in REQUIRED if key not in checkpoint]
    if missing:
        raise UlffnError(f"{path}: checkpoint lacks {', '.join(missing)}", "it may be truncated; use another copy")
    check_input_size(checkpoint["input_size"], path)  # before evaluate or export allocate inputs of that size
    return checkpoint


def checkpoint_info(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Everything but the tensors: configuration, history, training arguments."""
    return {key: value for key, value in checkpoint.items() if key not in STATE_KEYS}


def _describe(shape: torch.Size | tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Raise one UlffnError line if ``state_dict`` does not fit ``model`` key for key and shape for shape."""
    if not isinstance(state_dict, Mapping):
        raise UlffnError(f"{source}: state_dict is a {type(state_dict).__name__}, not a mapping of tensors")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    other = [key for key in expected if key in state_dict and
             (not isinstance(state_dict[key], torch.Tensor) or state_dict[key].shape != expected[key].shape)]
    if not (missing or unexpected or other):
        return
    config = getattr(model, "config", None)
    what = f"ULFFN {config.variant} width {config.width}" if config else type(model).__name__
    counts = ", ".join(f"{len(keys)} {label}" for keys, label in
                       ((missing, "missing"), (unexpected, "unexpected"), (other, "of another shape")) if keys)
    example = ""
    if other:
        key = other[0]
        got = state_dict[key].shape if isinstance(state_dict[key], torch.Tensor) else type(state_dict[key]).__name__
        example = f"; e.g. {key} is {_describe(got) if not isinstance(got, str) else got}, " \
                  f"expected {_describe(expected[key].shape)}"
    elif missing:
        example = f"; e.g. {missing[0]} is missing"
    raise UlffnError(f"{source}: weights do not match its model_config ({what}): {counts} tensors{example}",
                     "the checkpoint was edited or comes from another model; retrain or use the original file")


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(ULFFN in eval mode on ``map_location``, checkpoint info without tensors) from a checkpoint file."""
    from ulffn_deploy.model import build_model

    checkpoint = load_checkpoint(path)
    try:
        config = ModelConfig.from_dict(checkpoint["model_config"])
    except UlffnError as exc:
        raise UlffnError(f"{path}: {exc.message}", exc.hint) from None
    model = build_model(config)
    check_state_dict(model, checkpoint["state_dict"], str(path))
    model.load_state_dict(checkpoint["state_dict"])
    info = checkpoint_info(checkpoint)
    info["path"] = str(path)
    return model.to(map_location).eval(), info
