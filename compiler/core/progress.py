"""Progress bars for long stages (calibration, search, reconstruction).

Bars go to stderr and are off unless a caller (the CLI) turns them on, so library use and
tests stay silent.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
_ENABLED: ContextVar[bool] = ContextVar("npuc_progress", default=False)
_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("npuc_timings", default=None)


def track(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items`, showing a progress bar when progress output is on."""
    if not _ENABLED.get():
        yield from items
        return
    # tqdm hides the bar on a terminal that reports no size (0 rows: "off screen")
    sized = min(_terminal_size()) > 0
    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=sized, ncols=None if sized else 80,
                    nrows=None if sized else 24)


def _terminal_size() -> tuple[int, int]:
    try:
        return tuple(os.get_terminal_size(sys.stderr.fileno()))
    except (OSError, ValueError):
        return (0, 0)


@contextmanager
def progress_output(enabled: bool) -> Iterator[None]:
    """Turn progress bars on or off inside the `with` block."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


@contextmanager
def collect_timings() -> Iterator[dict[str, float]]:
    """Collect the seconds of every `timed` phase run inside the block into the dict yielded.

    Phases nest by name ("calibrate.forward" inside "calibrate"); a phase entered several
    times accumulates. Outside a `collect_timings` block `timed` costs one lookup.
    """
    timings: dict[str, float] = {}
    token = _TIMINGS.set(timings)
    try:
        yield timings
    finally:
        _TIMINGS.reset(token)


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Add the wall time of the block to `phase` in the active `collect_timings` dict."""
    timings = _TIMINGS.get()
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start
