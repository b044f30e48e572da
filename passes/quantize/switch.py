"""The switch model: the float model with every int8 quantization point behind a switch.

`build_switch_model` adds each activation point of a QGraph (QuantizeLinear /
DequantizeLinear with the int8 model's scales), each weight and constant operand
(`Wq·Sw`, the integer biases) and, for every MAC layer's 8-bit input, an edge point
(`SwitchBuilder.edge`) to a copy of the canonical float model, behind `Where` switches on a
boolean `ENABLE` input, or baked for one configuration (float speed). The sensitivity sweep
(passes/quantize/sensitivity.py) and the accuracy budget loop (budget.py) score
configurations of it; docs/quantization.md ("Sensitivity analysis") explains what is and is
not simulated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.ir import Model, is_const
from passes.quantize.build import WEIGHTED_KINDS
from passes.quantize.emit_qdq import float_name
from passes.quantize.patterns import Unit, scale_preserving

log = logging.getLogger(__name__)

ENABLE = "npuc_sensitivity_on"
"""The switch model's boolean input: point k is quantized iff ENABLE[k]."""


@dataclass
class Layer:
    """A layer's switchable points.

    Attributes:
        unit: The int8 unit.
        inputs: Points of its activation inputs.
        own: Points it owns: weights, constant operands, outputs (and the outputs of the
            value-moving units after it), entry points it is the first to read.
        tensors: Its activation inputs and outputs (float names).
        moves: The value-moving units whose outputs it owns (Reshape, Flatten, ... after it).
        outputs: The activation points among `own` (its outputs and entry points), i.e.
            `own` without the weights and constant operands.
        edges: (tensor point, edge point) of each 8-bit activation input of a MAC layer:
            the edge (also in `inputs`) re-rounds the tensor onto its int8 grid for this
            layer only (`SwitchBuilder.edge`).
    """

    unit: Unit
    inputs: list[int] = field(default_factory=list)
    own: list[int] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    moves: list[Unit] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def activations(self) -> list[int]:
        """Every activation point of the layer: inputs and outputs (no weights)."""
        return list(dict.fromkeys(self.inputs + self.outputs))


class SwitchBuilder:
    """Adds switchable quantization points to a copy of the canonical float model."""

    def __init__(self, model: Model, qgraph: q.QGraph, on: np.ndarray | None = None) -> None:
        self.on = on
        self.model = model.copy()
        self.g = self.model.graph
        self.tensors = self.g.tensors()
        self.nodes = {n.name: n for n in self.g.nodes}
        self.ops = {op.name: op for op in qgraph.ops}
        self.qgraph = qgraph
        self.scales = {float_name(n): t for n, t in qgraph.tensors.items()
                       if t.is_quantized and t.scale is not None}
        self.enable = gs.Variable(ENABLE, dtype=np.bool_, shape=[0])
        self.points: dict[str, int] = {}  # activation tensor -> point index
        self.values: dict[str, gs.Tensor] = {}  # activation tensor -> what its readers read
        self.count = 0

    def _switch(self, on_value: gs.Tensor, off_value: gs.Tensor, name: str,
                k: int | None = None) -> gs.Tensor:
        """A `Where` on the `ENABLE` input, or a fixed choice when baking.

        The switch is point `count` (a new point), or the existing point `k`.
        """
        if k is None:
            k = self.count
            self.count += 1
        if self.on is not None:
            return on_value if self.on[k] else off_value
        cond = self.g.layer(op="Gather", name=f"{name}/on", inputs=[
            self.enable, gs.Constant(f"{name}__k", np.array(k, np.int64))],
            outputs=[gs.Variable(f"{name}__on", dtype=np.bool_, shape=[])])[0]
        return self.g.layer(op="Where", name=f"{name}/switch", inputs=[cond, on_value, off_value],
                            outputs=[gs.Variable(f"{name}__switch", dtype=off_value.dtype,
                                                 shape=off_value.shape)])[0]

    def activation(self, name: str) -> int | None:
        """The point of a quantized activation tensor (added on first use; None: float)."""
        if name in self.points:
            return self.points[name]
        t, qt = self.tensors.get(name), self.scales.get(name)
        if t is None or qt is None or qt.data is not None or is_const(t):
            return None
        users = list(t.outputs)
        s = gs.Constant(f"{name}__sens_s", np.array(qt.scale, np.float32))
        dtype = np.dtype(qt.dtype)  # int8, uint8 for a never-negative tensor, or int16
        zp = gs.Constant(f"{name}__sens_z", np.array(0, dtype))
        # int16 Q/DQ: onnxruntime's com.microsoft ops (ai.onnx has them from opset 21 only)
        domain = {"domain": "com.microsoft"} if fp.is_wide(dtype) else {}
        qv = self.g.layer(op="QuantizeLinear", name=f"{name}/sens_q", inputs=[t, s, zp],
                          outputs=[gs.Variable(f"{name}__sens_q", dtype=dtype)], **domain)[0]
        dq = self.g.layer(op="DequantizeLinear", name=f"{name}/sens_dq", inputs=[qv, s, zp],
                          outputs=[gs.Variable(f"{name}__sens_dq", dtype=np.float32,
                                               shape=t.shape)], **domain)[0]
        self.points[name] = self.count
        y = self._switch(dq, t, f"{name}__sens")
        self.values[name] = y
        for node in users:
            node.inputs = [y if x is t else x for x in node.inputs]
        if y is not t and any(x is t for x in self.g.outputs):
            t.name, y.name = f"{name}__sens_float", name
            self.g.outputs = [y if x is t else x for x in self.g.outputs]
        return self.points[name]

    def edge(self, name: str, node: gs.Node) -> int | None:
        """An 8-bit point on `node`'s reading of activation `name` (after `activation`).

        The same grid as the tensor's own point, so with both on it changes nothing (a
        second rounding onto the same grid is exact); it models a MAC layer that reads an
        int8 copy of a tensor widened to int16 for its other readers (docs/fixed-point.md
        §16): the budget loop's stand-in turns the tensor's point off and keeps this one.
        None for a tensor without a point or one that is not 8-bit.
        """
        qt, src = self.scales.get(name), self.values.get(name)
        if qt is None or src is None or fp.is_wide(qt.dtype) or \
                not any(x is src for x in node.inputs):
            return None
        dtype = np.dtype(qt.dtype)
        tag = f"{name}__{node.name}__sens_edge"
        s = gs.Constant(f"{tag}_s", np.array(qt.scale, np.float32))
        zp = gs.Constant(f"{tag}_z", np.array(0, dtype))
        qv = self.g.layer(op="QuantizeLinear", name=f"{tag}/q", inputs=[src, s, zp],
                          outputs=[gs.Variable(f"{tag}_q", dtype=dtype)])[0]
        dq = self.g.layer(op="DequantizeLinear", name=f"{tag}/dq", inputs=[qv, s, zp],
                          outputs=[gs.Variable(f"{tag}_dq", dtype=np.float32,
                                               shape=src.shape)])[0]
        k = self.count
        y = self._switch(dq, src, tag)
        node.inputs = [y if x is src else x for x in node.inputs]
        return k

    def constant(self, node: gs.Node, index: int, values: np.ndarray,
                 k: int | None = None) -> int:
        """A point replacing input `index` (a constant) of `node` by `values` when on.

        `k`: switch with that existing point instead of adding one.
        """
        old = node.inputs[index]
        point = self.count if k is None else k
        new = gs.Constant(f"{node.name}__sens_c{index}", np.asarray(values, old.values.dtype))
        node.inputs[index] = self._switch(new, old, f"{node.name}__sens_c{index}", k)
        return point

    def unit_constants(self, unit: Unit) -> list[int]:
        """Points of the unit's weights and constant operands (int8 values of the QGraph)."""
        points = []
        anchor = self.nodes[unit.anchor.name]
        op = self.ops.get(unit.anchor.name)
        weight = _weight_values(anchor, op)
        if weight is not None:
            points.append(self.constant(anchor, 1, weight))
            bias = self._bias_values(anchor, op)
            if bias is not None:  # the int8 layer's bias goes with its weights
                self.constant(anchor, 2, bias, points[-1])
        for t in unit.inputs:
            qt = self.scales.get(t.name)
            if not is_const(t) or qt is None or qt.data is None:
                continue
            fq = qt.data.astype(np.float64) * qt.scale
            for node in unit.nodes:
                live = self.nodes[node.name]
                for i, x in enumerate(live.inputs):
                    if x.name == t.name and np.shape(x.values) == fq.shape:
                        points.append(self.constant(live, i, fq))
        return points

    def _bias_values(self, node: gs.Node, op: q.QOp) -> np.ndarray | None:
        """The bias the integer layer adds, bias·Sx·Sw, in the float node's own bias input.

        It differs from the float bias by its int32 rounding and by bias correction (which
        the integer model has and the float model as given does not). Conv and Gemm only
        (a MatMul's bias is a separate Add); a missing bias input gets zeros to switch from.
        """
        if node.op not in ("Conv", "Gemm") or getattr(op, "bias", None) is None:
            return None
        sx = self.qgraph.tensor(op.inputs[0]).scale
        d = np.asarray(op.bias, np.float64) * float(sx) * np.asarray(op.weight_scale, np.float64)
        if node.op == "Gemm":
            beta = float(node.attrs.get("beta", 1.0))
            if beta == 0.0:
                return None  # C is ignored: nothing to switch
            d = d / beta
        if len(node.inputs) < 3 or not node.inputs[2].name:
            zeros = gs.Constant(f"{node.name}__sens_b0", np.zeros(d.shape, np.float32))
            if len(node.inputs) < 3:
                node.inputs.append(zeros)
            else:
                node.inputs[2] = zeros
        old = node.inputs[2]
        if not is_const(old) or np.size(old.values) != d.size:
            return None  # a scalar or [M, N] C: left as given
        return d.reshape(np.shape(old.values))

    def finish(self) -> Model:
        """The model: with the `ENABLE` vector input of all points unless baked."""
        if self.on is None:
            self.enable.shape = [self.count]
            self.g.inputs = [*self.g.inputs, self.enable]
        self.g.cleanup().toposort()
        return self.model


def _weight_values(node: gs.Node, op: q.QOp | None) -> np.ndarray | None:
    """Wq·Sw of a Conv/Gemm/MatMul in the float node's own weight layout."""
    weight = getattr(op, "weight", None)
    sw = getattr(op, "weight_scale", None)
    if weight is None or sw is None or len(node.inputs) < 2 or not is_const(node.inputs[1]):
        return None
    sw = np.asarray(sw, np.float64).reshape((-1,) + (1,) * (weight.ndim - 1))
    deq = weight.astype(np.float64) * sw  # QGraph layout: [Cout, ...] or [N, K]
    if node.op == "Gemm":
        deq = deq if node.attrs.get("transB", 0) else deq.T
        deq = deq / float(node.attrs.get("alpha", 1.0))
    elif node.op == "MatMul":
        deq = deq.T
    w = node.inputs[1].values
    if deq.shape != w.shape:
        log.warning("sensitivity: %s weights %s do not match the QGraph's %s; left float",
                    node.name, w.shape, deq.shape)
        return None
    return deq


def build_switch_model(model: Model, qgraph: q.QGraph, units: list[Unit],
                       on: np.ndarray | None = None) -> tuple[Model, list[Layer], int]:
    """The float model with switchable quantization points, and the layers' points.

    Args:
        model: The canonical float model the QGraph was built from (not modified).
        qgraph: Its QGraph (scales, int8 weights).
        units: `partition(model.graph)`.
        on: Bake this configuration (point k quantized iff ``on[k]``) instead of adding
            the `ENABLE` input: no switch left, so onnxruntime runs it at float speed.

    Returns:
        (model, layers in unit order, number of points); points are numbered the same way
        for the same arguments, whether baked or not.
    """
    b = SwitchBuilder(model, qgraph, on)
    owner: dict[str, Layer | None] = {}  # activation tensor -> layer whose output it is
    layers = []
    for unit in units:
        if unit.kind == "cpu":
            continue
        if scale_preserving(unit):  # moved values: owned by whoever owns the input
            src = next((owner.get(t.name) for t in unit.inputs if not is_const(t)), None)
            owner.update({t.name: src for t in unit.outputs})
            if src is not None:
                src.moves.append(unit)
            continue
        layer = Layer(unit)
        for t in unit.inputs:
            k = None if is_const(t) else b.activation(t.name)
            if k is None:
                continue
            layer.inputs.append(k)
            layer.tensors.append(t.name)
            if unit.kind in WEIGHTED_KINDS:  # reads an int8 copy unless raised itself
                edge = b.edge(t.name, b.nodes[unit.anchor.name])
                if edge is not None:
                    layer.inputs.append(edge)
                    layer.edges.append((k, edge))
            if t.name not in owner:  # an entry point (graph input, CPU output): first user's
                owner[t.name] = layer
        layer.own += b.unit_constants(unit)
        owner.update({t.name: layer for t in unit.outputs})
        layers.append(layer)
    for name, layer in owner.items():  # outputs, after every input point exists
        k = b.activation(name)
        if k is not None and layer is not None:
            layer.own.append(k)
            layer.outputs.append(k)
            if name not in layer.tensors and name in {t.name for t in layer.unit.outputs}:
                layer.tensors.append(name)
    return b.finish(), layers, b.count


def masks(layers: list[Layer], count: int, method: str) -> list[np.ndarray]:
    """One `ENABLE` vector per layer for `method`."""
    out = []
    for layer in layers:
        if method == "single":
            on = np.zeros(count, np.bool_)
            on[layer.inputs + layer.own] = True
        else:
            on = np.ones(count, np.bool_)
            on[layer.own] = False
            # the MAC layers reading its outputs read them unquantized too (their edges)
            on[[e for other in layers for k, e in other.edges if not on[k]]] = False
        out.append(on)
    return out


# -- flags -------------------------------------------------------------------------------------
