"""An exact int8 GEMM engine for the simulator: onnxruntime's `MatMulInteger` kernels.

The float32 BLAS GEMM of `kernels` runs at most the machine's float32 rate; CPUs with
VNNI or AMX multiply int8 four to eight times faster, and onnxruntime's MLAS library is
the int8 GEMM every supported platform of this project already has. One `MatMulInteger`
node per weight matrix, `A[M, K]` (uint8 activations) times the constant `B[K, N]` (int8
weights, pre-packed by onnxruntime at load), int32 results: `Σ (a - zp)·b`, which is the
int8 product `Σ x·w` for `a = x + 128` and `zp = 128` (for uint8 activations `zp = 0`).

Exactness is the contract, so it is measured, not assumed: some MLAS kernels (x86 AVX2
without VNNI) add pairs of u8·s8 products in saturating int16 and are not exact for
extreme values. `exact()` runs probe GEMMs of extreme and random values, of several
shapes, once per process, against int64 numpy; the simulator uses this engine only where
they all match, and falls back to float BLAS otherwise. The integer result wraps in int32
like the spec's accumulator (§11); the binary's shape checks bound every real sum below
2^31, so the wrap-around of a zero-point correction never shows.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from compiler.core.errors import TargetError
from compiler.core.numerics import ort_session, session_options

log = logging.getLogger(__name__)

ZERO_POINT = {np.dtype(np.int8): 128, np.dtype(np.uint8): 0}
"""`A`'s zero point per activation type: int8 `x` enters as the uint8 `x + 128`."""


class IntGemm:
    """`A[M, K] (uint8) @ B[K, N] (int8 constant) - zp·Σ_k B` in int32, into bound buffers.

    Args:
        b: The int8 `[K, N]` weight.
        m: Rows of `A` per call.
        zero_point: `A`'s zero point (128 for int8 activations shifted to uint8, else 0).
        threads: onnxruntime intra-op threads.
    """

    def __init__(self, b: np.ndarray, m: int, zero_point: int, threads: int) -> None:
        from onnx import TensorProto, helper, numpy_helper

        k, n = b.shape
        node = helper.make_node("MatMulInteger", ["a", "b", "zp"], ["y"])
        graph = helper.make_graph(
            [node], "npusim_int8_gemm",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
            [numpy_helper.from_array(np.ascontiguousarray(b, np.int8), "b"),
             numpy_helper.from_array(np.array(zero_point, np.uint8), "zp")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        so = session_options(threads=max(1, threads))
        so.inter_op_num_threads = 1
        so.enable_cpu_mem_arena = False  # inputs and outputs are bound to simulator memory
        self.session = ort_session(model.SerializeToString(), so)
        self.shape = (m, k, n)
        self._binding: Any = None
        self._bound: tuple[int, int] | None = None

    def __call__(self, a: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`out[M, N] = A @ B` exactly (both C-contiguous; bound once, rebound if moved)."""
        key = (a.ctypes.data, out.ctypes.data)
        if self._bound != key:
            m, k, n = self.shape
            if a.shape != (m, k) or out.shape != (m, n) or not (
                    a.flags.c_contiguous and out.flags.c_contiguous):
                raise TargetError(f"int8 GEMM {self.shape}: got A {a.shape}, out {out.shape}")
            io = self.session.io_binding()
            io.bind_input("a", "cpu", 0, np.uint8, [m, k], key[0])
            io.bind_output("y", "cpu", 0, np.int32, [m, n], key[1])
            self._binding, self._bound = io, key
        self.session.run_with_iobinding(self._binding)
        return out


PROBE_SHAPES = ((1, 1, 1), (1, 64, 8), (3, 7, 5), (17, 300, 33), (64, 2304, 64),
                (300, 27, 16), (49, 4608, 96))
"""(M, K, N) of the probe GEMMs: vector, odd, deep and wide shapes (kernel edges)."""


@functools.cache
def exact() -> bool:
    """Whether onnxruntime's int8 GEMM is exact on this machine (probed once per process).

    Extreme values (255·127 and 0·-128 pairs, which saturate a 16-bit pair sum) and random
    ones, both zero points, every `PROBE_SHAPES` shape, against int64 numpy.
    """
    try:
        return _probe()
    except Exception as e:  # onnxruntime raises its own exception types
        log.info("int8 GEMM engine unavailable (%s); the simulator uses float BLAS", e)
        return False


def _probe() -> bool:
    rng = np.random.default_rng(0)
    for m, k, n in PROBE_SHAPES:
        for zp in (128, 0):
            b_cases = (np.full((k, n), 127, np.int8), np.full((k, n), -128, np.int8),
                       rng.integers(-128, 128, (k, n)).astype(np.int8))
            a_cases = (np.full((m, k), 255, np.uint8), np.zeros((m, k), np.uint8),
                       rng.integers(0, 256, (m, k)).astype(np.uint8))
            for b in b_cases:
                gemm = IntGemm(b, m, zp, 1)
                for a in a_cases:
                    want = (a.astype(np.int64) - zp) @ b.astype(np.int64)
                    got = gemm(a, np.empty((m, n), np.int32))
                    if not np.array_equal(got, want):
                        log.info("int8 GEMM engine inexact for (M, K, N) = %s; the "
                                 "simulator uses float BLAS", (m, k, n))
                        return False
    return True
