"""The 16-bit stage of the accuracy budget loop (passes/quantize/budget.py, module doc).

Layers leave int8 for 16 bits, still on the NPU, before any goes to float: A16W8 (int16
activations, docs/fixed-point.md §16; tables read int16 through interpolated knots, §18) or
A16W16 (int16 weights too, §17). Each precision whose ceiling meets the budget gets a plan
(ranking by error per MAC pass added, bisection on the switch model's stand-in); the plan
adding the fewest MAC passes is confirmed on the written integer model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.core.executor import ExecutorOptions
from compiler.core.feeds import Feeds
from compiler.core.qops import by_unit_kind, op_def
from passes.quantize.build import WEIGHTED_KINDS
from passes.quantize.fidelity import Metrics, Reference, integer_metrics
from passes.quantize.sensitivity import score_configs, unit_macs
from passes.quantize.switch import Layer

log = logging.getLogger(__name__)

MAX_ROUNDS = 6
"""Re-quantizations after the search before the loop gives up and keeps what it has."""


def sixteen_bit_mac_share(qgraph: Any) -> float:
    """Share of a QGraph's MACs whose input or weights are int16 (§16, §17: 2-4 passes)."""
    total = wide = 0
    for op in qgraph.ops:
        macs = op_def(op.kind).work(op, qgraph).macs if hasattr(op, "weight") else 0
        total += macs
        if macs and (np.asarray(op.weight).dtype == np.int16 or any(
                qgraph.tensor(t).dtype == "int16" for t in op.inputs[:1])):
            wide += macs
    return wide / total if total else 0.0


@dataclass
class Stage:
    """Outcome of a stage of the loop (the weights stage, the 16-bit stage)."""

    met: bool = False
    result: Any = None  # QuantResult
    after: Metrics | None = None
    reason: str = ""
    raised: list[tuple[Layer, Metrics]] = field(default_factory=list)
    ranked: list[tuple[Layer, Metrics]] = field(default_factory=list)
    evaluations: int = 0  # ranking evaluations (the scorer counts the rest)
    report: dict[str, Any] = field(default_factory=dict)


def int16_capable(layer: Layer) -> bool:
    """The layer's op reads and writes int16 (A16W8, docs/fixed-point.md §16)."""
    d = by_unit_kind(layer.unit.kind)
    return d.int16_input and d.int16_output


def wide_weight_points(layer: Layer) -> list[int]:
    """The switch points of a layer's weights when they can be int16 (W16, §17), else []."""
    if layer.unit.kind not in WEIGHTED_KINDS:
        return []
    outputs = set(layer.outputs)
    return [p for p in layer.own if p not in outputs]


def int16_stage(run: Any, feeds: Feeds, rank_samples: int,
                 executor: ExecutorOptions | None, flags: dict[str, list[str]]) -> Stage:
    """Raise layers to int16 (module doc); `met` False when int16 cannot meet the budget.

    Both 16-bit precisions are planned where their ceiling meets the budget: A16W8 (int16
    activations) and A16W16 (int16 weights too). Each is ranked and bisected on its own
    stand-in; the plan adding the fewest MAC-array passes (`_Plan.extra_passes`, the perf
    model's rule: one pass per byte of activations times digit of weights) is confirmed
    first, the other if it misses.

    Flagged layers (`sensitivity.layer_flags`: decoding heads, outlier-dominated ranges)
    come first in the order, whatever their cost on the ranking samples: int16 is the
    remedy peers apply to them by hand, and a few ranking samples can miss the rare inputs
    that make them costly (an outlier, a box far from the ones seen).
    """
    sc, fa = run.scorer, run.ref.float_metrics.accuracy
    capable = [layer for layer in sc.layers if int16_capable(layer)]
    if not capable:
        return Stage(report={"tried": False, "reason": "no layer can run in int16"})
    report: dict[str, Any] = {"tried": True, "capable": len(capable)}
    meets, why = [], ""
    for weights, key in ((False, "ceiling"), (True, "ceiling_w16")):
        ceiling = sc.score(sc.widened(capable, weights))
        report[key] = ceiling.to_dict()
        ok, reason = run.budget.check(ceiling, fa)
        meets += [weights] if ok else []
        why = why or reason
    if not meets:
        log.info("int16 cannot meet the budget (every int16-capable layer in int16, also "
                 "with int16 weights: %s); raising layers to float", why)
        return Stage(reason=why, report={**report, "reason": why})
    rank_ref = Reference(sc.fm, feeds.take(rank_samples), run.batch_size, run.ref.correct)
    plans = sorted((_plan(run, capable, weights, rank_ref, executor, flags)
                    for weights in meets), key=_Plan.extra_passes)
    report["plans"] = [p.to_dict(sc) for p in plans]
    report["ranking"] = {"samples": min(rank_samples, len(feeds)),
                         "evaluations": sum(len(p.ranked) for p in plans)}
    for plan in plans:
        order = [layer for layer, _ in plan.ranked]
        result, after, k, met, reason = _confirm_int16(run, order, plan.k, plan.weights)
        if met:
            break
    report["precision"] = "A16W16" if plan.weights else "A16W8"
    return Stage(met, result, after, reason, plan.ranked[:k], plan.ranked,
                  report["ranking"]["evaluations"], {**report, "met": met, "reason": reason})


@dataclass
class _Plan:
    """One 16-bit precision's raising order and the bisected number of layers."""

    weights: bool  # A16W16 (int16 weights too), else A16W8
    ranked: list[tuple[Layer, Metrics]]
    k: int

    def extra_passes(self) -> int:
        """MACs run again on top of int8 (A16W8: once more; A16W16: 3 more, 2 x 2 bytes)."""
        return sum(unit_macs(layer.unit) * (3 if self.weights else 1)
                   for layer, _ in self.ranked[:self.k])

    def to_dict(self, sc: Any) -> dict[str, Any]:
        total = sum(unit_macs(layer.unit) for layer in sc.layers) or 1
        return {"precision": "A16W16" if self.weights else "A16W8", "layers": self.k,
                "macs_share": sum(unit_macs(lay.unit) for lay, _ in self.ranked[:self.k])
                / total, "extra_passes": self.extra_passes()}


def _plan(run: Any, capable: list[Layer], weights: bool, rank_ref: Reference,
          executor: ExecutorOptions | None, flags: dict[str, list[str]]) -> _Plan:
    """Rank the capable layers by their 16-bit points' cost alone, bisect on the stand-in."""
    sc, fa = run.scorer, run.ref.float_metrics.accuracy
    configs = []
    for layer in capable:
        on = np.zeros(sc.count, np.bool_)
        on[layer.activations] = True
        if weights:
            on[wide_weight_points(layer)] = True
        configs.append(on)
    metrics = score_configs(sc.fm, sc.result.qgraph, rank_ref, configs, executor, run.keep,
                            f"budget (ranking {'A16W16' if weights else 'A16W8'})")
    total = sum(unit_macs(layer.unit) for layer in sc.layers)
    ranked = flagged_first(zip(capable, metrics, strict=True), flags,
                           lambda lm: -error_per_pass(lm[0], lm[1], weights, total))
    order = [layer for layer, _ in ranked]
    lo, hi = 0, len(order)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run.budget.check(sc.score(sc.widened(order[:mid], weights)), fa)[0]:
            hi = mid
        else:
            lo = mid
    return _Plan(weights, ranked, hi)


def error_per_pass(layer: Layer, alone: Metrics, weights: bool, total_macs: int) -> float:
    """A layer's 16-bit raising order: its error alone (1 - cosine) per MAC it adds.

    The int16 stages minimise the MAC passes added, so a layer that costs little to raise
    comes before a big one of the same error (HAWQ-style sensitivity per cost). Layers
    without MACs (Add, pooling, tables: vector work) cost a thousandth of the model's MACs.
    Cosine rather than flips: on the ranking samples most layers flip none or one.
    """
    macs = unit_macs(layer.unit) * (3 if weights else 1)
    return (1.0 - alone.cosine) / (macs + total_macs / 1000 + 1)


def flagged_first(layers: Iterable[tuple[Layer, Metrics]], flags: Collection[str],
                  key: Callable[[tuple[Layer, Metrics]], Any]) -> list[tuple[Layer, Metrics]]:
    """(layer, cost alone) pairs in raising order: flagged anchors first, then by `key`."""
    return sorted(layers, key=lambda lm: (lm[0].unit.anchor.name not in flags, key(lm)))


def _confirm_int16(run: Any, order: list[Layer], k: int, weights: bool = False
                   ) -> tuple[Any, Metrics, int, bool, str]:
    """Re-quantize with the k worst layers in int16; widen until the real model meets.

    The widening step doubles from one layer (an exponential search): a miss at the noise
    floor of a small budget set costs one more layer, a real shortfall still closes in
    MAX_ROUNDS (k + 63 at most).

    `weights`: their Conv/Gemm/MatMul weights in int16 too (A16W16).
    """
    result, metrics, met, reason = run.base, None, False, ""
    step = 1  # +1, +2, +4, ...: at a budget's noise floor one more layer usually suffices
    for _ in range(MAX_ROUNDS):
        names = tuple(n.name for layer in order[:k] for n in layer.unit.nodes[:1])
        wide = tuple(layer.unit.anchor.name for layer in order[:k]
                     if weights and layer.unit.kind in WEIGHTED_KINDS)
        result = run.quantize(int16=names, int16_weights=wide)
        metrics = integer_metrics(result, run.ref)
        run.scorer.confirmations += 1
        met, reason = run.budget.check(metrics, run.ref.float_metrics.accuracy)
        if met or k >= len(order):
            break
        k, step = min(len(order), k + step), step * 2
    return result, metrics, k, met, reason
