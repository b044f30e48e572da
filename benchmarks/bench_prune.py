"""Channel pruning: speed against Torch-Pruning, accuracy without fine-tuning.

    python benchmarks/bench_prune.py [--ratios 0.1 0.3 0.5] [--json]      speed (ResNet-50)
    python benchmarks/bench_prune.py --accuracy models/trained/fmnist_resnet.onnx
    python benchmarks/bench_prune.py --efficientnet                        top-1 agreement

Speed: npuc group analysis + pruning of ResNet-50 at several ratios, and Torch-Pruning on
torchvision's ResNet-50 at the same ratios when torch is installed.
Accuracy: l1 / hrank / css / abc at a MACs target on Fashion-MNIST, with and without
reconstruction, top-1 on `fmnist-eval`, calibration `fmnist-calib`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def npuc_times(ratios: list[float]) -> list[dict]:
    from compiler.core.io import load_model
    from models.zoo import resnet50
    from passes.canonicalize import canonicalize
    from passes.prune import analyze, prune_model

    proto, _ = resnet50()
    model = canonicalize(load_model(proto)).model
    rows = []
    for ratio in ratios:
        start = time.perf_counter()
        groups = analyze(model).groups
        t_groups = time.perf_counter() - start
        _, report = prune_model(model, ratio=ratio, reconstruct=False, round_to=1)
        rows.append({"tool": "npuc (ONNX)", "ratio": ratio, "groups": len(groups),
                     "analysis_s": round(t_groups, 3),
                     "prune_s": round(report["time_s"]["total"], 3),
                     "macs_ratio": round(report["macs"]["ratio"], 4)})
    return rows


def torch_pruning_times(ratios: list[float]) -> list[dict]:
    try:
        import torch
        import torch_pruning as tp
        import torchvision
    except ImportError as e:
        return [{"tool": "Torch-Pruning", "skipped": f"{e.name} not installed"}]
    rows = []
    for ratio in ratios:
        model = torchvision.models.resnet50()
        example = torch.randn(1, 3, 224, 224)
        start = time.perf_counter()
        importance = tp.importance.MagnitudeImportance(p=1)
        pruner = tp.pruner.MagnitudePruner(model, example, importance=importance,
                                           pruning_ratio=ratio, ignored_layers=[model.fc])
        t_groups = time.perf_counter() - start
        pruner.step()
        rows.append({"tool": "Torch-Pruning", "ratio": ratio, "analysis_s": round(t_groups, 3),
                     "prune_s": round(time.perf_counter() - start, 3)})
    return rows


def _top1(model, feeds, labels) -> float:
    from compiler.core.numerics import session

    sess = session(model)
    name = sess.get_inputs()[0].name
    step = sess.get_inputs()[0].shape[0]
    step = step if isinstance(step, int) and step > 0 else 256
    preds = [np.argmax(sess.run(None, {name: feeds[i:i + step]})[0], axis=1)
             for i in range(0, len(feeds), step)]
    return float(np.mean(np.concatenate(preds) == labels))


def accuracy_table(path: str, target: float, abc: tuple[int, int, int], seed: int) -> list[dict]:
    from compiler.core.io import load_model
    from models.datasets import load_dataset
    from passes.prune import prune_model

    model = load_model(path)
    evald, calib = load_dataset("fmnist-eval"), load_dataset("fmnist-calib")
    base = _top1(model, evald.inputs, evald.labels)
    rows = [{"method": "float", "top1": base, "macs": 1.0, "params": 1.0}]
    runs = [(c, r, None) for c in ("l1", "hrank", "css") for r in (False, True)]
    runs.append(("l1", True, "abc"))
    for criterion, recon, search in runs:
        start = time.perf_counter()
        kw = {"abc_cycles": abc[0], "abc_sources": abc[1], "abc_limit": abc[2]} if search else {}
        pruned, rep = prune_model(model, target_macs=target, criterion=criterion,
                                  reconstruct=recon, search=search, seed=seed, round_to=1,
                                  calib=calib.inputs, **kw)
        top1 = _top1(pruned, evald.inputs, evald.labels)
        rows.append({"method": (search or criterion) + (" + recon" if recon else ""),
                     "top1": top1, "drop_pt": round(100 * (base - top1), 2),
                     "macs": round(rep["macs"]["ratio"], 4),
                     "params": round(rep["params"]["ratio"], 4),
                     "time_s": round(time.perf_counter() - start, 1)})
    return rows


def efficientnet_agreement(target: float, seed: int) -> list[dict]:
    from compiler.core.io import load_model
    from compiler.core.numerics import run
    from models.datasets import load_dataset
    from models.registry import get_model
    from passes.prune import prune_model

    model = load_model(get_model("efficientnet_lite0")[0])
    photos = load_dataset("photos").inputs
    calib, test = photos[:128], photos[128:]  # disjoint: calibrate on 128, score on 192
    teacher = np.zeros(len(test), int)
    teacher = np.array([np.argmax(next(iter(run(model, {model.graph.inputs[0].name:
                                                       test[i:i + 1]}).values())))
                        for i in range(len(test))])
    rows = []
    for criterion, recon in (("l1", False), ("l1", True), ("hrank", True), ("css", True)):
        pruned, rep = prune_model(model, target_macs=target, criterion=criterion,
                                  reconstruct=recon, calib=calib, seed=seed, round_to=1)
        rows.append({"method": criterion + (" + recon" if recon else ""),
                     "agreement": _top1(pruned, test, teacher),
                     "macs": round(rep["macs"]["ratio"], 4),
                     "params": round(rep["params"]["ratio"], 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--accuracy", metavar="MODEL", help="Fashion-MNIST model to prune")
    parser.add_argument("--efficientnet", action="store_true",
                        help="EfficientNet-Lite0 top-1 agreement on the photo set")
    parser.add_argument("--target-macs", type=float, default=None)
    parser.add_argument("--abc", type=int, nargs=3, default=[4, 6, 3], metavar=("T", "N", "M"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.accuracy or args.efficientnet:
        rows = (accuracy_table(args.accuracy, args.target_macs or 0.7, tuple(args.abc),
                               args.seed) if args.accuracy
                else efficientnet_agreement(args.target_macs or 0.8, args.seed))
        print(json.dumps(rows, indent=2) if args.json else "\n".join(map(str, rows)))
        return
    rows = npuc_times(args.ratios) + torch_pruning_times(args.ratios)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        if "skipped" in r:
            print(f"{r['tool']:<14} skipped: {r['skipped']}")
        else:
            print(f"{r['tool']:<14} ratio {r['ratio']:.1f}: analysis {r['analysis_s']:.2f}s, "
                  f"analysis+prune {r['prune_s']:.2f}s"
                  + (f", MACs {100 * r['macs_ratio']:.1f}%" if "macs_ratio" in r else ""))


if __name__ == "__main__":
    main()
