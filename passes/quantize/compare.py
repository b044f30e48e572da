"""Per-output and per-layer fidelity of a quantized (or any other) model against its float model.

Like vendor toolchains' per-node similarity tables: for every graph output and every paired
intermediate tensor, cosine similarity, max abs error and SNR (dB) of the test model's
(dequantized) values against the float model's, accumulated batch by batch (only running sums
are kept) and ranked worst-first.

Pairing (`pair_tensors`), first rule that applies:

1. an npuc `model.quant.onnx` (metadata `npuc.qgraph`): every int8 QTensor `t` or `t__q`
   pairs with float tensor `t` (docs/fixed-point.md §13) and is dequantized with its scale;
2. a QDQ model: the output of each DequantizeLinear fed by QuantizeLinear(t) pairs with `t`;
3. any other model: float tensors produced by nodes in both models under the same name.

Graph outputs pair by name (by position when no name matches and the counts agree). For
npuc-quantized models the reference is the canonicalized (and, with `--cle`, equalized)
float model the quantizer started from (`reference_model`), so that names mean the same
values on both sides.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import DataError, GraphError
from compiler.core.feeds import Feeds, check_feeds, load_feeds, model_batch
from compiler.core.io import model_hash
from compiler.core.ir import Model
from compiler.core.numerics import run, session
from passes.quantize.calibrate import iter_batches, with_outputs

log = logging.getLogger(__name__)

QUANT_SUFFIX = "__q"


@dataclass
class Row:
    """Fidelity of one tensor.

    Attributes:
        name: Float-model tensor name.
        kind: "output" or "layer".
        cosine: Cosine similarity over all elements of all samples.
        max_abs: max |ref - test|.
        snr_db: 10·log10(sum ref² / sum (ref - test)²); inf when identical.
        ref_max: max |ref| (to read max_abs against).
        test_name: The paired tensor's name in the test model.
        ref_nonfinite: inf/NaN elements in the reference tensor.
        test_nonfinite: inf/NaN elements in the test tensor. With either non-zero, cosine
            and SNR are NaN (undefined) and the row ranks worst; max_abs and ref_max cover
            the finite pairs.
    """

    name: str
    kind: str
    cosine: float
    max_abs: float
    snr_db: float
    ref_max: float
    test_name: str = ""
    ref_nonfinite: int = 0
    test_nonfinite: int = 0

    @property
    def nonfinite(self) -> bool:
        """True when either tensor held inf or NaN."""
        return bool(self.ref_nonfinite or self.test_nonfinite)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (non-finite cosine and SNR become null)."""
        d = dict(self.__dict__)
        for key in ("cosine", "snr_db"):
            d[key] = d[key] if math.isfinite(d[key]) else None
        return d


class Accumulator:
    """Running sums of one tensor pair, enough for cosine, SNR and max error."""

    def __init__(self) -> None:
        self.dot = self.ref2 = self.test2 = self.err2 = 0.0
        self.max_abs = self.ref_max = 0.0
        self.batches = self.skipped = 0  # batches compared / skipped (shapes differ)
        self.ref_nonfinite = self.test_nonfinite = 0

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        """Add one batch (shapes must match)."""
        r, t = np.asarray(ref, np.float64).ravel(), np.asarray(test, np.float64).ravel()
        if r.shape != t.shape:
            raise DataError(f"shapes differ: {np.shape(ref)} vs {np.shape(test)}")
        self.batches += 1
        fin_r, fin_t = np.isfinite(r), np.isfinite(t)
        if not (fin_r.all() and fin_t.all()):  # an overflowing model: sums over finite pairs
            self.ref_nonfinite += int(r.size - np.count_nonzero(fin_r))
            self.test_nonfinite += int(t.size - np.count_nonzero(fin_t))
            keep = fin_r & fin_t
            r, t = r[keep], t[keep]
        d = r - t
        self.dot += float(r @ t)
        self.ref2 += float(r @ r)
        self.test2 += float(t @ t)
        self.err2 += float(d @ d)
        if r.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
            self.ref_max = max(self.ref_max, float(np.max(np.abs(r))))

    def row(self, name: str, kind: str, test_name: str = "") -> Row:
        """The metrics so far (cosine and SNR NaN when either side held inf/NaN)."""
        if self.ref_nonfinite or self.test_nonfinite:
            return Row(name, kind, math.nan, self.max_abs, math.nan, self.ref_max,
                       test_name or name, self.ref_nonfinite, self.test_nonfinite)
        if self.ref2 == 0 and self.test2 == 0:
            cos = 1.0
        elif self.ref2 == 0 or self.test2 == 0:
            cos = 0.0
        else:
            cos = self.dot / math.sqrt(self.ref2 * self.test2)
        if self.err2 == 0:
            snr = math.inf
        elif self.ref2 == 0:
            snr = -math.inf
        else:
            snr = 10.0 * math.log10(self.ref2 / self.err2)
        return Row(name, kind, cos, self.max_abs, snr, self.ref_max, test_name or name)


def rank(rows: list[Row]) -> list[Row]:
    """Worst first: tensors with inf/NaN, then lowest cosine, then lowest SNR."""
    return sorted(rows, key=lambda r: (not r.nonfinite, r.cosine, r.snr_db))


def compare_tensors(ref: dict[str, np.ndarray], test: dict[str, np.ndarray],
                    kind: str = "layer") -> list[Row]:
    """Rows for the names present in both dicts, worst first."""
    rows = []
    for name in ref:
        if name in test:
            acc = Accumulator()
            acc.update(ref[name], test[name])
            rows.append(acc.row(name, kind))
    return rank(rows)


@dataclass(frozen=True)
class Pairing:
    """A float tensor and its counterpart in the test model.

    Attributes:
        ref: Tensor name in the float model.
        test: Tensor name in the test model.
        kind: "output" or "layer".
        scale: Dequantization scale for an integer test tensor (None: already float).
    """

    ref: str
    test: str
    kind: str
    scale: float | None = None


def pair_tensors(float_model: Model, test_model: Model) -> list[Pairing]:
    """Output pairs, then layer pairs (see the module doc for the rules)."""
    outputs = _pair_outputs(float_model, test_model)
    taken = {p.ref for p in outputs}
    float_names = _activations(float_model)
    layers = (_pair_qgraph(test_model, float_names) or _pair_qdq(test_model, float_names)
              or _pair_same_names(float_model, test_model))
    return outputs + [p for p in layers if p.ref not in taken]


def _pair_outputs(float_model: Model, test_model: Model) -> list[Pairing]:
    ref = [t.name for t in float_model.graph.outputs]
    test = [t.name for t in test_model.graph.outputs]
    common = [n for n in ref if n in test]
    if common:
        return [Pairing(n, n, "output") for n in common]
    if len(ref) == len(test):
        return [Pairing(r, t, "output") for r, t in zip(ref, test, strict=True)]
    raise GraphError(f"cannot pair graph outputs: float model has {ref}, test model has {test}")


def _activations(model: Model) -> dict[str, gs.Tensor]:
    """Float tensors written by nodes."""
    return {t.name: t for n in model.nodes for t in n.outputs
            if t.name and t.dtype is not None and np.dtype(t.dtype).kind == "f"}


def _pair_qgraph(test_model: Model, float_names: dict[str, gs.Tensor]) -> list[Pairing]:
    from compiler.core.qgraph import METADATA_KEY, QGraph

    if METADATA_KEY not in test_model.metadata:
        return []
    qgraph = QGraph.from_model(test_model)
    present = set(test_model.graph.tensors())
    pairs = []
    for qt in qgraph.tensors.values():
        ref = qt.name.removesuffix(QUANT_SUFFIX)
        if qt.is_quantized and qt.data is None and ref in float_names and qt.name in present:
            pairs.append(Pairing(ref, qt.name, "layer", float(qt.scale)))
    return pairs


def _pair_qdq(test_model: Model, float_names: dict[str, gs.Tensor]) -> list[Pairing]:
    pairs = []
    for node in test_model.nodes:
        if node.op != "DequantizeLinear" or not node.inputs[0].inputs:
            continue
        q = node.inputs[0].inputs[0]
        if q.op == "QuantizeLinear" and q.inputs[0].name in float_names:
            pairs.append(Pairing(q.inputs[0].name, node.outputs[0].name, "layer"))
    return pairs


def _pair_same_names(float_model: Model, test_model: Model) -> list[Pairing]:
    test_names = _activations(test_model)
    return [Pairing(n, n, "layer") for n in _activations(float_model) if n in test_names]


@dataclass
class CompareReport:
    """Result of `compare_models_on_data`."""

    outputs: list[Row]
    layers: list[Row]
    samples: int
    reference: str = "float model as given"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"samples": self.samples, "reference": self.reference,
                "outputs": [r.to_dict() for r in self.outputs],
                "layers": [r.to_dict() for r in self.layers], "notes": self.notes}


def reference_model(float_model: Model, test_model: Model) -> tuple[Model, str]:
    """The float model whose tensor names match an npuc-quantized `test_model`.

    npuc quantizes the canonicalized float model (BatchNorm folded, which can give a tensor
    name a new meaning), cross-layer-equalized when `--cle` was used: layers are compared
    against that model so names pair with the same values. It computes the same function as
    `float_model`. Other test models get `float_model` unchanged.

    Returns:
        The reference model and a description of it for reports.
    """
    from compiler.core.qgraph import METADATA_KEY, QGraph

    if METADATA_KEY in test_model.metadata:
        info = QGraph.from_model(test_model).info
    elif "npuc.qdq" in test_model.metadata:
        info = _qdq_info(test_model.metadata["npuc.qdq"])
    else:
        return float_model, "float model as given"
    cle = bool(info.get("cle", False))
    from passes.quantize.api import prepare_float

    ref = prepare_float(float_model, cle=cle)
    label = "canonicalized float model" + (" + CLE" if cle else "")
    want = info.get("float_model_hash")
    adjusted = info.get("bias_correction") or info.get("rounding", "nearest") != "nearest"
    if want and not adjusted and model_hash(ref) != want:
        log.warning("the float model is not the one %s was quantized from (hash differs)",
                    "the test model")
        label += " (hash differs from the quantized model's source)"
    return ref, label


def _qdq_info(value: str) -> dict[str, Any]:
    try:
        info = json.loads(value)
    except (ValueError, RecursionError):  # not ours, or hostile: no QDQ pairing info
        return {}
    return info if isinstance(info, dict) else {}


def compare_models_on_data(float_model: Model, test_model: Model, feeds: Any,
                           batch_size: int = 8, layers: bool = True) -> CompareReport:
    """Stream `feeds` through both models and compare every paired tensor.

    Args:
        float_model: The reference (float) model.
        test_model: The model under test (model.quant.onnx, a QDQ model, any ONNX model).
        feeds: Data (`Feeds` or anything `compiler.core.feeds.load_feeds` accepts).
        batch_size: Samples per run when both models' batch dims are symbolic.
        layers: Also compare intermediate tensors (else graph outputs only).

    Raises:
        DataError: Data unusable by either model, or models with different fixed batches
            (a symbolic batch runs at the other model's fixed one).
        GraphError: Outputs that cannot be paired.
    """
    float_model, reference = reference_model(float_model, test_model)
    feeds = feeds if isinstance(feeds, Feeds) else load_feeds(feeds, float_model)
    check_feeds(feeds, test_model)
    fixed = {model_batch(float_model), model_batch(test_model)} - {None}
    if len(fixed) > 1:  # a symbolic batch takes the other model's fixed one
        raise DataError(f"the models have different batch sizes ({model_batch(float_model)} "
                        f"vs {model_batch(test_model)})")
    driver = test_model if model_batch(float_model) is None else float_model
    pairs = [p for p in pair_tensors(float_model, test_model) if layers or p.kind == "output"]
    ref_sess = session(with_outputs(float_model, list(dict.fromkeys(p.ref for p in pairs))))
    test_sess = session(with_outputs(test_model, list(dict.fromkeys(p.test for p in pairs))))
    accs, samples = {p: Accumulator() for p in pairs}, 0
    for batch in iter_batches(driver, feeds, batch_size):
        ref, test = run(ref_sess, batch), run(test_sess, batch)
        for p in list(accs):
            _accumulate(accs, p, ref[p.ref], test[p.test])
        samples += len(next(iter(batch.values())))
    rows = [acc.row(p.ref, p.kind, p.test) for p, acc in accs.items() if acc.batches]
    notes = [_skip_note(p.ref, acc) for p, acc in accs.items() if acc.skipped]
    notes += [_nonfinite_note(r) for r in rows if r.nonfinite]
    return CompareReport(rank([r for r in rows if r.kind == "output"]),
                         rank([r for r in rows if r.kind == "layer"]), samples, reference,
                         notes)


def _accumulate(accs: dict[Pairing, Accumulator], p: Pairing, ref: np.ndarray,
                test: np.ndarray) -> None:
    values = test.astype(np.float64) * p.scale if p.scale is not None else test
    try:
        accs[p].update(ref, values)
    except DataError as e:
        if p.kind == "output":  # a data-dependent size (detections) may differ after int8
            accs[p].skipped += 1
            return
        log.warning("not comparing %r with %r: %s", p.ref, p.test, e)
        del accs[p]


def _nonfinite_note(row: Row) -> str:
    where = [f"{n} in the {side} model" for n, side in
             ((row.ref_nonfinite, "float"), (row.test_nonfinite, "test")) if n]
    return (f"{row.kind} {row.name!r}: inf/NaN values ({', '.join(where)}); cosine and SNR "
            "are undefined, max abs err covers the finite values")


def _skip_note(name: str, acc: Accumulator) -> str:
    total = acc.batches + acc.skipped
    return (f"output {name!r}: its data-dependent shape differs from the float model's in "
            f"{acc.skipped} of {total} batch(es); compared on the other {acc.batches}")
