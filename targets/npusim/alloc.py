"""Tensor allocation: liveness intervals and greedy first-fit placement in one flat arena.

Every tensor (graph inputs and outputs included) gets an offset in a single address space;
tensors whose live intervals `[first write, last read]` overlap never share bytes, so an
instruction's output never aliases its inputs. Largest tensors are placed first (the
TFLite "greedy by size" strategy), each at the lowest aligned offset that fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from targets.npusim.isa import Instr

ALIGN = 16


@dataclass(frozen=True)
class Allocation:
    """Offsets per tensor id and summary figures for the report."""

    offsets: dict[int, int]
    arena_size: int
    naive_bytes: int  # sum of all tensor sizes (no reuse)
    peak_live_bytes: int  # lower bound: the most bytes live at one instruction


def live_ranges(code: list[Instr], n_tensors: int, inputs: list[int], outputs: list[int],
                pinned: list[int]) -> dict[int, tuple[int, int]]:
    """[first, last] instruction index per tensor; inputs start at -1, outputs end at len."""
    end = len(code)
    first: dict[int, int] = {t: -1 for t in inputs + pinned}
    last: dict[int, int] = {t: end for t in outputs + pinned}
    for i, ins in enumerate(code):
        for t in ins.writes():
            first.setdefault(t, i)
        for t in ins.reads():
            last[t] = max(last.get(t, i), i)
    return {t: (first.get(t, last.get(t, 0)), max(last.get(t, first.get(t, 0)),
                                                  first.get(t, 0)))
            for t in set(first) | set(last) if t < n_tensors}


def allocate(sizes: dict[int, int], ranges: dict[int, tuple[int, int]]) -> Allocation:
    """Place each tensor of `sizes` at an offset; see the module docstring."""
    order = sorted(sizes, key=lambda t: (-sizes[t], t))
    placed: list[tuple[int, int, int]] = []  # (offset, end, tensor)
    offsets: dict[int, int] = {}
    for t in order:
        lo, hi = ranges.get(t, (0, 0))
        busy = sorted((o, e) for o, e, u in placed
                      if ranges.get(u, (0, 0))[0] <= hi and lo <= ranges.get(u, (0, 0))[1])
        offset = 0
        for o, e in busy:
            if offset + sizes[t] <= o:
                break
            offset = max(offset, _align(e))
        offsets[t] = offset
        placed.append((offset, offset + sizes[t], t))
    arena = _align(max((e for _, e, _ in placed), default=0))
    return Allocation(offsets, arena, sum(sizes.values()), _peak(sizes, ranges))


def _align(n: int) -> int:
    return n + (-n % ALIGN)


def _peak(sizes: dict[int, int], ranges: dict[int, tuple[int, int]]) -> int:
    events: dict[int, int] = {}
    for t, size in sizes.items():
        lo, hi = ranges.get(t, (0, 0))
        events[lo] = events.get(lo, 0) + size
        events[hi + 1] = events.get(hi + 1, 0) - size
    live = peak = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak
