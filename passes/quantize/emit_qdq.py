"""QGraph scales -> `model.qdq.onnx`: the float model with QuantizeLinear/DequantizeLinear.

Every quantized tensor of the QGraph becomes a Q/DQ pair on its float counterpart (same
float32 scale, zero point 0 of its type: int8, or uint8 for a never-negative tensor); ops
with weights (Conv/Gemm/MatMul: the `emit_qdq` hook of their definition in
compiler/core/qops) read DequantizeLinear of the QGraph's own int8 weights / int32 biases
(per output channel) through `weight_inputs`, so other runtimes see exactly our scales. The
arithmetic in between is the runtime's (float32, round half to even): it can differ from
model.quant.onnx by about one LSB.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import GraphError
from compiler.core.fixedpoint import quantize_weights
from compiler.core.ir import Model, is_graph_output
from compiler.core.qops import op_def


def float_name(name: str) -> str:
    """The float-model tensor an int8 QGraph tensor stands for (docs/fixed-point.md §13)."""
    return name[:-3] if name.endswith("__q") else name


class QdqEmitter:
    """Inserts Q/DQ nodes into a copy of the float model (use `emit_qdq`)."""

    def __init__(self, model: Model, graph: q.QGraph) -> None:
        # a shallow copy: weights are shared, never modified (replaced ones are dropped)
        self.model = Model(model.graph.copy(), model.opset, dict(model.metadata))
        self.qg = graph
        self.g = self.model.graph
        self.tensors = self.g.tensors()
        self.nodes = {n.name: n for n in self.g.nodes}

    def dq(self, name: str, values: np.ndarray, scale: np.ndarray | float,
           axis: int | None = None) -> gs.Variable:
        """DequantizeLinear of a constant integer array (int16: onnxruntime's com.microsoft op)."""
        zero = np.zeros(np.shape(scale), values.dtype)
        out = gs.Variable(f"{name}__dq", dtype=np.float32)
        attrs = {"axis": axis} if axis is not None else {}
        domain = "com.microsoft" if values.dtype == np.int16 else None
        self.g.nodes.append(gs.Node("DequantizeLinear", f"{name}/DequantizeLinear", attrs,
                                    domain=domain,
                                    inputs=[gs.Constant(f"{name}__int", values),
                                            gs.Constant(f"{name}__scale",
                                                        np.asarray(scale, np.float32)),
                                            gs.Constant(f"{name}__zp", zero)],
                                    outputs=[out]))
        return out

    def qdq_activation(self, name: str, scale: float, dtype: str = "int8") -> None:
        """Q/DQ on a float tensor (zero point 0 of `dtype`).

        Consumers (and a graph output) read the DQ value.
        """
        t = self.tensors.get(name)
        if t is None:
            raise GraphError(f"qdq: float model has no tensor {name!r}")
        users = list(t.outputs)
        s, zp = (gs.Constant(f"{name}__s", np.array(scale, np.float32)),
                 gs.Constant(f"{name}__z", np.array(0, np.dtype(dtype))))
        qt = gs.Variable(f"{name}__qdq_q", dtype=np.dtype(dtype))
        dqt = gs.Variable(f"{name}__qdq", dtype=np.float32, shape=t.shape)
        # int16 Q/DQ: onnxruntime's com.microsoft ops (ai.onnx has them only from opset 21)
        domain = "com.microsoft" if fp.is_wide(dtype) else None
        self.g.nodes.append(gs.Node("QuantizeLinear", f"{name}/QuantizeLinear",
                                    inputs=[t, s, zp], outputs=[qt], domain=domain))
        self.g.nodes.append(gs.Node("DequantizeLinear", f"{name}/DequantizeLinear",
                                    inputs=[qt, s, zp], outputs=[dqt], domain=domain))
        for node in users:
            node.inputs = [dqt if x is t else x for x in node.inputs]
        if is_graph_output(self.g, t):
            t.name, dqt.name = f"{name}__float", name
            self.g.outputs = [dqt if x is t else x for x in self.g.outputs]

    def weight_inputs(self, op: q.QConv | q.QGemm) -> tuple[gs.Node, np.ndarray, gs.Tensor]:
        """(float anchor node, weight scales, DQ of the int32 bias) of a weighted op."""
        node = self.nodes.get(op.name)
        if node is None:
            raise GraphError(f"qdq: float model has no node {op.name!r}")
        sx = self.qg.tensor(op.inputs[0]).scale
        sw = self._weight_scale(node, op)
        bias = self.dq(f"{op.name}_bias", op.bias, (np.float64(sx) * sw).astype(np.float32), 0)
        return node, sw, bias

    def _weight_scale(self, node: gs.Node, op: q.QConv | q.QGemm) -> np.ndarray:
        w = np.asarray(node.inputs[1].values)  # quantize_weights widens block by block
        if node.op == "Gemm":
            w = w if node.attrs.get("transB", 0) else w.T
            alpha = float(node.attrs.get("alpha", 1.0))
            w = w if alpha == 1.0 else w.astype(np.float64) * alpha
        elif node.op == "MatMul":
            w = w.T
        wq, sw = quantize_weights(w, node.name, op.weight_scale, op.weight.dtype.name)
        if not np.array_equal(wq, op.weight):
            raise GraphError(f"qdq: weights of {node.name!r} differ from the QGraph's")
        return sw

    def matmul_bias(self, node: gs.Node, bias: gs.Tensor) -> None:
        """Point the fused bias Add after a MatMul at the dequantized int32 bias."""
        user = node.outputs[0].outputs[0] if len(node.outputs[0].outputs) == 1 else None
        if user is not None and user.op == "Add":
            user.inputs = [bias if isinstance(x, gs.Constant) else x for x in user.inputs]

    def run(self) -> Model:
        """Insert everything and return the QDQ model."""
        for op in self.qg.ops:
            hook = op_def(op.kind).emit_qdq
            if hook is not None:  # ops with float weights replace them by DQ of the int8 data
                hook(self, op)
        for name, t in self.qg.tensors.items():
            if name.endswith((q.SIGNED_SUFFIX, q.NARROW_SUFFIX)):
                continue  # an int8 copy of a uint8/int16 tensor (§15, §16): consumers read its DQ
            if t.scale is None:
                continue  # an integer tensor of the float model itself (a uint8 image input)
            if t.is_quantized and t.data is None:
                self.qdq_activation(float_name(name), t.scale, t.dtype)
            elif t.is_quantized:
                self._const_operand(float_name(name), t)
        self.g.cleanup().toposort()
        self.model.metadata["npuc.qdq"] = "1"
        return self.model

    def _const_operand(self, name: str, t: q.QTensor) -> None:
        const = self.tensors.get(name)
        if const is None:
            return
        dq = self.dq(name, t.data, np.array(t.scale, np.float32))
        for node in list(const.outputs):
            node.inputs = [dq if x is const else x for x in node.inputs]


def emit_qdq(model: Model, graph: q.QGraph) -> Model:
    """The QDQ model of a QGraph.

    `model` is the canonical float model the QGraph was built from; the result has Q/DQ at
    every int8 tensor and dequantized int8 weights / int32 biases.
    """
    return QdqEmitter(model, graph).run()
