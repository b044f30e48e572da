"""Accuracy and fidelity of an ONNX model on a dataset, run with onnxruntime.

Metrics, depending on the data and options:

- ``top1``: top-1 accuracy on labelled classification data;
- ``exact_match``: OCR exact-match rate (CTC greedy decode, surrounding spaces ignored);
- with a reference model: ``agreement`` (same arg-max, per sample or per sequence step),
  ``cosine`` (mean per-sample cosine similarity of the raw outputs) and ``kl`` (mean
  KL(reference || model) over the last axis; outputs that already are probability
  distributions are used as they are, others go through a softmax first).
  For one class vector per sample (``[N, classes]``) also ``ref_top1_in_top5`` (the
  reference's class is among the model's five highest) and ``agreement_decisive`` over the
  ``decisive`` fraction of samples on which the reference gives its top class at least
  `DECISIVE_PROBABILITY` — so a flip between two near-equal classes (a coin toss the float
  model itself loses to noise) is told apart from a changed decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.core.errors import ConfigError, DataError, GraphError, ModelLoadError
from compiler.core.executor import ExecutorOptions, open_pool
from compiler.core.feeds import Preprocess, model_hw
from compiler.core.imagefolder import open_folder
from compiler.core.options import option, positive
from compiler.core.progress import track
from compiler.core.shapes import ShapeSpec
from models.datasets import DATASETS

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 64
DECISIVE_PROBABILITY = 0.5
TOP_K = 5
KEEP_BYTES = 256 << 20  # an image folder up to this size is decoded once and kept


@dataclass
class EvalOptions:
    """What `evaluate` runs on: config keys `eval.*`, the flags of `npuc eval`."""

    data: str | None = option(
        None, f"labelled evaluation data: bundled dataset name ({', '.join(DATASETS)}), "
        "an .npz with 'images' and optional 'labels', or a "
        "folder of images (class-per-folder: labelled; image preprocessing flags apply)",
        types=(str,), required=True, metavar="NAME|PATH")
    limit: int | None = option(None, "use only N samples (image folders: as many per class)",
                               types=(int,), check=positive, metavar="N")
    batch_size: int = option(DEFAULT_BATCH, "samples per run for models with a symbolic batch",
                             flag="--batch", check=positive)


def load_model(model: str | Path | onnx.ModelProto,
               input_shapes: ShapeSpec | None = None) -> tuple[onnx.ModelProto, str]:
    """Return ``(model, display name)`` for a proto, an ``.onnx`` path or a registry name.

    Files go through `compiler.core.io.read_proto` (one-line errors); names through the registry.
    With `input_shapes` the inputs are bound on a copy (`bind_shapes`).
    """
    proto, name = _read_model(model)
    return (bind_shapes(proto, input_shapes, name) if input_shapes else proto), name


def bind_shapes(proto: onnx.ModelProto, shapes: ShapeSpec, name: str) -> onnx.ModelProto:
    """A copy of `proto` with the user's input shapes bound; an unbound batch stays symbolic."""
    from compiler.core.io import bind_input_shapes

    bound = onnx.ModelProto()
    bound.CopyFrom(proto)
    bind_input_shapes(bound, shapes, name, keep_batch=True)
    return bound


def _read_model(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<model>"
    from compiler.driver.sources import resolve_model

    source = resolve_model(model)
    if isinstance(source, onnx.ModelProto):
        return source, str(model)
    from compiler.core.io import read_proto

    return read_proto(Path(source)), str(source)  # as-is: no opset/shape normalisation


class Runner:
    """An onnxruntime session over the model's first input and first output.

    Batches of any size are fed when the input's batch dim is symbolic; a fixed batch dim
    ``b`` is fed in chunks of ``b`` (the last one zero-padded and trimmed).
    """

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        from compiler.core.model_check import check_as_is
        from compiler.core.numerics import NP_TYPES, ort_session

        check_as_is(model, name)  # size bombs and Loop trip counts before onnxruntime runs
        self.name = name
        self.model_bytes = model.SerializeToString()
        try:
            self.session = ort_session(self.model_bytes)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelLoadError(f"{name}: onnxruntime cannot load the model ({exc})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:  # the samples feed one image input
            names = ", ".join(repr(i.name) for i in inputs) or "none"
            raise GraphError(f"{name}: eval feeds one input, the model has {len(inputs)} "
                             f"({names})")
        first = inputs[0]
        self.input_name = first.name
        self.shape = [d if isinstance(d, int) and d > 0 else None for d in first.shape]
        # a float16 model takes float16, a uint8-image model uint8
        self.dtype = np.dtype(NP_TYPES.get(first.type, np.float32)).name

    def check(self, inputs: np.ndarray, source: str) -> None:
        """Raise `DataError` if `inputs` cannot feed the model input (rank or fixed dims)."""
        want = ["N" if d is None else d for d in self.shape[1:]]
        got = list(inputs.shape[1:])
        ok = len(got) == len(want) and all(
            w == "N" or w == g for w, g in zip(want, got, strict=True))
        if not ok:
            raise DataError(f"{source}: samples have shape {got} but model {self.name} "
                            f"input {self.input_name!r} expects {want}")

    def run(self, inputs: Any, batch: int = DEFAULT_BATCH,
            executor: ExecutorOptions | None = None) -> np.ndarray:
        """First output for all samples, concatenated along axis 0.

        With an `executor`, whole chunks are shared out to its workers (the model and the
        sample source are shipped once); each chunk is computed exactly as here, so the
        outputs are bit-identical to a run in this process.
        """
        chunk = self.shape[0] or max(1, batch)
        if executor is not None and len(inputs):
            return self._run_on(executor, inputs, chunk)
        starts = range(0, len(inputs), chunk)
        return np.concatenate([
            run_chunk(self.session, self.input_name, inputs, start, chunk, bool(self.shape[0]),
                      self.dtype)
            for start in track(starts, f"eval {Path(self.name).name}", len(starts))])

    def _run_on(self, executor: ExecutorOptions, inputs: Any, chunk: int) -> np.ndarray:
        payload = {"model": self.model_bytes, "input": self.input_name, "inputs": inputs,
                   "chunk": chunk, "fixed": bool(self.shape[0]), "dtype": self.dtype}
        with open_pool(executor, init=_init_eval_worker, payload=payload) as pool:
            spans = shard_spans(len(inputs), chunk, SHARDS_PER_WORKER * pool.workers)
            return np.concatenate(pool.map(_eval_span, spans))


SHARDS_PER_WORKER = 4  # a few shards per worker even out uneven workers


def run_chunk(session: Any, input_name: str, inputs: Any, start: int, chunk: int,
              fixed: bool, dtype: str = "float32") -> np.ndarray:
    """First output for samples [start, start + chunk); a fixed batch is zero-padded."""
    x = inputs[start:start + chunk].astype(dtype, copy=False)
    n = len(x)
    if fixed and n < chunk:
        x = np.concatenate([x, np.zeros((chunk - n, *x.shape[1:]), x.dtype)])
    return session.run(None, {input_name: x})[0][:n]


def shard_spans(count: int, chunk: int, shards: int) -> list[tuple[int, int]]:
    """[start, stop) sample ranges made of whole chunks, at most `shards` of them."""
    chunks = -(-count // chunk)
    per = max(1, -(-chunks // max(1, shards)))
    return [(i * chunk, min(count, (i + per) * chunk)) for i in range(0, chunks, per)]


_WORKER: dict[str, Any] = {}


def _init_eval_worker(payload: dict[str, Any]) -> None:
    from compiler.core.numerics import ort_session, session_options

    _WORKER.update(payload, session=ort_session(payload["model"], session_options(threads=1)))


def _eval_span(span: tuple[int, int]) -> np.ndarray:
    start, stop = span
    w = _WORKER
    return np.concatenate([run_chunk(w["session"], w["input"], w["inputs"], s, w["chunk"],
                                     w["fixed"], w["dtype"])
                           for s in range(start, stop, w["chunk"])])


@dataclass
class EvalResult:
    """What `evaluate` measured."""

    model: str
    data: str
    kind: str
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"model": self.model, "data": self.data, "kind": self.kind,
                "samples": self.samples, "reference": self.reference, "metrics": self.metrics}


def top1_accuracy(outputs: np.ndarray, labels: np.ndarray, source: str) -> float:
    """Fraction of samples whose arg-max output equals the label."""
    scores = outputs.reshape(len(outputs), -1)
    if len(labels) and int(labels.max()) >= scores.shape[1]:
        raise DataError(f"{source}: labels go up to {int(labels.max())} but the model has "
                        f"only {scores.shape[1]} output classes")
    return float(np.mean(scores.argmax(axis=1) == labels))


def ocr_exact_match(outputs: np.ndarray, labels: list[str], source: str) -> float:
    """Fraction of CTC greedy decodes equal to the label (leading/trailing spaces ignored)."""
    return ocr_matches(outputs, labels, source) / max(len(labels), 1)


def ocr_matches(outputs: np.ndarray, labels: Any, source: str = "OCR data") -> int:
    """Number of CTC greedy decodes equal to their label (leading/trailing spaces ignored).

    Also the accuracy budget's scorer for OCR text lines (`passes.quantize.fidelity.Correct`).
    """
    from models.pretrained.ppocr import ctc_greedy_decode, ocr_charset

    charset = ocr_charset()
    if outputs.ndim != 3 or outputs.shape[2] != len(charset):
        raise DataError(f"{source}: OCR scoring needs [N, T, {len(charset)}] outputs, model "
                        f"gives {list(outputs.shape)}")
    texts = ctc_greedy_decode(outputs, charset)
    return sum(t.strip() == lab.strip() for t, lab in zip(texts, list(labels), strict=True))


def _as_distributions(x: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis: kept if already normalised, else softmax."""
    x = x.astype(np.float64)
    if x.min() >= 0 and np.allclose(x.sum(axis=-1), 1.0, atol=1e-3):
        return x
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fidelity(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement, mean cosine similarity and mean KL(reference || outputs)."""
    if outputs.shape != reference.shape:
        raise DataError(f"model output shape {list(outputs.shape)} differs from the "
                        f"reference output shape {list(reference.shape)}")
    n = len(outputs)
    a, b = outputs.reshape(n, -1).astype(np.float64), reference.reshape(n, -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    last = outputs if outputs.ndim > 2 else outputs.reshape(n, -1)
    ref_last = reference.reshape(last.shape)
    p, q = _as_distributions(ref_last), _as_distributions(last)
    kl = (p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12)))).sum(axis=-1)
    agree = last.argmax(axis=-1) == ref_last.argmax(axis=-1)
    metrics = {"agreement": float(agree.mean()), "cosine": float(cosine.mean()),
               "kl": float(kl.mean())}
    if outputs.ndim == 2 and outputs.shape[1] > TOP_K:
        metrics |= _decision_metrics(last, p, agree)
    return metrics


def _decision_metrics(outputs: np.ndarray, ref_probs: np.ndarray,
                      agree: np.ndarray) -> dict[str, float]:
    """Top-5 containment and agreement on the samples the reference is decisive about."""
    ref_top = ref_probs.argmax(axis=1)
    top_k = np.argpartition(-outputs, TOP_K - 1, axis=1)[:, :TOP_K]
    decisive = ref_probs.max(axis=1) >= DECISIVE_PROBABILITY
    metrics = {"ref_top1_in_top5": float((top_k == ref_top[:, None]).any(axis=1).mean()),
               "decisive": float(decisive.mean())}
    if decisive.any():
        metrics["agreement_decisive"] = float(agree[decisive].mean())
    return metrics


def evaluate(model: str | Path | onnx.ModelProto, data: Any,
             reference: str | Path | onnx.ModelProto | None = None,
             batch: int = DEFAULT_BATCH, limit: int | None = None,
             input_shapes: ShapeSpec | None = None,
             preprocess: Preprocess | None = None,
             executor: ExecutorOptions | None = None) -> EvalResult:
    """Run `model` over `data` and score it.

    Args:
        model: ``.onnx`` path, registry name, or proto.
        data: Bundled dataset name, ``.npz`` path, image folder, or a
            `models.datasets.Dataset`.
        reference: Optional float model to compare against (same input/output shapes).
        batch: Samples per run when the model's batch dim is symbolic.
        limit: Use only the first `limit` samples.
        input_shapes: The user's input shapes (`--input-shape`), bound in both models; a
            symbolic batch they leave unbound stays symbolic (batched runs).
        preprocess: How a folder's images become inputs (`--resize`, `--mean`, ...).
        executor: Share the samples out to these workers (local processes or Ray); the
            metrics are identical to an in-process run. Default: this process.

    Raises:
        ConfigError: A non-positive batch size.
        DataError: Data that does not fit the model (shape, label count/range).
        ModelLoadError: A model that cannot be loaded or run.
    """
    if batch < 1:
        raise ConfigError(f"batch: must be positive, got {batch}")
    proto, name = load_model(model, input_shapes)
    runner = Runner(proto, name)
    ds = eval_dataset(data, runner.shape, limit, preprocess)
    runner.check(ds.inputs, ds.name)
    outputs = runner.run(ds.inputs, batch, executor)
    result = EvalResult(name, ds.name, ds.kind, len(ds))
    ref_outputs = None
    if reference is not None:
        ref_proto, result.reference = load_model(reference, input_shapes)
        ref_outputs = run_onnx(ref_proto, result.reference, ds, batch, executor)
    result.metrics.update(score(outputs, ds, ref_outputs))
    logger.info("eval %s on %s: %s", name, ds.name, result.metrics)
    return result


def run_onnx(model: onnx.ModelProto, name: str, ds: Any, batch: int = DEFAULT_BATCH,
             executor: ExecutorOptions | None = None) -> np.ndarray:
    """The model's first output on every sample of `ds` (onnxruntime)."""
    runner = Runner(model, name)
    runner.check(ds.inputs, ds.name)
    return runner.run(ds.inputs, batch, executor)


def score(outputs: np.ndarray, ds: Any, reference: np.ndarray | None = None
          ) -> dict[str, float]:
    """Label metrics of `outputs` on `ds`, and fidelity against `reference` outputs."""
    metrics = _label_metrics(outputs, ds)
    if reference is not None and outputs.shape == reference.shape:
        metrics.update(fidelity(outputs, reference))
    elif reference is not None:  # e.g. a box count after NMS: no sample-by-sample pairing
        logger.info("no fidelity figures: output shape %s differs from the reference's %s",
                    list(outputs.shape), list(reference.shape))
    return metrics


def eval_dataset(data: Any, input_shape: list, limit: int | None = None,
                 preprocess: Preprocess | None = None) -> Any:
    """The evaluation data as a `models.datasets.Dataset`, read once.

    An image folder is read lazily, one batch at a time, unless it is small enough to keep
    (then a compile's three evaluations decode each image once).

    Args:
        data: Bundled dataset name, ``.npz`` path, image folder, or a `Dataset`.
        input_shape: The model's first input shape (None for symbolic dims): an image
            folder is resized to its height and width unless `preprocess.size` is given.
        limit: Use at most this many samples.
        preprocess: How a folder's images become inputs.
    """
    from models.datasets import Dataset, load_dataset

    if isinstance(data, Dataset):
        return data if limit is None else Dataset(
            data.inputs[:limit], None if data.labels is None else data.labels[:limit],
            data.name, data.kind)
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        pre = preprocess or Preprocess()
        size = pre.output_size(model_hw(input_shape, pre.layout), Path(data))
        folder = open_folder(Path(data), size, pre, limit)
        inputs = folder.read_all() if 4 * int(np.prod(folder.shape)) <= KEEP_BYTES else folder
        kind = "classification" if folder.labels is not None else "unlabelled"
        return Dataset(inputs, folder.labels, str(data), kind)
    return load_dataset(data, limit=limit)


def _label_metrics(outputs: np.ndarray, ds: Any) -> dict[str, float]:
    if ds.labels is None:
        return {}
    if ds.kind == "ocr":
        return {"exact_match": ocr_exact_match(outputs, list(ds.labels), ds.name)}
    return {"top1": top1_accuracy(outputs, np.asarray(ds.labels), ds.name)}
