"""Importance of the units a criterion zeroes, and how many of them to zero.

A *unit* is what one mask bit covers:

- `l1`/`l2` (1xN): a block of N consecutive output channels x 1 input channel x the whole
  kernel; scores have shape `[Cout/N, Cin]` (the 1xN authors' block norm).
- `act` (1xN): the block L1 norm times the RMS of its input channel on calibration data.
- `obs` (1xN): the output error left by removing the block when the rest of the layer is
  re-fitted (Optimal Brain Surgeon); computed during reconstruction, see `obs.py`.
- `css` (CHEX-style): a whole filter (output channel), scored by its leverage score in the
  column subset selection sense; scores have shape `[Cout]` and a zeroed filter is a mask
  row of zeros at block size 1.

Selection is uniform (every layer at the requested sparsity) or global (one threshold on
layer-normalized scores, with a MACs-weighted budget).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compiler.core.errors import ConfigError

CRITERIA = ("l1", "l2", "act", "obs", "css")
NEEDS_DATA = ("act", "obs")
MAX_LAYER_SPARSITY = 0.95  # global mode never empties a layer


def block_view(logical: np.ndarray, block: int) -> np.ndarray:
    """`[Cout, Cin, *k]` -> `[Cout/N, N, Cin, K]` (K = kernel elements)."""
    cout, cin = logical.shape[:2]
    return logical.reshape(cout // block, block, cin, -1)


def unit_scores(logical: np.ndarray, block: int, criterion: str,
                in_scale: np.ndarray | None = None) -> np.ndarray:
    """Importance of each unit of one layer (higher = keep), accumulated in float64.

    Args:
        logical: The weight `[Cout, Cin, *k]`.
        block: N.
        criterion: One of `CRITERIA`.
        in_scale: For "act": each block's input activation scale `[Cout/N, Cin]`.
    """
    w = np.asarray(logical)
    if criterion == "l1":
        return np.abs(block_view(w, block)).sum(axis=(1, 3), dtype=np.float64)
    if criterion == "act":
        return np.abs(block_view(w, block)).sum(axis=(1, 3), dtype=np.float64) * in_scale
    if criterion == "l2":
        return np.sqrt(np.square(block_view(w, block)).sum(axis=(1, 3), dtype=np.float64))
    if criterion == "css":
        return leverage_scores(w.reshape(w.shape[0], -1).astype(np.float64))
    raise ConfigError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")


def leverage_scores(rows: np.ndarray, energy: float = 0.9) -> np.ndarray:
    """Rank-k leverage score of each row of `rows` (`[Cout, d]`), as in CHEX's CSS.

    Filters are the columns of `rows.T`; the leverage score of filter i is the squared norm
    of row i of the top-k left singular vectors, k the smallest rank keeping `energy` of
    the spectrum. Filters spanning the dominant subspace score high.
    """
    u, s, _ = np.linalg.svd(rows, full_matrices=False)
    if not np.any(s > 0):
        return np.zeros(rows.shape[0])
    cum = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(cum, energy) + 1)
    return np.square(u[:, :k]).sum(axis=1)


def select_uniform(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask zeroing exactly `round(sparsity * scores.size)` lowest-scoring units.

    Ties are broken by position (stable sort), so the result is deterministic.
    """
    n_zero = zero_count(scores.size, sparsity)
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores.ravel(), kind="stable")[:n_zero]] = False
    return keep.reshape(scores.shape)


def zero_count(n_units: int, sparsity: float) -> int:
    """The number of units zeroed at `sparsity` (round half up)."""
    return int(np.floor(sparsity * n_units + 0.5))


def select_global(scores: Sequence[np.ndarray], unit_macs: Sequence[float],
                  sparsity: float, max_layer: float = MAX_LAYER_SPARSITY) -> list[np.ndarray]:
    """Keep-masks for several layers sharing one MACs budget.

    Scores are divided by their layer's mean so layers are comparable; units are zeroed
    from the least important up until the zeroed MACs reach `sparsity` of the layers'
    total MACs, never more than `max_layer` of any layer's units.

    Args:
        scores: Per-layer unit scores.
        unit_macs: MACs one unit of each layer costs (layer MACs / units).
        sparsity: Fraction of the layers' MACs to remove.
        max_layer: Cap on one layer's zeroed fraction.
    """
    flat, macs, layer_of, rank = _pool(scores, unit_macs)
    allowed = rank < np.array([np.floor(max_layer * s.size) for s in scores])[layer_of]
    order = [i for i in np.argsort(flat, kind="stable") if allowed[i]]
    budget = sparsity * float(sum(m * s.size for m, s in zip(unit_macs, scores, strict=True)))
    cum = np.cumsum(macs[order]) if order else np.zeros(0)
    n_take = int(np.searchsorted(cum, budget - 1e-9 * max(budget, 1.0))) + 1 if budget > 0 else 0
    zeroed = np.zeros(flat.size, bool)
    zeroed[order[:n_take]] = True
    return _split(~zeroed, scores)


def _pool(scores: Sequence[np.ndarray], unit_macs: Sequence[float]):
    """Concatenate normalized scores with per-unit MACs, layer index and in-layer rank."""
    flat, macs, layer_of, rank = [], [], [], []
    for i, (s, m) in enumerate(zip(scores, unit_macs, strict=True)):
        v = s.ravel().astype(np.float64)
        mean = float(v.mean()) if v.size else 0.0
        flat.append(v / mean if mean > 0 else v)
        macs.append(np.full(v.size, float(m)))
        layer_of.append(np.full(v.size, i))
        r = np.empty(v.size, int)
        r[np.argsort(v, kind="stable")] = np.arange(v.size)
        rank.append(r)
    return tuple(np.concatenate(a) if a else np.zeros(0) for a in (flat, macs, layer_of, rank))


def _split(flat: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    out, start = [], 0
    for s in like:
        out.append(flat[start:start + s.size].reshape(s.shape))
        start += s.size
    return out


def block_mask(keep: np.ndarray, cin: int, criterion: str) -> np.ndarray:
    """The `[rows, Cin]` block mask (1 = kept) for a unit keep-mask."""
    if criterion == "css":
        return np.repeat(keep.reshape(-1, 1), cin, axis=1)
    return keep


def element_mask(mask: np.ndarray, block: int, logical_shape: Sequence[int]) -> np.ndarray:
    """Broadcast a `[Cout/N, Cin]` block mask to the logical weight shape `[Cout, Cin, *k]`."""
    rows = np.repeat(mask, block, axis=0)
    return np.broadcast_to(rows.reshape(rows.shape + (1,) * (len(logical_shape) - 2)),
                           tuple(logical_shape))
