"""Output fidelity of model variants against one float reference, for sensitivity sweeps.

A sweep runs many variants of one float model (one layer quantized, one channel group pruned,
...) over the same data. `Reference` runs the float model once and keeps its graph outputs
(small: logits, boxes) per batch; `score` streams a variant over the same batches and
returns `Metrics`:

- ``cosine``: the worst graph output's cosine similarity to the float output over all
  elements of all samples (`passes.quantize.compare.Accumulator`);
- ``agreement`` / ``flips``: on the first graph output, the fraction / number of positions
  whose arg-max over the last axis equals / differs from the float model's (one position per
  sample for ``[N, classes]`` logits, per step or anchor for higher ranks), as
  `compiler.driver.evaluate.fidelity` counts it;
- ``accuracy``: top-1 accuracy of the first output when the data has integer labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.core.errors import ConfigError, DataError
from compiler.core.feeds import Feeds
from compiler.core.ir import Model
from compiler.core.numerics import run, session
from passes.quantize.calibrate import iter_batches
from passes.quantize.compare import Accumulator
from passes.quantize.options import RANK_BY

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""Runs one batch (feed dict) and returns the graph outputs by name."""

Correct = Callable[[np.ndarray, Any], int]
"""Counts the correct samples of one batch: (first graph output, the batch's labels) -> int.
The default compares the arg-max with integer class labels; the driver passes another one
for other label kinds (OCR strings: CTC exact match)."""


@dataclass
class Metrics:
    """Fidelity of one variant against the float model.

    Attributes:
        cosine: Worst graph output's cosine similarity (1.0: identical outputs).
        agreement: Fraction of first-output positions with the float model's arg-max.
        flips: Number of those positions whose arg-max changed.
        accuracy: Top-1 accuracy on labelled data (None without labels).
        outputs: Cosine per graph output.
    """

    cosine: float
    agreement: float
    flips: int
    accuracy: float | None = None
    outputs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def class_labels(feeds: Feeds, correct: Correct | None = None) -> Any:
    """The labels of `feeds` that can be scored (None: none that can).

    Integer class labels always; any labels (OCR strings, ...) when a `correct` function
    is given to score them.
    """
    if feeds.labels is None:
        return None
    if correct is not None:
        return feeds.labels
    labels = np.asarray(feeds.labels)
    return labels.astype(np.int64) if labels.dtype.kind in "iu" else None


def top1_correct(outputs: np.ndarray, labels: np.ndarray) -> int:
    """Samples whose arg-max over the flattened output equals the integer label."""
    scores = outputs.reshape(len(labels), -1)
    return int(np.sum(scores.argmax(axis=1) == labels))


class Scorer:
    """Running sums of one variant's outputs against the reference outputs."""

    def __init__(self, names: list[str], correct: Correct | None = None) -> None:
        self.correct_fn = correct or top1_correct
        self.accs = {n: Accumulator() for n in names}
        self.first = names[0]
        self.positions = self.agree = self.samples = self.correct = 0
        self.labelled = False

    def update(self, ref: dict[str, np.ndarray], test: dict[str, np.ndarray],
               labels: np.ndarray | None) -> None:
        """Add one batch."""
        for name, acc in self.accs.items():
            acc.update(ref[name], test[name])
        r, t = _positions(ref[self.first]), _positions(test[self.first])
        self.positions += r.size
        self.agree += int(np.sum(r == t))
        if labels is not None:
            self.labelled = True
            self.correct += self.correct_fn(test[self.first], labels)
            self.samples += len(labels)

    def result(self) -> Metrics:
        """The metrics so far."""
        cosines = {n: _cosine(acc) for n, acc in self.accs.items()}
        accuracy = self.correct / max(self.samples, 1) if self.labelled else None
        return Metrics(_worst(cosines.values()), self.agree / max(self.positions, 1),
                       self.positions - self.agree, accuracy, cosines)


def _cosine(acc: Accumulator) -> float:
    # identical outputs give exactly 1.0 (dot / sqrt(dot²) can round below it); inf/NaN in
    # an output gives NaN, which fails every `>=` budget test and ranks worst in `_worst`
    if acc.ref_nonfinite or acc.test_nonfinite:
        return math.nan
    return 1.0 if acc.err2 == 0 else acc.row("", "").cosine


def _worst(cosines: Iterable[float]) -> float:
    """The lowest cosine, NaN (an output with inf/NaN) below every number."""
    return min(cosines, key=lambda c: -math.inf if math.isnan(c) else c)


def _positions(x: np.ndarray) -> np.ndarray:
    """Arg-max over the last axis, one per sample for 1-D/2-D outputs."""
    x = np.asarray(x)
    last = x if x.ndim > 2 else x.reshape(len(x), -1)
    return last.argmax(axis=-1)


class Reference:
    """The float model's outputs on every batch of the data, computed once.

    Args:
        model: The float model.
        feeds: The evaluation data (labels are used when they are integer classes).
        batch_size: Samples per run (a fixed model batch wins).
        correct: Counts a batch's correct samples (`Correct`; default: top-1 against
            integer class labels).
    """

    def __init__(self, model: Model, feeds: Feeds, batch_size: int = 8,
                 correct: Correct | None = None) -> None:
        self.correct = correct
        self.labels = class_labels(feeds, correct)
        self.batches = list(_labelled_batches(model, feeds, self.labels, batch_size))
        sess = session(model)
        self.outputs = [run(sess, feed) for feed, _ in self.batches]
        self.names = [o.name for o in sess.get_outputs()]
        if not self.names:
            raise DataError("the model has no graph output to compare")
        self.float_metrics = self._self_metrics()  # the float model's own accuracy

    @property
    def samples(self) -> int:
        """Number of samples scored."""
        return sum(len(next(iter(f.values()))) for f, _ in self.batches)

    def _self_metrics(self) -> Metrics:
        scorer = Scorer(self.names, self.correct)
        for (_, labels), ref in zip(self.batches, self.outputs, strict=True):
            scorer.update(ref, ref, labels)
        return scorer.result()

    def score(self, runner: Runner) -> Metrics:
        """Run a variant over every batch and compare it with the float outputs."""
        scorer = Scorer(self.names, self.correct)
        for (feed, labels), ref in zip(self.batches, self.outputs, strict=True):
            scorer.update(ref, runner(feed), labels)
        return scorer.result()


def _labelled_batches(model: Model, feeds: Feeds, labels: np.ndarray | None,
                      batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], Any]]:
    start = 0
    for feed in iter_batches(model, feeds, batch_size):
        n = len(next(iter(feed.values())))
        yield feed, None if labels is None else labels[start:start + n]
        start += n


def rank_key(by: str) -> Callable[[Metrics], tuple]:
    """Sort key of `Metrics`, worst first: by "accuracy", "agreement" or "cosine" first.

    Ties (e.g. equal accuracy) are broken by agreement, then cosine.
    """
    def key(m: Metrics) -> tuple:
        acc = m.accuracy if m.accuracy is not None else math.inf
        order = {"accuracy": (acc, m.agreement, m.cosine),
                 "agreement": (m.agreement, m.cosine, acc),
                 "cosine": (m.cosine, m.agreement, acc)}
        return order[by]
    return key




def resolve_rank(by: str, labelled: bool) -> str:
    """"auto" -> "accuracy" on labelled data, else "cosine"."""
    if by not in RANK_BY:
        raise ConfigError(f"unknown ranking {by!r} (valid: {', '.join(RANK_BY)})")
    if by == "accuracy" and not labelled:
        raise ConfigError("ranking by accuracy needs data with integer class labels")
    if by == "auto":
        return "accuracy" if labelled else "cosine"
    return by


@dataclass
class SensitivityReport:
    """A ranked sweep and its context.

    Attributes:
        layers: Per layer (or group), worst first.
        method: "single" / "leave-one-out" (quantize) or "prune".
        rank_by: The metric ranked on ("cosine", "agreement" or "accuracy").
        samples: Evaluation samples.
        baseline: Metrics of the fully int8 (or fully pruned) model.
        float_accuracy: The float model's accuracy on labelled data.
        info: Calibrator, ratio, thresholds, timings.
    """

    layers: list[Any]
    method: str
    rank_by: str
    samples: int
    baseline: Metrics | None = None
    float_accuracy: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"method": self.method, "rank_by": self.rank_by, "samples": self.samples,
                "float_accuracy": self.float_accuracy,
                "baseline": self.baseline.to_dict() if self.baseline else None,
                "info": self.info, "layers": [r.to_dict() for r in self.layers]}


def integer_metrics(result: Any, ref: Reference) -> Metrics:
    """The fidelity of the written `model.quant.onnx` against `ref`, run in onnxruntime.

    The integer model is bit-exact with the target's binary, so this is what the user
    ships; the switch model's fake-quant proxy leaves out bias rounding and half-up vs
    half-even requantization, which can matter (a 40-step CTC decode, docs/quantization.md).
    """
    sess = session(result.quant_model)
    return ref.score(lambda feed: run(sess, feed))
