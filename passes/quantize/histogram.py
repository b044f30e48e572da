"""Fixed-size histograms of |x| and the threshold searches calibrators run on them.

A histogram covers [0, edge] with a fixed number of equal bins. `edge` starts at the first
non-zero batch's max|x| and doubles whenever a batch exceeds it; doubling merges adjacent
bin pairs, which is exact (no count is split between bins) and keeps the state at O(bins)
however many batches stream through. After any number of doublings the running max lies
in the upper half of the range, so at least bins/2 bins cover [0, max].

Thresholds (symmetric: the int8 scale is T/127):

- `percentile_threshold`: the given percentile of |x|, interpolated linearly inside a bin;
- `kl_threshold`: TensorRT's entropy calibration: the clip point whose 128-level quantized
  distribution has the least KL divergence from the clipped reference distribution (bin 0,
  where ReLU's exact zeros pile up, is given bin 1's count first);
- `mse_threshold`: the clip point minimising the expected squared error of rounding to
  127 levels plus clipping, with values assumed uniform inside each bin (exact integrals).
"""

from __future__ import annotations

import numpy as np

from compiler.core.errors import ConfigError
from passes.quantize.statkernels import abs_bin_counts

DEFAULT_BINS = 2048
KL_QUANT_BINS = 128  # int8 magnitude levels, as in TensorRT's entropy calibrator
LEVELS = 127  # symmetric int8: |q| <= 127
MAX_CANDIDATES = 256  # coarse search width; the best coarse candidate is then refined


class AbsHistogram:
    """Streaming histogram of |x| with a fixed number of bins and a running max.

    Args:
        bins: Number of bins (even, at least 2 * 128 so the KL search has room).

    Attributes:
        counts: int64 counts per bin (always `bins` long).
        edge: Upper end of the range; 0 until a non-zero value has been seen.
        max: Running max|x|.
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if not isinstance(bins, int) or bins < 2 * KL_QUANT_BINS or bins % 2:
            raise ConfigError(f"histogram bins must be an even integer >= {2 * KL_QUANT_BINS}, "
                              f"got {bins!r}")
        self.counts = np.zeros(bins, np.int64)
        self.edge = 0.0
        self.max = 0.0

    @property
    def width(self) -> float:
        """Bin width (0 before any non-zero value)."""
        return self.edge / len(self.counts)

    @property
    def total(self) -> int:
        """Number of values seen."""
        return int(self.counts.sum())

    def update(self, values: np.ndarray, peak: float | None = None) -> None:
        """Add a batch of values.

        Args:
            values: The batch.
            peak: Its max|x| when the caller has it already (saves a pass over the data).

        Raises:
            ValueError: The batch contains NaN or Inf (the caller names the tensor).
        """
        x = np.asarray(values, dtype=np.float32).ravel()
        if x.size == 0:
            return
        m = float(np.max(np.abs(x))) if peak is None else peak
        if not np.isfinite(m):
            raise ValueError("NaN or Inf values")
        self.max = max(self.max, m)
        if m == 0.0:
            self.counts[0] += x.size
            return
        if self.edge == 0.0:
            self.edge = m  # earlier values were all zero and sit in bin 0, valid for any edge
        while m > self.edge:
            self._double()
        bins = len(self.counts)
        # |x| <= edge, so the float32 product is at most bins (|x| = edge, or rounding up):
        # count that index too and fold it into the last bin, rather than clamping every index
        counts = abs_bin_counts(x, np.float32(bins / self.edge), bins)
        counts[bins - 1] += counts[bins]
        self.counts += counts[:bins]

    def _double(self) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.concatenate([merged, np.zeros_like(merged)])
        self.edge *= 2.0

    def last_bin(self) -> int:
        """Index of the last non-empty bin (0 when empty)."""
        nonzero = np.flatnonzero(self.counts)
        return int(nonzero[-1]) if nonzero.size else 0


def percentile_threshold(hist: AbsHistogram, percentile: float) -> float:
    """The `percentile` of |x| (linear inside the bin), at most the running max."""
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile!r}")
    if percentile == 100.0 or hist.edge == 0.0:
        return hist.max
    cdf = np.cumsum(hist.counts)
    target = percentile / 100.0 * cdf[-1]
    i = int(np.searchsorted(cdf, target))
    before = float(cdf[i - 1]) if i else 0.0
    frac = (target - before) / max(float(hist.counts[i]), 1.0)
    return min((i + frac) * hist.width, hist.max)


def kl_threshold(hist: AbsHistogram, quant_bins: int = KL_QUANT_BINS) -> float:
    """TensorRT-style entropy threshold: argmin over clip bins i of KL(P_i || Q_i).

    P_i is the histogram cut at bin i with the clipped tail added to its last bin; Q_i is
    the unclipped first i bins merged into `quant_bins` levels and spread back uniformly
    over the bins that are non-empty in P_i.
    """
    n = hist.last_bin() + 1
    if hist.edge == 0.0 or n <= quant_bins:
        return hist.max  # the whole distribution fits in the quantized levels: no clipping
    counts = hist.counts.astype(np.float64)
    # Exact zeros (ReLU outputs) pile up in bin 0 and would dominate the divergence of the
    # first quantized level, dragging the threshold down; like NVIDIA's pytorch-quantization,
    # treat bin 0 as holding as many values as bin 1.
    counts[0] = counts[1]
    tail = np.cumsum(counts[::-1])[::-1]  # tail[i] = sum(counts[i:])

    def costs(candidates: np.ndarray) -> np.ndarray:
        return np.array([_kl_candidate(counts, tail, int(i), quant_bins) for i in candidates])

    best = _search(costs, quant_bins, n)
    return min(best * hist.width, hist.max)


def _kl_candidate(counts: np.ndarray, tail: np.ndarray, i: int, quant_bins: int) -> float:
    p = counts[:i].copy()
    p[-1] += tail[i] if i < len(counts) else 0.0
    starts = np.floor(np.linspace(0, i, quant_bins + 1)).astype(np.int64)
    lengths = np.diff(starts)
    nonzero = p > 0
    chunk_sums = np.add.reduceat(counts[:i], starts[:-1])
    chunk_nz = np.add.reduceat(nonzero.astype(np.float64), starts[:-1])
    q = np.repeat(chunk_sums / np.maximum(chunk_nz, 1.0), lengths) * nonzero
    if np.any(q[nonzero] == 0):
        return float("inf")
    p, q = p[nonzero] / p.sum(), q[nonzero] / q.sum()
    return float(np.sum(p * np.log(p / q)))


def mse_threshold(hist: AbsHistogram, levels: int = LEVELS) -> float:
    """Threshold minimising E[(x - dequant(quant(x)))^2] over the histogram.

    Candidates are bin edges, so bins are either fully inside the range (rounding error) or
    fully clipped (error x - T); both are integrated exactly assuming values are uniform
    within each bin. The edges of a ~256-bin merged histogram are scored first (bin 0 stays
    unmerged: ReLU's exact zeros must not be smeared over a wide bin), then the
    full-resolution edges around the best one.
    """
    if hist.edge == 0.0:
        return hist.max
    n = hist.last_bin() + 1
    counts, w = hist.counts[:n].astype(np.float64), hist.width
    factor = max(1, len(hist.counts) // 256)
    starts = np.unique(np.concatenate([[0, 1], np.arange(factor, n, factor)]))
    edges = np.append(starts, n) * w
    merged = np.add.reduceat(counts, starts)
    k = int(np.argmin(_mse_costs(edges[:-1], edges[1:], merged, edges[1:], levels)))
    lo_j, hi_j = (starts[k - 1] if k else 0) + 1, starts[k + 1] if k + 1 < len(starts) else n
    fine = np.arange(lo_j, hi_j + 1) * w
    fine_edges = np.arange(n + 1) * w
    best = fine[np.argmin(_mse_costs(fine_edges[:-1], fine_edges[1:], counts, fine, levels))]
    return float(min(best, hist.max))


def _mse_costs(lo: np.ndarray, hi: np.ndarray, counts: np.ndarray, ts: np.ndarray,
               levels: int) -> np.ndarray:
    """Expected squared error (unnormalized) for each threshold in `ts` (a bin edge)."""
    keep = counts > 0
    lo, hi, density = lo[keep], hi[keep], counts[keep] / (hi[keep] - lo[keep])
    out = np.empty(len(ts))
    for start in range(0, len(ts), 64):  # bounded (64 x bins) temporaries
        t = ts[start:start + 64, None]
        s = t / levels
        err_in = _sawtooth_sq_integral(hi, s) - _sawtooth_sq_integral(lo, s)
        above_hi, above_lo = hi - t, lo - t
        # cubes as products: numpy's ** 3 calls pow() per element, ~6x slower here
        err_out = (above_hi * above_hi * above_hi - above_lo * above_lo * above_lo) / 3.0
        inside = hi[None, :] <= t * (1 + 1e-9)
        out[start:start + 64] = np.where(inside, err_in, err_out) @ density
    return out


def _sawtooth_sq_integral(x: np.ndarray, s: float) -> np.ndarray:
    """Integral over [0, x] of (t - s*round(t/s))^2 dt, for x >= 0."""
    u = x / s + 0.5
    k = np.floor(u)
    d = u - k - 0.5
    return (k / 12.0 + (d * d * d + 0.125) / 3.0) * s**3


def _search(costs, first: int, last: int, width: int = MAX_CANDIDATES) -> int:
    """Integer argmin on [first, last] of the vectorized `costs(candidates) -> values`.

    A strided scan of at most `width` points, then every point around the best one.
    """
    stride = max(1, -(-(last - first) // width))
    coarse = np.unique(np.append(np.arange(first, last + 1, stride), last))
    best = int(coarse[np.argmin(costs(coarse))])
    if stride == 1:
        return best
    fine = np.arange(max(first, best - stride + 1), min(last, best + stride - 1) + 1)
    return int(fine[np.argmin(costs(fine))])
