"""Train small Fashion-MNIST CNNs and write them as clean ONNX graphs.

Three subcommands share this module (torch is only needed for ``train``)::

    python -m models.train.fmnist train --arch resnet --epochs 15 --out models/trained
    python -m models.train.fmnist data --out models/data
    python -m models.train.fmnist evaluate --models models/trained --data models/data

``train`` writes ``fmnist_<arch>.onnx`` (opset 17, input ``input`` [N,1,28,28], output
``logits`` [N,10]; only Conv, BatchNormalization, Relu, Clip, Add, GlobalAveragePool, Flatten,
Gemm), plus ``fmnist_<arch>.train.json`` (training record) and ``fmnist_<arch>.ref.npz``
(torch eval-mode logits of the first 64 test images, used by ``evaluate``; not committed).
``--arch`` and ``--epochs`` given without a subcommand mean ``train``.

The ONNX file is written with ``onnx.helper`` from the trained weights rather than by
``torch.onnx.export``, so the graph holds exactly the operators listed above, with
BatchNormalization kept unfolded and node names equal to the torch module names.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from models.datasets.fmnist_idx import MEAN, STD, load_fmnist, preprocess, stratified_indices
from models.train.fmnist_nets import ARCHS, OnnxWriter, build_model, preprocessing_record

try:  # torch is only needed to train; `data` and `evaluate` run in the torch-free venv.
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
except ImportError:  # pragma: no cover - exercised in the main venv
    torch = None
    F = None
    nn = SimpleNamespace(Module=object)

logger = logging.getLogger(__name__)

REF_IMAGES = 64
EVAL_PER_CLASS = 200
CALIB_SIZE = 256
SEED = 0


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop 28x28 from the image zero-padded by 2 (in normalised space), random h-flip."""
    b = x.shape[0]
    pad_value = -MEAN / STD  # a black pixel after normalisation
    padded = F.pad(x, (2, 2, 2, 2), value=pad_value)
    oy = torch.randint(0, 5, (b,), generator=gen)
    ox = torch.randint(0, 5, (b,), generator=gen)
    ar = torch.arange(28)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = (ox[:, None] + ar)[:, None, :]
    out = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on BN parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Eval-mode logits of ``model`` on preprocessed images ``x`` [N,1,28,28]."""
    model.eval()
    with torch.no_grad():
        outs = [model(torch.from_numpy(x[i:i + batch])).numpy()
                for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def train(
    arch: str, epochs: int, out: Path, max_steps: int | None = None, threads: int = 2
) -> dict[str, Any]:
    """Train one model on the 60k training images and write its ONNX file.

    Args:
        arch: ``"resnet"`` or ``"mobilenetv2"``.
        epochs: Number of epochs (OneCycle schedule spans all of them).
        out: Output directory.
        max_steps: Stop after this many steps (timing runs); no export when set.
        threads: torch intra-op threads.

    Returns:
        The training record (also written to ``fmnist_<arch>.train.json``).
    """
    if torch is None:
        raise SystemExit("train needs torch: use /work/torchvenv (see models/train/README.md)")
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    xtr_u8, ytr_np = load_fmnist("train")
    xte_u8, yte = load_fmnist("test")
    xtr = torch.from_numpy(preprocess(xtr_u8))
    ytr = torch.from_numpy(ytr_np)
    xte = preprocess(xte_u8)

    model = build_model(arch).to(memory_format=torch.channels_last)  # ~1.3x faster on CPU
    n_params = sum(p.numel() for p in model.parameters())
    batch = 128
    steps_per_epoch = math.ceil(len(xtr) / batch)
    if arch == "resnet":
        opt = torch.optim.SGD(_param_groups(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True)
        max_lr = 0.2
    else:
        opt = torch.optim.SGD(_param_groups(model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
        max_lr = 0.2
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    print(f"[{arch}] params={n_params} epochs={epochs} steps/epoch={steps_per_epoch}", flush=True)

    t0 = time.time()
    epoch_times: list[float] = []
    step = 0
    for epoch in range(epochs):
        model.train()
        te = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        total_loss, correct = 0.0, 0
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            xb = _augment(xtr[idx], gen).contiguous(memory_format=torch.channels_last)
            yb = ytr[idx]
            logits = model(xb)
            loss = criterion(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            step += 1
            if max_steps is not None and step >= max_steps:
                dt = time.time() - te
                print(f"[{arch}] {step} steps in {dt:.1f}s -> "
                      f"{dt / step * steps_per_epoch:.0f}s/epoch (est.)", flush=True)
                return {"steps": step, "seconds": dt}
        epoch_times.append(time.time() - te)
        acc = float((torch_logits(model, xte).argmax(1) == yte).mean())
        print(f"[{arch}] epoch {epoch + 1}/{epochs} loss={total_loss / len(xtr):.4f} "
              f"train_acc={correct / len(xtr):.4f} test_acc={acc:.4f} "
              f"time={epoch_times[-1]:.0f}s", flush=True)
    train_seconds = time.time() - t0
    return _finish(arch, model, out, xte, yte, epochs, n_params, train_seconds, epoch_times)


def _finish(
    arch: str, model: nn.Module, out: Path, xte: np.ndarray, yte: np.ndarray, epochs: int,
    n_params: int, train_seconds: float, epoch_times: list[float],
) -> dict[str, Any]:
    """Export ONNX, reference logits and the training record."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    writer = OnnxWriter()
    model.emit(writer)
    proto = writer.model(f"fmnist_{arch}", f"Fashion-MNIST {arch}, trained {epochs} epochs")
    onnx_path = out / f"fmnist_{arch}.onnx"
    onnx.save(proto, onnx_path)
    np.savez(out / f"fmnist_{arch}.ref.npz", logits=torch_logits(model, xte[:REF_IMAGES]))
    full = torch_logits(model, xte)
    subset = stratified_indices(yte, EVAL_PER_CLASS, SEED)
    record = {
        "arch": arch,
        "epochs": epochs,
        "params": int(n_params),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(float(np.mean(epoch_times)), 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torch_top1_test10k": float((full.argmax(1) == yte).mean()),
        "torch_top1_eval2k": float((full[subset].argmax(1) == yte[subset]).mean()),
        "onnx_bytes": onnx_path.stat().st_size,
    }
    (out / f"fmnist_{arch}.train.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2), flush=True)
    return record


# --------------------------------------------------------------------------------------------
# Committed data subsets and ONNX evaluation (torch-free)
# --------------------------------------------------------------------------------------------


def make_data(out: Path) -> dict[str, Path]:
    """Write ``fmnist_eval.npz`` (2,000 test images) and ``fmnist_calib.npz`` (256 train).

    Args:
        out: Output directory.

    Returns:
        Paths of the two files by name.
    """
    out.mkdir(parents=True, exist_ok=True)
    xte, yte = load_fmnist("test")
    idx = stratified_indices(yte, EVAL_PER_CLASS, SEED)
    eval_path = out / "fmnist_eval.npz"
    np.savez_compressed(eval_path, images=preprocess(xte[idx]), labels=yte[idx], indices=idx)
    xtr, ytr = load_fmnist("train")
    cidx = np.sort(np.random.default_rng(SEED).choice(len(xtr), CALIB_SIZE, replace=False))
    calib_path = out / "fmnist_calib.npz"
    np.savez_compressed(
        calib_path, images=preprocess(xtr[cidx]), labels=ytr[cidx], indices=cidx.astype(np.int64)
    )
    return {"eval": eval_path, "calib": calib_path}


def _ort_logits(path: Path, x: np.ndarray, batch: int = 500) -> np.ndarray:
    from compiler.core.numerics import ort_session, session_options

    sess = ort_session(str(path), session_options(threads=2))
    return np.concatenate(
        [sess.run(["logits"], {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    )


def _check_ops(path: Path) -> list[str]:
    import onnx

    allowed = {"Conv", "BatchNormalization", "Relu", "Clip", "Add", "GlobalAveragePool",
               "Flatten", "Gemm"}
    ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
    bad = [op for op in ops if op not in allowed]
    if bad:
        raise SystemExit(f"{path}: unexpected operators {bad}")
    return ops


def evaluate(models_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Check every trained ONNX model with onnxruntime and write ``accuracy.json``.

    For each ``fmnist_<arch>.onnx``: compares its logits with the torch reference logits
    (max abs diff, when ``fmnist_<arch>.ref.npz`` exists), and measures top-1 on the full
    10k test set and on the committed 2,000-image eval subset.

    Args:
        models_dir: Directory with the ONNX files and the ``*.train.json``/``*.ref.npz``.
        data_dir: Directory with ``fmnist_eval.npz``.

    Returns:
        The accuracy record (also written to ``models_dir/accuracy.json``).
    """
    xte_u8, yte = load_fmnist("test")
    xte = preprocess(xte_u8)
    ev = np.load(data_dir / "fmnist_eval.npz")
    record: dict[str, Any] = {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
                              "preprocessing": preprocessing_record(),
                              "eval_subset": f"{len(ev['labels'])} test images, "
                                             f"{EVAL_PER_CLASS}/class, seed {SEED}",
                              "models": {}}
    for arch in ARCHS:
        path = models_dir / f"fmnist_{arch}.onnx"
        if not path.exists():
            continue
        train_json = models_dir / f"fmnist_{arch}.train.json"
        entry = json.loads(train_json.read_text()) if train_json.exists() else {"arch": arch}
        ref_path = models_dir / f"fmnist_{arch}.ref.npz"
        full = _ort_logits(path, xte)
        sub = _ort_logits(path, ev["images"])
        entry.update({
            "onnx": path.name,
            "onnx_bytes": path.stat().st_size,
            "onnx_ops": _check_ops(path),
            "onnx_top1_test10k": float((full.argmax(1) == yte).mean()),
            "onnx_top1_eval2k": float((sub.argmax(1) == ev["labels"]).mean()),
        })
        if ref_path.exists():
            ref = np.load(ref_path)["logits"]
            entry["onnx_vs_torch_max_abs_diff_64"] = float(np.abs(full[:REF_IMAGES] - ref).max())
        record["models"][arch] = entry
    (models_dir / "accuracy.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train.fmnist", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one model and export ONNX (needs torch)")
    t.add_argument("--arch", choices=ARCHS, required=True)
    t.add_argument("--epochs", type=int, required=True)
    t.add_argument("--out", type=Path, default=Path("models/trained"))
    t.add_argument("--max-steps", type=int, default=None, help="timing run: stop early")
    t.add_argument("--threads", type=int, default=2)
    d = sub.add_parser("data", help="write the committed eval/calib subsets (torch-free)")
    d.add_argument("--out", type=Path, default=Path("models/data"))
    e = sub.add_parser("evaluate", help="check ONNX files, write accuracy.json (torch-free)")
    e.add_argument("--models", type=Path, default=Path("models/trained"))
    e.add_argument("--data", type=Path, default=Path("models/data"))
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--"):
        argv.insert(0, "train")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "train":
        train(args.arch, args.epochs, args.out, args.max_steps, args.threads)
    elif args.cmd == "data":
        for name, path in make_data(args.out).items():
            print(f"{name}: {path} ({path.stat().st_size} bytes)")
    else:
        print(json.dumps(evaluate(args.models, args.data), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
