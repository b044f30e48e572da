"""Per-layer quantization sensitivity of EfficientNet-Lite0 on the bundled photo crops.

Same splits as benchmarks/eval_quantize.py: calibration on every 10th `photos` crop (32),
evaluation on the other 288 crops; the pretrained model with a symbolic batch (runs of
`--batch` crops). Prints the wall time, the fully int8 baseline and the worst layers
(docs/quantization.md, "Sensitivity analysis").

    python benchmarks/sensitivity.py [--method single|leave-one-out] [--calibrator mse|max|...]
        [--top 10] [--step N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def photo_splits(step: int = 1):
    """(calibration Feeds, held-out evaluation Feeds) of the `photos` crops."""
    from compiler.core.feeds import Feeds
    from models.datasets import load_dataset

    x = load_dataset("photos").inputs
    held = np.array([i for i in range(len(x)) if i % 10 != 0 or i >= 320])[::step]
    return (Feeds({"input": x[::10][:32]}, "photos (calibration)"),
            Feeds({"input": x[held]}, "photos (held out)"))


def main() -> None:
    """Run the sweep and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="single")
    p.add_argument("--calibrator", default="mse")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--step", type=int, default=1, help="evaluate every N-th held-out crop")
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args()
    from models.pretrained.efficientnet_lite0 import efficientnet_lite0
    from passes.quantize.sensitivity import quantize_sensitivity

    model, _ = efficientnet_lite0("N")
    calib, held = photo_splits(args.step)
    start, cpu = time.perf_counter(), time.process_time()
    report = quantize_sensitivity(model, calib, held, method=args.method,
                                  calibrator=args.calibrator, batch_size=args.batch)
    print(f"{len(report.layers)} layers, {report.samples} crops, wall "
          f"{time.perf_counter() - start:.0f} s (CPU {time.process_time() - cpu:.0f} s), "
          f"phases {report.info['time_s']}")
    b = report.baseline
    print(f"all int8: cosine {b.cosine:.5f}, agreement {b.agreement:.4f} ({b.flips} flips)")
    for r in report.layers[:args.top]:
        m = r.metrics
        print(f"{r.name:28s} {r.op:5s} {r.macs / 1e6:6.2f} M  cos {m.cosine:.5f}  "
              f"agree {m.agreement:.4f} ({m.flips:3d} flips)  T/p99.99 {r.outlier_ratio:6.2f} "
              f"{' '.join(r.flags)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=1)


if __name__ == "__main__":
    main()
