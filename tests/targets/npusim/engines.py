"""Skip markers for the simulator's optional fast paths (both are probed, not assumed)."""

import pytest

from targets.npusim import intgemm, native

needs_engine = pytest.mark.skipif(not intgemm.exact(),
                                  reason="onnxruntime's int8 GEMM is not exact here")
needs_native = pytest.mark.skipif(not native.available(),
                                  reason="the native kernels were not built (no C compiler)")
