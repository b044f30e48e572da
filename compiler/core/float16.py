"""Half-precision models computed in float32: what an fp16 export becomes at load.

Exporters write float16 models (torch `.half()` before export, onnxconverter-common's
float16 converter) and, rarely, bfloat16 ones. Calibration, pruning, reconstruction and the
integer arithmetic all work on float32, so such a graph is upcast when it is loaded: every
float16/bfloat16 weight, Constant, Cast target and value type becomes float32. The user's
interface is kept for float16: a float16 graph input gets a Cast to float32 right after it,
a float16 graph output a Cast back right before it (both run on the host); bfloat16 inputs
and outputs become float32, as numpy has no bfloat16 to feed them with. float32 holds every
float16 and bfloat16 value exactly, so the weights are unchanged; only the intermediate
rounding of the arithmetic becomes finer, and the float reference npuc measures against is
this float32 computation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.core.subgraphs import graph_attrs, rename_reads

HALF = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
SUFFIX = "__float32"


def has_half(proto: onnx.ModelProto) -> bool:
    """True when the model computes anything in float16/bfloat16.

    float16 graph inputs read only by Casts to float32 and float16 graph outputs written by
    Casts do not count: that is the interface `upcast_half` leaves, so it is idempotent.
    """
    graph = proto.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    writer: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            writer[name] = node
    boundary = {id(writer[o.name]) for o in graph.output
                if o.name in writer and writer[o.name].op_type == "Cast"}
    if any(_elem(i) == TensorProto.BFLOAT16 for i in [*graph.input, *graph.output]):
        return True
    if any(_elem(i) in HALF and not all(_casts_to_float(n) for n in readers.get(i.name, []))
           for i in graph.input):
        return True
    if any(_elem(o) in HALF and id(writer.get(o.name)) not in boundary for o in graph.output):
        return True
    return _graph_has_half(graph, skip=boundary, interface=False)


def _casts_to_float(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and any(
        a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)


def upcast_half(proto: onnx.ModelProto) -> list[str] | None:
    """Rewrite a half-precision `proto` in place to compute in float32 (module docstring).

    Returns:
        None when the model has nothing in half precision (and is left alone), else the
        names of the graph inputs and outputs that keep their float16 type behind a Cast.
    """
    if not has_half(proto):
        return None
    graph = proto.graph
    inputs = {i.name for i in graph.input}
    # float16 inputs/outputs keep their type; bfloat16 ones become float32 (numpy, and so
    # the user's data, has no bfloat16). An output that is an input stays the input itself.
    half_in = [(i, _elem(i)) for i in graph.input if _elem(i) == TensorProto.FLOAT16]
    half_out = list({o.name: (o, _elem(o)) for o in graph.output
                     if _elem(o) == TensorProto.FLOAT16 and o.name not in inputs}.values())
    _upcast_graph(graph)
    taken = _all_names(graph)
    casts_in = [_cast_input(graph, v, half, taken) for v, half in half_in]
    casts_out = [_cast_output(graph, v, half, taken) for v, half in half_out]
    nodes = casts_in + list(graph.node) + casts_out  # casts in ahead of every reader: sorted
    del graph.node[:]
    graph.node.extend(nodes)
    return [v.name for v, _ in half_in + half_out]


def _elem(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type


def _graph_has_half(graph: onnx.GraphProto, skip: frozenset | set = frozenset(),
                    interface: bool = True) -> bool:
    if any(t.data_type in HALF for t in graph.initializer):
        return True
    values = [*graph.input, *graph.output, *graph.value_info] if interface else graph.value_info
    if any(_elem(v) in HALF for v in values):
        return True
    for node in graph.node:
        if id(node) in skip:
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in HALF:
                return True
            if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT \
                    and attr.i in HALF:
                return True
        if any(_graph_has_half(g) for g in graph_attrs(node)):
            return True
    return False


def _upcast_tensor(t: onnx.TensorProto) -> None:
    if t.data_type in HALF:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))


def _upcast_graph(graph: onnx.GraphProto) -> None:
    for t in graph.initializer:
        _upcast_tensor(t)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if _elem(value) in HALF:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _upcast_tensor(attr.t)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT \
                    and attr.i in HALF:
                attr.i = TensorProto.FLOAT
        for sub in graph_attrs(node):
            _upcast_graph(sub)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _fresh(name: str, taken: set[str]) -> str:
    new, k = name + SUFFIX, 0
    while new in taken:
        k += 1
        new = f"{name}{SUFFIX}_{k}"
    taken.add(new)
    return new


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    # the top graph's nodes, and the sub-graphs that read `old` from the enclosing scope
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for sub in graph_attrs(node):
            rename_reads(sub, {old: new})


def _cast_input(graph: onnx.GraphProto, value: onnx.ValueInfoProto, half: int,
                taken: set[str]) -> onnx.NodeProto:
    value.type.tensor_type.elem_type = half  # retyped with the rest: back to the user's type
    new = _fresh(value.name, taken)
    _rename_reads(graph, value.name, new)
    return helper.make_node("Cast", [value.name], [new], name=_fresh(f"{value.name}_cast", taken),
                            to=TensorProto.FLOAT)


def _cast_output(graph: onnx.GraphProto, value: onnx.ValueInfoProto, half: int,
                 taken: set[str]) -> onnx.NodeProto:
    value.type.tensor_type.elem_type = half
    new = _fresh(value.name, taken)
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name == value.name:
                node.output[k] = new
    for t in graph.initializer:
        if t.name == value.name:
            t.name = new
    _rename_reads(graph, value.name, new)
    return helper.make_node("Cast", [new], [value.name], name=_fresh(f"{value.name}_cast", taken),
                            to=half)
