"""BLAS thread limits through one threadpoolctl controller per process.

A fresh `threadpoolctl.threadpool_limits` rescans every loaded library (/proc/self/maps):
2.4 ms per call measured, a tenth of a MobileNetV2 simulator frame, and a third of a compile
whose reconstruction entered it for each of 29k small solves. The controller made here
scans once; its `limit` only sets and restores the thread counts.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any


def blas_threads(threads: int | None) -> contextlib.AbstractContextManager:
    """Limit BLAS to `threads` threads inside the block.

    A no-op for None, or without threadpoolctl (the limit is only a speed-up).
    """
    ctl = controller() if threads is not None else None
    if ctl is None:
        return contextlib.nullcontext()
    return ctl.limit(limits=threads, user_api="blas")


def blas_single_thread() -> contextlib.AbstractContextManager:
    """One BLAS thread.

    For small dense solves threading only costs time, tens of times over on a busy 2-core
    machine.
    """
    return blas_threads(1)


@functools.cache
def controller() -> Any:
    """The loaded libraries as threadpoolctl sees them, scanned once per process."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()
