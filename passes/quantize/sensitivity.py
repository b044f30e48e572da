"""Per-layer quantization sensitivity: the output error each int8 layer causes on its own.

`quantize_sensitivity` quantizes the model once (`quantize_model`: calibration, weight
scales, the QGraph), then builds one float "switch" model: the canonical float model with
every quantization point of the QGraph behind a switch,

- an activation tensor `t` with scale `S`: ``Where(on[k], DequantizeLinear(QuantizeLinear(t,
  S)), t)`` (int8, zero point 0, saturating: the same grid as `model.qdq.onnx`);
- a weight (Conv/Gemm/MatMul) or constant operand (Add/Mul/Concat): ``Where(on[k], Wq·Sw,
  W)`` with the QGraph's own int8 values and per-channel scales; a Conv/Gemm's bias switches
  with its weights to the integer layer's ``bias·Sx·Sw`` (bias correction and int32 rounding
  included: the float model is the one as given);

where ``on`` is one boolean vector input. A single onnxruntime session then runs every
configuration over the same data, converted once, against the float outputs computed
once (`passes.quantize.fidelity`). Layers are the int8 units of the QGraph that do
arithmetic (Conv, Gemm, MatMul, Add, Mul, lookup tables, pooling... with their fused
activation); units that only move int8 values (MaxPool, Reshape, ...) add no error of their own.

Methods:
- ``single`` (default): only the layer is quantized — its activation input(s), its weights
  and constant operands, and its output; everything else runs in float. This isolates
  what the layer costs by itself, so layers compare fairly however many others are
  noisy; it is what the budget loop raises first.
- ``leave-one-out``: everything int8 except the layer's own points (its weights, constant
  operands and outputs, including outputs of the value-moving units after it, and the
  quantization of a graph input or CPU output it is the first to read): the
  accuracy the whole model recovers by keeping that layer in higher precision. Closer to
  a budget decision, but each figure sits on the full int8 error floor, so small
  differences between layers drown in it.

Not simulated: the int32 bias rounding of a MatMul's separate bias Add (at most half a
step of `Sx·Sw[c]`, far below the activation step) and the one-LSB difference between the
integer requantization (round half up) and QuantizeLinear (round half to even).

Flags per layer (docs/quantization.md, "Sensitivity analysis"):
- ``outlier_range``: the calibrated range of one of the layer's activation tensors is
  dominated by a few outliers: ``T / percentile_99.99(|x|) > outlier_threshold``, with T
  the int8 model's threshold (127·S) and the percentile over the calibration data (default
  `OUTLIER_THRESHOLD` = 8: 99.99 % of the values then use fewer than 16 of the 127
  positive steps). With the max calibrator T = max|x|; mse/percentile/kl clip outliers and
  so flag less. `outlier_ratio` holds the largest ratio.
- ``feeds_decoding``: the layer's output reaches a graph output through non-MAC ops only
  (Reshape, Transpose, Concat, Split, Sigmoid, Softmax, ... — anything but Conv,
  ConvTranspose, Gemm, MatMul), where a MAC op after a Softmax on the path also passes
  (the fixed expectation Conv of a DFL box decoder): a head whose values are decoded
  directly (box regression, DFL bins, class logits), not smoothed by later layers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.cost import node_cost
from compiler.core.errors import ConfigError
from compiler.core.executor import ExecutorOptions, open_pool
from compiler.core.feeds import Feeds, load_feeds
from compiler.core.io import ShapeArg, from_proto, to_proto
from compiler.core.ir import Model, is_const
from compiler.core.numerics import run, session
from compiler.core.progress import track
from passes.quantize.api import QuantResult, pristine_float, quantize_model
from passes.quantize.calibrate import collect_ranges
from passes.quantize.emit_qdq import float_name
from passes.quantize.fidelity import (
    Metrics,
    Reference,
    SensitivityReport,
    rank_key,
    resolve_rank,
)
from passes.quantize.options import (
    DEFAULT_CALIBRATOR,
    SENSITIVITY_METHODS,
    SensitivityOptions,
)
from passes.quantize.patterns import Unit, partition
from passes.quantize.switch import Layer, build_switch_model, masks

log = logging.getLogger(__name__)

METHODS = SENSITIVITY_METHODS
OUTLIER_THRESHOLD = SensitivityOptions.outlier_threshold  # declared once, with the flag
OUTLIER_PERCENTILE = 99.99
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class LayerSensitivity:
    """What quantizing one layer costs (see the module doc for the methods and flags).

    Attributes:
        name: The layer's anchor node (the name `--keep-float` takes).
        op: Its ONNX op type; `kind` is the int8 unit kind (conv, gemm, add, lut, ...).
        macs: Multiply-accumulates of the unit at batch 1.
        metrics: Output cosine / agreement / accuracy with this configuration.
        outlier_ratio: Largest ``T / p99.99|x|`` of its activation tensors (module doc).
        outlier_tensor: The tensor with that ratio.
        outlier_range: `outlier_ratio` above the threshold.
        feeds_decoding: Its output reaches a graph output through non-MAC ops only.
        tensors: The activation tensors quantized for it.
        index: Position of the layer in network (topological unit) order.
    """

    name: str
    op: str
    kind: str
    macs: int
    metrics: Metrics
    outlier_ratio: float = 1.0
    outlier_tensor: str = ""
    outlier_range: bool = False
    feeds_decoding: bool = False
    tensors: list[str] = field(default_factory=list)
    index: int = 0

    @property
    def flags(self) -> list[str]:
        """Names of the flags that are set."""
        return [f for f in ("outlier_range", "feeds_decoding") if getattr(self, f)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metrics flattened)."""
        d = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        return {**d, **self.metrics.to_dict(), "flags": self.flags}


# -- the switch model --------------------------------------------------------------------------

def decoding_heads(model: Model, layers: Iterable[Layer]) -> set[str]:
    """Anchor names of the layers whose output reaches a graph output through non-MAC ops."""
    outputs = {t.name for t in model.graph.outputs}
    return {layer.unit.anchor.name for layer in layers
            if _reaches_output({t.name for t in layer.unit.outputs}, model, outputs)}


def _reaches_output(start: set[str], model: Model, outputs: set[str]) -> bool:
    """Breadth-first over (tensor, after a Softmax) states, stopping at MAC ops."""
    users: dict[str, list[gs.Node]] = {}
    for node in model.graph.nodes:
        for t in node.inputs:
            users.setdefault(t.name, []).append(node)
    seen: set[tuple[str, bool]] = set()
    todo = [(name, False) for name in start]
    while todo:
        name, soft = todo.pop()
        if name in outputs:
            return True
        if (name, soft) in seen:
            continue
        seen.add((name, soft))
        for node in users.get(name, []):
            if node.op not in MAC_OPS or soft:  # a MAC after a Softmax: DFL's expectation
                todo += [(o.name, soft or node.op == "Softmax") for o in node.outputs]
    return False


def outlier_ratios(model: Model, feeds: Feeds, thresholds: dict[str, float],
                   batch_size: int) -> dict[str, float]:
    """``T / percentile_99.99(|x|)`` per tensor: calibrated threshold over the bulk of `feeds`."""
    if not thresholds:
        return {}
    bulk = collect_ranges(model, feeds, list(thresholds), "percentile", batch_size,
                          percentile=OUTLIER_PERCENTILE)
    return {n: t / bulk[n] if bulk[n] > 0 else 1.0 for n, t in thresholds.items()}


# -- the sweep ---------------------------------------------------------------------------------

def quantize_sensitivity(model: Any, calib_feeds: Any, eval_feeds: Any = None, *,
                         method: str = "single", calibrator: str = DEFAULT_CALIBRATOR,
                         rank_by: str = "auto", batch_size: int = 8,
                         outlier_threshold: float = OUTLIER_THRESHOLD,
                         input_shapes: ShapeArg = None, quantized: QuantResult | None = None,
                         executor: ExecutorOptions | None = None,
                         **quantize_options: Any) -> SensitivityReport:
    """Rank the int8 layers of `model` by the output error each one causes, worst first.

    Args:
        model: Float model (path, ModelProto or IR Model; not modified).
        calib_feeds: Calibration data (anything `quantize_model` accepts).
        eval_feeds: Data to measure on (default: the calibration data); integer class
            labels (`Feeds.labels`) add accuracy.
        method: "single" or "leave-one-out" (module doc).
        calibrator: Activation calibrator of the int8 model.
        rank_by: "auto" (accuracy with labels, else cosine), "cosine", "agreement",
            "accuracy".
        batch_size: Samples per onnxruntime run (models with a symbolic batch).
        outlier_threshold: `outlier_range` is set above this ratio.
        input_shapes: `--input-shape` binding, as for `quantize_model`.
        quantized: An existing `quantize_model` result of this model (skips quantizing).
        executor: Score the configurations on these workers (local processes or Ray; the
            model, the int8 graph and the reference outputs are shipped once). The
            metrics are identical to an in-process sweep. Default: this process.
        **quantize_options: Further `quantize_model` keywords (cle, rounding, ...).

    Returns:
        The report; `report.layers` are `LayerSensitivity` rows, worst first, and
        `report.baseline` the fully int8 model's metrics.

    Raises:
        ConfigError: Unknown method or ranking, or a model without an int8 layer.
        DataError: Data that does not fit the model.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown sensitivity method {method!r} (valid: {', '.join(METHODS)})")
    start = time.perf_counter()
    res = quantized or quantize_model(model, calib_feeds, calibrator, batch_size=batch_size,
                                      input_shapes=input_shapes, **quantize_options)
    fm = pristine_float(model, res, input_shapes)  # the float weights, not GPTQ's
    units = partition(fm.graph, quantize_options.get("keep_float", ()))
    _, layers, count = build_switch_model(fm, res.qgraph, units)
    if not layers:
        raise ConfigError("the model has no quantizable layer (every node runs in float on "
                          "the CPU; see `npuc quantize` for the reasons)")
    times = {"quantize": time.perf_counter() - start}
    calib = load_feeds(calib_feeds, fm)  # `Feeds` (what the CLI passes) are used as they are
    ref = Reference(fm, calib if eval_feeds is None else load_feeds(eval_feeds, fm),
                    batch_size)
    by = resolve_rank(rank_by, ref.labels is not None)
    configs = masks(layers, count, method)
    metrics = score_configs(fm, res.qgraph, ref, configs, executor,
                            quantize_options.get("keep_float", ()))
    baseline = score_config(fm, res.qgraph, units, ref, np.ones(count, np.bool_))
    times["sweep"] = time.perf_counter() - start - times["quantize"]
    names = dict.fromkeys(n for layer in layers for n in layer.tensors)
    ratios = outlier_ratios(fm, calib, _thresholds(res.qgraph, names), batch_size)
    rows = sorted(_rows(fm, layers, metrics, ratios, outlier_threshold),
                  key=lambda r: rank_key(by)(r.metrics))
    times["total"] = time.perf_counter() - start
    info = {"calibrator": res.table.method, "points": count,
            "outlier_threshold": outlier_threshold, "outlier_percentile": OUTLIER_PERCENTILE,
            "time_s": {k: round(v, 3) for k, v in times.items()}}
    return SensitivityReport(rows, method, by, ref.samples, baseline,
                             ref.float_metrics.accuracy, info)


def score_configs(model: Model, qgraph: q.QGraph, ref: Reference, configs: list[np.ndarray],
                  executor: ExecutorOptions | None = None, keep_float: Sequence[str] = (),
                  label: str = "sensitivity (layers)") -> list[Metrics]:
    """Metrics of each configuration (an `ENABLE` vector), in order.

    With `executor` the model, the int8 graph and the reference outputs are shipped to the
    workers once; the metrics are identical to scoring in this process.
    """
    if executor is not None:
        payload = {"model": to_proto(model).SerializeToString(), "qgraph": qgraph.dumps(),
                   "keep_float": tuple(keep_float), "ref": ref}
        with open_pool(executor, init=_init_sweep_worker, payload=payload) as pool:
            return pool.map(_score_mask, configs)
    units = partition(model.graph, keep_float)
    return [score_config(model, qgraph, units, ref, on)
            for on in track(configs, label, len(configs))]


def score_config(model: Model, qgraph: q.QGraph, units: list[Unit], ref: Reference,
                 on: np.ndarray) -> Metrics:
    """Metrics of the float model with the points `on` quantized (a baked model)."""
    baked = build_switch_model(model, qgraph, units, on)[0]
    sess = session(baked, fuse_qdq=False)  # fake-quant arithmetic, not ORT's QLinear kernels
    return ref.score(lambda feed: run(sess, feed))


_SWEEP: dict[str, Any] = {}


def _init_sweep_worker(payload: dict[str, Any]) -> None:
    """A worker's copy of the float model, its int8 graph, units and reference outputs."""
    import onnx

    fm = from_proto(onnx.load_from_string(payload["model"]))
    _SWEEP.update(model=fm, qgraph=q.QGraph.loads(payload["qgraph"]), ref=payload["ref"],
                  units=partition(fm.graph, payload["keep_float"]))


def _score_mask(on: np.ndarray) -> Metrics:
    w = _SWEEP
    return score_config(w["model"], w["qgraph"], w["units"], w["ref"], on)


def _thresholds(qgraph: q.QGraph, names: Iterable[str]) -> dict[str, float]:
    """The quantized model's threshold T = qmax·S of each float tensor in `names`.

    qmax is 127 for int8 tensors and 255 for uint8 ones (never-negative tensors).
    """
    tensors = {float_name(n): t for n, t in qgraph.tensors.items()
               if t.is_quantized and t.data is None and t.scale is not None}
    return {n: fp.qrange(tensors[n].dtype)[1] * float(tensors[n].scale)
            for n in names if n in tensors}


def layer_flags(model: Model, qgraph: q.QGraph, layers: Sequence[Layer], feeds: Feeds,
                batch_size: int, threshold: float = OUTLIER_THRESHOLD) -> dict[str, list[str]]:
    """Anchor name -> the flags (module doc) of each layer that has any.

    What peers exclude by hand — decoding heads, outlier-dominated ranges — found from the
    graph and one percentile pass over `feeds`; the budget loop raises these layers first.
    """
    names = dict.fromkeys(n for layer in layers for n in layer.tensors)
    ratios = outlier_ratios(model, feeds, _thresholds(qgraph, names), batch_size)
    heads = decoding_heads(model, layers)
    flags = {}
    for layer in layers:
        name = layer.unit.anchor.name
        found = [f for f, on in (("outlier_range", _worst_ratio(layer, ratios)[1] > threshold),
                                 ("feeds_decoding", name in heads)) if on]
        if found:
            flags[name] = found
    return flags


def _worst_ratio(layer: Layer, ratios: dict[str, float]) -> tuple[str, float]:
    """The layer's activation tensor with the largest outlier ratio, and that ratio."""
    worst = max(layer.tensors, key=lambda n: ratios.get(n, 1.0), default="")
    return worst, float(ratios.get(worst, 1.0))


def _rows(model: Model, layers: Sequence[Layer], metrics: Sequence[Metrics],
          ratios: dict[str, float], threshold: float) -> list[LayerSensitivity]:
    heads = decoding_heads(model, layers)
    rows = []
    for index, (layer, m) in enumerate(zip(layers, metrics, strict=True)):
        anchor = layer.unit.anchor
        worst, ratio = _worst_ratio(layer, ratios)
        rows.append(LayerSensitivity(
            anchor.name, anchor.op, layer.unit.kind, unit_macs(layer.unit), m, ratio, worst,
            ratio > threshold, anchor.name in heads, list(layer.tensors), index))
    return rows


def unit_macs(unit: Unit) -> int:
    """MACs of a unit's nodes, a symbolic batch read as 1 (shapes restored afterwards)."""
    saved = []
    for t in {id(t): t for n in unit.nodes for t in [*n.inputs, *n.outputs]}.values():
        shape = getattr(t, "shape", None)
        if not is_const(t) and shape and not isinstance(shape[0], (int, np.integer)):
            saved.append((t, shape))
            t.shape = [1, *shape[1:]]
    try:
        return sum(node_cost(n).macs for n in unit.nodes)
    finally:
        for t, shape in saved:
            t.shape = shape
