"""A binary's CPU partitions must be self-contained: external data anywhere is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.core.errors import TargetError
from passes.quantize.api import quantize_model
from targets.npusim import Simulator, build_binary, codec, container, load_binary
from targets.npusim.cpu import check_partition
from targets.npusim.testing import random_inputs
from tests import exporter_graphs as eg


@pytest.fixture(scope="module")
def partitioned():
    proto = eg.missing_op_model("erf")
    quant = quantize_model(proto, random_inputs(proto, 4, 0)).quant_model
    program = load_binary(build_binary(quant).data)
    index = next(i for i, b in enumerate(program.blobs) if b.kind == "onnx")
    return program, index, random_inputs(proto, 1, 1)


def _external(location: str) -> onnx.TensorProto:
    t = numpy_helper.from_array(np.zeros(4, np.float32), "ext")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    return t


def _with_partition(program, index, model: onnx.ModelProto) -> bytes:
    raw = model.SerializeToString()
    blobs = list(program.blobs)
    blobs[index] = dataclasses.replace(blobs[index], raw=raw, stored_bytes=len(raw))
    changed = dataclasses.replace(program, blobs=tuple(blobs))
    blocks = {i: b.block for i, b in enumerate(changed.blobs) if b.block}
    return container.pack(codec.encode(changed, blocks))  # the encoder alone checks nothing


@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph"])
def test_partition_with_external_data_is_refused_on_load(partitioned, tmp_path, monkeypatch,
                                                         where):
    program, index, feeds = partitioned
    model = onnx.load_from_string(program.blobs[index].raw)
    if where == "initializer":
        model.graph.initializer.append(_external("weights.bin"))
    elif where == "constant":
        model.graph.node.append(helper.make_node("Constant", [], ["c"],
                                                 value=_external("/etc/passwd")))
    else:
        branch = helper.make_graph([helper.make_node("Constant", [], ["o"],
                                                     value=_external("../x"))], "b", [],
                                   [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
        model.graph.node.append(helper.make_node("If", ["cond"], ["r"], then_branch=branch,
                                                 else_branch=branch))
    data = _with_partition(program, index, model)
    (tmp_path / "weights.bin").write_bytes(bytes(64))  # what a relative path would read
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TargetError, match=r"CPU partition\): tensor '(ext|)' refers to "
                                          r"external data .*must be self-contained"):
        Simulator(data).run(feeds)


def test_partition_checks_reject_garbage_and_non_utf8(partitioned):
    program, index, _ = partitioned
    with pytest.raises(TargetError, match="not an ONNX model"):
        check_partition(b"\x08\x07garbage" * 4, "p")
    model = onnx.load_from_string(program.blobs[index].raw)
    raw = bytearray(model.SerializeToString())
    name = model.graph.node[0].name.encode()
    at = raw.find(name)
    raw[at] = 0xFF
    with pytest.raises(TargetError, match="is not UTF-8 text"):
        check_partition(bytes(raw), "p")
