"""Streaming activation calibration: per-tensor thresholds T (scale T/127, or T/255 for uint8).

The requested intermediate tensors become extra graph outputs of a copy of the model, which
onnxruntime runs batch by batch; each batch updates a fixed-size per-tensor state (a running
max, or an `AbsHistogram` of |x|) and is then dropped, so memory does not grow with the
amount of calibration data.

A threshold is optimal for a number of levels: the `mse` and `kl` searches trade clipping
against the step T/levels. `collect_ranges` finalizes for int8 (127 levels); a
`CalibrationTable` keeps the histograms, and the QGraph builder asks it for the threshold of
each tensor at the precision it decided (`CalibrationTable.threshold`), so a tensor that
became uint8 gets the clip point optimal for 255 levels over [0, T] (docs/calibration.md).

Safe fallbacks (documented in docs/calibration.md):

- a tensor that is zero on every calibration sample gets `ZERO_RANGE_THRESHOLD` (1.0): any
  scale represents 0 exactly, and 1/127 keeps requantization multipliers ordinary;
- a threshold is never below `MIN_THRESHOLD` (1e-8) nor below one histogram bin width;
- NaN or Inf in an activation is a `DataError` naming the tensor and the batch.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.core import fixedpoint as fp
from compiler.core import limits
from compiler.core.errors import ConfigError, DataError, GraphError
from compiler.core.feeds import Feeds, load_feeds, model_batch
from compiler.core.io import model_hash, to_proto, write_atomic
from compiler.core.ir import Model, const_value
from compiler.core.npfiles import release_rows
from compiler.core.progress import timed, track
from compiler.core.qonnx import shared_weight_session
from compiler.core.safe_yaml import load_json, read_text
from passes.quantize.degenerate import Spread
from passes.quantize.degenerate import report as report_degenerate
from passes.quantize.histogram import (
    DEFAULT_BINS,
    KL_QUANT_BINS,
    LEVELS,
    AbsHistogram,
    kl_threshold,
    mse_threshold,
    percentile_threshold,
)
from passes.quantize.options import ROUNDINGS
from passes.quantize.statkernels import min_max

log = logging.getLogger(__name__)

METHODS = ("max", "percentile", "kl", "mse")
OPTIONS = {"max": (), "percentile": ("percentile", "bins"), "kl": ("bins", "quant_bins"),
           "mse": ("bins",)}
DEFAULT_PERCENTILE = 99.99
ZERO_RANGE_THRESHOLD = 1.0
MIN_THRESHOLD = 1e-8
TABLE_VERSION = 2  # 2: per-tensor "dtype" and "levels" (version 1 tables read as int8)
LEVEL_DEPENDENT = frozenset({"kl", "mse"})  # their threshold depends on the number of levels
ACTIVATION_BUDGET = 256 << 20  # bytes of activations fetched per onnxruntime run


class RunningMax:
    """O(1) state of the `max` calibrator."""

    def __init__(self) -> None:
        self.max = 0.0

    def update(self, values: np.ndarray, peak: float | None = None) -> None:
        """Fold a batch into the running max|x| (ValueError on NaN/Inf).

        `peak`: the batch's max|x| when the caller has it already (NaN/Inf propagate to it).
        """
        a = np.asarray(values)
        if a.size == 0:
            return
        m = max(float(a.max()), -float(a.min())) if peak is None else peak  # no |x| temporary
        if not math.isfinite(m):
            raise ValueError("NaN or Inf values")
        self.max = max(self.max, m)


def _check_method(method: str, opts: dict[str, Any]) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown calibrator {method!r} (valid: {', '.join(METHODS)})")
    unknown = sorted(set(opts) - set(OPTIONS[method]))
    if unknown:
        valid = ", ".join(OPTIONS[method]) or "none"
        raise ConfigError(f"calibrator {method!r} has no option(s) {unknown} (valid: {valid})")
    if method == "percentile":
        pct = opts.get("percentile", DEFAULT_PERCENTILE)
        if not isinstance(pct, (int, float)) or not 0 < pct <= 100:
            raise ConfigError(f"percentile must be a number in (0, 100], got {pct!r}")


def new_state(method: str, **opts: Any) -> RunningMax | AbsHistogram:
    """The per-tensor streaming state for `method`."""
    _check_method(method, opts)
    if method == "max":
        return RunningMax()
    return AbsHistogram(opts.get("bins", DEFAULT_BINS))


def levels(dtype: str = "int8") -> int:
    """Positive quantization levels of an activation precision: 127 (int8), 255 (uint8)."""
    return fp.qrange(dtype)[1]


def finalize(state: RunningMax | AbsHistogram, method: str, name: str = "<tensor>",
             dtype: str = "int8", **opts: Any) -> float:
    """The threshold of one tensor's state for precision `dtype`, with the safe fallbacks.

    `mse` minimises the error of `levels(dtype)` steps over [0, T]; `kl` merges into
    `quant_bins` bins per 128 levels (256 for uint8). A uint8 tensor is never negative, so
    its |x| histogram is its value histogram. `max` and `percentile` ignore `dtype`.
    """
    if state.max == 0.0:  # reported by degenerate.report with the other degenerate tensors
        return ZERO_RANGE_THRESHOLD
    if method == "max":
        t = state.max
    elif method == "percentile":
        t = percentile_threshold(state, float(opts.get("percentile", DEFAULT_PERCENTILE)))
    elif method == "kl":
        bins = opts.get("quant_bins", KL_QUANT_BINS) * (levels(dtype) + 1) // (LEVELS + 1)
        t = kl_threshold(state, bins)
    else:
        t = mse_threshold(state, levels(dtype))
    floor = max(MIN_THRESHOLD, state.width) if isinstance(state, AbsHistogram) else MIN_THRESHOLD
    return float(max(t, floor))


def collect_ranges(model: Model, feeds: Any, tensors: list[str], method: str = "max",
                   batch_size: int = 8, **opts: Any) -> dict[str, float]:
    """Calibrate symmetric thresholds for `tensors` by streaming `feeds` through `model`.

    Args:
        model: The float model (IR).
        feeds: Calibration data: `Feeds` or anything `compiler.core.feeds.load_feeds` accepts.
        tensors: Names of the tensors to calibrate (activations, graph inputs or constants).
        method: "max", "percentile", "kl" or "mse".
        batch_size: Samples per onnxruntime run when the model's batch is symbolic (a fixed
            batch dimension is always respected). It is lowered so that one batch of the
            requested activations stays within `ACTIVATION_BUDGET` bytes.
        **opts: `percentile` (default 99.99) for "percentile"; `bins` (histogram size,
            default 2048) for the histogram methods; `quant_bins` (default 128) for "kl".

    Returns:
        Tensor name -> threshold T > 0, finite, for int8 (the scale is T / 127).

    Raises:
        ConfigError: Unknown method or option.
        GraphError: A tensor name is not in the model.
        DataError: Unusable data, or NaN/Inf in a calibrated tensor.
    """
    states = collect_states(model, feeds, tensors, method, batch_size, **opts)
    return {name: finalize(state, method, name, **opts) for name, state in states.items()}


def collect_states(model: Model, feeds: Any, tensors: list[str], method: str = "max",
                   batch_size: int = 8, **opts: Any) -> dict[str, RunningMax | AbsHistogram]:
    """The streaming part of `collect_ranges`: each tensor's final state (max or histogram).

    `finalize(state, method, name, dtype, **opts)` turns a state into a threshold for a
    precision; keeping the states lets a threshold be re-derived for another one.
    """
    _check_method(method, opts)
    states = {name: new_state(method, **opts) for name in dict.fromkeys(tensors)}
    consts = _classify(model, list(states))[0]
    spreads = {name: Spread() for name in states if name not in consts}
    batch_size = fit_batch(model, list(states), batch_size)
    batches = stream_tensors(model, feeds, list(states), batch_size)
    for step, batch in enumerate(track(batches, f"calibrate ({method}, batches)")):
        with timed("calibrate.statistics"):
            for name, values in batch.items():
                _update(states[name], spreads.get(name), values, name, step)
        del batch  # one batch of activations alive at a time
    report_degenerate(spreads)
    return states


def _update(state: RunningMax | AbsHistogram, spread: Spread | None, values: np.ndarray,
            name: str, step: int) -> None:
    """Fold a batch into a tensor's state and spread (one min and one max pass, shared)."""
    if values.size == 0:
        return
    lo, hi = min_max(values)
    if spread is not None:
        spread.fold(lo, hi)
    try:
        state.update(values, max(-lo, hi))
    except ValueError as e:
        raise DataError(f"tensor {name!r} has NaN or Inf values on calibration batch {step} "
                        f"(check the model's weights and the data)") from e


def stream_tensors(model: Model, feeds: Any, tensors: list[str],
                   batch_size: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """Yield, batch by batch, the values of `tensors` when running `model` on `feeds`.

    Constants are yielded once with the first batch; graph inputs come from the feeds; every
    other tensor is an output of a copy of the model. When the model's batch dimension is
    fixed to B, data is fed in chunks of B and a last partial chunk is skipped.

    Raises:
        GraphError: A name is not a tensor of the model.
        DataError: The data does not fit the model, or is smaller than its fixed batch.
    """
    feeds = feeds if isinstance(feeds, Feeds) else load_feeds(feeds, model)
    consts, inputs, inner = _classify(model, tensors)
    with timed("calibrate.session"):
        # reads the IR's weights in place: onnxruntime would copy initializers (+1x weights)
        sess = shared_weight_session(tap_outputs(model, inner)) if inner else None
    first = True
    for batch in iter_batches(model, feeds, batch_size):
        with timed("calibrate.forward"):
            out = dict(zip(inner, sess.run(inner, batch), strict=True)) if sess else {}
        out.update({n: batch[n] for n in inputs})
        if first:
            out.update(consts)
            first = False
        yield out
        del out  # before the next run: one batch of activations alive at a time


def _classify(model: Model, names: list[str]) -> tuple[dict, list[str], list[str]]:
    known = model.graph.tensors()
    graph_inputs = {t.name for t in model.graph.inputs}
    missing = [n for n in names if n not in known]
    if missing:
        raise GraphError(f"tensor(s) {missing[:5]} not found in the model")
    consts = {n: const_value(known[n]) for n in names if const_value(known[n]) is not None}
    inputs = [n for n in names if n in graph_inputs]
    inner = [n for n in names if n not in consts and n not in graph_inputs]
    return consts, inputs, inner


def with_outputs(model: Model, names: list[str]):
    """A `ModelProto` of `model` whose graph outputs are exactly `names`.

    Nodes that no requested tensor depends on are dropped, so onnxruntime only computes
    what is asked for.
    """
    return to_proto(tap_outputs(model, names))


def tap_outputs(model: Model, names: list[str]) -> Model:
    """A copy of `model` (weights shared) whose graph outputs are exactly `names`.

    Raises:
        GraphError: A tensor has no known dtype.
    """
    tapped = model.copy()
    known = tapped.graph.tensors()
    outputs = []
    for name in dict.fromkeys(names):
        tensor = known[name]
        if tensor.dtype is None:
            raise GraphError(f"tensor {name!r} has no known dtype; run shape inference")
        outputs.append(tensor)
    tapped.graph.outputs = outputs
    return tapped


def fit_batch(model: Model, names: list[str], batch_size: int) -> int:
    """`batch_size` lowered so one batch of the (statically shaped) tensors fits the budget."""
    known = model.graph.tensors()
    per_sample = 0
    for name in names:
        shape = known[name].shape if name in known else None
        if shape and all(isinstance(d, (int, np.integer)) for d in shape[1:]):
            per_sample += 4 * int(np.prod(shape[1:], dtype=np.int64))
    fit = max(1, ACTIVATION_BUDGET // max(per_sample, 1))
    if isinstance(batch_size, int) and fit < batch_size:
        log.info("calibration batch lowered from %d to %d (%.0f MiB of activations per "
                 "sample)", batch_size, fit, per_sample / 2**20)
        return int(fit)
    return batch_size


def iter_batches(model: Model, feeds: Feeds,
                 batch_size: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts of `batch_size` samples, or of the model's fixed batch (remainder skipped).

    Raises:
        ConfigError: `batch_size` is not a positive integer.
        DataError: Fewer samples than the model's fixed batch.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    fixed = model_batch(model)
    size = fixed or batch_size
    usable = len(feeds) - len(feeds) % size if fixed else len(feeds)
    if usable == 0:
        raise DataError(f"{feeds.source}: {len(feeds)} sample(s), fewer than the model's "
                        f"fixed batch size {fixed}")
    if usable < len(feeds):
        log.warning("%s: skipping the last %d sample(s), which do not fill the model's fixed "
                    "batch of %d", feeds.source, len(feeds) - usable, fixed)
    for start in range(0, usable, size):
        yield {k: v[start:start + size] for k, v in feeds.arrays.items()}
        for v in feeds.arrays.values():  # memory-mapped samples: one batch resident at a time
            release_rows(v, start + size)


State = RunningMax | AbsHistogram


@dataclass
class CalibrationTable:
    """Calibrated thresholds of one model, savable as JSON to skip calibration next time.

    Each threshold is recorded with the precision it is for (`dtypes`; absent: int8). The
    QGraph builder reads thresholds through `threshold(name, dtype)`, which re-derives a
    `kl`/`mse` threshold for the precision the builder chose when the histograms are still
    here (`states`) and records it, so after a build the table describes that build and a
    saved table reproduces it.

    Attributes:
        method: The calibrator used.
        thresholds: Tensor name -> threshold T (scale = T / levels of its dtype).
        model_hash: `compiler.core.io.model_hash` of the calibrated model ("" if unknown).
        options: The calibrator options used (for provenance).
        dtypes: Tensor name -> precision its threshold is for ("int8" when absent).
        states: Tensor name -> calibration state (in memory only; empty for a loaded table).
        unoptimised: Tensors whose `kl`/`mse` threshold, calibrated for another precision
            and without a histogram to re-derive it, was used as is.
        bias_shifts: Layer name -> the shift per output channel that bias correction
            subtracted before calibrating (passes/quantize/bias_correction.py), so a saved
            table reproduces the corrected build without data; empty when it was off.
        bias_rounding: The weight rounding those shifts were measured for ("" when none).
    """

    method: str
    thresholds: dict[str, float]
    model_hash: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict, repr=False, compare=False)
    unoptimised: set[str] = field(default_factory=set, repr=False, compare=False)
    bias_shifts: dict[str, list[float]] = field(default_factory=dict, repr=False)
    bias_rounding: str = ""

    @classmethod
    def from_states(cls, method: str, states: dict[str, State], digest: str = "",
                    options: dict[str, Any] | None = None) -> CalibrationTable:
        """The int8 thresholds of `states` (kept, to re-derive other precisions)."""
        opts = dict(options or {})
        with timed("calibrate.thresholds"):
            thresholds = {n: finalize(state, method, n, **opts) for n, state in states.items()}
        return cls(method, thresholds, digest, opts, dict.fromkeys(thresholds, "int8"), states)

    def dtype(self, name: str) -> str:
        """The precision `name`'s threshold is for."""
        return self.dtypes.get(name, "int8")

    def threshold(self, name: str, dtype: str = "int8", *, record: bool = True) -> float:
        """The threshold of `name` stored as `dtype` (recorded as that precision's).

        `record=False` reads the threshold for `dtype` without recording it (the builder's
        int8 copy of an int16 tensor: the tensor itself stays int16).

        Raises:
            KeyError: `name` is not in the table.
        """
        t = self.thresholds[name]
        if self.dtype(name) == dtype:
            return t
        if self.method in LEVEL_DEPENDENT:
            if name in self.states:
                t = finalize(self.states[name], self.method, name, dtype, **self.options)
            elif record:
                self.unoptimised.add(name)
        if record:
            self.thresholds[name], self.dtypes[name] = t, dtype
        return t

    @property
    def scales(self) -> dict[str, float]:
        """Tensor name -> scale T / levels (127 for int8, 255 for uint8)."""
        return {name: t / levels(self.dtype(name)) for name, t in self.thresholds.items()}

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        tensors = {n: {"threshold": t, "scale": t / levels(self.dtype(n)),
                       "dtype": self.dtype(n), "levels": levels(self.dtype(n))}
                   for n, t in self.thresholds.items()}
        doc = {"version": TABLE_VERSION, "method": self.method, "model_hash": self.model_hash,
               "options": self.options, "tensors": tensors}
        if self.bias_shifts:
            doc["bias_correction"] = {"rounding": self.bias_rounding,
                                      "shifts": {n: list(v) for n, v in self.bias_shifts.items()}}
        return doc

    def save(self, path: str | Path) -> Path:
        """Write the table atomically as JSON."""
        path = Path(path)
        write_atomic(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        """Read and validate a saved table.

        Raises:
            ConfigError: Missing file, bad JSON, missing keys, an unknown dtype, or a
                threshold/scale that is not a positive finite number (or a scale or levels
                that disagree with the threshold and dtype).
        """
        path, label = Path(path), f"calibration table {path}"
        text = read_text(path, label, limits.limit("TABLE_BYTES"))
        return cls.from_dict(load_json(text, label), str(path))

    @classmethod
    def from_dict(cls, doc: Any, label: str = "<table>") -> CalibrationTable:
        """Validate a table document (see `load`)."""
        where = f"calibration table {label}"
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        for key in ("method", "tensors"):
            if key not in doc:
                raise ConfigError(f"{where}: missing key {key!r}")
        if doc["method"] not in METHODS:
            raise ConfigError(f"{where}: unknown method {doc['method']!r} "
                              f"(valid: {', '.join(METHODS)})")
        if not isinstance(doc["tensors"], dict):
            raise ConfigError(f"{where}: 'tensors' must be an object of name -> entry")
        entries = {n: _entry(e, f"{where}: tensor {n!r}") for n, e in doc["tensors"].items()}
        rounding, shifts = _bias_correction(doc.get("bias_correction"), where)
        return cls(doc["method"], {n: t for n, (t, _) in entries.items()},
                   str(doc.get("model_hash", "")), dict(doc.get("options") or {}),
                   {n: d for n, (_, d) in entries.items()}, bias_shifts=shifts,
                   bias_rounding=rounding)

    def check_model(self, model: Model) -> bool:
        """True when the table was calibrated on exactly this model (hashes match)."""
        return bool(self.model_hash) and self.model_hash == model_hash(model)


def _entry(entry: Any, where: str) -> tuple[float, str]:
    """(threshold, dtype) of one validated table entry."""
    if not isinstance(entry, dict) or "threshold" not in entry:
        raise ConfigError(f"{where}: missing key 'threshold'")
    t = _positive(entry["threshold"], f"{where}: threshold")
    dtype = entry.get("dtype", "int8")
    if not isinstance(dtype, str) or dtype not in fp.QRANGE:
        raise ConfigError(f"{where}: dtype must be one of {', '.join(fp.QRANGE)}, got {dtype!r}")
    n = levels(dtype)
    if entry.get("levels", n) != n:
        raise ConfigError(f"{where}: levels {entry['levels']!r} is not {n} ({dtype})")
    if "scale" in entry:
        s = _positive(entry["scale"], f"{where}: scale")
        if not math.isclose(s, t / n, rel_tol=1e-6):
            raise ConfigError(f"{where}: scale {s!r} is not threshold/{n} ({t / n!r})")
    return t, dtype


def _bias_correction(entry: Any, where: str) -> tuple[str, dict[str, list[float]]]:
    """(rounding, shifts) of a validated "bias_correction" entry (absent: none)."""
    if entry is None:
        return "", {}
    where = f"{where}: bias_correction"
    if not isinstance(entry, dict) or not isinstance(entry.get("shifts"), dict):
        raise ConfigError(f"{where} must be an object with 'shifts': layer -> numbers")
    rounding = entry.get("rounding", "nearest")
    if rounding not in ROUNDINGS:
        raise ConfigError(f"{where}: rounding must be one of {', '.join(ROUNDINGS)}, "
                          f"got {rounding!r}")
    return rounding, {n: _shift(v, f"{where}: layer {n!r}") for n, v in entry["shifts"].items()}


def _shift(value: Any, where: str) -> list[float]:
    """One layer's shift per output channel: a non-empty list of finite numbers."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list of numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where} must hold finite numbers, got {v!r}")
    return [float(v) for v in value]


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where} must be positive and finite, got {value!r}")
    return float(value)


def calibrate(model: Model, feeds: Any, tensors: list[str], method: str = "max",
              batch_size: int = 8, **opts: Any) -> CalibrationTable:
    """Int8 thresholds of `collect_ranges` in a `CalibrationTable` with the model's hash.

    The table keeps the calibration states, so `threshold(name, "uint8")` re-derives a
    `kl`/`mse` threshold for 255 levels.
    """
    states = collect_states(model, feeds, tensors, method, batch_size, **opts)
    return CalibrationTable.from_states(method, states, model_hash(model), opts)
