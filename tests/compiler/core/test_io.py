import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

from compiler.core.errors import ConfigError, ModelLoadError
from compiler.core.io import INTERNAL_OPSET, load_model, save_model, to_proto
from compiler.core.numerics import compare_models, random_feeds, run
from tests.conftest import conv_model


def test_load_from_proto_and_path_agree(tmp_path, tiny_model):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_model, path)
    a, b = load_model(tiny_model), load_model(path)
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    assert b.source == str(path.resolve())
    assert max(compare_models(a, b).values()) == 0.0


def test_load_does_not_modify_input_proto(tiny_model):
    before = tiny_model.SerializeToString()
    load_model(tiny_model, fix_batch=True)
    assert tiny_model.SerializeToString() == before


def test_save_round_trip_is_identical_in_function(tmp_path, tiny_model):
    model = load_model(tiny_model)
    out = save_model(model, tmp_path / "out.onnx")
    again = load_model(out)
    feeds = random_feeds(model, seed=3)
    np.testing.assert_array_equal(run(model, feeds)["y"], run(again, feeds)["y"])
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_save_refuses_to_overwrite_input(tmp_path, tiny_model):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_model, path)
    before = path.read_bytes()
    with pytest.raises(ModelLoadError, match="refusing to overwrite"):
        save_model(load_model(path), path)
    assert path.read_bytes() == before


def test_save_failure_leaves_no_partial_file(tmp_path, tiny_model, monkeypatch):
    model = load_model(tiny_model)
    target = tmp_path / "out.onnx"

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ConfigError, match="out.onnx: cannot be written .disk full."):
        save_model(model, target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
def test_every_supported_opset_loads_and_keeps_function(opset):
    original = conv_model(opset)
    model = load_model(original)
    assert model.opset == INTERNAL_OPSET
    assert max(compare_models(original, model).values()) < 1e-5


def test_fix_batch_makes_dynamic_batch_concrete():
    model = load_model(conv_model(batch="N"), fix_batch=True)
    assert model.graph.inputs[0].shape == [1, 3, 8, 8]
    assert model.graph.outputs[0].shape == [1, 10]


def test_dynamic_batch_kept_without_fix_batch():
    model = load_model(conv_model(batch="N"))
    assert model.graph.inputs[0].shape[0] == "N"


def _save_external(model, folder: Path, location: str) -> Path:
    path = folder / "model.onnx"
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=location, size_threshold=0)
    onnx.save(model, path)
    return path


def test_external_data_inside_folder_loads(tmp_path, tiny_model):
    path = _save_external(tiny_model, tmp_path, "weights.bin")
    model = load_model(path)
    assert max(compare_models(conv_model(), model).values()) == 0.0


def test_external_data_escaping_folder_is_refused(tmp_path, tiny_model):
    (tmp_path / "sub").mkdir()
    path = _save_external(tiny_model, tmp_path / "sub", "weights.bin")
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save(proto, path)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(path)


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"this is not a protobuf \xff\xfe", "not an ONNX model"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, match):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_truncated_file_is_rejected(tmp_path, tiny_model):
    data = tiny_model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(path)


@pytest.mark.parametrize("opset", [0, onnx.defs.onnx_opset_version() + 1])
def test_unsupported_opset_is_rejected(opset):
    proto = conv_model(17)
    proto.opset_import[0].version = opset
    with pytest.raises(ModelLoadError, match=f"unsupported opset {opset}"):
        load_model(proto)


def test_unnamed_nodes_get_names(tiny_model):
    for node in tiny_model.graph.node:
        node.name = ""
    names = [n.name for n in load_model(tiny_model).nodes]
    assert all(names) and len(set(names)) == len(names)


def test_to_proto_carries_metadata(tiny_model):
    model = load_model(tiny_model)
    model.metadata["npuc.test"] = "42"
    proto = to_proto(model)
    assert {p.key: p.value for p in proto.metadata_props}["npuc.test"] == "42"
    onnx.checker.check_model(proto)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_at_load(tmp_path, capsys, bad):
    from compiler.cli import main

    proto = conv_model(17)
    init = proto.graph.initializer[0]
    values = onnx.numpy_helper.to_array(init).copy()
    values.flat[3] = bad
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    path = tmp_path / "broken.onnx"
    onnx.save(proto, path)
    for argv in (["inspect", str(path)], ["prune", str(path), "-o", str(tmp_path / "p.onnx"),
                                          "--ratio", "0.3", "--no-reconstruct"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "broken.onnx" in err[0] and "1 NaN/Inf value(s)" in err[0]
    assert not (tmp_path / "p.onnx").exists()


def test_minus_inf_outside_weighted_layers_is_allowed():
    # A Clip bound or an attention mask may be -inf on purpose.
    from onnx import helper, numpy_helper
    lo = numpy_helper.from_array(np.array(-np.inf, np.float32), "lo")
    node = helper.make_node("Clip", ["x", "lo"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 3])],
                              [helper.make_tensor_value_info("y", 1, [1, 3])], [lo])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op for n in load_model(proto).nodes] == ["Clip"]


@pytest.mark.parametrize("at", [0, 6, 7, 99])
def test_finite_check_reads_every_chunk(at):
    from compiler.core.weight_check import all_finite

    values = np.ones((10, 10), np.float32)
    assert all_finite(values, chunk=7)
    values.flat[at] = np.nan
    assert not all_finite(values, chunk=7) and not all_finite(values)
    assert all_finite(np.zeros((0, 3), np.float32))
