"""The stages of `npuc compile`, each a plain function of the `CompileState`.

`model_passes` lists the `Pass` objects the pipeline's `PassManager` runs (the same classes
the step commands run); `AFTER_PASS` keeps each pass's result in the state and writes its
output files; `compiler.driver.target_stages` holds the stages after the passes.
Every stage returns a one-line detail for the report. Heavy modules are imported inside
the stages so `npuc --help` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.core.checked_save import save_checked
from compiler.core.cost import model_cost
from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from compiler.core.pass_manager import Pass, PassResult
from compiler.core.shapes import DataShapes
from compiler.driver.config import step_options
from compiler.driver.context import CompileState
from compiler.driver.outputs import write_quantized
from compiler.driver.sources import resolve_model

if TYPE_CHECKING:
    from compiler.core.feeds import Feeds, Preprocess

log = logging.getLogger(__name__)

Step = Callable[[CompileState], str | None]

# Calibration and evaluation data for the bundled models, used when the config gives none.
BUNDLED_DATA = {
    "fmnist_resnet": ("fmnist-calib", "fmnist-eval"),
    "fmnist_mobilenetv2": ("fmnist-calib", "fmnist-eval"),
    "efficientnet_lite0": ("photos", None),
    "ppocr_rec": ("text-lines", "text-lines"),
}


def load(state: CompileState) -> str:
    """Load the input model (shapes bound: `input.shape`, else batch 1) and the data."""
    source = state.source
    if isinstance(source, (str, Path)):
        source = resolve_model(source)
    shapes = step_options(state.config, "shape").spec or data_shapes(state)
    state.model = load_model(source, input_shapes=shapes, bind=True)
    if needs_calibration(state.config):
        state.calib = calibration_feeds(state)
    return f"{len(state.model.nodes)} nodes, opset {state.model.opset}"


def data_shapes(state: CompileState) -> DataShapes | None:
    """Without `input.shape`: the shapes of an .npy/.npz calibration file (`DataShapes`)."""
    from compiler.core.npfiles import array_shapes

    source = state.calib_source or state.config["calibration.data"]
    if isinstance(source, (str, Path)) and str(source).endswith((".npy", ".npz")) \
            and Path(source).is_file():
        return DataShapes(array_shapes(Path(source)))
    return None


def needs_calibration(c: dict[str, Any]) -> bool:
    """Whether any enabled stage reads calibration data."""
    from passes.prune.pipeline import needs_calib as prune_needs
    from passes.sparsify.sparsify import needs_calib as sparsify_needs

    prune = c["prune.enabled"] and prune_needs(step_options(c, "prune"))
    sparsify = c["sparsify.enabled"] and sparsify_needs(step_options(c, "sparsify"))
    return bool(c["quantize.enabled"] or prune or sparsify)


def bundled_name(state: CompileState) -> str | None:
    """The bundled model name when the input is one, else None."""
    source = state.source
    return source if isinstance(source, str) and source in BUNDLED_DATA else None


def calibration_feeds(state: CompileState) -> Feeds:
    """Calibration data from the config or the bundled model's default, converted once."""
    from compiler.driver.data import load_data

    source = state.calib_source
    if source is None:
        source = state.config["calibration.data"]
    if source is None and bundled_name(state):
        source = BUNDLED_DATA[bundled_name(state)][0]
    if source is None:
        raise ConfigError("calibration.data is required (a folder of images, an .npy/.npz "
                          "file or a dataset name)")
    return load_data(source, state.model, limit=state.config["calibration.limit"],
                     preprocess=preprocess(state.config))


def preprocess(config: dict[str, Any]) -> Preprocess:
    """The image preprocessing the config describes."""
    return step_options(config, "input")


def eval_source(state: CompileState) -> str | None:
    """Labelled evaluation data from the config or the bundled model's default."""
    source = state.config["eval.data"]
    if source is None and bundled_name(state):
        source = BUNDLED_DATA[bundled_name(state)][1]
    return source


# -- the model passes ------------------------------------------------------------------------

def model_passes(state: CompileState) -> list[tuple[str, Pass]]:
    """(stage name, pass) for every model pass this configuration enables, in order."""
    from passes.canonicalize import Canonicalize

    c = state.config
    chosen: list[tuple[str, Pass]] = [("canonicalize", Canonicalize())]
    budget, data = _budget(state)
    if c["prune.enabled"]:
        chosen.append(("prune", _prune_pass(state, budget, data)))
    if c["sparsify.enabled"]:
        from passes.sparsify.sparsify import BlockSparsify

        # The float teacher is the canonical original (set once canonicalize has run), so
        # the 1xN re-fit also compensates the pruning error.
        chosen.append(("sparsify", BlockSparsify.from_options(
            step_options(c, "sparsify"), state.calib, teacher=lambda: state.original)))
    if c["quantize.enabled"]:
        chosen.append(("quantize", quantize_pass(state, budget_data=data)))
    return chosen


def _budget(state: CompileState) -> tuple[Any, Feeds | None]:
    """The stated accuracy budget (None: none) and its data (None: the calibration data)."""
    from compiler.driver.budget import budget_feeds
    from passes.quantize.budget import Budget

    options = step_options(state.config, "quantize")
    budget = Budget.from_options(options)
    if not budget.active:
        return None, None
    return budget, budget_feeds(options, state.model, preprocess(state.config))


def _prune_pass(state: CompileState, budget: Any, data: Feeds | None) -> Pass:
    """ChannelPrune; with a budget and prune.target_macs, the budget chooses the rate."""
    c = state.config
    options, executor = step_options(c, "prune"), step_options(c, "executor")
    if budget is None or options.target_macs is None or not c["quantize.enabled"]:
        from passes.prune.pipeline import ChannelPrune

        return ChannelPrune(options, calib=state.calib, executor=executor)
    from compiler.driver.budget import correct_for
    from passes.prune.budget import BudgetPrune
    from passes.quantize.api import quantize_kwargs

    qopts = quantize_kwargs(step_options(c, "calibration"), step_options(c, "quantize"))
    qopts = {k: v for k, v in qopts.items() if k != "table"}  # the table is the final model's
    return BudgetPrune(options, state.calib, budget, data, correct=correct_for(data),
                       quantize_options=qopts, executor=executor)


def quantize_pass(state: CompileState, *, saved_table: bool = True,
                  budget_data: Feeds | None = None) -> Pass:
    """The `Quantize` pass with the configured calibrator and options.

    `saved_table=False` ignores calibration.table (it describes the compressed model, not
    the uncompressed baseline) and the accuracy budget (the baseline is all-int8).
    `budget_data`: the data the budget is measured on (None: the calibration data).
    """
    from compiler.driver.budget import correct_for
    from passes.quantize.quantize_pass import Quantize

    calibration = step_options(state.config, "calibration")
    options = step_options(state.config, "quantize")
    if not saved_table:
        calibration = replace(calibration, table=None)
        options = replace(options, max_drop=None, min_cosine=None, min_agreement=None)
    return Quantize.from_options(state.calib, calibration, options, budget_feeds=budget_data,
                                 correct=correct_for(budget_data),
                                 reference=lambda: state.original)


def after_canonicalize(state: CompileState, result: PassResult) -> str:
    """The canonical model is the float reference for every later comparison."""
    state.model, state.original = result.model, result.model.copy()
    state.cost_before = model_cost(state.original)
    return f"{len(state.model.nodes)} nodes after folding"


def after_prune(state: CompileState, result: PassResult) -> str:
    """Keep the pruned model and its report; write model.pruned.onnx."""
    state.model, state.prune = result.model, result.info
    _save_float(state, "pruned", "model.pruned.onnx")
    macs = state.prune["macs"]
    return f"MACs {macs['before']:,} -> {macs['after']:,} ({macs['ratio']:.1%})"


def after_sparsify(state: CompileState, result: PassResult) -> str:
    """Keep the sparse model and its report; write model.sparse.onnx."""
    state.model, state.sparsify = result.model, result.info
    _save_float(state, "sparse", "model.sparse.onnx")
    return f"1x{state.sparsify['block']} blocks at {state.config['sparsify.sparsity']:.0%}"


def after_quantize(state: CompileState, result: PassResult) -> str:
    """Write model.quant.onnx, model.qdq.onnx, calibration.json; compare per layer.

    The float model stays `state.model` (the report compares float layers).
    """
    quant = state.quant = result.info["result"]
    if "budget" in result.info:
        from compiler.driver.budget import budget_costs

        state.budget = {**result.info["budget"], "costs": budget_costs(
            result.info["budget_baseline"], quant, state.config["target.arch"],
            state.config["target.frames"])}
    written = write_quantized(state.out_dir, quant)
    state.files.update(zip(("quant", "qdq", "calibration"), written, strict=True))
    state.compare_layers = _compare_layers(state)
    ops = quant.report.get("op_counts", {})
    return f"{sum(ops.values()) if ops else len(quant.qgraph.ops)} quantized ops"


AFTER_PASS: dict[str, Callable[[CompileState, PassResult], str]] = {
    "canonicalize": after_canonicalize, "prune": after_prune, "sparsify": after_sparsify,
    "quantize": after_quantize}


def _save_float(state: CompileState, role: str, filename: str) -> None:
    state.files[role] = save_checked(state.model, state.out_dir / filename)


def _compare_layers(state: CompileState) -> list[dict]:
    """Per-layer cosine of the int8 model (dequantized) against the float model it came from."""
    from passes.quantize.api import pristine_float
    from passes.quantize.compare import compare_models_on_data

    # the float model as given: `quant.float_model` holds biases that bias correction moved
    report = compare_models_on_data(pristine_float(state.model, state.quant),
                                    state.quant.quant_model, state.calib.take(32))
    return [row.to_dict() for row in report.outputs + report.layers]


__all__ = ["AFTER_PASS", "BUNDLED_DATA", "Step", "model_passes"]
