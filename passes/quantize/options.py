"""Options of calibration (`calibration.*`) and quantization (`quantize.*`), declared once.

`quantize_model`'s keyword defaults, the flags of `npuc quantize` (and the calibration flags
of `npuc prune` / `npuc sparsify`), the config schema and docs/config.md all come from these
declarations. This module is light (no numpy/onnx) so the CLI can build its flags quickly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compiler.core.options import in_range, option, positive

CALIBRATORS = ("max", "percentile", "kl", "mse")  # = passes.quantize.calibrate.METHODS
ROUNDINGS = ("nearest", "gptq")
DEFAULT_PERCENTILE = 99.99
DEFAULT_CALIBRATOR = "mse"
"""The default activation calibrator. mse (clip point minimising the quantization error)
beats max on the field corpus (median worst-output cosine over 15 low and fine graphs
0.9397 -> 0.9494) and on the project's accuracy models (PP-OCRv4 rec exact match 0.929 ->
0.976, Fashion-MNIST and EfficientNet-Lite0 equal or better): docs/quantization.md."""
DEFAULT_CALIB_LIMIT = 256


@dataclass
class CalibrationOptions:
    """Where calibration data comes from and how activation thresholds are calibrated."""

    data: str | None = option(
        None, "calibration data: image folder, .npy/.npz file or bundled dataset name",
        types=(str,), flag="--calib", metavar="DATA")
    limit: int = option(DEFAULT_CALIB_LIMIT, "calibration samples used at most",
                        flag="--calib-limit", check=positive, metavar="N")
    calibrator: str = option(DEFAULT_CALIBRATOR, "activation calibrator", choices=CALIBRATORS)
    percentile: float = option(DEFAULT_PERCENTILE, "percentile of |x| used by the percentile "
                               "calibrator", check=in_range(0, 100, lo_open=True))
    batch_size: int = option(8, "samples per calibration run (models with a symbolic batch)",
                             check=positive)
    table: str | None = option(None, "saved calibration.json to reuse instead of calibrating",
                               types=(str,), flag="--calib-table", metavar="FILE")


@dataclass
class QuantizeOptions:
    """How weights are prepared and which nodes stay in float."""

    cle: bool = option(False, "cross-layer equalization before quantizing")
    bias_correction: bool = option(True, "correct each int8 layer's bias for the mean "
                                   "error of its int8 weights, measured on the calibration "
                                   "data (without data: the shifts saved in --calib-table)")
    rounding: str = option("nearest", "weight rounding: nearest, or gptq (error-compensating "
                           "on the calibration data; slower, usually more accurate)",
                           choices=ROUNDINGS)
    unsigned: bool = option(True, "unsigned 8-bit (uint8, zero point 0, scale T/255) for "
                            "tensors that are never negative (after ReLU/ReLU6, Sigmoid, ...)")
    keep_float: Sequence[str] = option((), "node names left in float on the CPU (mixed "
                                       "precision, e.g. the classifier)", item=str,
                                       list_sep=",", metavar="NODES")
    int16: Sequence[str] = option((), "node names whose layers read and write int16 "
                                  "activations with int8 weights (A16W8, "
                                  "docs/fixed-point.md §16)", item=str, list_sep=",",
                                  metavar="NODES")
    int16_weights: Sequence[str] = option((), "node names of Conv/Gemm/MatMul layers whose "
                                          "weights are int16 (W16, 1/256 of the int8 step; "
                                          "with --int16 on the same layers: A16W16, "
                                          "docs/fixed-point.md §17)", item=str, list_sep=",",
                                          metavar="NODES")
    max_drop: float | None = option(
        None, "accuracy budget: at most this drop of top-1 (or OCR exact match) in points "
        "against float on labelled --budget-data; the most sensitive layers leave int8 until "
        "it holds", types=(int, float), check=in_range(0, 100), metavar="PT")
    min_cosine: float | None = option(
        None, "accuracy budget: worst-output cosine with float at least this",
        types=(int, float), check=in_range(0, 1), metavar="C")
    min_agreement: float | None = option(
        None, "accuracy budget: top-1 agreement with float at least this",
        types=(int, float), check=in_range(0, 1), metavar="A")
    budget_data: str | None = option(
        None, "data the accuracy budget is measured on (default: the calibration data); "
        "labelled for --max-drop", types=(str,), metavar="DATA")
    budget_limit: int = option(1000, "budget samples used at most", check=positive,
                               metavar="N")


SENSITIVITY_MODES = ("quantize", "prune")
SENSITIVITY_METHODS = ("single", "leave-one-out")  # = passes.quantize.sensitivity.METHODS
RANK_BY = ("auto", "cosine", "agreement", "accuracy")  # = passes.quantize.fidelity.RANK_BY


@dataclass
class SensitivityOptions:
    """What `npuc sensitivity` sweeps and how it ranks (docs/quantization.md)."""

    mode: str = option("quantize", "quantize: one layer int8 at a time; prune: one dependency "
                       "group pruned at a time", choices=SENSITIVITY_MODES)
    method: str = option("single", "quantize mode: single (only that layer int8) or "
                         "leave-one-out (all int8 but that layer)", choices=SENSITIVITY_METHODS)
    ratio: float = option(0.5, "prune mode: fraction of each group's channels removed",
                          check=in_range(0, 1, hi_open=True))
    rank_by: str = option("auto", "metric ranked on, worst first (auto: accuracy on labelled "
                          "data, else output cosine)", choices=RANK_BY)
    outlier_threshold: float = option(8.0, "flag outlier_range when a layer's activation "
                                      "threshold / p99.99|x| exceeds this", check=positive)
    batch_size: int = option(8, "samples per run for models with a symbolic batch",
                             flag="--batch", check=positive, metavar="B")


__all__ = ["CALIBRATORS", "SENSITIVITY_METHODS", "SENSITIVITY_MODES", "RANK_BY",
           "SensitivityOptions", "DEFAULT_CALIBRATOR", "DEFAULT_CALIB_LIMIT", "DEFAULT_PERCENTILE",
           "ROUNDINGS",
           "CalibrationOptions", "QuantizeOptions"]
