"""QGraph -> `model.quant.onnx`: the fixed-point arithmetic in standard ONNX integer ops.

ConvInteger/MatMulInteger (int8 × int8 -> int32), int64 Mul/Add, the floor shift of
docs/fixed-point.md §3 as `(v - Mod(v, 2^s)) / 2^s`, Clip, Cast, and Gather for tables and
nearest resizing. Every QGraph array becomes the initializer named by its key and is read
by some node as-is (reshapes and the 2^s divisors are computed in the graph, where
onnxruntime folds them at load), so `QGraph.from_model` recovers the QGraph exactly.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import qgraph as q
from compiler.core.errors import GraphError
from compiler.core.io import INTERNAL_OPSET
from compiler.core.ir import Model
from passes.quantize.cpu import partition_nodes

IDENTITY = (1 << 30, 30)


class IntEmitter:
    """Builds the graphsurgeon graph of one QGraph (use `emit_int`)."""

    def __init__(self, graph: q.QGraph) -> None:
        self.qg = graph
        self.desc, self.arrays = graph.to_json()
        self.consts: dict[str, gs.Constant] = {}
        self.vars: dict[str, gs.Tensor] = {}
        self.nodes: list[gs.Node] = []
        self.count = 0

    # -- tensors -----------------------------------------------------------------------------
    def array(self, key: str) -> gs.Constant:
        """The initializer holding QGraph array `key`, unchanged."""
        if key not in self.consts:
            if key not in self.arrays:
                raise GraphError(f"emit: no QGraph array {key!r}")
            self.consts[key] = gs.Constant(key, np.asarray(self.arrays[key]))
        return self.consts[key]

    def scalar(self, value, dtype) -> gs.Constant:
        """A private scalar (or small) constant."""
        self.count += 1
        return gs.Constant(f"npuc_c{self.count}", np.asarray(value, dtype=dtype))

    def tensor(self, name: str) -> gs.Tensor:
        """The graph tensor for QGraph tensor `name` (typed from the QGraph)."""
        if name not in self.vars:
            t = self.qg.tensors.get(name)
            if t is not None and t.data is not None:
                self.vars[name] = self.array(f"{name}::data")
            elif t is not None:
                shape = [None if d < 0 else d for d in t.shape] if t.shape else None
                self.vars[name] = gs.Variable(name, dtype=np.dtype(t.dtype), shape=shape)
            else:
                self.vars[name] = gs.Variable(name)
        return self.vars[name]

    def tmp(self, hint: str, dtype=None) -> gs.Variable:
        """A fresh intermediate tensor."""
        self.count += 1
        return gs.Variable(f"{hint}/t{self.count}", dtype=dtype)

    def node(self, op: str, inputs: list, out: gs.Tensor | None = None, dtype=None,
             **attrs) -> gs.Tensor:
        """Append a node and return its (single) output."""
        out = out if out is not None else self.tmp(op.lower(), dtype)
        self.nodes.append(gs.Node(op, f"{out.name}/{op}", attrs, inputs=inputs, outputs=[out]))
        return out

    # -- arithmetic --------------------------------------------------------------------------
    def cast(self, x: gs.Tensor, dtype) -> gs.Tensor:
        """Cast to a numpy dtype."""
        from onnx.helper import np_dtype_to_tensor_dtype
        return self.node("Cast", [x], dtype=dtype, to=np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def channel(self, key: str, shape: list[int]) -> gs.Tensor:
        """QGraph array reshaped for broadcasting (folded by onnxruntime)."""
        return self.node("Reshape", [self.array(key), self.scalar(shape, np.int64)])

    def requant(self, acc: gs.Tensor, m0, shift, lo: int, hi: int,
                out: gs.Tensor) -> gs.Tensor:
        """§3: clamp(floor((acc·M0 + 2^(s-1)) / 2^s), lo, hi) -> int8, all int64."""
        if isinstance(shift, int):
            div, half = self.scalar(1 << shift, np.int64), self.scalar(1 << (shift - 1), np.int64)
        else:
            ones = self.scalar(1, np.uint64)
            pow2 = self.node("BitShift", [ones, self.cast(shift, np.uint64)], direction="LEFT")
            div = self.cast(pow2, np.int64)
            half = self.node("Div", [div, self.scalar(2, np.int64)])
        v = acc
        if not (isinstance(m0, int) and m0 == 1):
            v = self.node("Mul", [v, self.scalar(m0, np.int64) if isinstance(m0, int) else m0])
        v = self.node("Add", [v, half])
        rem = self.node("Mod", [v, div], fmod=0)
        floor = self.node("Div", [self.node("Sub", [v, rem]), div])
        clipped = self.node("Clip", [floor, self.scalar(lo, np.int64), self.scalar(hi, np.int64)])
        from onnx import TensorProto
        return self.node("Cast", [clipped], out=out, to=TensorProto.INT8)

    # -- ops ---------------------------------------------------------------------------------
    def emit(self, op: q.QOp) -> None:
        """Emit one QOp."""
        ins = [self.tensor(n) for n in op.inputs]
        outs = [self.tensor(n) for n in op.outputs]
        handler = getattr(self, f"emit_{op.kind[1:].lower()}", None)
        if handler is None:
            raise GraphError(f"emit: no ONNX lowering for {op.kind}")
        handler(op, ins, outs)

    def emit_quantize(self, op: q.QQuantize, ins, outs) -> None:
        """§4."""
        v = self.node("Mul", [ins[0], self.scalar(op.inv_scale, np.float32)])
        v = self.node("Floor", [self.node("Add", [v, self.scalar(0.5, np.float32)])])
        v = self.node("Clip", [v, self.scalar(-128, np.float32), self.scalar(127, np.float32)])
        from onnx import TensorProto
        self.node("Cast", [v], out=outs[0], to=TensorProto.INT8)

    def emit_dequantize(self, op: q.QDequantize, ins, outs) -> None:
        """§5."""
        self.node("Mul", [self.cast(ins[0], np.float32), self.scalar(op.scale, np.float32)],
                  out=outs[0])

    def emit_conv(self, op: q.QConv, ins, outs) -> None:
        """§11 conv: ConvInteger + bias + per-channel requant."""
        acc = self.node("ConvInteger", [ins[0], self.array(f"{op.name}::weight")],
                        dtype=np.int32, strides=list(op.strides), pads=list(op.pads),
                        dilations=list(op.dilations), group=op.group,
                        kernel_shape=list(op.weight.shape[2:]))
        shape = [1, -1, 1, 1]
        bias = self.cast(self.channel(f"{op.name}::bias", shape), np.int64)
        acc = self.node("Add", [self.cast(acc, np.int64), bias])
        self.requant(acc, self.channel(f"{op.name}::m0", shape),
                     self.channel(f"{op.name}::shift", shape), op.lo, op.hi, outs[0])

    def emit_gemm(self, op: q.QGemm, ins, outs) -> None:
        """§11 gemm: MatMulInteger with the transposed weight (folded at load)."""
        w = self.node("Transpose", [self.array(f"{op.name}::weight")], perm=[1, 0])
        acc = self.node("MatMulInteger", [ins[0], w], dtype=np.int32)
        bias = self.cast(self.array(f"{op.name}::bias"), np.int64)
        acc = self.node("Add", [self.cast(acc, np.int64), bias])
        self.requant(acc, self.array(f"{op.name}::m0"), self.array(f"{op.name}::shift"),
                     op.lo, op.hi, outs[0])

    emit_matmul = emit_gemm

    def emit_add(self, op: q.QAdd, ins, outs) -> None:
        """§6."""
        a = self.node("Mul", [self.cast(ins[0], np.int64), self.scalar(op.a_mult, np.int64)])
        b = self.node("Mul", [self.cast(ins[1], np.int64), self.scalar(op.b_mult, np.int64)])
        self.requant(self.node("Add", [a, b]), 1, op.shift, op.lo, op.hi, outs[0])

    def emit_mul(self, op: q.QMul, ins, outs) -> None:
        """§7 mul."""
        acc = self.node("Mul", [self.cast(ins[0], np.int64), self.cast(ins[1], np.int64)])
        self.requant(acc, op.m0, op.shift, op.lo, op.hi, outs[0])

    def emit_concat(self, op: q.QConcat, ins, outs) -> None:
        """§7 concat: identity inputs pass through, others are requantized."""
        parts = []
        for x, m0, s in zip(ins, op.m0, op.shift, strict=True):
            if (m0, s) == IDENTITY:
                parts.append(x)
            else:
                parts.append(self.requant(self.cast(x, np.int64), m0, s, -128, 127,
                                          self.tmp("concat_in", np.int8)))
        self.node("Concat", parts, out=outs[0], axis=op.axis)

    def emit_avgpool(self, op: q.QAvgPool, ins, outs) -> None:
        """§8 avg pool: window sums as a depthwise ConvInteger with an all-ones kernel."""
        channels = self.qg.tensor(op.inputs[0]).shape[1]
        ones = self.scalar(np.ones((channels, 1, *op.kernel)), np.int8)
        acc = self.node("ConvInteger", [ins[0], ones], dtype=np.int32, strides=list(op.strides),
                        pads=list(op.pads), group=channels, kernel_shape=list(op.kernel))
        self.requant(self.cast(acc, np.int64), self.array(f"{op.name}::m0"),
                     self.array(f"{op.name}::shift"), op.lo, op.hi, outs[0])

    def emit_globalavgpool(self, op: q.QGlobalAvgPool, ins, outs) -> None:
        """§8 global pool: int64 ReduceSum."""
        acc = self.node("ReduceSum", [self.cast(ins[0], np.int64), self.scalar([2, 3], np.int64)],
                        keepdims=int(op.keepdims))
        self.requant(acc, op.m0, op.shift, op.lo, op.hi, outs[0])

    def emit_maxpool(self, op: q.QMaxPool, ins, outs) -> None:
        """§8 max pool on int8."""
        self.node("MaxPool", [ins[0]], out=outs[0], kernel_shape=list(op.kernel),
                  strides=list(op.strides), pads=list(op.pads), dilations=list(op.dilations),
                  ceil_mode=op.ceil_mode)

    def emit_resizenearest(self, op: q.QResizeNearest, ins, outs) -> None:
        """§9 resize: one Gather per resized axis."""
        x = ins[0]
        axes = [a for a, idx in enumerate(op.indices) if idx is not None]
        for i, axis in enumerate(axes):
            target = outs[0] if i == len(axes) - 1 else None
            x = self.node("Gather", [x, self.array(f"{op.name}::indices::{axis}")], out=target,
                          dtype=np.int8, axis=axis)
        if not axes:
            self.node("Identity", [x], out=outs[0])

    def emit_move(self, op: q.QMove, ins, outs) -> None:
        """§9 data movement."""
        a, x = op.attrs, ins[0]
        ints = lambda v: self.scalar(list(v), np.int64)  # noqa: E731
        if op.op == "Reshape":
            self.node("Reshape", [x, ints(a["shape"])], out=outs[0])
        elif op.op == "Flatten":
            self.node("Flatten", [x], out=outs[0], axis=a["axis"])
        elif op.op == "Transpose":
            self.node("Transpose", [x], out=outs[0], perm=list(a["perm"]))
        elif op.op in ("Squeeze", "Unsqueeze"):
            self.node(op.op, [x] + ([ints(a["axes"])] if a["axes"] is not None else []),
                      out=outs[0])
        elif op.op == "Slice":
            self.node("Slice", [x] + [ints(a[k]) for k in ("starts", "ends", "axes", "steps")],
                      out=outs[0])
        elif op.op == "Split":
            self.nodes.append(gs.Node("Split", f"{op.name}/Split", {"axis": a["axis"]},
                                      inputs=[x, ints(a["split"])], outputs=outs))
        elif op.op == "Pad":
            self.node("Pad", [x, ints(a["pads"]), self.scalar(a["value"], np.int8)],
                      out=outs[0], mode=a["mode"])
        else:
            raise GraphError(f"emit: unknown move {op.op!r}")

    def emit_lut(self, op: q.QLut, ins, outs) -> None:
        """§10: table[x + 128] via Gather."""
        idx = self.node("Add", [self.cast(ins[0], np.int64), self.scalar(128, np.int64)])
        self.node("Gather", [self.array(f"{op.name}::table"), idx], out=outs[0], axis=0)

    def emit_cpupartition(self, op: q.QCpuPartition, ins, outs) -> None:
        """§12: the float nodes, inlined."""
        def tensor(name: str) -> gs.Tensor:
            return self.array(name) if name in op.constants else self.tensor(name)

        self.nodes.extend(partition_nodes(op, tensor))

    def model(self, expose: list[str] | None = None) -> Model:
        """The integer ONNX model (optionally exposing internal tensors as outputs)."""
        for op in self.qg.ops:
            self.emit(op)
        unused = sorted(set(self.arrays) - set(self.consts))
        if unused:
            raise GraphError(f"emit: QGraph arrays not emitted: {unused[:5]}")
        outputs = [self.tensor(n) for n in self.qg.outputs]
        outputs += [self.tensor(n) for n in expose or [] if n not in self.qg.outputs]
        graph = gs.Graph(nodes=self.nodes, inputs=[self.tensor(n) for n in self.qg.inputs],
                         outputs=outputs, name="npuc_quant", opset=INTERNAL_OPSET)
        metadata = {q.METADATA_KEY: json.dumps(self.desc, separators=(",", ":"))}
        return Model(graph, INTERNAL_OPSET, metadata)


def emit_int(graph: q.QGraph, *, expose: list[str] | None = None) -> Model:
    """The integer ONNX model of a QGraph.

    Args:
        graph: The quantized graph.
        expose: Extra QGraph tensors to add as graph outputs (bit-exactness tests).
    """
    return IntEmitter(graph).model(expose)
