"""Pruning rate chosen by an accuracy budget: the fewest MACs whose int8 model meets it.

With a budget (`passes.quantize.budget.Budget`) and `--target-macs F`, F becomes the floor
of a search instead of the goal: `prune_within_budget` tries MAC fractions on a grid from F
up to 1 (steps of `STEP`), and bisects for the smallest fraction whose pruned (and
reconstructed) model, quantized all-int8, meets the budget against the *unpruned float*
model on the budget data. Each try is a full `prune_model` run with the configured options
(criterion, reconstruction, ...) and a `quantize_model` run; the metric is measured as the
quantize budget loop measures it (`int8_metrics`). The quantize stage's own budget loop then
runs on the chosen model (one evaluation when it already meets the budget).

Assumes that keeping more MACs never hurts (bisection); the report lists every fraction
tried with its metrics, so a violation is visible.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

from compiler.core.errors import ConfigError
from compiler.core.executor import ExecutorOptions
from compiler.core.feeds import load_feeds
from compiler.core.ir import Model
from compiler.core.pass_manager import Pass, PassResult
from passes.canonicalize import canonicalize
from passes.prune.pipeline import PruneOptions, prune_model
from passes.quantize.api import quantize_model
from passes.quantize.budget import Budget, int8_metrics
from passes.quantize.fidelity import Correct, Reference

log = logging.getLogger(__name__)

STEP = 0.05
"""Grid of MAC fractions tried between the floor and 1."""


def grid(floor: float, step: float = STEP) -> list[float]:
    """MAC fractions from `floor` up to 1 in steps of `step` (both ends included)."""
    n = math.ceil(round((1.0 - floor) / step, 9))
    return list(dict.fromkeys(round(min(1.0, floor + i * step), 6) for i in range(n + 1)))


def prune_within_budget(model: Model, calib: Any, budget: Budget, options: PruneOptions,
                        data: Any = None, *, correct: Correct | None = None,
                        quantize_options: dict[str, Any] | None = None, batch_size: int = 8,
                        executor: ExecutorOptions | None = None
                        ) -> tuple[Model, dict[str, Any]]:
    """The most pruned model (on the grid above `options.target_macs`) within `budget`.

    Args:
        model: The float model (not modified).
        calib: Calibration data (pruning criteria, reconstruction, quantization).
        budget: The accuracy budget (`Budget.active`).
        options: Prune options; `target_macs` is the floor of the search.
        data: Data the budget is measured on (default: the calibration data).
        correct: Scores non-class labels (OCR).
        quantize_options: `quantize_model` keywords for the trial quantizations.
        batch_size: Samples per onnxruntime run.
        executor: Passed to `prune_model` (ABC search workers).

    Returns:
        (pruned model, prune report with a "budget" entry: fraction chosen, tries).

    Raises:
        ConfigError: No target_macs or no budget.
    """
    if options.target_macs is None or not budget.active:
        raise ConfigError("a pruning budget needs --target-macs (the floor) and --max-drop, "
                          "--min-cosine or --min-agreement")
    start = time.perf_counter()
    canonical = canonicalize(model).model
    ref = Reference(canonical, load_feeds(calib if data is None else data, canonical),
                    batch_size, correct)
    if budget.max_drop is not None and ref.labels is None:
        raise ConfigError("--max-drop needs labelled data: give --budget-data LABELLED")
    fractions = grid(options.target_macs)
    tries: dict[float, tuple[Model, dict, dict]] = {}

    def attempt(f: float) -> bool:
        pruned, report = prune_model(model, replace(options, target_macs=f), calib=calib,
                                     executor=executor)
        quant = quantize_model(pruned, calib, **{"batch_size": batch_size,
                                                 **(quantize_options or {})})
        m = int8_metrics(quant, ref)
        ok, reason = budget.check(m, ref.float_metrics.accuracy)
        tries[f] = (pruned, report, {"fraction": f, "macs": report["macs"]["ratio"],
                                     "met": ok, "reason": reason, **m.to_dict()})
        return ok

    lo, hi = -1, len(fractions) - 1  # lo: misses (or none tried), hi: meets (assumed at 1)
    if not attempt(fractions[0]):
        lo = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt(fractions[mid]):
                hi = mid
            else:
                lo = mid
        if fractions[hi] not in tries:
            attempt(fractions[hi])
    else:
        hi = 0
    chosen = fractions[hi]
    pruned, report, row = tries[chosen]
    if not row["met"]:
        log.warning("no pruning rate meets the accuracy budget (%s even at %.0f%% of the "
                    "MACs); the quantize stage's budget loop takes over", row["reason"],
                    100 * chosen)
    report["budget"] = {"budget": budget.to_dict(), "floor": options.target_macs,
                        "chosen": chosen, "met": row["met"], "samples": ref.samples,
                        "float_accuracy": ref.float_metrics.accuracy,
                        "tries": [tries[f][2] for f in sorted(tries)],
                        "time_s": round(time.perf_counter() - start, 3)}
    return pruned, report


class BudgetPrune(Pass):
    """Pass wrapper around `prune_within_budget` (changes the model's function)."""

    preserves_function = False

    def __init__(self, options: PruneOptions, calib: Any, budget: Budget, data: Any = None,
                 *, correct: Correct | None = None,
                 quantize_options: dict[str, Any] | None = None,
                 executor: ExecutorOptions | None = None) -> None:
        self.options, self.calib, self.budget, self.data = options, calib, budget, data
        self.correct, self.quantize_options = correct, quantize_options
        self.executor = executor

    def call(self, model: Model) -> PassResult:
        """Prune to the budget; `info` is the prune report with its "budget" entry."""
        pruned, report = prune_within_budget(
            model, self.calib, self.budget, self.options, self.data, correct=self.correct,
            quantize_options=self.quantize_options, executor=self.executor)
        modified = any(r["after"] < r["before"] for r in report["groups"])
        return PassResult(pruned, modified, report)
