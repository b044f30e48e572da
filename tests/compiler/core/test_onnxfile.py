"""Big models: lean reading, streamed and external-data writing, safe external paths, no copies."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from compiler.cli import main
from compiler.core import onnxfile
from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.errors import ConfigError, ModelLoadError
from compiler.core.io import load_model, save_model, write_model
from compiler.core.numerics import run, session
from compiler.core.pass_manager import PassManager
from passes.canonicalize import DropIdentities, canonicalize


def bn_net(channels: int = 16, blocks: int = 2, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu blocks, an Identity, GAP and a Gemm: every canonical rewrite applies."""
    b = GraphBuilder("bn_net", seed=seed)
    r = b.rng
    h = b.input("x", [1, 3, 8, 8])
    cin = 3
    for i in range(blocks):
        h = b.conv(h, he_normal(r, (channels, cin, 3, 3)), None, name=f"c{i}")
        h = b.relu(b.batchnorm(h, r.uniform(0.5, 1.5, channels), r.normal(0, 0.1, channels),
                               r.normal(0, 0.1, channels), r.uniform(0.5, 1.5, channels)))
        cin = channels
    h = b.node("Identity", [b.flatten(b.global_avgpool(h))])
    b.output(b.gemm(h, he_normal(r, (10, channels)), np.zeros(10), name="fc"))
    return b.build()


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def _ort(path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, _feeds())[0]


def _save_external(proto: onnx.ModelProto, path, location: str = "weights.bin") -> None:
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)


def _point_all(path, location: str) -> None:
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, path)


# -- reading ---------------------------------------------------------------------------------

def test_lean_read_cuts_only_large_payloads_and_reads_them_exactly(tmp_path):
    proto = bn_net()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    skeleton, arrays = onnxfile.read_lean(path)
    want = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    large = {n for n, a in want.items() if a.nbytes > onnxfile.DETACH_BYTES}
    assert set(arrays) == large and len(large) == 1  # the 16x16x3x3 conv weight (9216 B)
    for name, array in arrays.items():
        assert array.dtype == want[name].dtype and np.array_equal(array, want[name])
        assert array.flags.writeable and array.flags.c_contiguous
    kept = {t.name: t for t in skeleton.graph.initializer}
    assert all(not kept[n].raw_data for n in large)
    assert all(np.array_equal(numpy_helper.to_array(kept[n]), want[n]) for n in want.keys() - large)
    assert skeleton.ByteSize() < path.stat().st_size - 9216


def test_lean_read_then_write_reproduces_the_file_byte_for_byte(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "again.onnx"
    onnx.save(bn_net(), path)
    skeleton, arrays = onnxfile.read_lean(path)
    assert onnxfile.write_lean(out, skeleton, arrays) == [out]
    assert out.read_bytes() == path.read_bytes()


def test_odd_dtypes_and_float_data_stay_in_the_protobuf(tmp_path):
    bf16 = helper.make_tensor("bf", onnx.TensorProto.BFLOAT16, [4096], vals=b"\x01\x02" * 4096,
                              raw=True)
    floats = helper.make_tensor("fd", onnx.TensorProto.FLOAT, [2048], np.arange(2048.0))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [1])],
                              [helper.make_tensor_value_info("y", 1, [1])], [bf16, floats])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), path)
    skeleton, arrays = onnxfile.read_lean(path)
    assert arrays == {}
    tensors = {t.name: t for t in skeleton.graph.initializer}
    assert tensors["bf"].raw_data == b"\x01\x02" * 4096
    assert np.array_equal(numpy_helper.to_array(tensors["fd"]), np.arange(2048.0, dtype=np.float32))


def test_loaded_weights_are_the_arrays_read_no_protobuf_behind_them(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(bn_net(), path)
    model = load_model(path)
    weight = next(n.inputs[1] for n in model.nodes if n.name == "c1")
    assert isinstance(weight.values, np.ndarray) and weight.values.shape == (16, 16, 3, 3)
    assert [t.name for t in model.graph.inputs] == ["x"]
    np.testing.assert_allclose(run(model, _feeds())["fc"], _ort(path), rtol=1e-6, atol=1e-6)


def const_net(opset: int = 13) -> tuple[onnx.ModelProto, np.ndarray]:
    """Weights in Constant nodes (as Paddle exports them), unnamed nodes, and a large constant
    that is also a graph output; returns the model and the conv weight."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 10  # 1728 B: small
    w = np.concatenate([w] * 16)  # 256x3x3x3: 27 kB, above DETACH_BYTES
    big = rng.standard_normal((2048,)).astype(np.float32)
    const = helper.make_node  # the exporters' nodes carry no names
    nodes = [const("Constant", [], ["w"], value=numpy_helper.from_array(w)),
             const("Constant", [], ["shift"], value=numpy_helper.from_array(np.float32(0.5))),
             const("Constant", [], ["big"], value=numpy_helper.from_array(big)),
             const("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             const("Add", ["c", "shift"], ["a"]),
             const("Relu", ["a"], ["y"])]
    graph = helper.make_graph(
        nodes, "const_net", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", 1, [1, 256, 8, 8]),
         helper.make_tensor_value_info("big", 1, [2048])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), w


def test_constant_node_weights_are_read_into_arrays_and_lifted(tmp_path):
    proto, w = const_net()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    skeleton, arrays = onnxfile.read_lean(path, constants=True)
    assert set(arrays) == {"w"} and np.array_equal(arrays["w"], w)
    ops = [(n.op_type, n.name) for n in skeleton.graph.node]
    # names are given before the lifted node goes, so the others keep their positions' names
    assert ops == [("Constant", "Constant_1"), ("Constant", "Constant_2"), ("Conv", "Conv_3"),
                   ("Add", "Add_4"), ("Relu", "Relu_5")]
    assert [(t.name, list(t.dims), t.raw_data) for t in skeleton.graph.initializer] \
        == [("w", [256, 3, 3, 3], b"")]
    graph_output = skeleton.graph.node[1].attribute[0].t  # large, but a graph output: kept
    assert np.array_equal(numpy_helper.to_array(graph_output), numpy_helper.to_array(
        proto.graph.node[2].attribute[0].t))
    assert onnxfile.read_lean(path)[1] == {}  # by default Constant nodes are left alone


@pytest.mark.parametrize("opset", [9, 13])
def test_lifted_constants_keep_function_and_names_and_stay_out_of_protobufs(
        tmp_path, monkeypatch, opset):
    proto, w = const_net(opset)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    import compiler.core.io as io
    import compiler.core.opset as opset_module

    seen = []
    for module, attr in ((io.onnx.checker, "check_model"),
                         (opset_module.version_converter, "convert_version"),
                         (io.onnx.shape_inference, "infer_shapes")):
        original = getattr(module, attr)
        monkeypatch.setattr(module, attr, lambda p, *a, _f=original, **k: (
            seen.append(p.ByteSize()), _f(p, *a, **k))[1])
    model = load_model(path)
    monkeypatch.undo()
    assert seen and max(seen) < w.nbytes / 2  # checker, converter, inference: weightless
    reference = load_model(proto)  # in memory: Constant nodes stay nodes until folding
    assert [n.name for n in model.nodes] == [n.name for n in reference.nodes
                                             if n.name != "Constant_0"]
    want = session(proto).run(None, _feeds())
    got = run(model, _feeds())
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["big"], want[1])


# -- external data ---------------------------------------------------------------------------

def test_external_data_model_loads_with_equal_outputs(tmp_path):
    path = tmp_path / "m.onnx"
    _save_external(bn_net(), path)
    model = load_model(path)
    assert any(isinstance(t.values, np.ndarray) and t.values.nbytes > onnxfile.DETACH_BYTES
               for t in model.graph.tensors().values() if hasattr(t, "values"))
    np.testing.assert_allclose(run(model, _feeds())["fc"], _ort(path), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("location,match", [
    ("../outside.bin", "outside the model's folder"),
    ("/etc/passwd", "not a path relative to the model's folder"),
    ("missing.bin", "external data file 'missing.bin' missing"),
])
def test_unsafe_or_missing_external_data_is_one_line_exit_2(tmp_path, capsys, location, match):
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    _save_external(bn_net(), path)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    _point_all(path, location)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err
    assert str(path) in err and "tensor '" in err


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    _save_external(bn_net(), path, "weights.bin")
    os.replace(folder / "weights.bin", tmp_path / "real.bin")
    os.symlink(tmp_path / "real.bin", folder / "weights.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(path)


def test_truncated_external_data_names_the_tensor(tmp_path):
    path = tmp_path / "m.onnx"
    _save_external(bn_net(), path)
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match=r"tensor '.*': external data \[\d+, \d+\) beyond"):
        load_model(path)


# -- writing ---------------------------------------------------------------------------------

def test_save_below_the_threshold_is_one_file_onnxruntime_loads(tmp_path):
    model = load_model(bn_net())
    files = write_model(model, tmp_path / "m.onnx")
    assert files == [tmp_path / "m.onnx"] and not (tmp_path / "m.onnx.data").exists()
    onnx.checker.check_model(str(files[0]))
    np.testing.assert_array_equal(_ort(files[0]), run(model, _feeds())["fc"])


def test_save_above_the_threshold_writes_external_data_next_to_it(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxfile, "MAX_INLINE_BYTES", 4096)
    model = load_model(bn_net())
    out = tmp_path / "out" / "m.onnx"
    files = write_model(model, out)
    assert files == [out, out.with_name("m.onnx.data")]
    assert out.stat().st_size < 4096 < files[1].stat().st_size
    proto = onnx.load(out, load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data
                 if e.key == "location"}
    assert locations == {"m.onnx.data"}
    offsets = [int(e.value) for t in proto.graph.initializer for e in t.external_data
               if e.key == "offset"]
    assert offsets and all(o % onnxfile.EXTERNAL_ALIGN == 0 for o in offsets)
    np.testing.assert_array_equal(_ort(out), run(model, _feeds())["fc"])
    np.testing.assert_array_equal(run(load_model(out), _feeds())["fc"], run(model, _feeds())["fc"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_save_never_replaces_a_directory_or_a_symlink(tmp_path):
    model = load_model(bn_net())
    (tmp_path / "d.onnx").mkdir()
    (tmp_path / "target.onnx").write_bytes(b"keep")
    os.symlink(tmp_path / "target.onnx", tmp_path / "link.onnx")
    with pytest.raises(ConfigError, match="is a directory; refusing to replace it"):
        save_model(model, tmp_path / "d.onnx")
    with pytest.raises(ConfigError, match="is a symbolic link; refusing to replace it"):
        save_model(model, tmp_path / "link.onnx")
    assert (tmp_path / "target.onnx").read_bytes() == b"keep"
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_output_onto_a_directory_is_exit_2(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(bn_net(), src)
    (tmp_path / "out.onnx").mkdir()
    assert main(["prune", str(src), "-o", str(tmp_path / "out.onnx"), "--ratio", "0.25",
                 "--no-reconstruct"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "out.onnx: exists and is a directory" in err


# -- no copies of the weights ----------------------------------------------------------------

def test_pass_manager_copy_shares_frozen_weights():
    model = load_model(bn_net())
    before = {n: t.values for n, t in model.graph.tensors().items()
              if hasattr(t, "values") and t.values.size > 64}
    result = PassManager([DropIdentities()])(model)
    assert result.modified and len(result.model.nodes) == len(model.nodes) - 1
    after = result.model.graph.tensors()
    assert before and all(after[n].values is v for n, v in before.items())
    assert all(not v.flags.writeable for v in before.values())
    with pytest.raises(ValueError, match="read-only"):
        next(iter(before.values()))[0] = 0


def _big_net() -> tuple[onnx.ModelProto, int]:
    """About 40 MB of float32 weights in four conv-BN blocks and an FC layer."""
    b = GraphBuilder("big", seed=0)
    r = b.rng
    h, cin = b.input("x", [1, 3, 4, 4]), 3
    for i in range(4):
        h = b.conv(h, (r.standard_normal((512, cin, 3, 3)) * 0.02).astype(np.float32), None,
                   name=f"c{i}")
        h = b.relu(b.batchnorm(h, np.ones(512), np.zeros(512), np.zeros(512), np.ones(512)))
        cin = 512
    b.output(b.gemm(b.flatten(b.global_avgpool(h)),
                    (r.standard_normal((4096, 512)) * 0.02).astype(np.float32), None))
    proto = b.build()
    return proto, sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    proto, weights = _big_net()
    path = tmp_path_factory.mktemp("big") / "big.onnx"
    onnx.save(proto, path)
    return path, weights


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_load_and_canonicalize_hold_about_one_copy_of_the_weights(big_file):
    path, weights = big_file
    assert weights > 35e6
    loaded = _peak(lambda: load_model(path))
    folded = _peak(lambda: canonicalize(load_model(path), in_place=True))
    assert loaded < 1.1 * weights, loaded / weights
    # + the folded copy of one layer (the largest is 26% of the weights) and small blocks;
    # a copy of the model would be 2x, the protobuf round trips of old were about 5x
    assert folded < 1.5 * weights, folded / weights


def test_canonicalize_on_a_copy_duplicates_only_the_folded_weights(big_file):
    path, weights = big_file
    model = load_model(path)

    def fold() -> None:
        out = canonicalize(model).model  # the input stays intact: BN-folded convs are new
        assert sum(n.op == "BatchNormalization" for n in out.nodes) == 0

    conv_bytes = 512 * 3 * 9 * 4 + 3 * 512 * 512 * 9 * 4
    assert _peak(fold) < 1.15 * conv_bytes + 0.2 * weights
    assert sum(n.op == "BatchNormalization" for n in model.nodes) == 4


def test_save_writes_the_weights_without_a_serialized_copy(big_file, tmp_path):
    path, weights = big_file
    model = load_model(path)
    assert _peak(lambda: save_model(model, tmp_path / "out.onnx")) < 0.1 * weights
    assert (tmp_path / "out.onnx").stat().st_size > weights


def test_onnxruntime_session_of_an_ir_model_gets_the_arrays_not_a_serialized_copy(big_file):
    path, weights = big_file
    model = load_model(path)
    feeds = {"x": np.ones((1, 3, 4, 4), np.float32)}
    holder = {}
    assert _peak(lambda: holder.update(sess=session(model))) < 0.1 * weights
    np.testing.assert_array_equal(run(holder["sess"], feeds)["fc"], _ort_path(path, feeds))


def _ort_path(path, feeds) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_large_per_activation_batchnorm_statistics_reach_the_opset_converter(tmp_path):
    # opset 8 BatchNormalization(spatial=0) is rewritten from its statistics' values: they
    # are large enough (8 kB each) to be read as arrays, and must be put back for that
    rng = np.random.default_rng(0)
    stats = [numpy_helper.from_array(rng.uniform(0.5, 1.5, (8, 16, 16)).astype(np.float32), n)
             for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn",
                            spatial=0, epsilon=1e-3)
    inputs = [helper.make_tensor_value_info(n, 1, [1, 8, 16, 16] if n == "x" else [8, 16, 16])
              for n in ("x", "s", "b", "m", "v")]  # IR v3: initializers listed as inputs
    graph = helper.make_graph([node], "bn", inputs,
                              [helper.make_tensor_value_info("y", 1, [1, 8, 16, 16])], stats)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    proto.ir_version = 3
    path = tmp_path / "bn.onnx"
    onnx.save(proto, path)
    model = load_model(path)
    assert [n.op for n in model.nodes] == ["Mul", "Add"]
    x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(run(model, {"x": x})["y"], want[0], rtol=1e-5, atol=1e-5)
