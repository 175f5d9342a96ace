"""How many entries of each logit row are at least a threshold: the count every full row ends in.

On a CPU, ``(logits >= t).sum(1)`` costs a third to two thirds of the matmul that made the
logits (a boolean tensor the size of the rows, then an int64 reduction over it). A fused
``torch.compile`` kernel counts 25x faster; it is compiled (a few seconds, once per process,
then cached on disk by PyTorch) only for work big enough to repay that, checked against the
eager count on a probe, and replaced by the eager count when compiling fails (no C++
toolchain) or ``HEADATLAS_NO_COMPILE=1``. Counts are integers: every path gives the same ones.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

COMPILE_ABOVE = 2**24
"""Entries counted in one call above which the compiled kernel is used (on CPU)."""

_Count = Callable[..., torch.Tensor]
_COMPILED: dict[str, _Count] = {}


def _eager(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (logits >= t[:, None]).sum(1)


def _eager_rows(logits: torch.Tensor, rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (logits[rows] >= t[:, None]).sum(1)


@contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside (``torch.compile`` catches exceptions raised while it
    compiles and falls back, which would swallow a KeyboardInterrupt: the map would go on) and
    deliver it to the previous handler on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught:
            if callable(old):
                old(signal.SIGINT, None)
            elif old == signal.SIG_DFL:
                raise KeyboardInterrupt


def _compiled(name: str, eager: _Count, probe: tuple[torch.Tensor, ...]) -> _Count:
    """``torch.compile`` of ``eager``, kept only if it equals the eager count on ``probe``
    (compiled and checked on the probe at once; a Ctrl-C meanwhile is delivered after)."""
    if name not in _COMPILED:
        _COMPILED[name] = eager
        if os.environ.get("HEADATLAS_NO_COMPILE") != "1":
            with _interrupt_after():
                _COMPILED[name] = _compile_checked(eager, probe)
    return _COMPILED[name]


def _compile_checked(eager: _Count, probe: tuple[torch.Tensor, ...]) -> _Count:
    """The compiled kernel if it compiles and equals ``eager`` on ``probe``, else ``eager``."""
    try:
        fn = torch.compile(eager, dynamic=True)
        return fn if torch.equal(fn(*probe), eager(*probe)) else eager
    except Exception:  # no C++ toolchain, unsupported platform...
        return eager


def count_at_least(
    logits: torch.Tensor,
    t: torch.Tensor,
    rows: torch.Tensor | None = None,
    compile_above: int | None = None,
) -> torch.Tensor:
    """Per threshold ``t[i]``: how many entries of ``logits[rows[i]]`` (or of ``logits[i]``)
    are >= it, int64 [len(t)]. ``compile_above``: entries counted above which the compiled
    kernel runs (default :data:`COMPILE_ABOVE`; 0: always, on CPU)."""
    limit = COMPILE_ABOVE if compile_above is None else compile_above
    big = logits.device.type == "cpu" and t.numel() * logits.shape[-1] > limit
    probe = torch.arange(12.0).reshape(3, 4)
    if rows is None:
        if not big:
            return _eager(logits, t)
        return _compiled("count", _eager, (probe, probe[:, 1]))(logits, t)
    if not big:
        return _eager_rows(logits, rows, t)
    fn = _compiled("count_rows", _eager_rows, (probe, torch.tensor([2, 0]), probe[:2, 1]))
    return fn(logits, rows, t)
