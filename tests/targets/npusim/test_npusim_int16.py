"""int16 activations (A16W8, docs/fixed-point.md §16) on npusim: the simulator, model.quant.onnx
in onnxruntime and the numpy reference agree on every element, for every op kind with int16
inputs or outputs, the int8 copies made before tables, and zoo models with a mix of int8 and
int16 layers; the exact float64 GEMM and the 64-bit requantization at their edges; the binary
encoding; and the perf model's cost of a 16-bit layer.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from compiler.core import fixedpoint as fp
from compiler.core.builder import GraphBuilder
from compiler.core.errors import ConfigError, TargetError
from passes.quantize.api import quantize_model
from passes.quantize.reference import execute
from targets.npusim import (
    Simulator,
    build_binary,
    estimate_perf,
    isa,
    load_arch,
    load_binary,
    verify,
)
from targets.npusim import kernels as K
from targets.npusim import plans as P
from targets.npusim.arch import PRESET_DIR
from targets.npusim.binary import write_binary
from targets.npusim.check import check_program
from targets.npusim.container import VERSION
from targets.npusim.testing import op_zoo_model, random_inputs

MAC_OPS = ("Conv", "Gemm", "MatMul")


def _build(proto, int16, calib=4, seed=0):
    result = quantize_model(proto, random_inputs(proto, calib, seed), int16=list(int16))
    return result, build_binary(result.quant_model)


def _three_way(proto, result, built, frames=2, seed=1):
    """verify (simulator vs onnxruntime) and simulator vs the numpy reference, every element."""
    feeds = random_inputs(proto, frames, seed)
    report = verify(result.quant_model, built.data, feeds)
    for out in report.outputs:
        assert out["elements"] > 0 and out["mismatched"] == 0, out
    sim = Simulator(built.data).run_frames(feeds)
    for f, got in enumerate(sim):  # the reference frame by frame (fixed-batch reshapes)
        ref = execute(result.qgraph, {n: a[f:f + 1] for n, a in feeds.items()})
        for name, value in got.items():
            np.testing.assert_array_equal(value, ref[name])
    return report


def _io_types(program: isa.Program) -> tuple[set[str], set[str]]:
    """Instruction kinds with an int16 input, and with an int16 output."""
    def wide(ids):
        return any(program.tensors[t].dtype == "int16" for t in ids)
    reads = {i.kind for i in program.code if wide(i.reads())}
    writes = {i.kind for i in program.code if wide(i.writes())}
    return reads, writes


@pytest.mark.parametrize("seed, share", [(1, 1.0), (2, 0.5), (3, 0.3)])
def test_op_zoo_with_int16_layers_is_bit_exact(seed, share):
    proto = op_zoo_model(seed=seed)
    names = [n.name for n in proto.graph.node if n.op_type != "Softmax"]
    rng = np.random.default_rng(seed)
    wide = [n for n in names if rng.random() < share]
    result, built = _build(proto, wide)
    _three_way(proto, result, built, frames=2, seed=seed)
    reads, writes = _io_types(built.program)
    if share == 1.0:  # every op kind with a 16-bit path runs it
        assert {"conv", "dwconv", "fc", "add", "mul", "concat", "gavgpool", "maxpool", "pad",
                "reshape", "transpose", "slice", "resize", "dequantize", "lut"} <= reads
        assert {"conv", "dwconv", "fc", "add", "mul", "concat", "avgpool", "gavgpool",
                "quantize", "maxpool", "pad", "resize", "lut"} <= writes
        big = next(i for i in built.program.code if i.name == "big_kernel")
        assert big.unit == isa.CPU and built.program.tensors[big.ifm].dtype == "int16"
    assert not reads & {"channel_lut", "avgpool"}  # converted to int8 first
    assert "int16" in {t.dtype for t in built.program.tensors}


def _table_model() -> tuple:
    """conv (int16 out) -> PRelu -> conv -> depthwise 2x2 -> depthwise 3x3 -> Sigmoid -> fc."""
    b = GraphBuilder("int16_tables", 5)
    x = b.input("x", [1, 4, 12, 12])
    c = b.conv(x, b.rng.standard_normal((8, 4, 3, 3)) * 0.4, b.rng.standard_normal(8),
               name="c1")
    slope = b.const((b.rng.random((1, 8, 1, 1)) * 0.3).astype(np.float32), "slope")
    pr = b.node("PRelu", [c, slope], name="prelu")
    c2 = b.conv(pr, b.rng.standard_normal((8, 8, 1, 1)) * 0.4, None, name="c2")
    d2 = b.conv(c2, b.rng.standard_normal((8, 1, 2, 2)), None, pad=0, group=8, name="dw2")
    d3 = b.conv(d2, b.rng.standard_normal((8, 1, 3, 3)), None, group=8, name="dw3")
    s = b.sigmoid(d3)
    fc = b.gemm(b.flatten(b.global_avgpool(b.mul(s, d3))), b.rng.standard_normal((5, 8)),
                b.rng.standard_normal(5))
    b.output(fc)
    return b.build(), ["c1", "prelu", "dw2", "dw3", "fc"]


def test_int16_into_tables_interpolates_or_narrows_and_is_bit_exact():
    """The SiLU table reads the int16 tensor (513 interpolated knots, §18); the per-channel
    PRelu tables read an int8 copy."""
    proto, wide = _table_model()
    result, built = _build(proto, wide, calib=6)
    _three_way(proto, result, built, frames=3)
    p = built.program
    by_out = {o: ins for ins in p.code for o in ins.writes()}
    ins = next(i for i in p.code if i.kind == "channel_lut")
    src = by_out[ins.ifm]
    assert p.tensors[ins.ifm].dtype == "int8" and p.tensors[ins.ifm].name.endswith("__n8")
    assert src.kind == "concat" and p.tensors[src.inputs[0]].dtype == "int16"
    lut = next(i for i in p.code if i.kind == "lut")
    out_bytes = np.dtype(p.tensors[lut.ofm].dtype).itemsize
    assert p.tensors[lut.ifm].dtype == "int16" and by_out[lut.ifm].kind == "dwconv"
    assert p.blobs[lut.table].array.shape == (513 * out_bytes,)
    dws = [i for i in p.code if i.kind == "dwconv"]
    assert [p.tensors[i.ifm].dtype for i in dws] == ["int16", "int16"]
    # 4 taps of |x·w| ≤ 2^22 sum exactly in float32; 9 taps need float64
    assert [K.depthwise_dtype(p.blobs[i.weights].array.shape[2:], np.int16) for i in dws] == \
        [np.float32, np.float64]


def _zoo_mixed(name, size):
    from models.zoo import ARCHITECTURES

    proto, _ = ARCHITECTURES[name](seed=0, batch=1, image_size=size)
    macs = [n.name for n in proto.graph.node if n.op_type in MAC_OPS]
    return proto, [macs[0], macs[len(macs) // 2], macs[-1]]


@pytest.mark.parametrize("name, size", [
    ("mobilenetv2", 64), pytest.param("resnet50", 64, marks=pytest.mark.slow),
    pytest.param("vgg16", 32, marks=pytest.mark.slow),
    pytest.param("ssd_resnet50", 300, marks=pytest.mark.slow)])
def test_zoo_models_with_int16_layers_are_bit_exact(name, size):
    proto, wide = _zoo_mixed(name, size)
    result, built = _build(proto, wide, calib=2)
    _three_way(proto, result, built, frames=1)
    p = built.program
    macs = [i for i in p.code if i.kind in ("conv", "dwconv", "fc")]
    types = {p.tensors[i.ifm].dtype for i in macs}
    assert "int16" in types and types & {"int8", "uint8"}  # a real mix
    assert {i.name for i in macs if p.tensors[i.ifm].dtype == "int16"} >= set(wide)


# --- exact arithmetic at the edges -------------------------------------------------------------

def _narrow(k: int) -> int:
    return fp.multiplier_bits(fp.mac_acc_bound(k, "int16"))


def test_int16_gemm_blocks_are_exact_where_float32_is_not():
    rng = np.random.default_rng(0)
    n, k, m = 96, 3000, 300
    w = rng.choice(np.array([-127, -126, 125, 127], np.int8), (n, k))
    x = rng.choice(np.array([-32768, -32767, 32766, 32767], np.int16), (k, m))
    x[:, 0], w[0] = -32768, -127  # |acc| = 3000·2^22·127/128, beyond int32 and 2^24
    bits = _narrow(k)
    m0 = rng.integers(1 << (bits - 1), 1 << bits, n)
    shift = np.where(np.arange(n) % 3 == 0, 40, 30)  # rows on both requant paths
    bias = rng.integers(-(1 << 31) + 1, 1 << 31, n)
    rq = P.Requant.make(bias, m0, shift, -32768, 32767, 1, P.row_bound(w, 32768))
    assert set(rq.float_ok.tolist()) == {True, False}
    gemm = P.GemmBlocks.make(w, 1, m, 32768, rq, 2, P.Workspace())
    assert all(len(b.pieces) == 1 and b.pieces[0][2].dtype == np.float64
               for part in gemm.parts for b in part.blocks)
    assert len(K.k_splits(w, 32768, np.float32)) > 100  # float32 would need tiny K ranges
    out = np.empty((n, m), np.int16)
    for part in gemm.parts:
        gemm.run(part, x.astype(np.float64), out)
    acc = w.astype(np.int64) @ x.astype(np.int64)  # |acc| < 2^34: exact in int64
    assert abs(int(acc[0, 0])) == 3000 * 127 * 32768
    want = K.requant(acc + rq.bias, rq.m0, rq.shift, -32768, 32767, np.int16)
    np.testing.assert_array_equal(out, want)
    assert not np.array_equal((w.astype(np.float32) @ x.astype(np.float32)).astype(np.int64),
                              acc)


@pytest.mark.parametrize("k", [9, 576, 4608])
def test_64_bit_requant_matches_fractions_at_the_accumulator_bound(k):
    bits = _narrow(k)
    bound = fp.mac_acc_bound(k, "int16")
    for m0, s in [((1 << bits) - 1, bits + 8), (1 << (bits - 1), bits + 20), (12345, 30)]:
        accs = [bound, -bound, bound - 1, 0, 1, -1, (1 << (s - 1)) // m0, -((1 << s) // m0)]
        for lo, hi in [(-32768, 32767), (-128, 127), (0, 255)]:
            got = K.requant(np.array(accs, np.int64), m0, s, lo, hi, np.int64)
            want = [min(max(math.floor(Fraction(a * m0, 1 << s) + Fraction(1, 2)), lo), hi)
                    for a in accs]
            assert got.tolist() == want
            assert abs(bound * m0) < 1 << 62  # the narrow multiplier's guarantee


# --- binary ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_build():
    proto, wide = _table_model()
    return _build(proto, wide, calib=6)


def test_int16_binary_round_trips_with_dtype_code_7(wide_build):
    _, built = wide_build
    assert VERSION == (2, 3) and isa.DTYPE_CODES["int16"] == 7
    # int16 tensors alone need a 2.1 reader; the table reading int16 (§18) needs 2.3
    assert struct.unpack_from("<HH", built.data, 4) == (2, 3)
    program = load_binary(built.data)
    assert program.code == built.instructions
    assert [t.dtype for t in program.tensors] == [t.dtype for t in built.program.tensors]
    wide = [t for t in program.tensors if t.dtype == "int16"]
    assert wide and all(t.nbytes == 2 * int(np.prod(t.shape)) for t in wide)


def test_too_wide_multiplier_of_an_int16_layer_is_rejected(wide_build):
    _, built = wide_build
    p = load_binary(built.data)
    conv = next(i for i in p.code if i.kind == "conv" and p.tensors[i.ifm].dtype == "int16")
    mult = p.blobs[conv.mult].array
    assert int(mult.max()) < 1 << _narrow(int(np.prod(p.blobs[conv.weights].array.shape[1:])))
    blobs = list(p.blobs)
    blobs[conv.mult] = isa.Blob("mult", np.full_like(mult, (1 << 31) - 1))
    with pytest.raises(TargetError, match="int16-input layer"):
        check_program(dataclasses.replace(p, blobs=tuple(blobs)))


def test_int16_into_a_per_channel_table_is_rejected_on_load(wide_build):
    _, built = wide_build
    p = load_binary(built.data)
    lut = next(i for i in p.code if i.kind == "channel_lut")
    src = next(i for i in p.code if lut.ifm in i.writes())
    code = [dataclasses.replace(i, ifm=src.inputs[0]) if i is lut else i for i in p.code]
    with pytest.raises(TargetError, match="must be int8\\|uint8"):
        check_program(dataclasses.replace(p, code=tuple(code)))


def test_a_table_read_by_int16_needs_513_knots(wide_build):
    _, built = wide_build
    p = load_binary(built.data)
    lut = next(i for i in p.code if i.kind == "lut")
    table = p.blobs[lut.table].array
    blobs = list(p.blobs)
    blobs[lut.table] = isa.Blob("lut", table[:256 * (len(table) // 513)])
    with pytest.raises(TargetError, match="table must have 513"):
        check_program(dataclasses.replace(p, blobs=tuple(blobs)))


# --- perf ----------------------------------------------------------------------------------------

def _layer_model():
    b = GraphBuilder("int16_perf", 2)
    x = b.input("x", [1, 64, 32, 32])
    c = b.conv(x, b.rng.standard_normal((64, 64, 3, 3)) * 0.05, None, name="conv")
    b.output(b.maxpool(b.relu(c), 2, 2))
    return b.build()


def test_int16_layer_costs_two_mac_passes_and_two_bytes_per_element():
    proto = _layer_model()
    reports, programs = {}, {}
    for label, wide in (("int8", []), ("int16", ["conv"])):
        _, built = _build(proto, wide, calib=2)
        programs[label] = load_binary(built.data)
        reports[label] = {lay["name"]: lay for lay in estimate_perf(built.data).layers}
    c8, c16 = reports["int8"]["conv"], reports["int16"]["conv"]
    overhead = 200  # default preset's instruction overhead
    # 64x64 3x3 at 32x32: ⌈1024/4⌉·⌈64/16⌉·⌈64/16⌉·9 = 36864 array cycles per pass
    assert c8["cycles"] == 36864 + overhead and c8["bound"] == "compute"
    assert c16["cycles"] == 2 * 36864 + overhead and c16["macs"] == c8["macs"] == 37748736
    assert c8["utilisation"] == 0.9946
    assert c16["utilisation"] == round(37748736 / ((2 * 36864 + overhead) * 1024), 4) == 0.4986
    x8, x16 = (programs[k].tensor("x__q") for k in ("int8", "int16"))
    assert (x8.dtype, x16.dtype) == ("int8", "int16") and x16.nbytes == 2 * x8.nbytes == 131072
    assert programs["int16"].arena_size > programs["int8"].arena_size
    mp8, mp16 = (next(lay for n, lay in r.items() if lay["kind"] == "maxpool")
                 for r in (reports["int8"], reports["int16"]))
    assert mp16["cycles"] - overhead == 2 * (mp8["cycles"] - overhead)  # two lanes per element
    wide_lanes = dataclasses.replace(load_arch("default"), lane_bits=16)
    native = {lay["name"]: lay for lay in estimate_perf(programs["int16"], wide_lanes).layers}
    assert native["conv"]["cycles"] == c8["cycles"]  # 16-bit lanes: one pass


def test_lane_bits_is_optional_and_checked(tmp_path):
    text = (Path(PRESET_DIR) / "default.yaml").read_text()
    assert load_arch("default").lane_bits == 8
    old = tmp_path / "old.yaml"
    old.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("lane_bits")))
    assert load_arch(str(old)).lane_bits == 8  # files written before the field stay valid
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("lane_bits: 8", "lane_bits: 12"))
    with pytest.raises(ConfigError, match="lane_bits must be one of"):
        load_arch(str(bad))


def test_relabelled_int16_tensors_are_rejected_or_run():
    """Every tensor of an 8-bit binary relabelled int16 (dtype code 7, CRCs resealed by
    re-encoding): one-line TargetError on load, or a program that runs to outputs of the
    declared shapes; never a crash or an int64 overflow the loader did not bound."""
    proto = _table_model()[0]
    _, built = _build(proto, [], calib=2)
    p = load_binary(built.data)
    feeds = random_inputs(proto, 1, 3)
    outcomes = {"rejected": 0, "runs": 0}
    for i, t in enumerate(p.tensors):
        if t.dtype not in ("int8", "uint8"):
            continue
        tensors = list(p.tensors)
        tensors[i] = dataclasses.replace(t, dtype="int16")
        try:
            data = write_binary(dataclasses.replace(p, tensors=tuple(tensors)))
            out = Simulator(load_binary(data)).run(feeds)
        except TargetError as e:
            assert "\n" not in str(e)
            outcomes["rejected"] += 1
            continue
        assert all(v.shape == built.program.tensor(n).shape for n, v in out.items())
        outcomes["runs"] += 1
    assert outcomes == {"rejected": 9, "runs": 1}  # runs: fc__q (an int16 fc output)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_simulator_table_interpolates_like_the_reference_on_every_int16_input(dtype):
    """The simulator's own §18 kernel against `fixedpoint.apply_lut16`, all 65536 inputs."""
    lo, hi = fp.QRANGE[dtype]
    xs = np.arange(-32768, 32768).astype(np.int16)
    rng = np.random.default_rng(2)
    for table in (np.where(np.arange(fp.LUT16_ENTRIES) % 2, hi, lo),
                  rng.integers(lo, hi + 1, fp.LUT16_ENTRIES)):
        table = table.astype(dtype)
        got = K.lut(xs, table)
        assert got.dtype == table.dtype
        np.testing.assert_array_equal(got, fp.apply_lut16(xs, table))
