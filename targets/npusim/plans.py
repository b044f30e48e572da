"""Buffers and work splits the simulator prepares once per instruction, at load.

A step must not allocate per frame: fresh multi-megabyte temporaries cost page faults that
measured as much as the arithmetic. So every instruction asks the simulator's `Workspace` for
its scratch (padded input copy, patch matrix, accumulators) at load; instructions run one at a
time, so one buffer per role, as large as the largest request, serves them all, and views over
it are made on first use. Work is cut into blocks of output rows (channels) and columns that
fit the cache, and the blocks into one list per thread; blocks never share output elements,
so threads write disjoint memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.core import fixedpoint as fp
from targets.npusim import kernels as K
from targets.npusim.native import NativeRequant

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


class Workspace:
    """Scratch memory shared by the instructions of one simulator, one buffer per role.

    `request` records a need at load and returns a `Lazy` view; `allocate` then makes one
    buffer per role, sized to the largest request, and views bind to it on first use. Two
    requests of one role share memory: an instruction uses each role once (per thread
    slot), so they never overlap in time.
    """

    def __init__(self) -> None:
        self._need: dict[str, int] = {}
        self._memory: dict[str, np.ndarray] = {}

    def request(self, role: str, shape: tuple[int, ...], dtype: np.dtype | type) -> Lazy:
        """A lazily bound `shape`/`dtype` view of the role's buffer."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._need[role] = max(self._need.get(role, 0), nbytes)
        return Lazy(self, role, tuple(shape), dtype, nbytes)

    def allocate(self) -> None:
        """Allocate every role now (pages are touched only when used).

        Call it once every instruction has asked and before worker threads bind views:
        two threads binding a role first at the same time would otherwise each allocate
        it and write to different buffers.
        """
        for role in self._need:
            self.memory(role)

    def memory(self, role: str) -> np.ndarray:
        """The role's bytes (allocated on first use if `allocate` was not called)."""
        mem = self._memory.get(role)
        if mem is None or mem.nbytes < self._need[role]:
            mem = self._memory[role] = np.empty(max(self._need[role], 1), np.uint8)
        return mem

    @property
    def nbytes(self) -> int:
        """Bytes the roles need once all are allocated."""
        return sum(self._need.values())


class Lazy:
    """A view of a `Workspace` role, made on the first call."""

    __slots__ = ("_array", "dtype", "nbytes", "role", "shape", "workspace")

    def __init__(self, workspace: Workspace, role: str, shape: tuple[int, ...],
                 dtype: np.dtype, nbytes: int) -> None:
        self.workspace, self.role, self.shape, self.dtype = workspace, role, shape, dtype
        self.nbytes = nbytes
        self._array: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        """The view (made on the first call, once every instruction has asked)."""
        if self._array is None:
            raw = self.workspace.memory(self.role)[:self.nbytes]
            self._array = raw.view(self.dtype).reshape(self.shape)
        return self._array


class Padded:
    """A padded copy of a [C, H, W] input in workspace memory, and views of its windows.

    The memory is shared with other instructions, so `fill` writes the border too.
    """

    def __init__(self, workspace: Workspace, shape: tuple[int, ...], pads: tuple[int, ...],
                 value: float, dtype: np.dtype | type) -> None:
        c, h, w = shape
        top, left, bottom, right = pads
        self.pads, self.hw, self.value = pads, (h, w), value
        self.buf = workspace.request("padded", (c, h + top + bottom, w + left + right), dtype)
        self._views: dict[tuple, np.ndarray] = {}

    def fill(self, x: np.ndarray, c0: int = 0, c1: int | None = None) -> None:
        """Copy channels `[c0, c1)` of `x` ([C, H, W]) into the interior (converting)."""
        buf = self.buf()[c0:c1]
        top, left, bottom, right = self.pads
        h, w = self.hw
        for region in ((slice(None), slice(0, top)), (slice(None), slice(top + h, None)),
                       (slice(None), slice(top, top + h), slice(0, left)),
                       (slice(None), slice(top, top + h), slice(left + w, None))):
            buf[region] = self.value
        buf[:, top:top + h, left:left + w] = x[c0:c1]

    def windows(self, kernel: tuple[int, ...], stride: tuple[int, ...],
                dilation: tuple[int, ...], out_hw: tuple[int, int]) -> np.ndarray:
        """The [C, kh, kw, OH, OW] read-only view of every window (made once)."""
        key = (kernel, stride, dilation, out_hw)
        if key not in self._views:
            self._views[key] = K.windows(self.buf(), kernel, stride, dilation, out_hw)
        return self._views[key]


@dataclass
class Requant:
    """Per-row §3 constants of one instruction, shaped to broadcast over [rows, ...].

    Two exact evaluations of `clamp((a·M0 + 2^(s-1)) >> s, lo, hi)` for `a = acc + bias`
    (|a| ≤ 2^32 for 8-bit inputs, ≤ K·2^22 + 2^31 < 2^53 for int16 inputs, so a is exact in
    float64; an int16 layer's narrow M0 keeps |a·M0| < 2^62 for the int64 formula, §16):

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
        if bound is not None:
            bound = np.asarray(bound, np.float64).reshape(-1) + np.abs(bias.reshape(-1))
        ok = fp.requant_float_ok(m0, shift, lo, hi, bound)
        return cls(bias.copy(), m0.copy(), np.left_shift(np.int64(1), shift - 1), shift.copy(),
                   lo, hi, bias.astype(np.float64), np.ldexp(m0.astype(np.float64), -shift),
                   ok)

    def rows_float(self, r0: int, r1: int) -> bool:
        """Whether rows `[r0, r1)` may all take the float64 path."""
        return bool(self.float_ok[r0:r1].all())

    def runs(self, r0: int, r1: int) -> list[tuple[int, int, bool]]:
        """Rows `[r0, r1)` as maximal runs `(a, b, float_ok)`, relative to r0."""
        ok = self.float_ok[r0:r1]
        edges = [0, *(np.flatnonzero(ok[1:] != ok[:-1]) + 1).tolist(), len(ok)]
        return [(a, b, bool(ok[a])) for a, b in zip(edges, edges[1:], strict=False) if b > a]

    def apply(self, acc: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        """`out = requant(acc + bias)` for rows `[r0, r1)`, in place in the int64 `acc`."""
        self.apply_at(acc, out, slice(r0, r1))

    def apply_at(self, acc: np.ndarray, out: np.ndarray, rows: slice | np.ndarray) -> None:
        """`apply` for the rows `rows` selects (a slice or an index array)."""
        np.add(acc, self.bias[rows], out=acc)
        np.multiply(acc, self.m0[rows], out=acc)
        np.add(acc, self.rnd[rows], out=acc)
        np.right_shift(acc, self.shift[rows], out=acc)
        np.clip(acc, self.lo, self.hi, out=out, casting="unsafe")

    def apply_float(self, a: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        """`out = requant(a)` for `float_ok` rows; `a` (float64, bias included) is scratch."""
        np.multiply(a, self.mult_f[r0:r1], out=a)
        np.add(a, 0.5, out=a)
        np.floor(a, out=a)
        np.clip(a, self.lo, self.hi, out=out, casting="unsafe")


class Patches:
    """The [C·kh·kw, OH·OW] patch matrix of one conv, refilled per frame.

    Of the GEMM's float type (`kernels.gemm_dtype`): float32 for 8-bit inputs and weights,
    float64 for int16 inputs or weights.
    """

    def __init__(self, workspace: Workspace, shape: tuple[int, ...], dtype: np.dtype,
                 kernel: tuple[int, ...], stride: tuple[int, ...], pads: tuple[int, ...],
                 dilation: tuple[int, ...], out_hw: tuple[int, int],
                 w_dtype: np.dtype | type = np.int8) -> None:
        c = shape[0]
        self.matrix = workspace.request(
            "patches", (c * kernel[0] * kernel[1], out_hw[0] * out_hw[1]),
            K.gemm_dtype(dtype, w_dtype))
        self.direct = kernel == (1, 1) and stride == (1, 1) and not any(pads)
        self.padded = None if self.direct else Padded(workspace, shape, pads, 0, dtype)
        self.geometry = (kernel, stride, dilation, out_hw)

    def fill(self, x: np.ndarray, c0: int, c1: int) -> None:
        """Write the patch rows of input channels `[c0, c1)` of `x` ([C, H, W])."""
        matrix = self.matrix()
        if self.padded is None:  # 1x1 stride 1: the input itself, as float
            np.copyto(matrix.reshape(x.shape[0], -1)[c0:c1], x[c0:c1].reshape(c1 - c0, -1))
            return
        self.padded.fill(x, c0, c1)
        view = self.padded.windows(*self.geometry)
        np.copyto(matrix.reshape(view.shape)[c0:c1], view[c0:c1])


@dataclass
class GemmBlock:
    """Output rows `[r0, r1)`, columns `[c0, c1)` of group `group`.

    `pieces` are the rows' weight K ranges `(k0, k1, float [rows, k1 - k0])` (float32, or
    float64 for an int16 input).
    """

    group: int
    r0: int
    r1: int
    c0: int
    c1: int
    pieces: list[tuple[int, int, np.ndarray]]
    runs: list[tuple[int, int, bool]] = field(default_factory=list)  # `Requant.runs`


@dataclass
class GemmPart:
    """One thread's blocks and its scratch: GEMM result, float64 and int64 accumulators.

    The GEMM result has the pieces' float type (float64 for an int16 input).
    """

    blocks: list[GemmBlock]
    f32: Lazy  # float32, or float64 for an int16 input
    f64: Lazy
    i64: Lazy


@dataclass
class GemmBlocks:
    """An exact int GEMM `W[N, K] @ patches` + requant, cut into per-thread row blocks.

    Each block's K is split (`kernels.k_splits`, on that block's rows only) so every float32
    (float64 for int16 inputs) partial sum is an exact integer; the pieces are summed in
    float64, exact below 2^53. With `native` (`native.NativeRequant`), each block's sums
    are requantized in one native call instead of numpy's passes.
    """

    parts: list[GemmPart]
    requant: Requant
    k_group: int
    native: NativeRequant | None = None

    @classmethod
    def make(cls, w: np.ndarray, groups: int, m: int, x_bound: int, requant: Requant,
             threads: int, workspace: Workspace,
             native: NativeRequant | None = None) -> GemmBlocks:
        """Blocks of the int8 `w` ([N, Kg], N = groups · rows per group) for M columns.

        `x_bound` is the activations' largest |x|: above 255 (int16) the GEMM runs in
        float64 (`kernels.gemm_dtype`), and the patch matrix must be float64 too.
        """
        n_group = w.shape[0] // groups
        dtype = np.float64 if x_bound > 255 or w.dtype.itemsize > 1 else np.float32
        blks = []
        for g in range(groups):
            for a, b in ranges(n_group, -(-n_group // MAX_BLOCK_ROWS)):
                rows = _gemm_block(w, g, g * n_group + a, g * n_group + b, x_bound, dtype)
                cols = max(MIN_BLOCK_COLS, BLOCK_BYTES // (8 * (b - a)))
                blks += [GemmBlock(g, rows.r0, rows.r1, c0, min(c0 + cols, m), rows.pieces,
                                   requant.runs(rows.r0, rows.r1))
                         for c0 in range(0, m, cols)]
        parts = []
        for i, part in enumerate(deal(blks, threads)):
            size = (max((b.r1 - b.r0) * (b.c1 - b.c0) for b in part),)
            parts.append(GemmPart(part, workspace.request(f"gemm_f32/{i}", size, dtype),
                                  workspace.request(f"gemm_f64/{i}", size, np.float64),
                                  workspace.request(f"gemm_i64/{i}", size, np.int64)))
        return cls(parts, requant, w.shape[1], native)

    def run(self, part: GemmPart, matrix: np.ndarray, out: np.ndarray) -> None:
        """Rows of `part` into `out` ([N, M], the output's type) from the patch `matrix`."""
        for b in part.blocks:
            cols = matrix[b.group * self.k_group:(b.group + 1) * self.k_group, b.c0:b.c1]
            shape = (b.r1 - b.r0, b.c1 - b.c0)  # contiguous scratch of the block's shape
            f = part.f32()[:shape[0] * shape[1]].reshape(shape)
            acc = part.f64()[:shape[0] * shape[1]].reshape(shape)
            for j, (k0, k1, wp) in enumerate(b.pieces):
                np.matmul(wp, cols[k0:k1], out=f)
                if len(b.pieces) > 1:  # float64 sums of exact integers below 2^53: exact
                    np.add(acc, f, out=acc) if j else np.copyto(acc, f)
            self._requant(b, f if len(b.pieces) == 1 else acc, acc, part, out)

    def _requant(self, b: GemmBlock, src: np.ndarray, acc: np.ndarray, part: GemmPart,
                 out: np.ndarray) -> None:
        """Requantize the block's exact sums `src` run by run (float64 or int64 rows)."""
        if self.native is not None:
            self.native.rows(src, out[b.r0:b.r1, b.c0:b.c1], b.r0)
            return
        rq = self.requant
        for a, z, use_float in b.runs:
            rows, dst = slice(b.r0 + a, b.r0 + z), out[b.r0 + a:b.r0 + z, b.c0:b.c1]
            if use_float:
                np.add(src[a:z], rq.bias_f[rows], out=acc[a:z])
                rq.apply_float(acc[a:z], dst, rows.start, rows.stop)
            else:
                i64 = part.i64()[:acc.size].reshape(acc.shape)[a:z]
                np.copyto(i64, src[a:z], casting="unsafe")
                rq.apply(i64, dst, rows.start, rows.stop)


def row_bound(w: np.ndarray, x_bound: int) -> np.ndarray:
    """Per row of an int `[N, K]` weight, the largest |Σ x·w| for |x| ≤ `x_bound`."""
    return x_bound * np.abs(w.astype(np.int64)).sum(axis=1)


def _gemm_block(w: np.ndarray, group: int, r0: int, r1: int, x_bound: int,
                dtype: type) -> GemmBlock:
    rows = w[r0:r1]
    pieces = [(k0, k1, np.ascontiguousarray(rows[:, k0:k1], dtype))
              for k0, k1 in K.k_splits(rows, x_bound, dtype)]
    return GemmBlock(group, r0, r1, 0, 0, pieces)
