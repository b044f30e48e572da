"""Fast path of the `max` calibrator: abs-max reduced inside onnxruntime.

Same result as `calibrate.collect_ranges(..., method="max")` (same fallbacks), but every
calibrated tensor gets `ReduceMax(Abs(t))` and `ReduceSum(Abs(t))` nodes in the graph, so a
run returns two scalars per tensor instead of whole activations, and the session shares the
IR's weights (`compiler.core.qonnx`). The sum detects NaN/Inf (it is non-finite iff some value
is, barring an overflow of finite values beyond 3e38, which is reported the same way).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import DataError, GraphError
from compiler.core.feeds import Feeds, load_feeds
from compiler.core.ir import Model, const_value
from compiler.core.qonnx import release_memory, shared_weight_session
from passes.quantize.calibrate import MIN_THRESHOLD, ZERO_RANGE_THRESHOLD, iter_batches
from passes.quantize.degenerate import Spread
from passes.quantize.degenerate import report as report_degenerate


def _tap(model: Model, names: list[str]) -> tuple[Model, list[str]]:
    """A shallow copy of the model whose outputs are the per-tensor max/sum of |t|."""
    graph = model.graph.copy()
    known = graph.tensors()
    outputs = []
    for i, name in enumerate(names):
        absval = gs.Variable(f"npuc_abs_{i}", dtype=np.float32)
        peak = gs.Variable(f"npuc_max_{i}", dtype=np.float32, shape=[])
        total = gs.Variable(f"npuc_sum_{i}", dtype=np.float32, shape=[])
        low = gs.Variable(f"npuc_lo_{i}", dtype=np.float32, shape=[])
        high = gs.Variable(f"npuc_hi_{i}", dtype=np.float32, shape=[])
        graph.nodes += [
            gs.Node("Abs", f"npuc_abs_{i}", inputs=[known[name]], outputs=[absval]),
            gs.Node("ReduceMax", f"npuc_max_{i}", {"keepdims": 0}, [absval], [peak]),
            gs.Node("ReduceSum", f"npuc_sum_{i}", {"keepdims": 0}, [absval], [total]),
            gs.Node("ReduceMin", f"npuc_lo_{i}", {"keepdims": 0}, [known[name]], [low]),
            gs.Node("ReduceMax", f"npuc_hi_{i}", {"keepdims": 0}, [known[name]], [high])]
        outputs += [peak, total, low, high]
    graph.outputs = outputs
    return Model(graph, model.opset), [t.name for t in outputs]


def _threshold(peak: float) -> float:
    return ZERO_RANGE_THRESHOLD if peak == 0 else max(peak, MIN_THRESHOLD)


def _update(peaks: dict[str, float], name: str, values: np.ndarray, total: float,
            step: int) -> None:
    if not np.isfinite(total):
        raise DataError(f"tensor {name!r} has NaN or Inf values on calibration batch {step} "
                        "(check the model's weights and the data)")
    peaks[name] = max(peaks.get(name, 0.0), float(values))


def abs_max_ranges(model: Model, feeds: Feeds | object, tensors: list[str],
                   batch_size: int = 8) -> dict[str, float]:
    """Thresholds T = max |t| over the calibration data, for each requested tensor."""
    feeds = feeds if isinstance(feeds, Feeds) else load_feeds(feeds, model)
    known = model.graph.tensors()
    missing = [n for n in tensors if n not in known]
    if missing:
        raise GraphError(f"tensor(s) {missing[:5]} not found in the model")
    inputs = {t.name for t in model.graph.inputs}
    consts = {n: const_value(known[n]) for n in tensors if const_value(known[n]) is not None}
    inner = [n for n in dict.fromkeys(tensors) if n not in consts and n not in inputs]
    peaks = {n: float(np.max(np.abs(v))) if v.size else 0.0 for n, v in consts.items()}
    sess, outs = None, []
    if inner:
        tapped, outs = _tap(model, inner)
        sess = shared_weight_session(tapped)
    spreads = {n: Spread() for n in dict.fromkeys(tensors) if n not in consts}
    for step, batch in enumerate(iter_batches(model, feeds, batch_size)):
        for name in dict.fromkeys(n for n in tensors if n in inputs):
            x = batch[name]
            _update(peaks, name, np.max(np.abs(x)), float(np.sum(np.abs(x))), step)
            spreads[name].update(x)
        if sess is not None:
            values = sess.run(outs, batch)
            for i, name in enumerate(inner):
                _update(peaks, name, values[4 * i], float(values[4 * i + 1]), step)
                spreads[name].fold(float(values[4 * i + 2]), float(values[4 * i + 3]))
    del sess
    release_memory()
    report_degenerate(spreads)
    return {n: _threshold(peaks[n]) for n in tensors}
