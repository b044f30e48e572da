"""CPU partitions in the simulator: the embedded float ONNX run by onnxruntime.

An embedded partition comes from the binary, which may come from anyone: it must be
self-contained. A tensor stored as external data would make onnxruntime open a file named
by the binary (relative to the current folder, or absolute), so `check_partition` refuses
every tensor marked EXTERNAL or carrying an external-data entry, in the main graph, in
If/Loop bodies, in Constant attributes and in model-local functions.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from compiler.core.errors import TargetError
from compiler.core.numerics import ort_session
from compiler.core.onnxfile import non_utf8_field
from targets.npusim import isa


def check_partition(raw: bytes, where: str) -> onnx.ModelProto:
    """Parse an embedded partition; refuse it unless every tensor is stored inline.

    Raises:
        TargetError: Not ONNX, or a tensor that would be read from a file.
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise TargetError(f"{where}: not an ONNX model ({e})") from e
    if not model.HasField("graph"):
        raise TargetError(f"{where}: not an ONNX model (no graph)")
    bad = non_utf8_field(model)
    if bad:
        raise TargetError(f"{where}: field {bad} is not UTF-8 text")
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            raise TargetError(f"{where}: tensor {tensor.name!r} refers to external data "
                              f"{location!r}; an embedded partition must be self-contained")
    return model


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        for sparse in [attr.sparse_tensor] * attr.HasField("sparse_tensor") + \
                list(attr.sparse_tensors):
            yield from (sparse.values, sparse.indices)
        for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
            yield from _graph_tensors(sub)


def check_loads(raw: bytes, where: str) -> None:
    """`check_partition`, then open it in onnxruntime.

    A partition that cannot run is an error when the binary is built, not when it is used.
    """
    check_partition(raw, where)
    try:
        ort_session(raw)
    except Exception as e:  # onnxruntime raises its own exception types
        raise TargetError(f"{where}: onnxruntime cannot load it "
                          f"({str(e).strip().splitlines()[0][:300]})") from e


class PartitionRunner:
    """An onnxruntime session for one `CpuCall`, checked against the instruction's tensors."""

    def __init__(self, program: isa.Program, ins: isa.CpuCall) -> None:
        self.ins = ins
        self.names = [program.tensors[i].name for i in ins.inputs]
        self.outputs = [program.tensors[i].name for i in ins.outputs]
        self._raw = program.blobs[ins.partition].raw
        self._session: ort.InferenceSession | None = None

    def session(self) -> ort.InferenceSession:
        """Create (once) and check the session: its input/output names must match."""
        if self._session is None:
            check_partition(self._raw, f"CPU partition {self.ins.name!r}")
            try:
                sess = ort_session(self._raw)
            except Exception as e:  # onnxruntime raises its own exception types
                raise TargetError(f"CPU partition {self.ins.name!r}: onnxruntime cannot load "
                                  f"it ({str(e).splitlines()[0][:200]})") from e
            got_in = sorted(i.name for i in sess.get_inputs())
            got_out = [o.name for o in sess.get_outputs()]
            if got_in != sorted(self.names) or got_out != self.outputs:
                raise TargetError(f"CPU partition {self.ins.name!r}: interface {got_in} -> "
                                  f"{got_out} does not match the call")
            self._session = sess
        return self._session

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs in the call's order."""
        feeds = dict(zip(self.names, inputs, strict=True))
        try:
            return self.session().run(self.outputs, feeds)
        except TargetError:
            raise
        except Exception as e:
            raise TargetError(f"CPU partition {self.ins.name!r} failed: "
                              f"{str(e).splitlines()[0][:200]}") from e
