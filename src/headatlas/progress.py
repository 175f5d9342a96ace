"""Where a long run is: one bar per stage on a terminal, and a line every few steps with the
elapsed time and an ETA when standard error goes to a file or a log (no bar redraws there).

Every stage (map layers, the ``forward`` recipe's preparation, salient operations, validate
passes) goes through :class:`Progress`, so they all look and behave alike."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: Lines a non-terminal run prints per stage (about; the last step always gets one).
LINES_PER_STAGE = 10
#: Seconds after which a non-terminal run prints a line even between the regular ones.
MAX_SILENCE_S = 60.0


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of one stage of ``total`` steps.

    On a terminal: a tqdm bar. Otherwise: ``desc: done/total unit, elapsed, ETA`` every
    ``every`` steps (default: about :data:`LINES_PER_STAGE` lines per stage), after a minute
    of silence, and at the last step. Disabled: nothing at all.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "step",
        enabled: bool = True,
        stream: TextIO | None = None,
        every: int | None = None,
        initial: int = 0,
    ):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every = every or max(1, math.ceil(total / LINES_PER_STAGE))
        self._start = time.monotonic()
        self._last_line = self._start
        self._first = initial
        self._bar: Any = None
        self.enabled = enabled and total > 0
        self.terminal = self.enabled and _isatty(self.stream)
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.stream)

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        if not self.enabled:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        crossed = self.done // self.every != (self.done - n) // self.every
        if crossed or self.done >= self.total or now - self._last_line >= MAX_SILENCE_S:
            self._last_line = now
            print(self.line(now - self._start), file=self.stream, flush=True)

    def line(self, elapsed: float) -> str:
        """The non-terminal progress line after ``elapsed`` seconds."""
        units = self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")
        text = f"{self.desc}: {self.done}/{self.total} {units}, {format_seconds(elapsed)}"
        timed = self.done - self._first
        if self.done >= self.total:
            return text + " elapsed, done"
        if timed <= 0:
            return text + " elapsed"
        eta = elapsed / timed * (self.total - self.done)
        return f"{text} elapsed, ETA {format_seconds(eta)}"

    def close(self) -> None:
        """End the stage (closes the bar)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def track(
    items: Iterable[T],
    total: int,
    desc: str,
    unit: str = "step",
    enabled: bool = True,
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yield ``items``, counting each as one step of a :class:`Progress` stage."""
    with Progress(total, desc, unit, enabled, stream) as progress:
        for item in items:
            yield item
            progress.update()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
