"""The seed's comparison table: compression methods × models, each quantized, built and timed.

Every row is one `compile_model` run, so the table measures exactly what `npuc compile`
ships: int8 accuracy on the labelled eval set, MACs and parameters of the compressed model,
and the cycle model's latency (1 core, 1 thread) and FPS (2 cores, 8 threads).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compiler.driver.pipeline import compile_model

log = logging.getLogger(__name__)

TRAINED = ("fmnist_resnet", "fmnist_mobilenetv2")
ARCHITECTURES = ("resnet50", "mobilenetv2", "ssd_resnet50")

# method name -> config overrides (on top of quantization + build + verify + perf)
METHODS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "HRank pruning": {"prune.enabled": True, "prune.criterion": "hrank",
                      "prune.target_macs": 0.7, "prune.reconstruct": True},
    "ABC pruning": {"prune.enabled": True, "prune.criterion": "l1", "prune.target_macs": 0.7,
                    "prune.search": "abc", "prune.reconstruct": True,
                    "prune.abc_cycles": 4},  # the value docs/results.md was measured with
    "1xN sparsity (1x4, 50%, L1 blocks as in the paper)": {
        "sparsify.enabled": True, "sparsify.block": 4, "sparsify.sparsity": 0.5,
        "sparsify.criterion": "l1", "sparsify.reorder": True, "sparsify.reconstruct": True},
    "1xN sparsity (1x4, 50%, obs blocks)": {
        "sparsify.enabled": True, "sparsify.block": 4, "sparsify.sparsity": 0.5,
        "sparsify.criterion": "obs", "sparsify.reorder": True, "sparsify.reconstruct": True},
    "CHEX-style CSS sparsity (30%)": {"sparsify.enabled": True, "sparsify.criterion": "css",
                                      "sparsify.sparsity": 0.3, "sparsify.reconstruct": True,
                                      "sparsify.reorder": True},
}
# Random-weight architectures: data-free variants (accuracy means nothing there; the rows
# show what the compression does to MACs, latency and FPS).
ARCH_METHODS: dict[str, dict[str, Any]] = {
    "baseline (random weights)": {},
    "channel pruning (30% fewer MACs, l1, round_to 16)": {
        "prune.enabled": True, "prune.criterion": "l1", "prune.target_macs": 0.7,
        "prune.round_to": 16, "prune.reconstruct": False},
    "1xN sparsity (1x4, 50%, l1)": {
        "sparsify.enabled": True, "sparsify.block": 4, "sparsify.sparsity": 0.5,
        "sparsify.criterion": "l1", "sparsify.reorder": False, "sparsify.reconstruct": False},
}
HEADERS = ["model", "method", "top-1 int8", "MACs", "params", "latency ms (1c/1t)",
           "FPS (2c/8t)", "verify"]


def method_row(model: str, method: str, overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """Compile one (model, method) variant and extract its table row."""
    config = {"target.frames": 1000, "seed": 0, **overrides}
    result = compile_model(model, config, out)
    summary = result.report["summary"]
    accuracy = next((v["after"] for k, v in summary.items() if k in ("top1", "exact_match")),
                    None)
    return {"model": model, "method": method, "top-1 int8": accuracy,
            "MACs": summary["MACs"]["after"], "params": summary["params"]["after"],
            "latency ms (1c/1t)": summary["latency ms (1 core, 1 thread)"]["after"],
            "FPS (2c/8t)": summary["FPS (2 cores, 8 threads)"]["after"],
            "verify": summary.get("binary vs model.quant.onnx", {}).get("after")}


def seed_table(models: tuple[str, ...] = TRAINED, architectures: tuple[str, ...] = ARCHITECTURES,
               methods: dict[str, dict[str, Any]] | None = None,
               progress: Callable[[str], None] | None = None,
               arch_methods: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """All rows: every method on the trained models, `ARCH_METHODS` on the architectures.

    The architectures have random weights and no labels, so they are calibrated on seeded
    random images and reported for MACs, latency and FPS only.
    """
    methods = methods or METHODS
    arch_methods = arch_methods or ARCH_METHODS
    rows = []
    with tempfile.TemporaryDirectory(prefix="npuc-demo-") as tmp:
        for model in models:
            for name, overrides in methods.items():
                if progress:
                    progress(f"{model}: {name}")
                rows.append(method_row(model, name, overrides, Path(tmp) / f"{model}-{name}"))
        for arch in architectures:
            calib = _random_calib(arch, Path(tmp))
            for i, (name, overrides) in enumerate(arch_methods.items()):
                if progress:
                    progress(f"{arch}: {name}")
                config = {"calibration.data": str(calib), "calibration.limit": 4,
                          "target.verify_samples": 1, **overrides}
                rows.append(method_row(arch, name, config, Path(tmp) / f"{arch}-{i}"))
    return rows


def _random_calib(arch: str, folder: Path) -> Path:
    import numpy as np

    from models.registry import get_model

    _, sample = get_model(arch)
    name, x = next(iter(sample.items()))
    rng = np.random.default_rng(0)
    path = folder / f"{arch}-calib.npz"
    np.savez(path, images=rng.standard_normal((4, *x.shape[1:])).astype(np.float32))
    return path


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[h]) for h in HEADERS) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)
