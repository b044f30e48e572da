"""Cost accounting: per-node MACs, other arithmetic ops and parameters.

MACs count the work of a MAC array: Conv, ConvTranspose, Gemm, MatMul and Einsum (products of
two or more operands). Everything else
that computes (BatchNormalization, element-wise arithmetic, activations, pooling) is counted
as `ops`, one per output element (pooling: one per window element; NonMaxSuppression: per
class, a sort of the boxes and one overlap test per box and kept box). Parameters are the
float weights a layer owns; BatchNormalization owns its scale and bias (running statistics
are buffers), matching torchvision's parameter counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import Model, const_value, static_shape

_MOVEMENT = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split",
             "Slice", "Gather", "Identity", "Shape", "Pad", "Expand", "Tile", "Cast",
             "QuantizeLinear", "DequantizeLinear", "Resize", "Upsample", "DepthToSpace",
             "SpaceToDepth", "ConstantOfShape", "Dropout"}


@dataclass(frozen=True)
class NodeCost:
    """Cost of one node."""

    name: str
    op: str
    input_shapes: list
    output_shapes: list
    macs: int
    ops: int
    params: int


@dataclass
class CostReport:
    """Per-node costs and totals of a model."""

    nodes: list[NodeCost] = field(default_factory=list)

    @property
    def macs(self) -> int:
        """Total MACs."""
        return sum(n.macs for n in self.nodes)

    @property
    def ops(self) -> int:
        """Total non-MAC arithmetic ops."""
        return sum(n.ops for n in self.nodes)

    @property
    def params(self) -> int:
        """Total parameters."""
        return sum(n.params for n in self.nodes)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"nodes": [asdict(n) for n in self.nodes],
                "totals": {"macs": self.macs, "ops": self.ops, "params": self.params}}


def model_cost(model: Model) -> CostReport:
    """Cost of every node; tensors of unknown shape contribute 0 MACs/ops."""
    return CostReport([node_cost(n) for n in model.graph.nodes])


def node_cost(node: gs.Node) -> NodeCost:
    """Cost of one node."""
    ins = [static_shape(t) if t.name else None for t in node.inputs]
    outs = [static_shape(t) for t in node.outputs]
    macs_fn = _MACS.get(node.op)
    macs = macs_fn(node, ins, outs) if macs_fn else 0
    ops = 0 if macs_fn or node.op in _MOVEMENT else _ops(node, ins, outs)
    return NodeCost(node.name, node.op, [_fmt(s) for s in ins], [_fmt(s) for s in outs],
                    int(macs), int(ops), int(_params(node)))


def _fmt(shape: tuple | None) -> list | None:
    return list(shape) if shape is not None else None


def _conv_macs(node: gs.Node, ins: list, outs: list) -> int:
    w = ins[1] if len(ins) > 1 else None
    if w is None or outs[0] is None:  # the input shape is not needed
        return 0
    # weight [Cout, Cin/group, k...]: each output element needs Cin/group * prod(k) MACs
    return int(np.prod(outs[0])) * int(np.prod(w[1:]))


def _conv_transpose_macs(node: gs.Node, ins: list, outs: list) -> int:
    w = ins[1] if len(ins) > 1 else None
    if w is None or ins[0] is None:
        return 0
    # weight [Cin, Cout/group, k...]: each input element scatters into Cout/group * prod(k)
    return int(np.prod(ins[0])) * int(np.prod(w[1:]))


def _gemm_macs(node: gs.Node, ins: list, outs: list) -> int:
    a = ins[0]
    if a is None or outs[0] is None:
        return 0
    k = a[0] if node.attrs.get("transA", 0) else a[1]
    return int(np.prod(outs[0])) * int(k)


def _matmul_macs(node: gs.Node, ins: list, outs: list) -> int:
    if ins[0] is None or outs[0] is None or not ins[0]:
        return 0
    return int(np.prod(outs[0])) * int(ins[0][-1])


def _einsum_macs(node: gs.Node, ins: list, outs: list) -> int:
    # one multiply-accumulate per point of the joint index space (ellipsis: not counted)
    terms = str(node.attrs.get("equation", "")).replace(" ", "").split("->")[0].split(",")
    if "..." in "".join(terms) or len(terms) != len(ins) or any(s is None for s in ins):
        return 0
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, ins, strict=True):
        if len(term) != len(shape):
            return 0
        sizes.update(zip(term, shape, strict=True))
    return int(np.prod(list(sizes.values()))) if len(ins) > 1 else 0


_MACS = {"Conv": _conv_macs, "ConvInteger": _conv_macs, "ConvTranspose": _conv_transpose_macs,
         "Gemm": _gemm_macs, "MatMul": _matmul_macs, "MatMulInteger": _matmul_macs,
         "Einsum": _einsum_macs}
MAC_OPS = frozenset(_MACS)
"""Ops whose work is counted as MACs."""


def _nms_ops(node: gs.Node, ins: list) -> int:
    """Sort the scores of each class, then test each box against the kept ones."""
    scores = ins[1] if len(ins) > 1 else None
    if scores is None or len(scores) != 3:
        return 0
    batch, classes, boxes = scores
    limit = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name \
        else None
    kept = min(int(limit.ravel()[0]), boxes) if limit is not None and limit.size else boxes
    per_class = boxes * (max(boxes - 1, 1).bit_length() + kept)
    return int(batch * classes * per_class)


def _ops(node: gs.Node, ins: list, outs: list) -> int:
    if node.op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum"):
        return int(np.prod(ins[0])) if ins[0] else 0
    if node.op == "NonMaxSuppression":
        return _nms_ops(node, ins)
    if not outs or outs[0] is None:
        return 0
    window = int(np.prod(node.attrs.get("kernel_shape", [1])))
    return int(np.prod(outs[0])) * window


def _params(node: gs.Node) -> int:
    if node.op == "BatchNormalization":
        return sum(_size(t) for t in node.inputs[1:3])
    if node.op in _MOVEMENT or node.op == "NonMaxSuppression":  # thresholds, not weights
        return 0
    return sum(_size(t) for t in node.inputs[1:] if _is_float_const(t))


def _size(t: gs.Tensor) -> int:
    value = const_value(t)
    return int(value.size) if value is not None else 0


def _is_float_const(t: gs.Tensor) -> bool:
    value = const_value(t)
    return value is not None and np.issubdtype(value.dtype, np.floating)
