"""QGraph -> `model.quant.onnx`: the fixed-point arithmetic in standard ONNX ops, exactly.

Σ x·W as float32 Conv/MatMul over input ranges whose partial sums are float32-exact
integers (docs/fixed-point.md §11), else ConvInteger/MatMulInteger (int8 activations × int8
weights -> int32; uint8 and int16 activations as sums of int8 parts,
`IntEmitter.signed_parts`); the requantization of §3 in float64 where
`fixedpoint.requant_float_ok` proves it, else in int64 with the floor shift as
`(v - Mod(v, 2^s)) / 2^s`; Clip, Cast, and Gather for tables and nearest resizing. Each
op's nodes come from the `emit_int` of its definition (compiler/core/qops); this module holds
the emitter and its helpers. Every QGraph array becomes the initializer named by its key and
is read by some node as-is (reshapes, casts and the 2^s divisors are computed in the graph,
where onnxruntime folds them at load), so `QGraph.from_model` recovers the QGraph exactly.
"""
from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import GraphError
from compiler.core.io import INTERNAL_OPSET
from compiler.core.ir import Model
from compiler.core.qops import op_def
from compiler.core.qops.arith import channel_l1, float_chunks


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

    def cast_into(self, x: gs.Tensor, out: gs.Tensor) -> gs.Tensor:
        """Cast `x` to the type of the existing tensor `out`, writing `out`."""
        from onnx.helper import np_dtype_to_tensor_dtype
        return self.node("Cast", [x], out=out, to=np_dtype_to_tensor_dtype(np.dtype(out.dtype)))

    def signed_parts(self, x: gs.Tensor) -> list[tuple[int, gs.Tensor]]:
        """The input as Σ factor·part, every part int8 in [-128, 127] (docs/fixed-point.md §11).

        int8: x itself. uint8: 128·h + l, h ∈ {0, 1}, l ∈ [0, 127]. int16: 256·hi + 128·h +
        l with hi = floor(x / 256) and the low byte split as a uint8. Why not feed uint8 to
        the integer ops: onnxruntime's u8×s8 kernels on x86 without VNNI (AVX2, AVX-512BW)
        add adjacent products in int16 with saturation (vpmaddubsw), so 2·255·127 > 2^15 is
        clipped and the sum is wrong; its s8×s8 kernels are exact for weights in ±127.
        """
        if x.dtype is not None and np.dtype(x.dtype) == np.int8:
            return [(1, x)]
        x32 = self.cast(x, np.int32)
        parts = []
        if fp.is_wide(x.dtype):
            low = self.node("Mod", [x32, self.scalar(256, np.int32)], fmod=0)
            high = self.node("Div", [self.node("Sub", [x32, low]), self.scalar(256, np.int32)])
            parts.append((256, self.cast(high, np.int8)))
            x32 = low
        low = self.node("Mod", [x32, self.scalar(128, np.int32)], fmod=0)
        high = self.node("Div", [self.node("Sub", [x32, low]), self.scalar(128, np.int32)])
        return [*parts, (128, self.cast(high, np.int8)), (1, self.cast(low, np.int8))]

    def integer_mac(self, x: gs.Tensor, mac8) -> gs.Tensor:
        """int64 Σ x·w of an integer op on an int8, uint8 or int16 input (§11, §16).

        `mac8(t)` emits the 8-bit integer op (ConvInteger/MatMulInteger, int32 out) on an
        int8 input `t`. Other inputs run it once per part of `signed_parts` (zero padding
        pads every part with 0, so the parts' sums add up exactly) and combine the exact
        int32 sums in int64: Σ factor·acc_part.
        """
        acc = None
        for factor, part in self.signed_parts(x):
            term = self.cast(mac8(part), np.int64)
            if factor != 1:
                term = self.node("Mul", [term, self.scalar(factor, np.int64)])
            acc = term if acc is None else self.node("Add", [acc, term])
        return acc

    def weighted_layer(self, op, x: gs.Tensor, out: gs.Tensor, weight: gs.Tensor, mac8,
                       mac_float, param, input_l1) -> gs.Tensor:
        """§11 conv/gemm `y = requant(Σ x·W + B)` into `out`, in the fastest exact form.

        * Σ x·W, per byte of the weights (`weight_parts`: int8 weights are one part, int16
          weights two, §17), each as:
          in float32 on `Cast<float>(x)` when the input indices split into a few
          ranges (`float_chunks`) over which every partial sum is an integer below 2^24 in
          magnitude: each product and partial sum is then a float32, so the float op returns
          the exact sum in any summation order (several times faster than onnxruntime's
          integer kernels); the ranges' sums are added exactly in float64 / int64. Else
          `integer_mac` (int64).
        * requant: in float64 (`requant_float`) when `fp.requant_float_ok` holds for every
          channel given the accumulator bound; else the int64 formula of §3.

        Args:
            op: The QConv/QGemm/QMatMul (weight, bias, m0, shift, lo, hi).
            x: Its input.
            out: Its output.
            weight: The weight tensor in the layout the ops read (the op's int8 or int16
                QGraph array, or a transpose of it).
            mac8: `(t, w)` -> the 8-bit integer op on an int8 tensor `t` and int8 weight `w`.
            mac_float: `(t, k0, k1, w)` -> the float32 op on a float32 tensor `t` with the
                weight `w` (as_float), over the input indices [k0, k1) only.
            param: QGraph array key -> tensor broadcasting along the channel axis.
            input_l1: int weight [C_out, ...] -> [C_out, K] Σ|w| per output channel and
                input index (`float_chunks`).
        """
        xmax = fp.max_abs(x.dtype)
        bias_bound = channel_l1(op.weight) * xmax + np.abs(np.asarray(op.bias, np.int64))
        fast = fp.requant_float_ok(op.m0, op.shift, op.lo, op.hi, bias_bound).all()
        wide = np.float64 if fast else np.int64  # |acc| < 2^53: exact either way
        mac = None
        for factor, w, values in self.weight_parts(op.weight, weight):
            chunks = float_chunks(input_l1(values), xmax)
            if chunks is not None:
                xf = self.cast(x, np.float32)
                term = None
                for k0, k1 in chunks:  # Add, not Sum: Sum has no int64 kernel
                    part = self.cast(mac_float(xf, k0, k1, w), wide)
                    term = part if term is None else self.node("Add", [term, part])
            else:
                term = self.integer_mac(x, lambda t, w=w: mac8(t, w))
                term = self.cast(term, np.float64) if fast else term
            if factor != 1:
                term = self.node("Mul", [term, self.scalar(factor, wide)])
            mac = term if mac is None else self.node("Add", [mac, term])
        acc = self.node("Add", [mac, self.cast(param(f"{op.name}::bias"), wide)])
        requant = self.requant_float if fast else self.requant
        return requant(acc, param(f"{op.name}::m0"), param(f"{op.name}::shift"), op.lo, op.hi,
                       out)

    def weight_parts(self, values: np.ndarray, weight: gs.Tensor
                     ) -> list[tuple[int, gs.Tensor, np.ndarray]]:
        """`(factor, tensor, values)` with W = Σ factor·part, every part int8 (§11, §17).

        int8 weights: the weight itself. int16 weights: `255·hi + lo`, both digits in
        [-127, 127] (`fp.split_weight16`), computed in the graph from the stored int16
        initializer (`lo = Mod(w + 127, 255) - 127`, `hi = (w - lo) / 255`: exact, folded by
        onnxruntime at load), so the QGraph array stays recoverable as is.
        """
        if values.dtype != np.int16:
            return [(1, weight, values)]
        hi, lo = fp.split_weight16(values)
        radix = fp.WEIGHT16_RADIX
        w32 = self.cast(weight, np.int32)
        shifted = self.node("Add", [w32, self.scalar(127, np.int32)])
        low = self.node("Sub", [self.node("Mod", [shifted, self.scalar(radix, np.int32)],
                                          fmod=0), self.scalar(127, np.int32)])
        high = self.node("Div", [self.node("Sub", [w32, low]), self.scalar(radix, np.int32)])
        return [(radix, self.cast(high, np.int8), hi), (1, self.cast(low, np.int8), lo)]

    def requant_float(self, acc: gs.Tensor, m0, shift, lo: int, hi: int,
                      out: gs.Tensor) -> gs.Tensor:
        """§3 in float64 for a float64 `acc` (only where `fp.requant_float_ok` proves it exact).

        `Cast<T>(Clip(Floor(acc·M + 1/2), lo, hi))` with `M = M0 / 2^s`: for stored arrays
        computed in the graph (a power-of-two division, exact, folded at load); for the ints
        of scalar ops a float64 constant (`ldexp`, exact).
        """
        if isinstance(m0, (int, np.integer)) and isinstance(shift, (int, np.integer)):
            mult = self.scalar(np.ldexp(float(m0), -int(shift)), np.float64)
        else:
            ones = self.scalar(1, np.uint64)
            pow2 = self.node("BitShift", [ones, self.cast(shift, np.uint64)], direction="LEFT")
            mult = self.node("Div", [self.cast(m0, np.float64), self.cast(pow2, np.float64)])
        v = self.node("Add", [self.node("Mul", [acc, mult]), self.scalar(0.5, np.float64)])
        clipped = self.node("Clip", [self.node("Floor", [v]), self.scalar(lo, np.float64),
                                     self.scalar(hi, np.float64)])
        return self.cast_into(clipped, out)

    def requant_any(self, acc_of, m0, shift, lo: int, hi: int, out: gs.Tensor,
                    bound, m0_values=None, shift_values=None) -> gs.Tensor:
        """§3 on `acc_of(dtype)`, the accumulator built in float64 or int64.

        float64 where `fp.requant_float_ok` proves it for `bound` (the largest |acc| any
        input gives) and `bound < 2^53`, so that building the accumulator (Add, Mul, Concat,
        pooling) in float64 is exact too. `m0_values`/`shift_values`: the arrays behind
        tensor `m0`/`shift` (default: `m0`, `shift` themselves, ints).
        """
        m0v = m0 if m0_values is None else m0_values
        sv = shift if shift_values is None else shift_values
        bound = np.asarray(bound, np.float64)
        if bound.max() < fp.FLOAT64_EXACT and fp.requant_float_ok(m0v, sv, lo, hi, bound).all():
            return self.requant_float(acc_of(np.float64), m0, shift, lo, hi, out)
        return self.requant(acc_of(np.int64), m0, shift, lo, hi, out)

    def as_float(self, weight: gs.Tensor) -> gs.Tensor:
        """`Cast<float>(weight)`, one node per weight however many ranges read it."""
        key = f"float:{weight.name}"
        if key not in self.vars:
            self.vars[key] = self.cast(weight, np.float32)
        return self.vars[key]

    def slice(self, x: gs.Tensor, start: int, stop: int, axis: int) -> gs.Tensor:
        """x[start:stop] along `axis` (ONNX Slice)."""
        return self.node("Slice", [x, self.scalar([start], np.int64),
                                   self.scalar([stop], np.int64), self.scalar([axis], np.int64)],
                         dtype=x.dtype)

    def channel(self, key: str, shape: list[int]) -> gs.Tensor:
        """QGraph array reshaped for broadcasting (folded by onnxruntime)."""
        return self.node("Reshape", [self.array(key), self.scalar(shape, np.int64)])

    def requant(self, acc: gs.Tensor, m0, shift, lo: int, hi: int,
                out: gs.Tensor) -> gs.Tensor:
        """§3: clamp(floor((acc·M0 + 2^(s-1)) / 2^s), lo, hi) in int64, then Cast.

        The Cast is to the output's type (`out.dtype`: int8 or uint8, §15).
        """
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
        from onnx.helper import np_dtype_to_tensor_dtype
        if out.dtype is None:
            raise GraphError(f"emit: requantized tensor {out.name!r} has no type")
        return self.node("Cast", [clipped], out=out,
                         to=np_dtype_to_tensor_dtype(np.dtype(out.dtype)))

    # -- ops ---------------------------------------------------------------------------------
    def emit(self, op: q.QOp) -> None:
        """Emit one QOp through its definition's `emit_int` (compiler/core/qops)."""
        ins = [self.tensor(n) for n in op.inputs]
        outs = [self.tensor(n) for n in op.outputs]
        op_def(op.kind).emit_int(self, op, ins, outs)

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
