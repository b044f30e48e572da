"""Constant folding in numpy for the ops where numpy is exactly ONNX: layout and shape arithmetic.

Exporters compute padding, Reshape targets and Resize sizes with chains of Shape, Gather,
Cast, Sub, Div, Ceil, Concat, Slice, ... on a handful of integers (TF-style "same"
padding alone is about ten nodes per convolution). Running each in its own onnxruntime
session cost about 5 ms apiece and, for the first one, about 20 MB of resident memory
(as much as a small model's weights); folding them here costs neither.

A rule returns the ONNX result bit for bit or raises (`ValueError`, `TypeError`,
`IndexError`, `ZeroDivisionError`), and the caller then asks onnxruntime, which gives the
proper error. Only the semantics numpy shares exactly are covered: IEEE float32/float64
elementwise arithmetic, integer arithmetic with ONNX's truncating division, data
movement. Transcendental ops, reductions and float ranges stay with onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_NUMERIC = (np.bool_, np.integer, np.floating)


def numpy_value(node, opset: int) -> list[np.ndarray] | None:
    """The output of `node` (all inputs constant) computed in numpy, or None to run it.

    A returned array that shares memory with an input is a read-only view.
    """
    rule = _RULES.get(node.op)
    if rule is None or opset < 14 or node.domain not in (None, "", "ai.onnx") \
            or len(node.outputs) != 1:
        return None
    args = [np.asarray(t.values) if t.name else None for t in node.inputs]
    if not any(a is not None for a in args) or not all(
            a is None or issubclass(a.dtype.type, _NUMERIC) for a in args):
        return None
    try:
        with np.errstate(all="raise"):  # overflow or 0/0: let onnxruntime decide
            out = np.asarray(rule(node.attrs, *args))
    except (ValueError, TypeError, IndexError, ZeroDivisionError, FloatingPointError):
        return None
    if any(a is not None and np.may_share_memory(out, a) for a in args):
        out = out.view()  # the input's memory, which must stay unchanged
        out.flags.writeable = False
    return [out]


# -- layout ------------------------------------------------------------------------------

def _reshape(attrs: dict, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    dims = [int(d) for d in shape.reshape(-1)]
    if not attrs.get("allowzero", 0):  # 0 copies the input's dim at that position
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(attrs: dict, x: np.ndarray) -> np.ndarray:
    axis = int(attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        raise ValueError(f"Flatten axis {axis} out of range")
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _squeeze(attrs: dict, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) for a in axes.reshape(-1)))


def _unsqueeze(attrs: dict, x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return np.expand_dims(x, tuple(int(a) for a in axes.reshape(-1)))


def _transpose(attrs: dict, x: np.ndarray) -> np.ndarray:
    perm = attrs.get("perm")
    return np.ascontiguousarray(np.transpose(x, [int(p) for p in perm] if perm else None))


def _concat(attrs: dict, *xs: np.ndarray) -> np.ndarray:
    if any(x is None or x.dtype != xs[0].dtype for x in xs):
        raise TypeError("Concat inputs of different types")
    return np.concatenate(xs, axis=int(attrs["axis"]))


def _gather(attrs: dict, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    if not issubclass(indices.dtype.type, np.integer):
        raise TypeError("Gather indices must be integers")
    axis = int(attrs.get("axis", 0))
    dim = x.shape[axis]
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise IndexError("Gather index out of range")
    return np.take(x, np.where(indices < 0, indices + dim, indices), axis=axis)


def _slice(attrs: dict, x: np.ndarray, starts: np.ndarray, ends: np.ndarray,
           axes: np.ndarray | None = None, steps: np.ndarray | None = None) -> np.ndarray:
    starts, ends = starts.reshape(-1).tolist(), ends.reshape(-1).tolist()
    axes = list(range(len(starts))) if axes is None else axes.reshape(-1).tolist()
    steps = [1] * len(starts) if steps is None else steps.reshape(-1).tolist()
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
        raise ValueError("Slice starts/ends/axes/steps disagree")
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis + x.ndim if axis < 0 else axis
        index[axis] = _slice_axis(start, end, step, x.shape[axis])
    return x[tuple(index)]


def _slice_axis(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice bounds on one axis (negative = from the end, then clamped) as a slice."""
    if step == 0:
        raise ValueError("Slice step 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end == -1 else end, step)  # -1: through index 0


def _constant_of_shape(attrs: dict, shape: np.ndarray) -> np.ndarray:
    value = attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value.values).reshape(-1)
    dims = [int(d) for d in shape.reshape(-1)]
    if any(d < 0 for d in dims):
        raise ValueError("ConstantOfShape with a negative dim")
    return np.full(dims, fill[0], fill.dtype)


def _expand(attrs: dict, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    dims = np.broadcast_shapes(x.shape, tuple(int(d) for d in shape.reshape(-1)))
    return np.array(np.broadcast_to(x, dims))  # a real array: later folds index it


def _int_range(attrs: dict, start: np.ndarray, limit: np.ndarray, delta: np.ndarray
               ) -> np.ndarray:
    if not issubclass(start.dtype.type, np.integer):  # float ranges accumulate differently
        raise TypeError("only integer Range folds in numpy")
    return np.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


# -- arithmetic --------------------------------------------------------------------------

def _same_type(fn: Callable) -> Callable:
    """An ONNX op whose inputs share one type (no numpy promotion) and keep it."""
    def rule(attrs: dict, *xs: np.ndarray) -> np.ndarray:
        if any(x is None or x.dtype != xs[0].dtype for x in xs):
            raise TypeError("inputs of different types")
        out = np.asarray(fn(*xs))
        if out.dtype != xs[0].dtype and out.dtype != np.bool_:
            raise TypeError("numpy changed the type")
        return out
    return rule


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if issubclass(a.dtype.type, np.floating):
        return np.divide(a, b)
    if np.any(b == 0):
        raise ZeroDivisionError("integer Div by zero")
    quotient = np.floor_divide(a, b)  # ONNX (C) integer division truncates toward zero
    return quotient + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(a.dtype)


def _clip(attrs: dict, x: np.ndarray, lo: np.ndarray | None = None,
          hi: np.ndarray | None = None) -> np.ndarray:
    for bound in (lo, hi):
        if bound is not None and bound.dtype != x.dtype:
            raise TypeError("Clip bounds of another type")
    if issubclass(x.dtype.type, np.floating) and np.isnan(x).any():
        raise ValueError("NaN propagation through Clip is left to onnxruntime")
    out = x if lo is None else np.maximum(x, lo)
    return out if hi is None else np.minimum(out, hi)


def _extreme(fn: Callable) -> Callable:
    def rule(attrs: dict, *xs: np.ndarray) -> np.ndarray:
        if any(issubclass(x.dtype.type, np.floating) and np.isnan(x).any() for x in xs):
            raise ValueError("NaN in Min/Max is left to onnxruntime")
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return _same_type(lambda *xs: rule({}, *xs))


def _cast(attrs: dict, x: np.ndarray) -> np.ndarray:
    from onnx import helper

    to = np.dtype(helper.tensor_dtype_to_np_dtype(int(attrs["to"])))
    if not issubclass(to.type, _NUMERIC) or to == np.float16:
        raise TypeError("Cast target left to onnxruntime")
    if issubclass(x.dtype.type, np.floating) and not issubclass(to.type, (np.floating, np.bool_)):
        info = np.iinfo(to)  # out-of-range and NaN float -> int are undefined in C
        if not np.isfinite(x).all() or x.size and (x.min() <= info.min - 1
                                                    or x.max() >= info.max + 1):
            raise ValueError("float to integer Cast out of range")
        return np.trunc(x).astype(to)
    return x.astype(to)


def _logical(fn: Callable) -> Callable:
    """Not/And/Or: ONNX defines them on bool only."""
    def rule(attrs: dict, *xs: np.ndarray) -> np.ndarray:
        if any(x is None or x.dtype != np.bool_ for x in xs):
            raise TypeError("logical ops take bool")
        return fn(*xs)
    return rule


def _where(attrs: dict, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if cond.dtype != np.bool_:
        raise TypeError("Where's condition must be bool")
    return _same_type(lambda x, y: np.where(cond, x, y))(attrs, a, b)


def _unary_float(fn: Callable) -> Callable:
    def rule(attrs: dict, x: np.ndarray) -> np.ndarray:
        if not issubclass(x.dtype.type, np.floating):
            raise TypeError("defined for floats only")
        return fn(x)
    return rule


_RULES: dict[str, Callable] = {
    "Reshape": _reshape, "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Identity": lambda attrs, x: x, "Concat": _concat,
    "Gather": _gather, "Slice": _slice, "ConstantOfShape": _constant_of_shape,
    "Expand": _expand, "Range": _int_range, "Cast": _cast, "Clip": _clip,
    "Add": _same_type(np.add), "Sub": _same_type(np.subtract),
    "Mul": _same_type(np.multiply), "Div": _same_type(_divide),
    "Neg": _same_type(np.negative), "Abs": _same_type(np.abs),
    "Ceil": _unary_float(np.ceil), "Floor": _unary_float(np.floor),
    "Min": _extreme(np.minimum), "Max": _extreme(np.maximum),
    "Equal": _same_type(np.equal), "Less": _same_type(np.less),
    "Greater": _same_type(np.greater), "Not": _logical(np.logical_not),
    "And": _logical(np.logical_and), "Or": _logical(np.logical_or), "Where": _where,
}
