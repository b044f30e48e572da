import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compiler.core import numerics
from tests.conftest import conv_model

ROOT = Path(__file__).resolve().parents[3]


def test_every_session_turns_telemetry_off(monkeypatch):
    calls = []
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append(1))
    proto = conv_model()
    feeds = numerics.random_feeds(numerics.session(proto))
    out = numerics.run(proto, feeds)
    assert len(calls) == 2 and all(np.isfinite(v).all() for v in out.values())


def test_onnxruntime_sessions_are_opened_in_one_place():
    # Any other `InferenceSession(` would skip the telemetry switch and the CPU-only provider.
    pattern = re.compile(r"\b(?:Inference)?Session\(")  # numerics.Session wraps the class
    offenders = [str(p.relative_to(ROOT)) for pkg in ("compiler", "passes", "targets", "models")
                 for p in (ROOT / pkg).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == ["compiler/core/numerics.py"]


def test_shared_weight_session_turns_runtime_errors_into_one_data_error():
    import pytest

    from compiler.core.errors import DataError
    from compiler.core.io import load_model
    from compiler.core.qonnx import shared_weight_session

    model = load_model(conv_model())
    sess = shared_weight_session(model)
    name = sess.get_inputs()[0].name
    with pytest.raises(DataError, match=r"cannot run the model on inputs .* 1x5x2x2"):
        sess.run(None, {name: np.zeros((1, 5, 2, 2), np.float32)})


def test_run_time_reshape_of_an_empty_level_runs():
    # The IR's inferred shapes name the data-dependent K of both the [K, 4] boxes and their
    # [K, 2, 2] clipped copy alike; onnxruntime's ReshapeFusion read that as "copy dim 0"
    # and rewrote the Reshape target to [0, -1], which fails on the empty level (K = 0).
    from compiler.core.io import load_model
    from tests import exporter_graphs as eg

    proto = eg.clip_boxes_model()  # as written: no intermediate shapes
    model = load_model(proto)
    tensors = model.graph.tensors()
    k = tensors["l1_boxes"].shape[0]
    assert isinstance(k, str) and tensors["l1_xy"].shape[0] == k  # the trigger is there
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got, want = numerics.run(model, {"x": x}), numerics.run(proto, {"x": x})
    scores = want["scores"].reshape(-1)
    assert not (scores > 1.5).any()  # level 1 is empty
    assert got["det_boxes"].shape == ((scores > 0.5).sum(), 4) and 0 < len(got["det_boxes"])
    np.testing.assert_array_equal(got["det_boxes"], want["det_boxes"])
    assert got["det_boxes"].min() >= 0.0 and got["det_boxes"].max() <= 16.0


def _layout_node(op: str, x: np.ndarray, *consts, **attrs):
    import onnx_graphsurgeon as gs

    inputs = [gs.Constant("x", x)] + [gs.Constant(f"c{i}", np.asarray(c, np.int64))
                                      for i, c in enumerate(consts)]
    return gs.Node(op, f"{op.lower()}_node", attrs, inputs=inputs,
                   outputs=[gs.Variable("y", dtype=x.dtype)])


LAYOUT_CASES = [
    ("Reshape", [[0, -1, 2]], {}), ("Reshape", [[1, 0, 12]], {}),
    ("Reshape", [[3, 0, 4]], {"allowzero": 0}), ("Flatten", [], {}),
    ("Flatten", [], {"axis": -1}), ("Flatten", [], {"axis": 0}), ("Flatten", [], {"axis": 3}),
    ("Squeeze", [[0]], {}), ("Unsqueeze", [[0, -1]], {}), ("Unsqueeze", [[1, 3]], {}),
    ("Transpose", [], {}), ("Transpose", [], {"perm": [2, 0, 1]}), ("Identity", [], {}),
]


def test_layout_ops_fold_in_numpy_exactly_as_onnxruntime(monkeypatch):
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 12)
    for op, consts, attrs in LAYOUT_CASES:
        node = _layout_node(op, x, *consts, **attrs)
        monkeypatch.setattr(numerics, "numpy_value", lambda *a: None)
        want = numerics.eval_node(node, 17)[0]  # onnxruntime
        monkeypatch.undo()
        monkeypatch.setattr(numerics, "session", _no_session)
        got = numerics.eval_node(node, 17)[0]
        monkeypatch.undo()
        assert got.dtype == want.dtype and got.shape == want.shape, (op, consts, attrs)
        np.testing.assert_array_equal(got, want)
        assert not (np.may_share_memory(got, x) and got.flags.writeable)  # views: read-only


def test_invalid_layout_nodes_are_left_to_onnxruntime(monkeypatch):
    x = np.ones((2, 3), np.float32)
    opened = []
    real = numerics.session
    monkeypatch.setattr(numerics, "session", lambda *a, **k: (opened.append(1), real(*a, **k))[1])
    for node in (_layout_node("Squeeze", x, [0]), _layout_node("Reshape", x, [4, -1]),
                 _layout_node("Unsqueeze", x, [0, 0])):
        try:
            numerics.eval_node(node, 17)
        except Exception:  # noqa: BLE001 - onnxruntime and the reference evaluator both refuse
            pass
    assert len(opened) == 3


def _no_session(*args, **kwargs):
    raise AssertionError("a layout-only node opened an onnxruntime session")
