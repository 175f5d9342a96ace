"""Ctrl-C that stays heard: the CLI's SIGINT handler records the interrupt as well as raising
KeyboardInterrupt, and long loops check the record between units of work, so an interrupt that
some library caught and dropped while it ran (no message, the map went on to the end with exit
status 0: seen twice in CI, not reproduced) still stops the run at the next layer, with the
finished layers saved."""

from __future__ import annotations

import signal
import threading
from typing import Any

_seen = threading.Event()


def _handler(signum: int, frame: Any) -> None:
    _seen.set()
    raise KeyboardInterrupt


def install() -> None:
    """From the main thread, when SIGINT has Python's default handler: record every Ctrl-C
    (and raise KeyboardInterrupt as before). Forgets an earlier one."""
    _seen.clear()
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _handler):
        signal.signal(signal.SIGINT, _handler)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C was recorded since :func:`install` (once)."""
    if _seen.is_set():
        _seen.clear()
        raise KeyboardInterrupt
