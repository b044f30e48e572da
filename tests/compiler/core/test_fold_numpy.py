"""Constant folding in numpy gives onnxruntime's result bit for bit, or leaves the node to it."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from compiler.core import numerics
from compiler.core.fold_numpy import numpy_value

I64 = np.int64
A = np.array([-7, 7, -7, 7, 0, -1, 9, -9], I64)
B = np.array([2, 2, -2, -2, 3, 5, 4, 4], I64)
F = np.array([[-2.5, -1.5, -0.4, 0.0], [0.5, 1.49, 2.5, 1e30]], np.float32)
G = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
INT_MAX, INT_MIN = np.iinfo(I64).max, np.iinfo(I64).min
X = np.arange(60, dtype=np.float32).reshape(3, 4, 5)


def _node(op: str, *inputs, **attrs) -> gs.Node:
    tensors = [gs.Variable("", dtype=None) if v is None else gs.Constant(f"in{i}", np.asarray(v))
               for i, v in enumerate(inputs)]
    return gs.Node(op, f"{op}_node", attrs, inputs=tensors, outputs=[gs.Variable("out")])


CASES = [
    ("Div", (A, B), {}), ("Div", (A.astype(np.int32), B.astype(np.int32)), {}),
    ("Div", (G, G[::-1] + 3), {}), ("Add", (A, B), {}), ("Sub", (G, np.float32(0.1)), {}),
    ("Mul", (A.reshape(2, 4), np.array([3], I64)), {}), ("Mul", (G, G), {}),
    ("Neg", (A,), {}), ("Abs", (G,), {}), ("Ceil", (F[:, :3],), {}), ("Floor", (G,), {}),
    ("Cast", (F[:, :3],), {"to": onnx.TensorProto.INT64}),
    ("Cast", (A,), {"to": onnx.TensorProto.FLOAT}),
    ("Cast", (np.array([2**40 + 3, -5], I64),), {"to": onnx.TensorProto.INT32}),
    ("Cast", (np.array([300, -1, 7], np.int32),), {"to": onnx.TensorProto.UINT8}),
    ("Cast", (G.astype(np.float64) * 1e-3,), {"to": onnx.TensorProto.FLOAT}),
    ("Cast", (np.array([0.0, -2.0, 0.5], np.float32),), {"to": onnx.TensorProto.BOOL}),
    ("Gather", (A, np.array([-1, 0, 3], I64)), {}), ("Gather", (X, np.array(-2, I64)), {"axis": 1}),
    ("Gather", (X, np.array([[0, 4], [-5, 2]], I64)), {"axis": 2}),
    ("Concat", (A[:3], B[:2], A[:0]), {"axis": 0}), ("Concat", (X, X), {"axis": -1}),
    ("Slice", (X, [1], [INT_MAX], [1], [1]), {}),
    ("Slice", (X, [-1, 0], [INT_MIN, 5], [1, 2], [-1, 2]), {}),
    ("Slice", (X, [10, -100], [-10, 100], [0, 1]), {}),
    ("Slice", (X, [2], [0], [-1], [-2]), {}), ("Slice", (X, [4], [-1], [2], [-1]), {}),
    ("Slice", (X, [0], [3], None, [2]), {}),
    ("ConstantOfShape", (np.array([2, 3], I64),), {}),
    ("ConstantOfShape", (np.array([0, 3], I64),),
     {"value": gs.Constant("v", np.array([7], I64))}),
    ("Expand", (A[:2].reshape(2, 1), np.array([3, 2, 4], I64)), {}),
    ("Range", (np.array(10, I64), np.array(-3, I64), np.array(-4, I64)), {}),
    ("Range", (np.array(0, np.int32), np.array(7, np.int32), np.array(2, np.int32)), {}),
    ("Clip", (G, np.float32(-0.5), np.float32(0.7)), {}), ("Clip", (A, None, np.array(2, I64)), {}),
    ("Clip", (G,), {}), ("Max", (A, B, np.array([1], I64)), {}), ("Min", (G, G * 2), {}),
    ("Equal", (A, B), {}), ("Less", (G, G * 2), {}), ("Greater", (A, B), {}),
    ("Where", (A > 0, A, B), {}), ("Not", (A > 0,), {}), ("And", (A > 0, B > 0), {}),
    ("Or", (A > 0, B > 0), {}),
    ("Reshape", (X, np.array([0, -1], I64)), {}), ("Transpose", (X,), {"perm": [2, 0, 1]}),
    ("Squeeze", (X[:1], np.array([0], I64)), {}), ("Unsqueeze", (A, np.array([0, -1], I64)), {}),
    ("Flatten", (X,), {"axis": 2}), ("Identity", (G,), {}),
]


@pytest.mark.parametrize("op, inputs, attrs", CASES, ids=[c[0] for c in CASES])
def test_numpy_fold_equals_onnxruntime(op, inputs, attrs, monkeypatch):
    node = _node(op, *inputs, **attrs)
    got = numpy_value(node, 17)
    assert got is not None, f"{op} was not folded in numpy"
    monkeypatch.setattr(numerics, "numpy_value", lambda *a: None)
    want = numerics.eval_node(node, 17)  # onnxruntime
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    np.testing.assert_array_equal(got[0], want[0], strict=True)
    shared = [np.asarray(v) for v in inputs if v is not None]
    if any(np.may_share_memory(got[0], v) for v in shared):
        assert not got[0].flags.writeable  # a view of the input cannot be written through


@pytest.mark.parametrize("op, inputs, attrs", [
    ("Div", (A, B * 0), {}),                                        # integer division by 0
    ("Cast", (np.array([1e20], np.float32),), {"to": onnx.TensorProto.INT32}),  # undefined
    ("Cast", (np.array([np.nan], np.float32),), {"to": onnx.TensorProto.INT64}),
    ("Cast", (G,), {"to": onnx.TensorProto.FLOAT16}),
    ("Add", (A, G), {}),                                            # mixed types: invalid
    ("Ceil", (A,), {}), ("Range", (np.float32(0), np.float32(1), np.float32(0.1)), {}),
    ("Max", (np.array([np.nan], np.float32), np.array([1.0], np.float32)), {}),
    ("Gather", (A, np.array([8], I64)), {}), ("Slice", (X, [0], [1], [0], [0]), {}),
    ("Sqrt", (G,), {}), ("ConstantOfShape", (np.array([-1], I64),), {}),
    ("Not", (A,), {}), ("And", (A, B), {}), ("Where", (A, A, B), {}),  # not bool: invalid
])
def test_cases_numpy_does_not_decide_are_left_to_onnxruntime(op, inputs, attrs):
    assert numpy_value(_node(op, *inputs, **attrs), 17) is None


def test_shape_arithmetic_opens_no_session(monkeypatch):
    """TF-style 'same' padding: ceil(in / stride) arithmetic folds without onnxruntime."""
    monkeypatch.setattr(numerics, "session", _no_session)
    size = _node("Cast", np.array([223], I64), to=onnx.TensorProto.FLOAT)
    out = numerics.eval_node(size, 17)[0]
    ceil = numerics.eval_node(_node("Ceil", out / np.float32(2)), 17)[0]
    pad = numerics.eval_node(_node("Sub", (ceil * 2 - 1 + 3 - out).astype(I64), np.array([223],
                                                                                        I64)), 17)
    assert ceil.tolist() == [112.0] and pad[0].dtype == np.int64


def _no_session(*args, **kwargs):
    raise AssertionError("a shape-arithmetic node opened an onnxruntime session")
