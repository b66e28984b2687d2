"""The training loop: one process of a DDP run (or the only process), in the shape of pytorch/examples.

Equivalence across process counts: the global batch is the same images for any world size (see
``EpochSampler``), augmentation is seeded per sample and epoch, batch statistics are synchronised,
and each process's loss is its per-image mean over its share, which DDP averages into the mean over
the global batch. So N processes train the same weights as one, up to float rounding.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from ulffn_deploy.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from ulffn_deploy.config import Normalization
from ulffn_deploy.data import Sample
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.fileio import check_writable_folder, output_errors, write_json_atomic
from ulffn_deploy.metrics import METRICS, image_metrics
from ulffn_deploy.train import distributed
from ulffn_deploy.train.dataset import EpochSampler, SegmentationDataset, train_val_split
from ulffn_deploy.train.presets import TrainConfig, make_config
from ulffn_deploy.train.runlog import RunLog

RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "summary.json")
RUN_FOLDERS = ("tensorboard",)
PREVIOUS_RUN = ".previous-run"  # with --overwrite, the old run waits here until the new one has a checkpoint


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with loss scaling); None (fp32) on the CPU or when off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in unwrap(model).state_dict().items()}


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value


def make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=lr)


class Trainer:
    """Owns the model, data, optimizer and run state of this process; ``fit`` runs the remaining epochs."""

    def __init__(self, config: TrainConfig, env: distributed.DistEnv,
                 on_checkpoint: Callable[[], None] | None = None) -> None:
        self.config, self.env = config, env
        self.on_checkpoint = on_checkpoint  # called once last.pt is written (the old run may then go)
        self.out = Path(config.out)
        self.local_batch = _local_batch(config.batch_size, env.world_size)
        self.normalization = Normalization()
        self._build_data()
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.model = self._build_model()
        self.optimizer = make_optimizer(self.model, config.optimizer, config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
        self.amp_dtype = amp_dtype(env.device, config.amp)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "jaccard": -1.0}
        self.partial = _fresh_partial()  # the epoch in progress
        self.log = RunLog(self.out, enabled=env.is_main, quiet=config.quiet)
        torch.manual_seed(config.seed + env.rank)  # per-process randomness from here on

    def _build_data(self) -> None:
        config, env = self.config, self.env
        train, val = split_for(config)
        self.split = {"train_ids": [s.isic_id for s in train], "val_ids": [s.isic_id for s in val]}
        common = {"size": config.size, "fit_mode": config.fit_mode, "normalization": self.normalization}
        train_set = SegmentationDataset(train, augment=config.augment, seed=config.seed, **common)
        val_set = SegmentationDataset(val, **common)
        self.sampler = EpochSampler(train_set, env.world_size, env.rank, config.seed)
        loader_args = {"num_workers": config.workers, "pin_memory": env.device.type == "cuda"}
        self.loader = DataLoader(train_set, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
                                 **loader_args)
        val_share = Subset(val_set, range(env.rank, len(val_set), env.world_size))
        self.val_loader = DataLoader(val_share, batch_size=self.local_batch, **loader_args)

    def _build_model(self) -> nn.Module:
        from ulffn_deploy.model import build_model

        model: nn.Module = build_model(self.config.model_config)
        if self.env.distributed:
            model = distributed.convert_sync_batchnorm(model, self.env.device)
        model = model.to(self.env.device)
        if self.env.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.env.distributed:
            device_ids = [self.env.device] if self.env.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return model

    # ---- running -------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the run summary (also written to summary.json)."""
        stopped = False
        if self.epoch >= self.config.epochs:
            self.log.message(f"{self.out}: all {self.config.epochs} epochs are done already")
        for epoch in range(self.epoch, self.config.epochs):
            if not self._run_epoch(epoch):
                stopped = True
                break
            self._end_epoch(epoch)
        self.log.close()
        summary = self.summary(stopped)
        if self.env.is_main:
            write_json_atomic(self.out / "summary.json", summary)
        return summary

    def _run_epoch(self, epoch: int) -> bool:
        """Train one epoch (or its rest after a resume); False when --max-steps stopped it part-way."""
        self.model.train()
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(self.step * self.local_batch)
        started = time.perf_counter()
        batches = self.log.progress(self.loader, len(self.loader), epoch + 1, self.config.epochs)
        for images, masks, valid in batches:
            loss_sum, images_used = self._train_step(images, masks, valid)
            self.partial["loss_sum"] += loss_sum
            self.partial["images"] += images_used
            self.partial["steps"] += 1
            self.step += 1
            self.global_step += 1
            if self.config.max_steps and self.global_step >= self.config.max_steps:
                self.partial["seconds"] += time.perf_counter() - started
                self._save_last()
                self.log.message(f"stopped after {self.global_step} steps (--max-steps); resume with --resume")
                return False
            if self.config.snapshot_every and self.step % self.config.snapshot_every == 0:
                self._save_last()
        self.sampler.set_start(0)
        self.partial["seconds"] += time.perf_counter() - started
        return True

    def _train_step(self, images: Tensor, masks: Tensor, valid: Tensor) -> tuple[float, float]:
        """One optimizer step on this process's share; unreadable samples are left out of the batch."""
        keep = valid if bool(valid.any()) else torch.ones_like(valid)
        memory_format = torch.channels_last if self.env.device.type == "cuda" else torch.contiguous_format
        images = images[keep].to(self.env.device, non_blocking=True).contiguous(memory_format=memory_format)
        masks = masks[keep].to(self.env.device, non_blocking=True)
        weights = valid[keep].to(self.env.device, dtype=torch.float32)
        with torch.autocast(self.env.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(images)
        per_image = F.cross_entropy(logits.float(), masks, reduction="none").mean(dim=(1, 2))
        loss = (per_image * weights).sum() / len(valid)  # mean over the share; DDP averages the shares
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()) * len(valid), float(weights.sum())

    def _end_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        val = self.validate()
        totals = distributed.all_reduce_sum(torch.tensor([self.partial["loss_sum"], self.partial["images"]],
                                                         dtype=torch.float64))
        row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": float(totals[0] / max(float(totals[1]), 1.0)), **val,
               "train_seconds": self.partial["seconds"],
               "seconds": self.partial["seconds"] + time.perf_counter() - started,
               "train_images": self.partial["steps"] * self.config.batch_size}
        self.scheduler.step()
        self.epoch, self.step = epoch + 1, 0
        self.partial = _fresh_partial()
        self.history.append(row)
        improved = row["jaccard"] > self.best["jaccard"]
        if improved:
            self.best = {"epoch": epoch + 1, "jaccard": row["jaccard"]}
        if improved and self.env.is_main:
            save_checkpoint(self.out / "best.pt", self.snapshot(kind="best"))
        self._save_last()
        self.log.epoch_end(self.history, improved, self.config.epochs)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean per-image metrics (on the fitted crops) and loss over the validation images of all processes."""
        model = unwrap(self.model).eval()
        sums = torch.zeros(len(METRICS) + 2, dtype=torch.float64)  # metrics..., loss, images
        for images, masks, valid in self.log.validation_progress(self.val_loader, len(self.val_loader)):
            images = images.to(self.env.device)
            with torch.autocast(self.env.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = model(images).float()
            losses = F.cross_entropy(logits, masks.to(self.env.device), reduction="none").mean(dim=(1, 2))
            predictions = logits.argmax(dim=1).cpu().numpy().astype(bool)
            for i in np.flatnonzero(valid.numpy()):
                row = image_metrics(predictions[i], masks[i].numpy().astype(bool))
                sums += torch.tensor([row[m] for m in METRICS] + [float(losses[i]), 1.0], dtype=torch.float64)
        distributed.all_reduce_sum(sums)
        count = float(sums[-1])
        if count == 0:
            raise UlffnError("none of the validation images could be read", "see the warnings above")
        values = {m: float(sums[j]) / count for j, m in enumerate(METRICS)}
        return {"val_loss": float(sums[-2]) / count, **values}

    # ---- state ---------------------------------------------------------------------------------

    def snapshot(self, kind: str, partial: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The checkpoint dict; ``last`` adds what resuming needs (optimizer, scheduler, scaler, RNG)."""
        config = self.config
        state: dict[str, Any] = {
            "kind": kind,
            "model_config": config.model_config.to_dict(),
            "normalization": self.normalization.to_dict(),
            "input_size": config.size,
            "fit_mode": config.fit_mode,
            "state_dict": _cpu_state(self.model),
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "partial": dict(partial if partial is not None else self.partial),
            "history": [dict(row) for row in self.history],
            "best": dict(self.best),
            "train_args": config.to_dict(),
            "world_size": self.env.world_size,
            "split": self.split,
        }
        if kind == "last":
            state["optimizer"] = _to_cpu(self.optimizer.state_dict())
            state["scheduler"] = self.scheduler.state_dict()
            state["scaler"] = self.scaler.state_dict()
            state["rng"] = {"torch": torch.get_rng_state()}
        return state

    def _save_last(self) -> None:
        """Write last.pt from the main process; every process calls it (the epoch's loss sums are reduced)."""
        partial = dict(self.partial)
        totals = distributed.all_reduce_sum(torch.tensor([partial["loss_sum"], partial["images"]], dtype=torch.float64))
        partial["loss_sum"], partial["images"] = float(totals[0]), float(totals[1])
        if self.env.is_main:
            save_checkpoint(self.out / "last.pt", self.snapshot(kind="last", partial=partial))
            if self.on_checkpoint is not None:
                self.on_checkpoint()

    def restore(self, checkpoint: Mapping[str, Any], source: str) -> None:
        """Continue from a ``last`` checkpoint: weights, optimizer, schedule, position and history."""
        if checkpoint.get("kind") != "last" or "optimizer" not in checkpoint:
            raise UlffnError(f"{source}: not a resumable checkpoint (written as {checkpoint.get('kind')!r})",
                             "resume from the last.pt of a run")
        check_state_dict(unwrap(self.model), checkpoint["state_dict"], source)
        unwrap(self.model).load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step = int(checkpoint["epoch"]), int(checkpoint["step"])
        self.global_step = int(checkpoint["global_step"])
        self.partial = dict(checkpoint["partial"])
        if not self.env.is_main:  # the stored sums are over all processes: count them once
            self.partial.update(loss_sum=0.0, images=0.0)
        self.history = [dict(row) for row in checkpoint["history"]]
        self.best = dict(checkpoint["best"])
        if self.step >= len(self.loader):
            raise UlffnError(f"{source}: stopped at step {self.step} of an epoch of {len(self.loader)} steps",
                             "resume with the same data and --batch-size")
        if self.env.is_main:
            torch.set_rng_state(checkpoint["rng"]["torch"])
        self.log.message(f"resuming {source} at epoch {self.epoch + 1}, step {self.step} "
                         f"(lr {self.optimizer.param_groups[0]['lr']:.3g})")

    def summary(self, stopped: bool) -> dict[str, Any]:
        timed = self.history[1:] or self.history  # the first epoch includes warm-up
        seconds = sum(row["train_seconds"] for row in timed)
        images = sum(row["train_images"] for row in timed)
        return {
            "run_dir": str(self.out),
            "best": str(self.out / "best.pt"),
            "last": str(self.out / "last.pt"),
            "epochs_completed": self.epoch,
            "epochs": self.config.epochs,
            "global_step": self.global_step,
            "stopped_early": stopped,
            "best_epoch": self.best["epoch"],
            "best_val_jaccard": self.best["jaccard"],
            "final": dict(self.history[-1]) if self.history else None,
            "world_size": self.env.world_size,
            "device": str(self.env.device),
            "train_images_per_second": images / seconds if seconds else None,
            "preset": self.config.preset,
        }


def _fresh_partial() -> dict[str, float]:
    return {"loss_sum": 0.0, "images": 0.0, "steps": 0, "seconds": 0.0}


def _local_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise UlffnError(f"global batch size {global_batch} does not split evenly across {world_size} processes",
                         f"use a --batch-size that is a multiple of {world_size}")
    return global_batch // world_size


def resolve(request: TrainConfig | Mapping[str, Any] | Sequence[str]) -> TrainConfig:
    """A TrainConfig from a config, a mapping of options, or command-line arguments.

    Options not given take the preset's values, or, with ``resume``, those stored in RUN_DIR/last.pt.
    """
    if isinstance(request, TrainConfig):
        return request
    if isinstance(request, Mapping):
        values = dict(request)
    else:
        from ulffn_deploy.train.presets import parse_args

        values = parse_args(request)
    if "data" not in values or "out" not in values:
        raise UlffnError("training needs a data folder and a run folder", "pass --data DIR --out RUN_DIR")
    if values.get("resume") and values.get("overwrite"):
        raise UlffnError("--resume and --overwrite contradict each other",
                         "--resume continues the run in --out; --overwrite starts it again: pass one")
    stored = None
    if values.get("resume"):
        stored = load_checkpoint(_last_path(Path(values["out"]))).get("train_args")
    return make_config(base=stored if isinstance(stored, Mapping) else None, **values)


def _last_path(out: Path) -> Path:
    last = out / "last.pt"
    if not last.is_file():
        raise UlffnError(f"--resume, but {out} holds no last.pt", "start a new run without --resume")
    return last


def split_for(config: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """The run's (train, val) samples; an error unless a global batch fits in the training part."""
    train, val = train_val_split(config.data, config.year, config.val_count, config.val_fraction, config.seed)
    if len(train) < config.batch_size:
        raise UlffnError(f"{len(train)} training images after holding out {len(val)} for validation, "
                         f"fewer than the global batch size {config.batch_size}",
                         "lower --batch-size or --val-count, or add images")
    return train, val


def check_run_dir(config: TrainConfig) -> list[str]:
    """The files of an earlier run in --out; an error when they would be mixed with this run's."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UlffnError(f"--out {out} is a file", "choose a folder for the run")
    if config.resume and config.overwrite:
        raise UlffnError("--resume and --overwrite contradict each other", "pass one of them")
    if config.resume:
        _last_path(out)
        return []
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not config.overwrite:
        raise UlffnError(f"{out} already holds a run ({', '.join(existing)})",
                         "pass --resume to continue it, --overwrite to start again, or choose another --out")
    return existing


def preflight(config: TrainConfig, world_size: int) -> None:
    """The checks a launcher can make before starting processes: run folder, batch split, data."""
    check_run_dir(config)
    _local_batch(config.batch_size, world_size)
    split_for(config)


class RunDirSwap:
    """With --overwrite, the old run's files move to RUN_DIR/.previous-run; ``commit`` deletes them once the
    new run has written its first checkpoint, ``rollback`` (any failure before that) puts them back."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.out, self.enabled = out, enabled
        self.aside = out / PREVIOUS_RUN
        self.committed = False

    def begin(self, names: Sequence[str]) -> None:
        with output_errors(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            if not self.enabled:
                return
            check_writable_folder(self.out)
            names = [*names, *(name for name in RUN_FOLDERS if (self.out / name).is_dir())]
            if names:
                self.aside.mkdir()
            for name in names:
                os.replace(self.out / name, self.aside / name)

    def commit(self) -> None:
        if self.enabled and not self.committed:
            self.committed = True
            shutil.rmtree(self.aside, ignore_errors=True)

    def rollback(self) -> None:
        if self.enabled and not self.committed:
            try:
                restore_previous_run(self.out)
            except OSError:
                pass  # the old run stays in .previous-run; the next train in this folder puts it back


def restore_previous_run(out: Path) -> None:
    """Put the run kept in RUN_DIR/.previous-run back, removing what a failed new run wrote."""
    aside = out / PREVIOUS_RUN
    if not aside.is_dir():
        return
    for name in (*RUN_FILES, *RUN_FOLDERS):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink(missing_ok=True)
    for path in aside.iterdir():
        os.replace(path, out / path.name)
    aside.rmdir()


def recover_run_dir(out: Path) -> None:
    """After a kill during --overwrite: the old run comes back if the new one never wrote last.pt."""
    if (out / PREVIOUS_RUN).is_dir():
        if (out / "last.pt").is_file():
            shutil.rmtree(out / PREVIOUS_RUN, ignore_errors=True)
        else:
            restore_previous_run(out)


def prepare_run_dir(config: TrainConfig, is_main: bool) -> RunDirSwap:
    """Refuse to mix two runs in one folder; with --overwrite, move the old run aside (see RunDirSwap)."""
    out = Path(config.out)
    swap = RunDirSwap(out, enabled=is_main and not config.resume)
    if is_main:
        if out.is_dir():
            recover_run_dir(out)
        swap.begin(check_run_dir(config))
    return swap


def train(request: TrainConfig | Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """Run training in this process (one rank of a torchrun job, or alone) and return the run summary."""
    import torch.distributed as dist

    config = resolve(request)
    owns_group = not (dist.is_available() and dist.is_initialized())
    env = distributed.setup(config.device)
    try:
        _local_batch(config.batch_size, env.world_size)
        split_for(config)  # the data is checked before the old run is touched
        swap = prepare_run_dir(config, env.is_main)
        distributed.barrier()  # the old run's files are out of the way before anyone writes
        try:
            trainer = Trainer(config, env, on_checkpoint=swap.commit)
            if config.resume:
                trainer.restore(load_checkpoint(Path(config.out) / "last.pt"), str(Path(config.out) / "last.pt"))
            return trainer.fit()
        except BaseException:
            swap.rollback()
            raise
    finally:
        if owns_group:
            distributed.cleanup()
