"""`verify`: the binary (simulator) against `model.quant.onnx` (onnxruntime), output by output.

Both sides implement docs/fixed-point.md, so every output element must be identical; the
report gives, per output, the element count, the number of mismatched elements, the
largest absolute and relative differences, and whether it is consistent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.core.errors import DataError
from compiler.core.io import load_model, model_hash
from compiler.core.ir import Model
from compiler.core.numerics import run, session
from targets.npusim.isa import Program
from targets.npusim.simulate import Simulator


@dataclass
class VerifyReport:
    """Per-output comparison; `consistent` is True when no element differs."""

    outputs: list[dict[str, Any]]
    samples: int
    source_match: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """True when every output matches bit for bit."""
        return all(o["consistent"] for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"consistent": self.consistent, "samples": self.samples,
                "source_match": self.source_match, "outputs": self.outputs, "notes": self.notes}


def compare_output(name: str, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Element-wise comparison of one output (shapes must agree)."""
    if ref.shape != got.shape:
        return {"name": name, "elements": int(ref.size), "mismatched": int(ref.size),
                "max_abs": float("inf"), "max_rel": float("inf"), "consistent": False,
                "note": f"shape {got.shape} != {ref.shape}"}
    a, b = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(a - b)
    mismatched = int(np.count_nonzero(~((a == b) | (np.isnan(a) & np.isnan(b)))))
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(a), np.finfo(np.float32).tiny)
    return {"name": name, "elements": int(ref.size), "mismatched": mismatched,
            "max_abs": max_abs, "max_rel": float(np.nanmax(rel)) if rel.size else 0.0,
            "consistent": mismatched == 0}


def verify(quant_model: Model | str | os.PathLike, binary: str | os.PathLike | bytes | Program,
           feeds: dict[str, np.ndarray]) -> VerifyReport:
    """Run both on `feeds` (name -> batch array) and compare every output.

    Raises:
        DataError: Feeds missing an input or of the wrong shape.
        TargetError: The binary is invalid.
    """
    model = quant_model if isinstance(quant_model, Model) else load_model(quant_model)
    sim = Simulator(binary)
    feeds, notes = whole_frames(feeds, sim.frame_batch)
    got = sim.run_frames(feeds)
    ref = reference_frames(model, {n: np.asarray(feeds[n]) for n in sim.input_names},
                           sim.frame_batch)
    missing = [n for n in sim.output_names if n not in ref[0]]
    if missing:
        raise DataError(f"the quantized model has no outputs {missing} (binary built from a "
                        "different model?)")
    outputs = [merge_frames([compare_output(n, np.asarray(r[n]), g[n])
                             for r, g in zip(ref, got, strict=True)])
               for n in sim.output_names]
    source = sim.program.metadata.get("source_hash")
    match = None if source is None else source == model_hash(model)
    if match is False:
        notes.append("the binary was built from a different model file")
    samples = next(iter(feeds.values())).shape[0] if feeds else 0
    return VerifyReport(outputs, samples, match, notes)


def merge_frames(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One output's per-frame comparisons as one row (counts summed, maxima kept).

    Frames are compared one by one because a run-time-shaped output (NonMaxSuppression
    detections) may have a different size in every frame.
    """
    merged = {"name": rows[0]["name"], "elements": sum(r["elements"] for r in rows),
              "mismatched": sum(r["mismatched"] for r in rows),
              "max_abs": max(r["max_abs"] for r in rows),
              "max_rel": max(r["max_rel"] for r in rows),
              "consistent": all(r["consistent"] for r in rows)}
    notes = [f"frame {i}: {r['note']}" for i, r in enumerate(rows) if "note" in r]
    if notes:
        merged["note"] = "; ".join(notes[:3]) + ("; ..." if len(notes) > 3 else "")
    return merged


def whole_frames(feeds: dict[str, Any], batch: int) -> tuple[dict[str, Any], list[str]]:
    """`feeds` cut to whole frames of a fixed `batch` (as calibration does), and a note.

    Raises:
        DataError: Fewer samples than one frame.
    """
    n = min((np.shape(a)[0] for a in feeds.values() if np.ndim(a)), default=1)
    usable = n - n % batch
    if usable == 0:
        raise DataError(f"{n} sample(s), fewer than the binary's fixed batch of {batch}")
    if usable == n:
        return feeds, []
    return ({k: np.asarray(a)[:usable] if np.ndim(a) else a for k, a in feeds.items()},
            [f"the last {n - usable} sample(s) do not fill the fixed batch of {batch}: "
             "not compared"])


def reference_frames(model: Model, feeds: dict[str, np.ndarray],
                     batch: int = 1) -> list[dict[str, np.ndarray]]:
    """Outputs of `model` in onnxruntime, frame by frame (`batch` samples per frame)."""
    sess = session(model)
    frames = next(iter(feeds.values())).shape[0] // batch if feeds else 1
    return [run(sess, {n: a[f * batch:(f + 1) * batch] for n, a in feeds.items()})
            for f in range(frames)]

