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
    pattern = re.compile(r"\bInferenceSession\(")
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
