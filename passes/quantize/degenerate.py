"""Calibration statistics that cannot give a meaningful int8 scale, reported by name.

Constant, all-zero, denormal or absurdly large calibration data still "calibrates": every
tensor gets a threshold, the model quantizes, and its accuracy collapses without a word.
The calibrators therefore also track each activation's signed minimum and maximum, and
`report` warns once per degenerate tensor (zero range, a single value, a range below
`MIN_THRESHOLD`, or one so large that float32 arithmetic loses it), naming the tensor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MIN_RANGE = 1e-8  # = calibrate.MIN_THRESHOLD: below it the scale is clamped
MAX_RANGE = 1e30  # products of two such values overflow float32
SHOWN = 8  # warnings per run; the rest are counted


@dataclass
class Spread:
    """Running signed minimum and maximum of one tensor over the calibration data."""

    lo: float = math.inf
    hi: float = -math.inf

    def update(self, values: np.ndarray) -> None:
        """Fold a batch in (empty batches are ignored)."""
        if values.size:
            self.fold(float(np.min(values)), float(np.max(values)))

    def fold(self, lo: float, hi: float) -> None:
        """Fold in a batch's own minimum and maximum."""
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)


def problem(spread: Spread) -> str | None:
    """What is wrong with a tensor's statistics, or None when they are usable."""
    if spread.lo > spread.hi:
        return None  # never seen (no samples)
    peak = max(abs(spread.lo), abs(spread.hi))
    if peak == 0:
        return "is zero on all calibration data (zero range)"
    if spread.lo == spread.hi:
        return f"takes one value ({spread.lo:g}) on all calibration data"
    if peak < MIN_RANGE:
        return f"has range {peak:.3g}, below {MIN_RANGE:g} (denormal data?)"
    if peak > MAX_RANGE:
        return f"has range {peak:.3g}, beyond what float32 arithmetic keeps"
    return None


def report(spreads: dict[str, Spread]) -> list[str]:
    """Warn about every degenerate tensor (at most `SHOWN` lines); returns their names."""
    bad = [(name, why) for name, s in spreads.items() if (why := problem(s)) is not None]
    for name, why in bad[:SHOWN]:
        log.warning("calibration: tensor %r %s; its int8 scale is meaningless (check the "
                    "calibration data)", name, why)
    if len(bad) > SHOWN:
        log.warning("calibration: %d more tensors have degenerate statistics",
                    len(bad) - SHOWN)
    return [name for name, _ in bad]
