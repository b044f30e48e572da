"""Lowering: one matched float unit + scales -> one typed QOp (docs/fixed-point.md §6-§11).

All float -> integer decisions (weights, biases, multipliers, tables, index maps) are made
here, once; the QOp then carries only integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import GraphError
from compiler.core.ir import const_value, static_shape
from compiler.core.numerics import eval_node
from passes.quantize.patterns import Unit
from passes.quantize.regions import region_table


@dataclass
class UnitIO:
    """The integer view of a unit's tensors.

    Attributes:
        name: Op name (the anchor node's name).
        inputs: int8 tensor names, one per unit input (constants included).
        in_scales: Their scales.
        outputs: int8 output tensor names.
        out_scale: Output scale (all outputs of a unit share it).
        opset: Opset of the float model (for evaluating nodes at build time).
    """

    name: str
    inputs: list[str]
    in_scales: list[float]
    outputs: list[str]
    out_scale: float
    opset: int = 17


def _f64(v: float) -> np.float64:
    return np.float64(v)


def _bounds(unit: Unit, scale: float) -> tuple[int, int]:
    lo, hi = unit.params.get("act", (None, None))
    return fp.clamp_bounds(lo, hi, scale)


def _io(io: UnitIO) -> dict:
    return {"name": io.name, "inputs": tuple(io.inputs), "outputs": tuple(io.outputs)}


def _channel_requant(sx: float, sw: np.ndarray, sy: float) -> tuple[np.ndarray, np.ndarray]:
    m = _f64(sx) * sw.astype(np.float64) / _f64(sy)
    return fp.quantize_multipliers(m)


def _same_pads(node: gs.Node, kernel: list[int], strides: list[int],
               dilations: list[int]) -> list[int]:
    mode = node.attrs.get("auto_pad", "NOTSET")
    if mode == "VALID":
        return [0] * (2 * len(kernel))
    if mode == "NOTSET":
        return [int(p) for p in node.attrs.get("pads", [0] * (2 * len(kernel)))]
    spatial = static_shape(node.inputs[0])[2:]
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin.append(small if mode == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


def lower_conv(unit: Unit, io: UnitIO) -> q.QOp:
    """Conv (+ act) -> QConv with per-channel weights, int32 bias and multipliers."""
    node = unit.anchor
    w = const_value(node.inputs[1])
    b = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    k = int(np.prod(w.shape[1:]))
    wq, sw = fp.quantize_weights(w, node.name,
                                 fp.bias_scale_floor(b, io.in_scales[0], k, node.name))
    bq = fp.quantize_bias(b, io.in_scales[0], sw, k, node.name)
    m0, shift = _channel_requant(io.in_scales[0], sw, io.out_scale)
    kernel = list(w.shape[2:])
    strides = [int(s) for s in node.attrs.get("strides", [1, 1])]
    dilations = [int(d) for d in node.attrs.get("dilations", [1, 1])]
    lo, hi = _bounds(unit, io.out_scale)
    return q.QConv(**_io(io), weight=wq, bias=bq, m0=m0, shift=shift, lo=lo, hi=hi,
                   strides=strides, pads=_same_pads(node, kernel, strides, dilations),
                   dilations=dilations, group=int(node.attrs.get("group", 1)), weight_scale=sw)


def _gemm_weights(unit: Unit) -> tuple[np.ndarray, np.ndarray | None]:
    node = unit.anchor
    b = const_value(node.inputs[1]).astype(np.float64)
    if node.op == "MatMul":
        bias = unit.params.get("bias")
        return b.T, None if bias is None else np.asarray(bias, np.float64)
    w = b if node.attrs.get("transB", 0) else b.T
    w = w * float(node.attrs.get("alpha", 1.0))
    c = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if c is None:
        return w, None
    bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (w.shape[0],))
    return w, bias * float(node.attrs.get("beta", 1.0))


def lower_gemm(unit: Unit, io: UnitIO) -> q.QOp:
    """Gemm/MatMul with a constant right operand -> QGemm/QMatMul (weight [N, K])."""
    w, bias = _gemm_weights(unit)
    name = unit.anchor.name
    floor = fp.bias_scale_floor(bias, io.in_scales[0], w.shape[1], name)
    wq, sw = fp.quantize_weights(w, name, floor)
    bq = fp.quantize_bias(bias, io.in_scales[0], sw, w.shape[1], name)
    m0, shift = _channel_requant(io.in_scales[0], sw, io.out_scale)
    lo, hi = _bounds(unit, io.out_scale)
    cls = q.QMatMul if unit.kind == "matmul" else q.QGemm
    return cls(**_io(io), weight=wq, bias=bq, m0=m0, shift=shift, lo=lo, hi=hi,
               weight_scale=sw)


def lower_add(unit: Unit, io: UnitIO) -> q.QOp:
    """Add/Sub -> QAdd with signed multipliers sharing one shift."""
    sa, sb = io.in_scales
    ma = _f64(sa) / _f64(io.out_scale)
    mb = _f64(sb) / _f64(io.out_scale) * (-1.0 if unit.params.get("sub") else 1.0)
    a, b, s = fp.add_multipliers(float(ma), float(mb))
    lo, hi = _bounds(unit, io.out_scale)
    return q.QAdd(**_io(io), a_mult=a, b_mult=b, shift=s, lo=lo, hi=hi)


def lower_mul(unit: Unit, io: UnitIO) -> q.QOp:
    """Mul -> QMul: requant of the int product."""
    sa, sb = io.in_scales
    m0, s = fp.quantize_multiplier(float(_f64(sa) * _f64(sb) / _f64(io.out_scale)))
    lo, hi = _bounds(unit, io.out_scale)
    return q.QMul(**_io(io), m0=m0, shift=s, lo=lo, hi=hi)


def lower_concat(unit: Unit, io: UnitIO) -> q.QOp:
    """Concat -> QConcat, one multiplier per input (identity when scales match)."""
    pairs = [fp.quantize_multiplier(float(_f64(s) / _f64(io.out_scale))) for s in io.in_scales]
    return q.QConcat(**_io(io), axis=int(unit.anchor.attrs.get("axis", 1)),
                     m0=[p[0] for p in pairs], shift=[p[1] for p in pairs])


def pool_geometry(node: gs.Node) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel, strides, pads incl. ceil_mode end padding, output spatial size)."""
    shape = static_shape(node.inputs[0])
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    strides = [int(s) for s in node.attrs.get("strides", [1] * len(kernel))]
    pads = [int(p) for p in node.attrs.get("pads", [0] * 2 * len(kernel))]
    out = list(static_shape(node.outputs[0])[2:])
    for i, size in enumerate(shape[2:]):
        need = (out[i] - 1) * strides[i] + kernel[i] - (size + pads[i] + pads[i + len(kernel)])
        pads[i + len(kernel)] += max(need, 0)
    return kernel, strides, pads, out


def avgpool_counts(node: gs.Node, opset: int) -> np.ndarray:
    """Divisor per output position [OH, OW], as onnxruntime computes it (measured)."""
    shape = static_shape(node.inputs[0])
    ones = np.ones((1, 1) + tuple(shape[2:]), np.float32)
    probe = gs.Node("AveragePool", f"{node.name}__probe", dict(node.attrs),
                    inputs=[gs.Constant(f"{node.name}__ones", ones)],
                    outputs=[gs.Variable(f"{node.name}__avg", dtype=np.float32)])
    avg = np.asarray(eval_node(probe, opset)[0], np.float64)[0, 0]
    kernel, strides, pads, out = pool_geometry(node)
    valid = np.ones(tuple(out), np.float64)
    for axis in range(2):
        start = np.arange(out[axis]) * strides[axis] - pads[axis]
        stop = np.minimum(start + kernel[axis], shape[2 + axis])
        size = np.maximum(stop - np.maximum(start, 0), 0).astype(np.float64)
        valid = valid * (size.reshape(-1, 1) if axis == 0 else size.reshape(1, -1))
    if np.any(avg <= 0):
        raise GraphError(f"node {node.name!r}: average pool window without inputs")
    return np.rint(valid / avg).astype(np.int64)


def lower_avgpool(unit: Unit, io: UnitIO) -> q.QOp:
    """AveragePool -> QAvgPool with per-position multipliers Sx/(Sy·count)."""
    node = unit.anchor
    kernel, strides, pads, _ = pool_geometry(node)
    counts = avgpool_counts(node, io.opset)
    m = _f64(io.in_scales[0]) / (_f64(io.out_scale) * counts.astype(np.float64))
    m0, shift = fp.quantize_multipliers(m)
    lo, hi = _bounds(unit, io.out_scale)
    return q.QAvgPool(**_io(io), kernel=kernel, strides=strides, pads=pads, m0=m0, shift=shift,
                      lo=lo, hi=hi)


def lower_gap(unit: Unit, io: UnitIO) -> q.QOp:
    """GlobalAveragePool / ReduceMean(2,3) -> QGlobalAvgPool."""
    h, w = unit.anchor.inputs[0].shape[2:]
    m = _f64(io.in_scales[0]) / (_f64(io.out_scale) * _f64(int(h) * int(w)))
    m0, s = fp.quantize_multiplier(float(m))
    lo, hi = _bounds(unit, io.out_scale)
    return q.QGlobalAvgPool(**_io(io), m0=m0, shift=s, lo=lo, hi=hi,
                            keepdims=unit.params.get("keepdims", True))


def lower_maxpool(unit: Unit, io: UnitIO) -> q.QOp:
    """MaxPool -> QMaxPool (attributes only)."""
    a = unit.anchor.attrs
    kernel = [int(k) for k in a["kernel_shape"]]
    return q.QMaxPool(**_io(io), kernel=kernel,
                      strides=[int(s) for s in a.get("strides", [1, 1])],
                      pads=_same_pads(unit.anchor, kernel, list(a.get("strides", [1, 1])),
                                      list(a.get("dilations", [1, 1]))),
                      dilations=[int(d) for d in a.get("dilations", [1, 1])],
                      ceil_mode=int(a.get("ceil_mode", 0)))


def resize_indices(node: gs.Node, opset: int) -> list[np.ndarray | None]:
    """Per-axis source index of every output position, by resizing index ramps."""
    shape = static_shape(node.inputs[0])
    result: list[np.ndarray | None] = []
    for axis, size in enumerate(shape):
        ramp_shape = [1] * len(shape)
        ramp_shape[axis] = size
        ramp = np.broadcast_to(np.arange(size, dtype=np.float32).reshape(ramp_shape), shape)
        probe = gs.Node(node.op, f"{node.name}__probe{axis}", dict(node.attrs),
                        inputs=[gs.Constant(f"{node.name}__ramp{axis}", np.ascontiguousarray(ramp))]
                        + list(node.inputs[1:]),
                        outputs=[gs.Variable(f"{node.name}__idx{axis}", dtype=np.float32)])
        out = np.asarray(eval_node(probe, opset)[0])
        index = tuple(slice(None) if i == axis else 0 for i in range(len(shape)))
        idx = out[index].astype(np.int64)
        result.append(None if np.array_equal(idx, np.arange(size)) else idx)
    return result


def lower_resize(unit: Unit, io: UnitIO) -> q.QOp:
    """Nearest Resize -> QResizeNearest with gather indices per axis."""
    return q.QResizeNearest(**_io(io), indices=resize_indices(unit.anchor, io.opset))


def _const_ints(t: gs.Tensor | None) -> list[int] | None:
    v = const_value(t) if t is not None and t.name else None
    return None if v is None else [int(x) for x in np.ravel(v)]


def move_attrs(node: gs.Node, scale: float) -> dict:
    """All operands of a data-movement node as plain attributes (ONNX semantics)."""
    ins = list(node.inputs) + [None] * 5
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    if node.op == "Reshape":
        return {"shape": _const_ints(ins[1])}
    if node.op == "Flatten":
        return {"axis": int(node.attrs.get("axis", 1))}
    if node.op == "Transpose":
        return {"perm": [int(p) for p in node.attrs.get("perm", range(rank - 1, -1, -1))]}
    if node.op in ("Squeeze", "Unsqueeze"):
        axes = _const_ints(ins[1]) if ins[1] is not None else None
        return {"axes": axes if axes is not None else node.attrs.get("axes")}
    if node.op == "Slice":
        starts, ends = _const_ints(ins[1]), _const_ints(ins[2])
        axes = _const_ints(ins[3]) or list(range(len(starts)))
        return {"starts": starts, "ends": ends, "axes": axes,
                "steps": _const_ints(ins[4]) or [1] * len(starts)}
    if node.op == "Split":
        return {"axis": int(node.attrs.get("axis", 0)), "split": _split_sizes(node, ins[1])}
    if node.op == "Pad":
        value = const_value(ins[2]) if ins[2] is not None and ins[2].name else None
        qv = 0 if value is None else int(fp.quantize_constant(np.ravel(value)[:1], scale)[0])
        return {"pads": _const_ints(ins[1]), "mode": node.attrs.get("mode", "constant"),
                "value": qv}
    raise GraphError(f"node {node.name!r}: {node.op} is not a data-movement op")


def _split_sizes(node: gs.Node, split: gs.Tensor | None) -> list[int]:
    sizes = _const_ints(split) if split is not None else node.attrs.get("split")
    if sizes:
        return [int(s) for s in sizes]
    shape = static_shape(node.inputs[0])
    n = len([o for o in node.outputs if o.name])
    axis = int(node.attrs.get("axis", 0))
    if shape is None:
        raise GraphError(f"node {node.name!r}: Split sizes need a static input shape")
    dim = shape[axis]
    base = math.ceil(dim / n)
    return [min(base, dim - i * base) for i in range(n)]


def lower_move(unit: Unit, io: UnitIO) -> q.QOp:
    """Data movement -> QMove."""
    return q.QMove(**_io(io), op=unit.anchor.op, attrs=move_attrs(unit.anchor, io.in_scales[0]))


def lower_lut(unit: Unit, io: UnitIO) -> q.QOp:
    """Unary function -> QLut (256-entry table)."""
    fn = unit.params["fn"]
    if unit.params.get("region"):
        table = region_table(unit.nodes, unit.inputs[0], unit.outputs[0], io.in_scales[0],
                             io.out_scale, io.opset)
        return q.QLut(**_io(io), table=table, fn=fn)
    table = fp.build_lut(fn, io.in_scales[0], io.out_scale, **unit.params.get("fn_params", {}))
    return q.QLut(**_io(io), table=table, fn=fn)


LOWERINGS: dict[str, Callable[[Unit, UnitIO], q.QOp]] = {
    "conv": lower_conv, "gemm": lower_gemm, "matmul": lower_gemm, "add": lower_add,
    "mul": lower_mul, "concat": lower_concat, "avgpool": lower_avgpool, "gap": lower_gap,
    "maxpool": lower_maxpool, "resize": lower_resize, "move": lower_move, "lut": lower_lut,
}


def lower(unit: Unit, io: UnitIO) -> q.QOp:
    """The QOp for a quantizable unit."""
    return LOWERINGS[unit.kind](unit, io)
