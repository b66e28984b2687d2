"""Progress of long loops (training epochs, verify, benchmark, predict), on stderr.

On a terminal a tqdm bar that disappears when done; when stderr is piped or logged, a plain line every
``interval`` seconds (no carriage returns) and a closing line if any was printed. Quick loops stay silent.

>>> with Progress(len(images), "verify", unit="image") as progress:
...     for batch in batches:
...         ...
...         progress.update(len(batch))        # or pass ``progress`` itself as a callback: progress(n)

Code that reports a running total takes ``progress.advance_to`` instead (e.g. ``harness.compare(...,
progress=progress.advance_to)``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
INTERVAL_S = 10.0  # seconds between plain lines when stderr is not a terminal
INTERVAL_ENV = "ULFFN_PROGRESS_INTERVAL"  # overrides INTERVAL_S, e.g. 60 for sparse logs


class Progress:
    """Counts units of work done out of ``total`` (None: unknown); ``enabled=False`` makes every call a no-op."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", enabled: bool = True,
                 stream: TextIO | None = None, interval: float | None = None, bar: bool | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = default_interval() if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = self._last = time.monotonic()
        self._printed = False
        self._closed = not enabled
        use_bar = _is_terminal(self.stream) if bar is None else bar
        self._bar = self._tqdm() if enabled and use_bar else None

    def _tqdm(self) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=False, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        if self._closed:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(self._status(now))

    __call__ = update  # a Progress is also the callback: on_progress(n)

    def advance_to(self, done: int) -> None:
        """``done`` units done in all: the callback for code that reports a running total (harness.compare)."""
        self.update(done - self.done)

    def close(self) -> None:
        """Remove the bar, or finish the plain lines with the total time; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._printed:
            self._line(f"{self.desc}: {self.done} {self.unit}(s) in {time.monotonic() - self._start:.0f} s")

    def _status(self, now: float) -> str:
        elapsed = now - self._start
        if not self.total:
            return f"{self.desc}: {self.done} {self.unit}(s), {elapsed:.0f} s"
        left = elapsed * (self.total - self.done) / self.done if self.done else None
        eta = f", about {left:.0f} s left" if left is not None else ""
        return f"{self.desc}: {self.done}/{self.total} {self.unit}(s) ({100 * self.done / self.total:.0f}%), {elapsed:.0f} s{eta}"

    def _line(self, text: str) -> None:
        self._printed = True
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def track(items: Iterable[T], total: int | None, desc: str, unit: str = "it", enabled: bool = True,
          **options: Any) -> Iterator[T]:
    """Yield ``items``, counting one unit each (see :class:`Progress` for ``options``)."""
    with Progress(total, desc, unit, enabled, **options) as progress:
        for item in items:
            yield item
            progress.update()


def default_interval() -> float:
    """Seconds between plain progress lines: $ULFFN_PROGRESS_INTERVAL, else INTERVAL_S."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, INTERVAL_S)))
    except ValueError:
        return INTERVAL_S


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False
