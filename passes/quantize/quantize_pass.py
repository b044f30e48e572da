"""The `Quantize` pass: `quantize_model`, or the accuracy budget loop when one is stated.

The algorithms are plain functions (`passes.quantize.api.quantize_model`,
`passes.quantize.budget.quantize_within_budget`); this is the thin wrapper the compile
pipeline's PassManager runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compiler.core.ir import Model
from compiler.core.pass_manager import Pass, PassResult
from passes.quantize.api import quantize_kwargs, quantize_model
from passes.quantize.budget import Budget, quantize_within_budget
from passes.quantize.options import DEFAULT_CALIBRATOR, CalibrationOptions, QuantizeOptions


class Quantize(Pass):
    """Pass wrapper: float model -> integer ONNX model (`model.quant.onnx`).

    The full result (QDQ model, QGraph, table, report) is in `PassResult.info["result"]`.
    With an accuracy budget (`passes.quantize.budget`), the loop chooses which layers stay
    in float; its report is `info["budget"]` and the all-int8 result it started from
    `info["budget_baseline"]`.
    """

    preserves_function = False

    def __init__(self, calib_feeds: Any = None, calibrator: str = DEFAULT_CALIBRATOR, *,
                 budget: Any = None, budget_feeds: Any = None, correct: Any = None,
                 reference: Callable[[], Model | None] | None = None,
                 **options: Any) -> None:
        self.calib_feeds = calib_feeds
        self.calibrator = calibrator
        self.budget, self.budget_feeds, self.correct = budget, budget_feeds, correct
        self.reference = reference  # called when the pass runs: the float teacher by then
        self.options = options

    @classmethod
    def from_options(cls, calib_feeds: Any, calibration: CalibrationOptions,
                     options: QuantizeOptions, *, budget_feeds: Any = None,
                     correct: Any = None,
                     reference: Callable[[], Model | None] | None = None) -> Quantize:
        """The pass for typed options (what `npuc compile` builds).

        Args:
            calib_feeds: Calibration data.
            calibration: `calibration.*` options.
            options: `quantize.*` options (an accuracy budget among them is honoured).
            budget_feeds: Data the budget is measured on (default: the calibration data).
            correct: Scores non-class labels of `budget_feeds` (`fidelity.Correct`).
            reference: Returns the float model the budget compares with when the pass
                runs (the uncompressed model in a pipeline); None: the model quantized.
        """
        kwargs = quantize_kwargs(calibration, options)
        budget = Budget.from_options(options)
        return cls(calib_feeds, kwargs.pop("calibrator"), budget=budget if budget.active
                   else None, budget_feeds=budget_feeds, correct=correct,
                   reference=reference, **kwargs)

    def call(self, model: Model) -> PassResult:
        """Quantize `model` (within the budget when one is stated)."""
        if self.budget is None:
            result = quantize_model(model, self.calib_feeds, self.calibrator, **self.options)
            return PassResult(result.quant_model, True, {**result.report, "result": result})
        out = quantize_within_budget(model, self.calib_feeds, self.budget, self.budget_feeds,
                                     correct=self.correct, calibrator=self.calibrator,
                                     reference=self.reference and self.reference(),
                                     **self.options)
        return PassResult(out.result.quant_model, True,
                          {**out.result.report, "result": out.result, "budget": out.report,
                           "budget_baseline": out.baseline})
