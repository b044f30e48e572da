"""The accuracy budget loop: the cheapest mixed-precision model that meets a stated budget.

The user states what may be lost — at most `max_drop` points of task accuracy on labelled
data, or a worst-output cosine / arg-max agreement with the float model of at least
`min_cosine` / `min_agreement` on any data — and `quantize_within_budget` finds which layers
must leave int8 (docs/quantization.md, "Accuracy budget"):

1. Quantize everything (`quantize_model`) and measure it. Within the budget: done, one
   evaluation, the model is unchanged (the loop adds nothing when nothing is needed).
2. Rank the int8 layers by what each costs on its own (`switch.masks(..., "single")`)
   on the first `rank_samples` samples only: a ranking needs far fewer samples than a
   decision, and this is where most of the loop's evaluations go.
3. Binary search over the ranking for the smallest k such that the model with the k
   worst layers raised meets the budget (``log2(layers)`` evaluations on all the data).
   Both steps score variants of one switch model (`switch.build_switch_model`): the
   float model with each int8 point behind a switch, so a variant is one onnxruntime
   session at float speed and nothing is re-quantized.
4. Re-quantize with the raised layers' nodes in `keep_float` and measure that model (its
   real partition: neighbours of a raised layer may move to the host with it). If it
   misses the budget, raise more layers (a quarter more each time) and measure again.

Layers are raised to 16 bits first, still on the NPU, and to float only when 16 bits cannot
meet the budget. Two 16-bit precisions: A16W8 (docs/fixed-point.md §16: int16 activations,
the same int8 weights; tables read int16 through interpolated knots, §18) and A16W16 (int16
weights too, §17):
- the variant with every int16-capable layer's activations unquantized (int16's step is
  1/258 of int8's), and the one with their weights unquantized too, are scored once each;
  if both miss, 16 bits cannot help and the loop goes on with float (steps 2-4);
- for each precision whose ceiling meets, the layers are ranked by the cost of their
  16-bit points alone per MAC pass raising them adds (`error_per_pass`) and bisected as
  in step 3; the plan adding the fewest MAC passes (A16W8: one per raised MAC, A16W16:
  three) is confirmed by re-quantizing with those layers in `int16` (and
  `int16_weights`) and measuring that model with its int16 grids; if it misses after
  widening, the other plan is confirmed.

Flagged layers (`sensitivity.layer_flags`: outputs decoded directly — box regression, DFL
bins, logits — and activation ranges dominated by a few outliers) go first in the 16-bit
orders: the exclusions peers make by hand, made by the loop only when the budget needs a
layer raised. The float order stays the measured cost alone (a float layer leaves the NPU).

A raised layer runs in float on the CPU. The budget decides on the fake-quantized model
(int8 grids, float arithmetic); it leaves out int32 bias rounding and the one-LSB
difference between the integer requantizer and QuantizeLinear (`sensitivity` module doc),
which is why the driver reports the built binary's own fidelity next to the budget's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.core.errors import ConfigError
from compiler.core.executor import ExecutorOptions
from compiler.core.feeds import Feeds, load_feeds
from compiler.core.ir import Model
from passes.quantize.api import QuantResult, pristine_float, quantize_model
from passes.quantize.budget16 import (
    MAX_ROUNDS,
    Stage,
    int16_capable,
    int16_stage,
    sixteen_bit_mac_share,
    wide_weight_points,
)
from passes.quantize.build import WEIGHTED_KINDS
from passes.quantize.fidelity import Correct, Metrics, Reference, integer_metrics, rank_key
from passes.quantize.patterns import partition
from passes.quantize.sensitivity import layer_flags, score_config, score_configs, unit_macs
from passes.quantize.switch import Layer, build_switch_model, masks

log = logging.getLogger(__name__)

RANK_SAMPLES = 64
"""Samples the per-layer ranking runs on (the search and the final check use all)."""


@dataclass(frozen=True)
class Budget:
    """What quantization may cost, against the float model (None: not constrained).

    Attributes:
        max_drop: Task accuracy drop in percentage points (labelled data).
        min_cosine: Worst graph output's cosine similarity.
        min_agreement: Fraction of first-output arg-max positions equal to float's.
    """

    max_drop: float | None = None
    min_cosine: float | None = None
    min_agreement: float | None = None

    @property
    def active(self) -> bool:
        """A budget was stated."""
        return any(v is not None for v in (self.max_drop, self.min_cosine, self.min_agreement))

    @property
    def rank_by(self) -> str:
        """The metric the loop ranks layers by (the budget's first constraint)."""
        if self.max_drop is not None:
            return "accuracy"
        return "agreement" if self.min_agreement is not None else "cosine"

    def check(self, m: Metrics, float_accuracy: float | None) -> tuple[bool, str]:
        """(met, reason): whether `m` is within the budget, and the first constraint missed."""
        if self.max_drop is not None:
            drop = 100.0 * ((float_accuracy or 0.0) - (m.accuracy or 0.0))
            if drop > self.max_drop + 1e-9:
                return False, f"accuracy drop {drop:.2f} pt > {self.max_drop:g} pt"
        if self.min_cosine is not None and not m.cosine >= self.min_cosine:  # NaN misses
            return False, f"cosine {m.cosine:.6f} < {self.min_cosine:g}"
        if self.min_agreement is not None and m.agreement < self.min_agreement:
            return False, f"agreement {m.agreement:.4f} < {self.min_agreement:g}"
        return True, "within budget"

    @classmethod
    def from_options(cls, options: Any) -> Budget:
        """The budget stated in `QuantizeOptions` (`max_drop`, `min_cosine`, `min_agreement`)."""
        return cls(options.max_drop, options.min_cosine, options.min_agreement)

    def to_dict(self) -> dict[str, float]:
        """The stated constraints."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class BudgetResult:
    """The loop's outcome.

    Attributes:
        result: The chosen quantization (all-int8 when that met the budget).
        baseline: The all-int8 quantization the loop started from.
        report: Budget, metrics before/after, raised layers, evaluations, timings.
    """

    result: QuantResult
    baseline: QuantResult
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # measured on the written QGraph (MACs whose input or weights are int16), not
        # derived from the raised layers: what the perf model charges two or four passes
        self.report["macs_16bit_share"] = sixteen_bit_mac_share(self.result.qgraph)


def check_budget_data(budget: Budget, ref: Reference) -> None:
    """A `max_drop` budget needs labels the reference can score."""
    if budget.max_drop is not None and ref.labels is None:
        raise ConfigError("--max-drop needs labelled data (class labels, or OCR text lines): "
                          "give --budget-data LABELLED, or state --min-cosine / "
                          "--min-agreement instead")


class _Scorer:
    """Scores configurations of one all-int8 switch model and counts the evaluations."""

    def __init__(self, result: QuantResult, ref: Reference, keep_float: Sequence[str],
                 float_model: Model | None = None) -> None:
        self.result, self.ref = result, ref
        # the float weights a switch turns back on: the model as given, not the one GPTQ
        # rounding or bias correction adjusted (result.float_model holds those)
        self.fm = float_model if float_model is not None else result.float_model
        self.units = partition(self.fm.graph, frozenset(keep_float))
        _, self.layers, self.count = build_switch_model(self.fm, result.qgraph, self.units)
        self.evaluations = 0  # the all-int8 model and the search
        self.confirmations = 0  # re-quantized models

    def score(self, on: np.ndarray) -> Metrics:
        self.evaluations += 1
        return score_config(self.fm, self.result.qgraph, self.units, self.ref, on)

    def all_int8(self) -> Metrics:
        return self.score(np.ones(self.count, np.bool_))

    def widened(self, layers: Sequence[Layer], weights: bool = False) -> np.ndarray:
        """Points of the all-int8 model with the activations of `layers` unquantized.

        The switch model's stand-in for int16 activations (weights stay int8; with
        `weights`, the weights of Conv/Gemm/MatMul layers are unquantized too: int16
        weights, A16W16, docs/fixed-point.md §17). A point that a layer which cannot read or
        write int16 (a per-channel table such as PRelu, average pooling) also uses stays
        quantized: that layer reads or
        writes int8 whatever its neighbours' precision.
        """
        on = np.ones(self.count, np.bool_)
        for layer in layers:
            on[layer.activations] = False
            if weights:
                on[wide_weight_points(layer)] = False
        for layer in self.layers:
            if not int16_capable(layer):
                on[layer.activations] = True
        return on

    def raised(self, layers: Sequence[Layer]) -> np.ndarray:
        """Points of the model with `layers` in float.

        A raised layer's own points go off, but an output that an int8 layer reads stays
        quantized: the int8 layer quantizes it where it enters the NPU.
        """
        on = np.ones(self.count, np.bool_)
        for layer in layers:
            on[layer.own] = False
        chosen = {id(layer) for layer in layers}
        for layer in self.layers:
            if id(layer) not in chosen:
                on[layer.inputs] = True
        return on


def int8_metrics(result: QuantResult, ref: Reference, keep_float: Sequence[str] = (),
                 float_model: Model | None = None) -> Metrics:
    """The fidelity of a quantized model (fake-quant, as the loop measures) against `ref`.

    `ref` may hold another float model's outputs with the same graph outputs (the unpruned
    model, for a pruned one). `float_model`: the canonical float model before any weight
    adjustment (needed when `result` used GPTQ rounding or bias correction, whose
    `float_model` holds the adjusted weights); default `result.float_model`.
    """
    return _Scorer(result, ref, keep_float, float_model).all_int8()



def quantize_within_budget(model: Any, calib_feeds: Any, budget: Budget,
                           data: Any = None, *, correct: Correct | None = None,
                           reference: Model | None = None,
                           rank_samples: int = RANK_SAMPLES, batch_size: int = 8,
                           executor: ExecutorOptions | None = None,
                           **quantize_options: Any) -> BudgetResult:
    """The cheapest quantization of `model` within `budget` (module doc for the method).

    Args:
        model: Float model (path, ModelProto or IR Model; not modified).
        calib_feeds: Calibration data (anything `quantize_model` accepts).
        budget: The constraints (`Budget.active` must hold).
        data: Data the budget is measured on (default: the calibration data); `max_drop`
            needs labels.
        correct: Counts a batch's correct samples for non-class labels (OCR).
        reference: The float model the budget compares with (default: `model` itself; in a
            pipeline, the model before pruning and sparsification: same graph outputs).
        rank_samples: Samples the per-layer ranking uses.
        batch_size: Samples per onnxruntime run (models with a symbolic batch).
        executor: Score the ranking's variants on these workers (same metrics).
        **quantize_options: Further `quantize_model` keywords (calibrator, keep_float, ...).

    Returns:
        The chosen quantization, the all-int8 one, and the report.

    Raises:
        ConfigError: No budget stated, or `max_drop` without labelled data.
    """
    if not budget.active:
        raise ConfigError("no budget stated (--max-drop, --min-cosine or --min-agreement)")
    start = time.perf_counter()
    quantize_options = dict(quantize_options)
    keep = tuple(quantize_options.pop("keep_float", ()))
    base = quantize_model(model, calib_feeds, batch_size=batch_size, keep_float=keep,
                          **quantize_options)
    fm = pristine_float(model, base, quantize_options.get("input_shapes"))
    feeds = load_feeds(calib_feeds if data is None else data, fm)
    ref = Reference(fm if reference is None else reference, feeds, batch_size, correct)
    check_budget_data(budget, ref)
    fa = ref.float_metrics.accuracy
    scorer = _Scorer(base, ref, keep, fm)
    before = integer_metrics(base, ref)
    scorer.evaluations += 1
    report: dict[str, Any] = {"budget": budget.to_dict(), "samples": ref.samples,
                              "float_accuracy": fa, "before": before.to_dict()}
    met, reason = budget.check(before, fa)
    if met:
        return BudgetResult(base, base, _finish(report, before, [], True, reason, scorer, 0,
                                                start))
    quantize_options.pop("table", None)  # the loop reuses the all-int8 model's table
    run = _Run(model, calib_feeds, base, budget, ref, keep, batch_size, quantize_options,
               scorer, fm)
    first = base
    weights = _rounding_stage(run, before)
    report["rounding"] = weights.report
    if weights.met:
        return BudgetResult(run.base, first, _finish(report, weights.after, [], True,
                                                     weights.reason, run.scorer, 0, start))
    base, scorer, quantize_options = run.base, run.scorer, run.options
    calib = feeds if calib_feeds is None else load_feeds(calib_feeds, fm)
    flags = layer_flags(fm, base.qgraph, scorer.layers, calib, batch_size)
    report["flagged"] = flags
    wide = int16_stage(run, feeds, rank_samples, executor, flags)
    report["int16"] = wide.report
    if wide.met:
        report["ranking"] = {**wide.report["ranking"],
                             "layers": _ranking_rows(scorer, wide.ranked, flags)}
        return BudgetResult(wide.result, first, _finish(
            report, wide.after, wide.raised, True, wide.reason, scorer, wide.evaluations,
            start, to="int16", wide_weights=wide.report["precision"] == "A16W16"))
    ranked = _rank(scorer, feeds, budget, rank_samples, batch_size, executor, keep)
    order = [layer for layer, _ in ranked]
    k = _search(scorer, order, budget, fa)
    result, after, k, met, reason = _confirm(model, calib_feeds, base, order, k, budget, ref,
                                             keep, batch_size, quantize_options, scorer)
    report["ranking"] = {"samples": min(rank_samples, len(feeds)), "evaluations": len(ranked),
                         "layers": _ranking_rows(scorer, ranked, flags)}
    return BudgetResult(result, first, _finish(report, after, ranked[:k], met, reason, scorer,
                                              len(ranked) + wide.evaluations, start))


@dataclass
class _Run:
    """What the stages of one budget loop share."""

    model: Any
    calib_feeds: Any
    base: QuantResult
    budget: Budget
    ref: Reference
    keep: Sequence[str]
    batch_size: int
    options: dict[str, Any]
    scorer: _Scorer
    float_model: Model  # the canonical float model, weights as given

    def quantize(self, **kw: Any) -> QuantResult:
        """Re-quantize with the all-int8 table (calibrating afresh only if it lacks a tensor)."""
        args = {"batch_size": self.batch_size, "keep_float": tuple(self.keep),
                **self.options, **kw}
        try:
            return quantize_model(self.model, self.calib_feeds, **{**args,
                                                                   "table": self.base.table})
        except ConfigError:
            return quantize_model(self.model, self.calib_feeds, **args)


WEIGHT_VARIANTS: dict[str, dict[str, Any]] = {
    "gptq+bias_correction": {"rounding": "gptq", "bias_correction": True},
    "no_bias_correction": {"bias_correction": False},
    "gptq": {"rounding": "gptq", "bias_correction": False},
}
"""Weight treatments the loop tries before moving any layer (same arithmetic and speed).
The default is nearest rounding with bias correction, which lowers a few models
(docs/coverage.md), so the loop also tries without it."""


def _rounding_stage(run: _Run, before: Metrics) -> Stage:
    """Better weights first: GPTQ rounding and/or bias correction move no layer off int8.

    Tried when the user left both at their defaults (nearest rounding, bias correction on)
    and there is calibration data; each
    variant is re-quantized and measured on its integer model, the first one within the
    budget ends the loop, else the best one (if better than round-to-nearest) becomes the
    base of the later stages.
    """
    if run.options.get("rounding", "nearest") != "nearest" or \
            not run.options.get("bias_correction", True) or run.calib_feeds is None:
        return Stage(report={"tried": []})
    key = rank_key(run.budget.rank_by)  # smaller: worse
    fa = run.ref.float_metrics.accuracy
    results, best, best_m = {}, None, before
    met, reason, chosen = False, "", None
    for name, variant in WEIGHT_VARIANTS.items():
        result = run.quantize(**variant)
        metrics = integer_metrics(result, run.ref)
        run.scorer.confirmations += 1
        results[name] = metrics.to_dict()
        met, reason = run.budget.check(metrics, fa)
        if met or key(metrics) > key(best_m):
            best, best_m, chosen = result, metrics, name
        if met:
            break
    if best is not None:
        old, run.base = run.scorer, best
        run.options = {**run.options, **WEIGHT_VARIANTS[chosen]}
        run.scorer = _Scorer(best, run.ref, run.keep, run.float_model)
        run.scorer.evaluations, run.scorer.confirmations = old.evaluations, old.confirmations
    return Stage(met, best, best_m, reason, report={
        "tried": list(results), "results": results, "adopted": chosen, "met": met})


def _ranking_rows(scorer: _Scorer, ranked: list[tuple[Layer, Metrics]],
                  flags: dict[str, list[str]]) -> list[dict]:
    """Every layer's cost alone in the order the loop raises them (`index`: network order)."""
    index = {id(layer): i for i, layer in enumerate(scorer.layers)}
    return [{"name": layer.unit.anchor.name, "op": layer.unit.anchor.op,
             "macs": unit_macs(layer.unit), "index": index[id(layer)],
             "flags": flags.get(layer.unit.anchor.name, []), **m.to_dict()}
            for layer, m in ranked]


def _rank(scorer: _Scorer, feeds: Feeds, budget: Budget, rank_samples: int, batch_size: int,
          executor: ExecutorOptions | None, keep: Sequence[str]
          ) -> list[tuple[Layer, Metrics]]:
    """The int8 layers with their cost alone, costliest first, scored on the first samples.

    Against the model being quantized (not a pipeline's uncompressed reference): a layer's
    cost alone is its quantization error, not the pruning error every variant shares.
    """
    fm = scorer.fm
    ref = Reference(fm, feeds.take(rank_samples), batch_size, scorer.ref.correct)
    configs = masks(scorer.layers, scorer.count, "single")
    metrics = score_configs(fm, scorer.result.qgraph, ref, configs, executor, keep,
                            "budget (ranking layers)")
    key = rank_key(budget.rank_by)  # max_drop has labels (check_budget_data)
    return sorted(zip(scorer.layers, metrics, strict=True), key=lambda lm: key(lm[1]))


def _search(scorer: _Scorer, order: list[Layer], budget: Budget, fa: float | None) -> int:
    """Smallest k whose k worst layers raised meet the budget (k = all is assumed to)."""
    lo, hi = 0, len(order)  # lo misses (measured), hi meets (all raised: the float model)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if budget.check(scorer.score(scorer.raised(order[:mid])), fa)[0]:
            hi = mid
        else:
            lo = mid
    return hi


def _confirm(model: Any, calib_feeds: Any, base: QuantResult, order: list[Layer], k: int,
             budget: Budget, ref: Reference, keep: Sequence[str], batch_size: int,
             options: dict[str, Any], scorer: _Scorer
             ) -> tuple[QuantResult, Metrics, int, bool, str]:
    """Re-quantize with the k worst layers in float; raise more until the real model meets.

    The all-int8 calibration table is reused (the thresholds do not depend on which other
    layers are float); only a table lacking a tensor of the new partition recalibrates.
    """
    result, metrics, met, reason = base, None, False, ""
    for _ in range(MAX_ROUNDS):
        names = tuple(dict.fromkeys([*keep, *float_nodes(order[:k], order)]))
        try:
            result = quantize_model(model, calib_feeds, batch_size=batch_size,
                                    keep_float=names, **{**options, "table": base.table})
        except ConfigError:  # the table lacks a tensor: calibrate this partition afresh
            result = quantize_model(model, calib_feeds, batch_size=batch_size,
                                    keep_float=names, **options)
        metrics = integer_metrics(result, ref)
        scorer.confirmations += 1
        met, reason = budget.check(metrics, ref.float_metrics.accuracy)
        if met or k >= len(order):
            break
        k = min(len(order), k + max(1, math.ceil(k / 4)))
    if not met:
        log.warning("the accuracy budget is not met (%s) with %d of %d layers in float",
                    reason, k, len(order))
    return result, metrics, k, met, reason


def float_nodes(raised: Sequence[Layer], layers: Sequence[Layer]) -> list[str]:
    """Node names to keep in float for `raised`, as the switch model measured them.

    Their units, and the moves after them (Reshape, Flatten, ...) that no int8 layer reads.
    """
    ids = {id(layer) for layer in raised}
    int8_reads = {t.name for layer in layers if id(layer) not in ids
                  for u in (layer.unit, *layer.moves) for t in u.inputs}
    names = []
    for layer in raised:
        names += [n.name for n in layer.unit.nodes]
        names += [n.name for m in layer.moves
                  if not any(t.name in int8_reads for t in m.outputs) for n in m.nodes]
    return names


def _finish(report: dict[str, Any], after: Metrics, raised: Sequence[tuple[Layer, Metrics]],
            met: bool, reason: str, scorer: _Scorer, rank_evals: int, start: float,
            to: str = "float", wide_weights: bool = False) -> dict[str, Any]:
    total = sum(unit_macs(layer.unit) for layer in scorer.layers) or 1
    rows = [{"name": layer.unit.anchor.name, "op": layer.unit.anchor.op,
             "nodes": [n.name for n in layer.unit.nodes], "macs": unit_macs(layer.unit),
             "to": to, "alone": alone.to_dict(),
             "weights": "float" if to == "float" else "int16" if wide_weights and
             layer.unit.kind in WEIGHTED_KINDS else "int8",
             "flags": report.get("flagged", {}).get(layer.unit.anchor.name, [])}
            for layer, alone in raised]
    macs = sum(r["macs"] for r in rows)
    n, samples = len(scorer.layers), report["samples"]
    ranking = report.get("ranking", {"samples": 0, "evaluations": 0})
    return {**report, "met": met, "reason": reason, "after": after.to_dict(),
            "raised": rows, "layers": n, "macs_raised": macs, "macs_raised_share": macs / total,
            "evaluations": {"total": scorer.evaluations + scorer.confirmations + rank_evals,
                            "ranking": rank_evals, "search": scorer.evaluations,
                            "confirm": scorer.confirmations},
            # the cost in sample-forwards, against a sweep of every layer on all the data
            "sample_runs": (scorer.evaluations + scorer.confirmations) * samples
            + rank_evals * ranking["samples"],  # both rankings run on the same samples
            "full_sweep_sample_runs": n * samples,
            "time_s": round(time.perf_counter() - start, 3)}
