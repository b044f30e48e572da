"""Buffers and work splits the simulator prepares once per instruction, at load.

A step must not allocate per frame: fresh multi-megabyte temporaries cost page faults that
measured as much as the arithmetic. So each instruction owns its padded input copy (the border
written once, only the interior per frame), its patch matrix and its accumulator scratch, and
views over them (the taps of a window) are made once. Work is cut into blocks of output rows
(channels) that fit the cache, and the blocks into one list per thread; blocks never share
output rows, so threads write disjoint memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets.npusim import kernels as K

BLOCK_BYTES = 1 << 19  # int64 accumulator bytes of one block: fits a core's L2 cache
MIN_BLOCK_ROWS = 64  # fewer output rows per GEMM waste the BLAS kernel
MAX_BLOCK_ROWS = 256
MIN_BLOCK_COLS = 256


def ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """`[0, n)` cut into at most `parts` contiguous non-empty ranges of near-equal size."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def blocks(n: int, row_elements: int, min_rows: int = MIN_BLOCK_ROWS) -> list[tuple[int, int]]:
    """`[0, n)` cut into row ranges whose int64 rows of `row_elements` fit `BLOCK_BYTES`."""
    rows = max(min_rows, BLOCK_BYTES // (8 * max(row_elements, 1)))
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


def deal(items: list, parts: int) -> list[list]:
    """`items` dealt into at most `parts` contiguous lists of near-equal length."""
    return [items[a:b] for a, b in ranges(len(items), parts)]


@dataclass
class Padded:
    """A persistent padded copy of a [C, H, W] input and the strided views of its taps.

    The border holds `value` from construction on; `fill` writes only the interior, so the
    views stay valid for every frame.
    """

    buf: np.ndarray
    pads: tuple[int, ...]
    hw: tuple[int, int]

    @classmethod
    def make(cls, shape: tuple[int, ...], pads: tuple[int, ...], value: float,
             dtype: np.dtype | type) -> Padded:
        """A `[C, H + top + bottom, W + left + right]` buffer filled with `value`."""
        c, h, w = shape
        top, left, bottom, right = pads
        return cls(np.full((c, h + top + bottom, w + left + right), value, dtype), pads, (h, w))

    def fill(self, x: np.ndarray, c0: int = 0, c1: int | None = None) -> None:
        """Copy channels `[c0, c1)` of `x` ([C, H, W]) into the interior (converting)."""
        top, left = self.pads[:2]
        h, w = self.hw
        c1 = x.shape[0] if c1 is None else c1
        self.buf[c0:c1, top:top + h, left:left + w] = x[c0:c1]

    def windows(self, kernel: tuple[int, ...], stride: tuple[int, ...],
                dilation: tuple[int, ...], out_hw: tuple[int, int]) -> np.ndarray:
        """The [C, kh, kw, OH, OW] read-only view of every window."""
        return K.windows(self.buf, kernel, stride, dilation, out_hw)

    def taps(self, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...], out_hw: tuple[int, int]) -> list[np.ndarray]:
        """One [C, OH, OW] view per kernel tap, row-major over the kernel."""
        view = self.windows(kernel, stride, dilation, out_hw)
        return [view[:, i, j] for i in range(kernel[0]) for j in range(kernel[1])]


EXACT_F64 = 1 << 52  # |a·M0| below this: the float64 product and the rounding add are exact


@dataclass
class Requant:
    """Per-row §3 constants of one instruction, shaped to broadcast over [rows, ...].

    Two exact evaluations of `clamp((a·M0 + 2^(s-1)) >> s, lo, hi)` for `a = acc + bias`
    (|a| ≤ 2^32, so a is exact in float64):

    - int64, always (`apply`);
    - float64 `clamp(floor(a·M + 1/2), lo, hi)` with `M = M0·2^-s` (exact: M0 < 2^31), six
      passes instead of seven, for rows where `float_ok`: scaling by 2^-s commutes with
      rounding, so `fl(a·M) + 1/2` is `(fl(a·M0) + 2^(s-1))·2^-s` rounded once more, and
      both roundings are exact while `|a·M0| < 2^52`. Larger products must saturate, which
      they do exactly when `2^(52-s) ≥ R` (R = 2^e ≥ max(-lo, hi + 1)): then `|a·M| ≥ R`,
      and float rounding is monotone so the float result saturates alike. A row also
      qualifies when its accumulator bound keeps `|a·M0| < 2^52` for every input.
    """

    bias: np.ndarray
    m0: np.ndarray
    rnd: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int
    bias_f: np.ndarray
    mult_f: np.ndarray
    float_ok: np.ndarray  # bool per row

    @classmethod
    def make(cls, bias: np.ndarray, m0: np.ndarray, shift: np.ndarray, lo: int, hi: int,
             trailing: int, bound: np.ndarray | None = None) -> Requant:
        """Constants as columns with `trailing` singleton axes.

        Args:
            bias: int32 bias per row (zeros where the op has none).
            m0: M0 per row (or one for all).
            shift: s per row (or one for all).
            lo: Clamp minimum.
            hi: Clamp maximum.
            trailing: Singleton axes after the row axis.
            bound: Per row, the largest |acc| any input can produce (None: unknown).
        """
        def col(a: np.ndarray) -> np.ndarray:
            return np.asarray(a, np.int64).reshape((-1,) + (1,) * trailing)
        bias, m0, shift = col(bias), col(m0), col(shift)
        m0, bias, shift = np.broadcast_arrays(m0, bias, shift)
        e = int(np.ceil(np.log2(max(-lo, hi + 1, 1))))
        ok = (shift + e <= 52).reshape(-1)
        if bound is not None:
            worst = (np.asarray(bound, np.float64).reshape(-1) + np.abs(bias.reshape(-1))) \
                * m0.reshape(-1)
            ok |= worst < EXACT_F64
        return cls(bias.copy(), m0.copy(), np.left_shift(np.int64(1), shift - 1), shift.copy(),
                   lo, hi, bias.astype(np.float64), np.ldexp(m0.astype(np.float64), -shift),
                   ok)

    def rows_float(self, r0: int, r1: int) -> bool:
        """Whether rows `[r0, r1)` may all take the float64 path."""
        return bool(self.float_ok[r0:r1].all())

    def apply(self, acc: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        """`out = requant(acc + bias)` for rows `[r0, r1)`, in place in the int64 `acc`."""
        np.add(acc, self.bias[r0:r1], out=acc)
        np.multiply(acc, self.m0[r0:r1], out=acc)
        np.add(acc, self.rnd[r0:r1], out=acc)
        np.right_shift(acc, self.shift[r0:r1], out=acc)
        np.clip(acc, self.lo, self.hi, out=acc)
        np.copyto(out, acc, casting="unsafe")

    def apply_float(self, a: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        """`out = requant(a)` for `float_ok` rows; `a` (float64, bias included) is scratch."""
        np.multiply(a, self.mult_f[r0:r1], out=a)
        np.add(a, 0.5, out=a)
        np.floor(a, out=a)
        np.clip(a, self.lo, self.hi, out=a)
        np.copyto(out, a, casting="unsafe")


@dataclass
class Patches:
    """The float32 [C·kh·kw, OH·OW] patch matrix of one conv, refilled in place per frame."""

    matrix: np.ndarray
    padded: Padded | None  # None: a 1x1 stride-1 unpadded conv reads the input as is
    view: np.ndarray | None
    dest: np.ndarray

    @classmethod
    def make(cls, shape: tuple[int, ...], dtype: np.dtype, kernel: tuple[int, ...],
             stride: tuple[int, ...], pads: tuple[int, ...], dilation: tuple[int, ...],
             out_hw: tuple[int, int]) -> Patches:
        """Buffers for a [C, H, W] input of `dtype` (zero padding)."""
        c = shape[0]
        matrix = np.empty((c * kernel[0] * kernel[1], out_hw[0] * out_hw[1]), np.float32)
        if kernel == (1, 1) and stride == (1, 1) and not any(pads):
            return cls(matrix, None, None, matrix)
        padded = Padded.make(shape, pads, 0, dtype)
        view = padded.windows(kernel, stride, dilation, out_hw)
        return cls(matrix, padded, view, matrix.reshape(view.shape))

    def fill(self, x: np.ndarray, c0: int, c1: int) -> None:
        """Write the patch rows of input channels `[c0, c1)` of `x` ([C, H, W])."""
        if self.padded is None:
            np.copyto(self.dest[c0:c1], x[c0:c1].reshape(c1 - c0, -1))
            return
        self.padded.fill(x, c0, c1)
        np.copyto(self.dest[c0:c1], self.view[c0:c1])


@dataclass
class GemmBlock:
    """Output rows `[r0, r1)`, columns `[c0, c1)` of group `group`.

    `pieces` are the rows' weight K ranges `(k0, k1, float32 [rows, k1 - k0])`.
    """

    group: int
    r0: int
    r1: int
    c0: int
    c1: int
    pieces: list[tuple[int, int, np.ndarray]]
    float_path: bool = False  # requantize in float64 (`Requant.rows_float`)


@dataclass
class GemmPart:
    """One thread's blocks and its flat scratch (float32 GEMM result, int64 accumulator)."""

    blocks: list[GemmBlock]
    f32: np.ndarray
    i64: np.ndarray


@dataclass
class GemmBlocks:
    """An exact int GEMM `W[N, K] @ patches` + requant, cut into per-thread row blocks.

    Each block's K is split (`kernels.k_splits`, on that block's rows only) so every float32
    partial sum is an exact integer; the pieces are summed in int64.
    """

    parts: list[GemmPart]
    requant: Requant
    k_group: int

    @classmethod
    def make(cls, w: np.ndarray, groups: int, m: int, x_bound: int, requant: Requant,
             threads: int) -> GemmBlocks:
        """Blocks of the int8 `w` ([N, Kg], N = groups · rows per group) for M columns."""
        n_group = w.shape[0] // groups
        blks = []
        for g in range(groups):
            for a, b in ranges(n_group, -(-n_group // MAX_BLOCK_ROWS)):
                rows = _gemm_block(w, g, g * n_group + a, g * n_group + b, x_bound)
                cols = max(MIN_BLOCK_COLS, BLOCK_BYTES // (8 * (b - a)))
                blks += [GemmBlock(g, rows.r0, rows.r1, c0, min(c0 + cols, m), rows.pieces,
                                   requant.rows_float(rows.r0, rows.r1))
                         for c0 in range(0, m, cols)]
        parts = []
        for part in deal(blks, threads):
            size = max((b.r1 - b.r0) * (b.c1 - b.c0) for b in part)
            parts.append(GemmPart(part, np.empty(size, np.float32), np.empty(size, np.int64)))
        return cls(parts, requant, w.shape[1])

    def run(self, part: GemmPart, matrix: np.ndarray, out: np.ndarray) -> None:
        """Rows of `part` into `out` ([N, M], the output's type) from the patch `matrix`."""
        rq = self.requant
        for b in part.blocks:
            cols = matrix[b.group * self.k_group:(b.group + 1) * self.k_group, b.c0:b.c1]
            shape = (b.r1 - b.r0, b.c1 - b.c0)  # contiguous scratch of the block's shape
            f = part.f32[:shape[0] * shape[1]].reshape(shape)
            acc = part.i64[:shape[0] * shape[1]].reshape(shape)
            if b.float_path:
                acc = acc.view(np.float64)
            for j, (k0, k1, wp) in enumerate(b.pieces):
                np.matmul(wp, cols[k0:k1], out=f)
                if j == 0 and b.float_path and len(b.pieces) == 1:
                    np.add(f, rq.bias_f[b.r0:b.r1], out=acc)
                elif j == 0:
                    np.copyto(acc, f, casting="unsafe")
                else:  # float64 sum of exact integers below 2^53: exact
                    np.add(acc, f, out=acc, casting="unsafe")
            if not b.float_path:
                rq.apply(acc, out[b.r0:b.r1, b.c0:b.c1], b.r0, b.r1)
                continue
            if len(b.pieces) > 1:
                np.add(acc, rq.bias_f[b.r0:b.r1], out=acc)
            rq.apply_float(acc, out[b.r0:b.r1, b.c0:b.c1], b.r0, b.r1)


def row_bound(w: np.ndarray, x_bound: int) -> np.ndarray:
    """Per row of an int `[N, K]` weight, the largest |Σ x·w| for |x| ≤ `x_bound`."""
    return x_bound * np.abs(w.astype(np.int64)).sum(axis=1)


def _gemm_block(w: np.ndarray, group: int, r0: int, r1: int, x_bound: int) -> GemmBlock:
    rows = w[r0:r1]
    pieces = [(k0, k1, np.ascontiguousarray(rows[:, k0:k1], np.float32))
              for k0, k1 in K.k_splits(rows, x_bound)]
    return GemmBlock(group, r0, r1, 0, 0, pieces)
