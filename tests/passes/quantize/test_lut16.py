"""Tables read by int16 inputs (docs/fixed-point.md §18): 513 knots, linear interpolation.
The emitted ONNX form equals the numpy reference on every int16 input, for every output
type and extreme tables; the interpolation stays within a few int16 steps of the exact
function; a raised SiLU network reads its tables in int16 and stays bit-exact."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.numerics import run, session
from compiler.core.qops.lut import QLut, emit_lut
from passes.quantize.api import quantize_model
from passes.quantize.emit_int import IntEmitter
from tests.quant_helpers import feeds_for, make_model, mismatches

node = helper.make_node
XS = np.arange(-32768, 32768).astype(np.int16)


def _emitted(table: np.ndarray) -> np.ndarray:
    """The emitted §18 graph run in onnxruntime on every int16 input."""
    qg = q.QGraph({}, (), (), (), {})
    e = IntEmitter(qg)
    e.arrays = {"t::table": table}
    op = QLut("t", ("x",), ("y",), table=table)
    x = gs.Variable("x", dtype=np.int16, shape=[len(XS)])
    y = gs.Variable("y", dtype=table.dtype, shape=[len(XS)])
    emit_lut(e, op, [x], [y])
    g = gs.Graph(nodes=e.nodes, inputs=[x], outputs=[y], opset=17)
    return run(session(gs.export_onnx(g)), {"x": XS})["y"]


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_interpolated_table_in_onnx_equals_the_reference_on_every_input(dtype):
    lo, hi = fp.QRANGE[dtype]
    rng = np.random.default_rng(1)
    extreme = np.where(np.arange(fp.LUT16_ENTRIES) % 2, hi, lo)  # largest jumps both ways
    for table in (extreme, rng.integers(lo, hi + 1, fp.LUT16_ENTRIES)):
        table = table.astype(dtype)
        want = fp.apply_lut16(XS, table)
        np.testing.assert_array_equal(_emitted(table), want)
        # Fractions: y = floor(T[i] + (T[i+1] - T[i])·f/128 + 1/2), within [lo, hi]
        for x in (-32768, -32767, -1, 0, 1, 63, 64, 65, 32766, 32767):
            u = x + 32768
            i, f = divmod(u, 128)
            exact = Fraction(int(table[i])) + Fraction((int(table[i + 1]) - int(table[i])) * f,
                             128)
            assert int(want[x + 32768]) == int(np.floor(exact + Fraction(1, 2)))
        assert lo <= want.min() and want.max() <= hi


@pytest.mark.parametrize("fn, x_range, y_range, bound", [
    ("Sigmoid", 8.0, 1.0, 2), ("SiLU", 10.0, 10.0, 2), ("HardSwish", 6.0, 6.0, 3),
    ("Tanh", 4.0, 1.0, 2)])
def test_interpolation_stays_within_a_few_int16_steps(fn, x_range, y_range, bound):
    """|table(x) - round(f(x·Sx)/Sy)| ≤ `bound` int16 steps on every input (int8: 258x
    coarser)."""
    sx, sy = x_range / 32767, y_range / 32767
    table = fp.build_lut(fn, sx, sy, "int16", "int16")
    assert table.shape == (513,)
    got = fp.apply_lut16(XS, table).astype(np.int64)
    exact = fp.table_from(fp.LUT_FUNCTIONS[fn](XS.astype(np.float64) * sx), sy, "int16")
    assert np.abs(got - exact.astype(np.int64)).max() <= bound


def _silu_net():
    rng = np.random.default_rng(4)
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             node("Sigmoid", ["c"], ["s"], name="sig"),
             node("Mul", ["c", "s"], ["m"], name="silu"),
             node("Conv", ["m", "w2"], ["y"], name="conv2")]
    inits = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5,
             "b": rng.standard_normal(8).astype(np.float32),
             "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.5}
    return make_model(nodes, {"x": ["N", 3, 8, 8]}, ["y"], inits)


def test_a_raised_silu_reads_and_writes_int16_and_is_more_accurate():
    """conv -> SiLU -> conv with every layer 16-bit (A16W16, the table in int16): bit-exact,
    and its worst error 34x below all-int8's (on the calibration samples: nothing clips)."""
    model = _silu_net()
    feeds = feeds_for(model, 16, 0)
    int8 = quantize_model(model, feeds, "max", bias_correction=False)
    wide = quantize_model(model, feeds, "max", bias_correction=False,
                          int16=("conv", "conv2"), int16_weights=("conv", "conv2"))
    lut = next(op for op in wide.qgraph.ops if op.kind == "QLut")
    assert lut.fn == "SiLU" and lut.table.dtype == np.int16 and lut.table.shape == (513,)
    assert wide.qgraph.tensor(lut.inputs[0]).dtype == "int16"
    assert mismatches(wide.qgraph, feeds) == {}
    ref = run(session(model), feeds)["y"]
    err = {k: np.abs(run(r.quant_model, feeds)["y"] - ref).max()
           for k, r in (("int8", int8), ("int16", wide))}
    assert err["int16"] < err["int8"] / 20
