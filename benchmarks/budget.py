"""The accuracy budget loop on the bundled models (docs/quantization.md, "Accuracy budget").

Cases (`--cases`, default all):
- ``lite0-agree`` / ``lite0-cos``: EfficientNet-Lite0, 32 calibration crops of `photos`,
  the other 288 crops as budget data (benchmarks/sensitivity.py's split);
  ``--min-agreement 0.97`` / ``--min-cosine 0.999``.
- ``ocr``: PP-OCRv4 recogniser, `text-lines` for calibration and budget, ``--max-drop 0.5``
  (exact match).
- ``fmnist-resnet`` / ``fmnist-mbv2``: the Fashion-MNIST models, `fmnist-calib`, the 10k
  `fmnist-test` split as budget data, ``--max-drop 0.3``.

Each case prints the metric before/after, the layers raised and their MAC share, the
predicted latency before/after on the default target, the loop's evaluations and wall
time; ``--sweep`` also times the full single-layer sweep on the same data for comparison.

    python benchmarks/budget.py [--cases lite0-agree ocr ...] [--sweep] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _lite0():
    from benchmarks.sensitivity import photo_splits
    from models.pretrained.efficientnet_lite0 import efficientnet_lite0

    calib, held = photo_splits()
    return efficientnet_lite0("N")[0], calib, held


def _ocr():
    from compiler.core.feeds import Feeds
    from models.datasets import load_dataset
    from models.pretrained.ppocr import ppocr_rec

    model = ppocr_rec()[0]
    ds = load_dataset("text-lines")
    name = model.graph.input[0].name
    return model, Feeds({name: ds.inputs}, "text-lines"), Feeds({name: ds.inputs},
                                                                "text-lines", ds.labels)


def _fmnist(name: str):
    from compiler.core.feeds import Feeds
    from models.datasets import load_dataset
    from models.registry import get_model

    model = get_model(name)[0]
    inp = model.graph.input[0].name
    calib, test = load_dataset("fmnist-calib"), load_dataset("fmnist-test")
    return model, Feeds({inp: calib.inputs}, "fmnist-calib"), Feeds(
        {inp: test.inputs}, "fmnist-test", test.labels)


CASES = {
    "lite0-agree": (_lite0, {"min_agreement": 0.97}),
    "lite0-cos": (_lite0, {"min_cosine": 0.999}),
    "ocr": (_ocr, {"max_drop": 0.5}),
    "fmnist-resnet": (lambda: _fmnist("fmnist_resnet"), {"max_drop": 0.3}),
    "fmnist-mbv2": (lambda: _fmnist("fmnist_mobilenetv2"), {"max_drop": 0.3}),
}


def run_case(name: str, sweep: bool) -> dict:
    """One case: the loop, its cost on the target, optionally the full sweep's time."""
    from compiler.driver.budget import budget_costs, budget_lines, correct_for
    from passes.quantize.budget import Budget, quantize_within_budget

    model, calib, data = CASES[name][0]()
    budget = Budget(**CASES[name][1])
    start = time.perf_counter()
    out = quantize_within_budget(model, calib, budget, data, correct=correct_for(data),
                                 batch_size=16)
    wall = time.perf_counter() - start
    report = {**out.report, "costs": budget_costs(out.baseline, out.result), "wall_s": wall,
              "load": os.getloadavg()[0]}
    print(f"== {name}: {budget.to_dict()}")
    print("\n".join(budget_lines(report)))
    if sweep:
        from passes.quantize.sensitivity import quantize_sensitivity

        t0 = time.perf_counter()
        rep = quantize_sensitivity(model, calib, data, batch_size=16, quantized=out.baseline)
        report["full_sweep_s"] = time.perf_counter() - t0
        print(f"  full single-layer sweep on the same data: {len(rep.layers)} evaluations, "
              f"{report['full_sweep_s']:.0f} s (loop: {wall:.0f} s)")
    print(f"  load average {report['load']:.1f}")
    return report


def main() -> None:
    """Run the chosen cases."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--sweep", action="store_true", help="also time the full per-layer sweep")
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args()
    results = {name: run_case(name, args.sweep) for name in args.cases}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
