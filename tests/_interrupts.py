"""Interrupts at exact points: a profile hook that runs a signal's handler where CPython
would (a Python function's entry, a C call's return)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from attempt_ledger import _locking


def interrupt_at(n: int) -> Callable[[Any, str, Any], None]:
    return at_point(n)[0]


def at_point(
    n: int, handler: Callable[[], None] | None = None
) -> tuple[Callable[[Any, str, Any], None], list[int]]:
    """A profile function that runs a handler at the n-th Python function entry or C call's
    return in the library, where CPython runs a signal's handler: by default one raising
    KeyboardInterrupt (a profile function that raises is unset). Not in a weakref callback,
    say, where the interrupt would be lost. Also returns the points seen so far."""
    seen: list[int] = []
    package = os.path.dirname(_locking.__file__)

    def profile(frame: Any, event: str, _: Any) -> None:
        if event in ("call", "c_return") and frame.f_code.co_filename.startswith(package):
            seen.append(1)
            if len(seen) == n:
                if handler is None:
                    raise KeyboardInterrupt
                sys.setprofile(None)
                handler()

    return profile, seen
