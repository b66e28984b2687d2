"""What a run reports, on the main process only: per-epoch lines, metrics.csv, TensorBoard events.

TensorBoard events go to RUN_DIR/tensorboard when ``torch.utils.tensorboard`` imports (it needs the
``tensorboard`` package); without it the run goes on without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ulffn_deploy.fileio import write_text_atomic
from ulffn_deploy.metrics import METRICS
from ulffn_deploy.progress import track

CSV_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", *METRICS, "train_seconds", "seconds")
T = TypeVar("T")


def metrics_csv(history: Sequence[Mapping[str, Any]]) -> str:
    lines = [",".join(CSV_COLUMNS)]
    for row in history:
        lines.append(",".join(_cell(row.get(column)) for column in CSV_COLUMNS))
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


class RunLog:
    """Progress bar, epoch lines and files of one run; every method is a no-op off the main process."""

    def __init__(self, run_dir: Path, enabled: bool, quiet: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.quiet = quiet
        self.show_progress = enabled and not quiet
        self._writer = self._tensorboard() if enabled else None

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def progress(self, batches: Iterable[T], total: int, epoch: int, epochs: int) -> Iterable[T]:
        """The training batches of one epoch, with a bar on a terminal or a line every few seconds in a log."""
        return track(batches, total, f"epoch {epoch}/{epochs}", unit="batch", enabled=self.show_progress)

    def validation_progress(self, batches: Iterable[T], total: int) -> Iterable[T]:
        return track(batches, total, "validation", unit="batch", enabled=self.show_progress)

    def message(self, text: str) -> None:
        if self.enabled and not self.quiet:
            print(text, flush=True)

    def epoch_end(self, history: Sequence[Mapping[str, Any]], improved: bool, epochs: int) -> None:
        if not self.enabled:
            return
        row = history[-1]
        write_text_atomic(self.run_dir / "metrics.csv", metrics_csv(history))
        if self._writer is not None:
            for key in ("lr", "train_loss", "val_loss", *METRICS):
                self._writer.add_scalar(key, row[key], row["epoch"])
            self._writer.flush()
        self.message(
            f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.3g}  loss {row['train_loss']:.4f}  "
            f"val loss {row['val_loss']:.4f}  dice {row['dice']:.4f}  jsi {row['jaccard']:.4f}  "
            f"{row['seconds']:.1f} s{'  (best)' if improved else ''}"
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
