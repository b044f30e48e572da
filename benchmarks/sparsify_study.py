"""Accuracy study behind docs/sparsity.md: 1xN vs CHEX-style filters vs channel pruning.

    python benchmarks/sparsify_study.py [--models fmnist_resnet fmnist_mobilenetv2]
        [--blocks 2 4 8 16] [--sparsities 0.3 0.5 0.7] [--json OUT.json]

No fine-tuning anywhere: every number is a post-training transform of the trained float
model, evaluated on the bundled labelled Fashion-MNIST evaluation set; reconstruction uses the
separate calibration set.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from compiler.cli.common import format_table
from compiler.core.io import load_model
from compiler.core.ir import Model
from compiler.core.numerics import run, session
from compiler.driver.data import load_data
from passes.canonicalize import canonicalize
from passes.sparsify.layers import node_macs
from passes.sparsify.sparsify import sparsify_model

log = logging.getLogger(__name__)

VARIANTS = ((False, False), (True, False), (False, True), (True, True))  # (reorder, recon)


def accuracy(model: Model, feeds) -> float:
    """Top-1 accuracy of `model` on labelled feeds."""
    sess = session(model)
    name = sess.get_outputs()[0].name
    preds = [run(sess, batch)[name].argmax(axis=-1) for batch in feeds.batches(250)]
    return float(np.mean(np.concatenate(preds) == np.asarray(feeds.labels)))


def sparse_runs(model: Model, blocks: Sequence[int], sparsities: Sequence[float],
                calib) -> Iterator[tuple[dict[str, Any], Model, dict]]:
    """(row description, sparse model, report) for every 1xN and css configuration."""
    for block in blocks:
        for s in sparsities:
            for reorder, recon in VARIANTS:
                out, rep = sparsify_model(model, block, s, reorder=reorder, reconstruct=recon,
                                          calib=calib if recon else None, criterion="l1")
                yield {"method": f"1x{block} l1", "N": block, "S": s, "reorder": reorder,
                       "recon": recon}, out, rep
    for block in blocks:
        for s in sparsities:
            out, rep = sparsify_model(model, block, s, criterion="obs", reorder=True,
                                      reconstruct=True, calib=calib)
            yield {"method": f"1x{block} obs", "N": block, "S": s, "reorder": True,
                   "recon": True}, out, rep
    for s in sparsities:
        for recon in (False, True):
            out, rep = sparsify_model(model, 4, s, criterion="act", reorder=True,
                                      reconstruct=recon, calib=calib)
            yield {"method": "1x4 act", "N": 4, "S": s, "reorder": True,
                   "recon": recon}, out, rep
    for s in sparsities:
        for recon in (False, True):
            out, rep = sparsify_model(model, 4, s, criterion="css", reconstruct=recon,
                                      calib=calib if recon else None)
            yield {"method": "css filters", "N": 1, "S": s, "reorder": False,
                   "recon": recon}, out, rep


def prune_runs(model: Model, sparsities: Sequence[float],
               calib) -> Iterator[tuple[dict[str, Any], Model, dict]]:
    """Channel pruning at the same nominal ratios (skipped when passes.prune lacks it)."""
    try:
        from passes.prune import prune_model
    except ImportError:
        log.warning("passes.prune.prune_model is not available: no channel-pruning rows")
        return
    for s in sparsities:
        for recon in (False, True):
            out, rep = prune_model(model, ratio=s, reconstruct=recon,
                                   calib=calib if recon else None, round_to=1)
            yield {"method": "channel prune l1", "N": 0, "S": s, "reorder": False,
                   "recon": recon}, out, rep


def study_model(path: str, blocks: Sequence[int], sparsities: Sequence[float],
                calib_limit: int = 256, eval_data: str = "fmnist-eval") -> list[dict[str, Any]]:
    """All rows of the table for one trained model."""
    model = canonicalize(load_model(path)).model
    evals = load_data(eval_data, model)
    calib = load_data("fmnist-calib", model, limit=calib_limit)
    base = accuracy(model, evals)
    macs = sum(node_macs(model).values())
    rows = [{"model": path, "method": "float", "N": 0, "S": 0.0, "reorder": False,
             "recon": False, "top1": base, "drop_pt": 0.0, "zero_blocks": 0.0,
             "eff_macs": 1.0}]
    runs = [sparse_runs(model, blocks, sparsities, calib), prune_runs(model, sparsities, calib)]
    for gen in runs:
        for desc, out, rep in gen:
            start = time.perf_counter()
            acc = accuracy(out, evals)
            rows.append({"model": path, **desc, "top1": acc, "drop_pt": 100 * (base - acc),
                         **_compression(rep, macs, out)})
            log.info("%s %s: %.4f (%.1fs)", path, desc, acc, time.perf_counter() - start)
    return rows


def _compression(report: dict, macs: int, out: Model) -> dict[str, float]:
    if "zero_block_fraction" in report:
        return {"zero_blocks": report["zero_block_fraction"],
                "eff_macs": report["effective_macs"] / macs}
    return {"zero_blocks": float("nan"), "eff_macs": sum(node_macs(out).values()) / macs}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["models/trained/fmnist_resnet.onnx",
                                                   "models/trained/fmnist_mobilenetv2.onnx"])
    p.add_argument("--blocks", nargs="+", type=int, default=[2, 4, 8, 16])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--eval", default="fmnist-eval",
                   help="labelled evaluation set (fmnist-test: the 10,000 test images)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [r for m in args.models
            for r in study_model(m, args.blocks, args.sparsities, eval_data=args.eval)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(format_table([_cells(r) for r in rows], ["model", "method", "S", "reorder",
                                                    "recon", "top1 %", "drop pt",
                                                    "zero blocks", "eff. MACs"]))
    return 0


def _cells(r: dict[str, Any]) -> tuple:
    return (r["model"].rsplit("/", 1)[-1].removesuffix(".onnx"), r["method"], f"{r['S']:.0%}",
            "yes" if r["reorder"] else "", "yes" if r["recon"] else "",
            f"{100 * r['top1']:.2f}", f"{r['drop_pt']:+.2f}", f"{r['zero_blocks']:.3f}",
            f"{r['eff_macs']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
