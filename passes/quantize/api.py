"""`quantize_model`: float ONNX + calibration data -> integer ONNX, QDQ ONNX, QGraph, table.

Stages (torch.ao / TVM QNN style): canonicalize → optional CLE → optional bias correction →
partition into int8 units / CPU nodes → calibrate the tensors that need a scale (streaming)
→ build the QGraph → emit `model.quant.onnx` and `model.qdq.onnx`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx_graphsurgeon as gs

from compiler.core import qgraph as q
from compiler.core.errors import ConfigError
from compiler.core.feeds import Feeds, load_feeds
from compiler.core.fixedpoint import fake_quant_weights
from compiler.core.io import ModelSource, ShapeArg, load_model, model_hash
from compiler.core.ir import Model
from compiler.core.progress import collect_timings, timed
from compiler.core.qonnx import load_lean, release_memory
from compiler.core.shape_inference import refresh_shapes
from passes.canonicalize import canonical_passes
from passes.quantize.absmax import abs_max_ranges
from passes.quantize.build import build_qgraph, calibration_tensors, wide_weight_layers
from passes.quantize.calibrate import METHODS, CalibrationTable, collect_states
from passes.quantize.emit_int import emit_int
from passes.quantize.emit_qdq import emit_qdq
from passes.quantize.options import (
    DEFAULT_CALIB_LIMIT,
    DEFAULT_CALIBRATOR,
    DEFAULT_PERCENTILE,
    ROUNDINGS,
    CalibrationOptions,
    QuantizeOptions,
)
from passes.quantize.patterns import partition

log = logging.getLogger(__name__)


@dataclass
class QuantResult:
    """Everything `quantize_model` produces.

    Attributes:
        quant_model: Integer ONNX model (`model.quant.onnx`) with the QGraph embedded.
        qdq_model: QuantizeLinear/DequantizeLinear model (`model.qdq.onnx`).
        qgraph: The typed quantized graph.
        table: The calibration table (thresholds and scales per tensor).
        float_model: The canonical float model the QGraph was built from (after CLE/BC).
        report: Per-node placement (`nodes`), op counts, CPU reasons, timings.
    """

    quant_model: Model
    qdq_model: Model
    qgraph: q.QGraph
    table: CalibrationTable
    float_model: Model
    report: dict[str, Any] = field(default_factory=dict)


def prepare_float(model: ModelSource, *, cle: bool = False,
                  input_shapes: ShapeArg = None) -> Model:
    """Load (copy), canonicalize, optionally equalize, and re-infer shapes.

    With `input_shapes` (a spec, possibly empty) every input is bound at load
    (`compiler.core.io.load_model`); None loads the model as it is.
    """
    bind = {"input_shapes": input_shapes, "bind": input_shapes is not None}
    with timed("load"):
        if isinstance(model, (str, os.PathLike)):
            m = load_lean(model, **bind)
        else:
            m = load_model(model, **bind)
    with timed("canonicalize"):
        m = canonicalize_in_place(m)
        if cle:
            from passes.quantize.equalize import equalize
            m = equalize(m)
        if not _all_typed(m):  # on the weightless skeleton: no copy of the weights
            refresh_shapes(m)
    return m


def pristine_float(model: ModelSource, result: QuantResult,
                   input_shapes: ShapeArg = None) -> Model:
    """The canonical float model of `result` without GPTQ rounding or bias correction.

    `result.float_model` holds the adjusted weights when either was used; measuring
    against it would hide the weights' quantization error, so this reloads `model`.
    """
    info = result.qgraph.info
    if info.get("rounding", "nearest") == "nearest" and not info.get("bias_correction"):
        return result.float_model
    return prepare_float(model, cle=bool(info.get("cle")), input_shapes=input_shapes)


def canonicalize_in_place(model: Model, rounds: int = 10) -> Model:
    """`passes.canonicalize.canonicalize` without the PassManager's defensive copy.

    The model was loaded by us, so nobody else holds it; skipping the copy halves the peak
    memory of this stage for large models.
    """
    for _ in range(rounds):
        modified = False
        for p in canonical_passes():
            result = p(model)
            model, modified = result.model, modified or result.modified
        if not modified:
            break
    release_memory()  # replaced weights sit in node<->tensor reference cycles: free them now
    return model


def _all_typed(m: Model) -> bool:
    return all(t.dtype is not None and t.shape is not None
               for t in m.graph.tensors().values() if isinstance(t, gs.Variable))


def _thresholds(model: Model, feeds: Feeds | None, names: list[str], calibrator: str,
                table: CalibrationTable | None, batch_size: int,
                opts: dict[str, Any], digest: str) -> CalibrationTable:
    if table is not None:
        missing = [n for n in names if n not in table.thresholds]
        if missing:
            raise ConfigError(f"calibration table lacks {len(missing)} tensor(s) of this model, "
                              f"e.g. {missing[:3]} (made for another model or options?)")
        return table
    if feeds is None:
        raise ConfigError("calibration data is required (--calib) unless a table is given")
    if calibrator == "max":  # same thresholds (any precision), reduced inside onnxruntime
        ranges = abs_max_ranges(model, feeds, names, batch_size)
        return CalibrationTable(calibrator, ranges, digest, dict(opts),
                                dict.fromkeys(ranges, "int8"))
    states = collect_states(model, feeds, names, calibrator, batch_size, **opts)
    return CalibrationTable.from_states(calibrator, states, digest, opts)


def quantize_model(model: ModelSource, calib_feeds: Any = None,
                   calibrator: str = DEFAULT_CALIBRATOR, *,
                   percentile: float | None = DEFAULT_PERCENTILE, cle: bool = False,
                   bias_correction: bool = True, rounding: str = "nearest",
                   keep_float: Sequence[str] = (),
                   unsigned: bool = True,
                   int16: Sequence[str] = (),
                   int16_weights: Sequence[str] = (),
                   table: CalibrationTable | str | Path | None = None,
                   batch_size: int = 8,
                   calib_limit: int | None = DEFAULT_CALIB_LIMIT,
                   input_shapes: ShapeArg = None) -> QuantResult:
    """Post-training symmetric int8 quantization (docs/quantization.md).

    Args:
        model: Float model (path, ModelProto or IR Model; never modified).
        calib_feeds: Calibration data (anything `compiler.core.feeds.load_feeds` accepts).
        calibrator: "max", "percentile", "kl" or "mse" (default: `DEFAULT_CALIBRATOR`).
        percentile: Percentile for the "percentile" calibrator (None: the default 99.99);
            another value with another calibrator is an error.
        cle: Cross-layer equalization before quantizing.
        bias_correction: Correct each int8 layer's bias for the mean error of its int8
            weights, measured on the calibration data (passes/quantize/bias_correction.py);
            without data, the shifts saved in `table` (none: skipped).
        rounding: Weight rounding: "nearest", or "gptq" (error-compensating, needs data;
            passes/quantize/rounding.py).
        keep_float: Names of nodes to leave in float on the CPU (mixed precision), e.g. a
            classifier whose int8 logits cost too much accuracy.
        unsigned: uint8 (zero point 0) for tensors that are never negative
            (docs/fixed-point.md §15); False: all-int8.
        int16: Names of nodes whose layers read and write int16 activations with int8
            weights (A16W8, docs/fixed-point.md §16).
        int16_weights: Names of nodes whose Conv/Gemm/MatMul layers get int16 weights (W16,
            §17; with `int16` on the same layers A16W16). Neither GPTQ-rounded nor
            bias-corrected: their rounding error is 1/256 of int8's.
        table: A saved calibration table (or its path) to use instead of calibrating.
        batch_size: Calibration batch size (models with a symbolic batch).
        calib_limit: Use at most this many calibration samples (None: all).
        input_shapes: Bind the inputs at load (`--input-shape`: `{name: dims}` or a
            `1x3x224x224` string; an empty spec binds a symbolic batch to 1); None: as is.

    Defaults are declared once in `passes.quantize.options` (CalibrationOptions,
    QuantizeOptions).

    Raises:
        ConfigError: Unknown calibrator/option, or a table missing tensors.
        DataError: Calibration data of the wrong shape/dtype, empty, or with NaN/Inf.
        GraphError: NaN/Inf weights, or a graph that cannot be represented.
    """
    if calibrator not in METHODS:
        raise ConfigError(f"unknown calibrator {calibrator!r} (valid: {', '.join(METHODS)})")
    pct = DEFAULT_PERCENTILE if percentile is None else percentile
    if pct != DEFAULT_PERCENTILE and calibrator != "percentile":
        raise ConfigError("--percentile only applies to the percentile calibrator")
    opts = {"percentile": pct} if calibrator == "percentile" else {}
    if rounding not in ROUNDINGS:
        raise ConfigError(f"unknown rounding {rounding!r} (valid: {', '.join(ROUNDINGS)})")
    start = time.perf_counter()
    with collect_timings() as timings:
        fm = prepare_float(model, cle=cle, input_shapes=input_shapes)
        with timed("feeds"):
            feeds = None if calib_feeds is None else load_feeds(calib_feeds, fm,
                                                               limit=calib_limit)
        keep = _keep_float_names(fm, keep_float)
        units = partition(fm.graph, keep)
        wide = wide_weight_layers(units, int16_weights)
        int8 = {u.anchor.name for u in units if u.kind != "cpu"} - wide
        table = _load_table(table)
        with timed("adjust_weights"):
            fm, weight_report, shifts = _adjust_weights(fm, feeds, bias_correction, rounding,
                                                        batch_size, int8, table)
        units = partition(fm.graph, keep)  # again: bias correction returns a new model
        names = calibration_tensors(units)
        digest = model_hash(fm)
        with timed("calibrate"):
            table = _thresholds(fm, feeds, names, calibrator, table, batch_size, opts, digest)
        table = _with_shifts(table, shifts, rounding)
        info = {"calibrator": table.method, "cle": cle, "bias_correction": bool(shifts),
                "rounding": rounding, "keep_float": sorted(keep_float), "unsigned": unsigned,
                "int16": sorted(int16), "int16_weights": sorted(wide),
                "float_model_hash": digest}
        with timed("build"):
            qg, nodes = build_qgraph(fm, table, units, info, unsigned, int16, wide)
        _warn_unoptimised(table)
        with timed("emit_int"):
            quant = emit_int(qg)
        with timed("emit_qdq"):
            qdq = emit_qdq(fm, qg)
    timings["total"] = time.perf_counter() - start
    return QuantResult(quant, qdq, qg, table, fm,
                       summarize(qg, nodes, timings) | weight_report)


def _warn_unoptimised(table: CalibrationTable) -> None:
    if table.unoptimised:
        log.warning("calibration table: %d tensor(s), e.g. %r, have a %s threshold calibrated "
                    "for another precision and are used with it unchanged (recalibrate to "
                    "re-optimise them; docs/calibration.md)", len(table.unoptimised),
                    sorted(table.unoptimised)[0], table.method)


def _keep_float_names(model: Model, names: Sequence[str]) -> frozenset[str]:
    known = {n.name for n in model.graph.nodes}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"--keep-float: no node named {missing[0]!r} in the (canonicalized) "
                          f"model; `npuc inspect MODEL` lists the node names")
    return frozenset(names)


def _load_table(table: CalibrationTable | str | Path | None) -> CalibrationTable | None:
    return table if table is None or isinstance(table, CalibrationTable) else \
        CalibrationTable.load(table)


def _adjust_weights(fm: Model, feeds: Feeds | None, bias_correction: bool, rounding: str,
                    batch_size: int, int8: set[str], table: CalibrationTable | None,
                    ) -> tuple[Model, dict[str, Any], dict[str, list[float]]]:
    """GPTQ rounding and/or bias correction of the layers in `int8`.

    Returns the model, the report entries and the bias shifts applied ({} when none).
    Bias correction is measured against the float weights with the rounding that the
    integer model will use, so the two compose. A calibration table given decides it as it
    decides the thresholds, so it reproduces the build it was saved from: its saved shifts
    are applied, or none when it was saved without; only shifts measured for another
    rounding are measured again (on the data; without data: skipped). Layers left on the
    CPU keep their weights.
    """
    if rounding != "nearest" and feeds is None:
        raise ConfigError(f"--rounding {rounding} needs calibration data")
    report: dict[str, Any] = {}
    rounded = None
    if rounding == "gptq":
        from passes.quantize.rounding import round_weights
        rounded = round_weights(fm, feeds, batch_size=batch_size, only=int8)
        report |= rounded.report()
    shifts: dict[str, list[float]] = {}
    if bias_correction:
        fm, shifts, entry = _correct_bias(fm, feeds, batch_size, int8, table, rounding,
                                          rounded.weights if rounded else None)
        if shifts:
            report["bias_correction"] = entry
    if rounded:
        from passes.quantize.rounding import apply_weights
        apply_weights(fm, rounded.weights)
    return fm, report, shifts


def _correct_bias(fm: Model, feeds: Feeds | None, batch_size: int, int8: set[str],
                  table: CalibrationTable | None, rounding: str,
                  quantized: dict[str, Any] | None,
                  ) -> tuple[Model, dict[str, list[float]], dict[str, Any]]:
    """Bias correction from `table`'s shifts, or measured on `feeds` (see `_adjust_weights`)."""
    from passes.quantize.bias_correction import apply_shifts, correct_bias_with_report
    if table is not None and table.bias_shifts and table.bias_rounding == rounding:
        fm, corrected = apply_shifts(fm, table.bias_shifts, only=int8)
        return fm, corrected["shifts"], _bias_report(corrected) | {"from_table": True}
    if table is not None and not table.bias_shifts:
        log.info("bias correction skipped: the calibration table was saved without it")
        return fm, {}, {}
    if feeds is None:  # (no table either: calibration reports the missing data next)
        if table is not None:
            log.warning("bias correction skipped: the table's shifts were measured with "
                        "--rounding %s, this run rounds %s (give --calib to measure them)",
                        table.bias_rounding, rounding)
        return fm, {}, {}
    fm, corrected = correct_bias_with_report(fm, fake_quant_weights, feeds, batch_size,
                                             quantized=quantized, only=int8)
    return fm, corrected["shifts"], _bias_report(corrected)


def _bias_report(corrected: dict[str, Any]) -> dict[str, Any]:
    shifts = corrected["corrected"].values()
    return {"layers": len(corrected["corrected"]), "skipped": len(corrected["skipped"]),
            "max_abs_shift": max(shifts, default=0.0)}


def _with_shifts(table: CalibrationTable, shifts: dict[str, list[float]],
                 rounding: str) -> CalibrationTable:
    """`table` recording the bias shifts of this build.

    A copy when they differ: a table passed in (e.g. the budget loop's) is shared between
    builds.
    """
    rounding = rounding if shifts else ""
    if table.bias_shifts == shifts and table.bias_rounding == rounding:
        return table
    return replace(table, thresholds=dict(table.thresholds), dtypes=dict(table.dtypes),
                   unoptimised=set(table.unoptimised), bias_shifts=shifts,
                   bias_rounding=rounding)


def summarize(qg: q.QGraph, nodes: list[dict[str, Any]], timings: dict[str, float]) -> dict:
    """The report: per-node placement, op counts, CPU nodes with reasons, timings."""
    cpu = [n for n in nodes if n["qop"] == "QCpuPartition"]
    return {
        "nodes": nodes,
        "op_counts": dict(Counter(op.kind for op in qg.ops)),
        # computed quantized tensors per precision (docs/fixed-point.md §15)
        "tensor_types": dict(Counter(t.dtype for t in qg.tensors.values()
                                     if t.is_quantized and t.data is None)),
        "float_nodes": len(nodes), "int8_nodes": len(nodes) - len(cpu), "cpu_nodes": len(cpu),
        "cpu_reasons": {n["node"]: f'{n["op"]}: {n["reason"]}' for n in cpu},
        # seconds per phase (nested phases "a.b" are part of "a"; "total" is the wall time
        # of quantize_model), under the key prune uses too
        "time_s": {k: round(v, 3) for k, v in timings.items()},
    }


def quantize_kwargs(calibration: CalibrationOptions, options: QuantizeOptions
                    ) -> dict[str, Any]:
    """`quantize_model` keyword arguments (after model and data) from the typed options."""
    return {"calibrator": calibration.calibrator, "percentile": calibration.percentile,
            "batch_size": calibration.batch_size, "calib_limit": calibration.limit,
            "table": calibration.table, "cle": options.cle,
            "bias_correction": options.bias_correction, "rounding": options.rounding,
            "keep_float": tuple(options.keep_float), "unsigned": options.unsigned,
            "int16": tuple(options.int16), "int16_weights": tuple(options.int16_weights)}
