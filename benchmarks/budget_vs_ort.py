"""npuc's budget loop vs onnxruntime `quantize_static` on torchvision exports (issue 19).

Must-show: "on those torchvision architectures (your own exports), the budget loop beats
onnxruntime's asymmetric mode on worst-output cosine with at most 10% of the MACs in 16-bit".
Two phases, like `coverage.py` (docs/quantization.md, "Budget loop vs onnxruntime
asymmetric", shows the commands that produced the table):

    # 1. graphs: torchvision, seeded random weights, BN statistics re-estimated on the photos
    #    (a torch venv: torch is never an npuc dependency); the same rows as coverage_torch.py
    /work/venv-torch/bin/python benchmarks/budget_vs_ort.py export --corpus DIR [--graphs ..]
    # 2. the comparison (the npuc venv)
    nice .venv/bin/python benchmarks/budget_vs_ort.py run --corpus DIR [--graphs ..]
        [--margin 0.001] [--extra-targets 0.98] [--json OUT.json]
    # where the all-int8 error is (weights / activations / lookup tables; switch model)
    nice .venv/bin/python benchmarks/budget_vs_ort.py split --corpus DIR [--graphs ..]

Per graph, with the corpus's feeds (`coverage.write_feeds`: 32 calibration views, 8 held-out
eval views, the graph's own preprocessing):

- onnxruntime `quantize_static`, QDQ, per-channel int8 weights, MinMax, on the 32 calibration
  views, three activation modes: ``ort_u8`` QUInt8 (asymmetric, zero point; onnxruntime's
  default), ``ort_s8`` QInt8 asymmetric, ``ort_sym`` QInt8 with ``ActivationSymmetric``;
- ``npuc``: `npuc quantize MODEL --calib calib.npz --calib-limit 32` (CLI defaults, mse);
- ``budget``: the same command with ``--min-cosine T``, T = the best onnxruntime mode's
  worst-output cosine on the budget data + `--margin` (the loop measures on the 32
  calibration views unless ``--budget-on eval``: the target is then set and met on the eval
  views, which is tuning on the test data and is reported as such).

Every model's fidelity is `coverage.int8_cosine` (worst graph output's cosine with the float
graph in onnxruntime, over all eval views) on the written file (model.quant.onnx for npuc,
the QDQ model for onnxruntime), on both the eval and the calibration views. For the budget
run: int16 layers, their MAC share, float layers, the predicted latency cost, evaluations
and wall time from the command's own ``--json`` report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REPO = HERE.parent

GRAPHS = ("tv_resnet50_op13_dyn", "tv_mobilenet_v3_large_op17_dyn", "tv_efficientnet_b0_op13")
MORE = ("tv_mobilenet_v2_op11_dyn", "tv_regnet_y_400mf_op17", "tv_googlenet_op11",
        "tv_mnasnet1_0_op13_dyn")
ORT_MODES = ("ort_u8", "ort_s8", "ort_sym")


# ------------------------------------------------------------------------------ export
def cmd_export(args: argparse.Namespace) -> None:
    """Export the chosen `coverage_torch.CLASSIFIERS` rows (torch venv); write manifest.json."""
    import coverage_torch
    import torch
    from coverage import describe
    from coverage_photos import load_photos, preprocess

    corpus = Path(args.corpus)
    corpus.mkdir(parents=True, exist_ok=True)
    if not (corpus / "photos.npz").exists():
        sys.exit(f"{corpus}/photos.npz missing: run `.venv/bin/python benchmarks/coverage.py "
                 f"photos --out {corpus}` first (npuc venv)")
    torchvision = _import_torchvision()
    rows = {r[0]: r for r in coverage_torch.CLASSIFIERS}
    manifest = corpus / "manifest.json"
    entries = {e["name"]: e for e in json.loads(manifest.read_text())} \
        if manifest.exists() else {}
    for name in args.graphs.split(","):
        _, arch, exporter, opset, dynamic, size = rows[name]
        path, spec = corpus / f"{name}.onnx", coverage_torch._imagenet(size)
        if not path.exists():
            t0 = time.perf_counter()
            torch.manual_seed(0)  # as coverage_torch._classifier (torchvision rows, no timm)
            kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
            model = torchvision.models.get_model(arch, weights=None, **kwargs)
            coverage_torch.recalibrate_bn(model, list(coverage_torch._photos(corpus, spec)
                                                      .split(8)))
            x = torch.from_numpy(preprocess(load_photos(corpus)[:2 if dynamic else 1], spec))
            coverage_torch.export_legacy(model, x, path, opset, dynamic)
            print(f"{name}: exported in {time.perf_counter() - t0:.1f} s", flush=True)
        entries[name] = {"name": name, "file": path.name, "input": spec,
                         "origin": "torchvision",
                         "exporter": f"torch.onnx {exporter} (torch {torch.__version__})",
                         **describe(path)}
    manifest.write_text(json.dumps(list(entries.values()), indent=1))


def _import_torchvision():
    """torchvision, also when its C++ ops cannot load (a CUDA wheel next to a CPU torch).

    The classifiers need none of those ops (nms, roi_align, ...), but importing torchvision
    registers fake kernels for `torchvision::nms` / `qnms` unconditionally, which fails when
    the ops were never defined; those registrations are skipped instead.
    """
    import torch

    real = torch.library.register_fake

    def tolerant(op, *args, **kwargs):
        register = real(op, *args, **kwargs)
        if not (isinstance(op, str) and op.startswith("torchvision::")):
            return register

        def apply(fn):
            try:
                return register(fn)
            except RuntimeError:  # the op was never defined: nothing to register
                return fn

        return apply

    torch.library.register_fake = tolerant
    try:
        import torchvision
    finally:
        torch.library.register_fake = real
    return torchvision


# --------------------------------------------------------------------------------- run
def ort_quantize(model: Path, calib: Path, out: Path, mode: str) -> float:
    """onnxruntime quantize_static (QDQ, per-channel, MinMax) in `mode`; returns seconds."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with np.load(calib) as data:
        name, x = data.files[0], data[data.files[0]]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(x[i:i + 1] for i in range(len(x)))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {name: batch}

    model = ort_input(model, out.parent)
    act = QuantType.QUInt8 if mode == "ort_u8" else QuantType.QInt8
    extra = {"ActivationSymmetric": True} if mode == "ort_sym" else {}
    t0 = time.perf_counter()
    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
    return time.perf_counter() - t0


def ort_input(model: Path, work: Path) -> Path:
    """The float model onnxruntime quantizes: opset >= 13 (converted when older).

    Per-channel QDQ needs per-axis DequantizeLinear (opset 13): at opset 11 quantize_static
    writes a model onnxruntime refuses to load (its bias DequantizeLinear). The converted
    graph computes the same function; fidelity is still measured against the original.
    """
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(model))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13:
        return model
    path = work / "ort_input_op13.onnx"
    if not path.exists():
        onnx.save(version_converter.convert_version(proto, 13), str(path))
    return path


def npuc(args: list[str], log: Path) -> dict:
    """`python -m compiler.cli ARGS --json` (this checkout first on the path); its JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", *args, "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    Path(f"{log}.out").write_text(proc.stdout)  # not with_suffix: "budget0.98" has a dot
    Path(f"{log}.err").write_text(proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"npuc {' '.join(args[:2])} failed ({proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
    start = proc.stdout.find("{")
    return {**json.loads(proc.stdout[start:]), "wall_s": wall}


def fidelity(model: Path, quant: Path, calib: Path, evals: Path) -> dict:
    """Worst-output cosine (coverage.int8_cosine) on the eval and on the calibration views."""
    from coverage import int8_cosine

    return {"eval": int8_cosine(model, quant, evals).get("worst"),
            "calib": int8_cosine(model, quant, calib).get("worst")}


def run_graph(entry: dict, corpus: Path, args: argparse.Namespace, prev: dict) -> dict:
    """ORT's three modes, npuc all-int8, npuc's budget loop; fidelity and costs of each.

    Parts already in `prev` (an earlier run's row of the --json file) are kept, not re-run.
    """
    from coverage import input_flags, write_feeds

    model = corpus / entry["file"]
    work = corpus / "_work" / entry["name"]
    work.mkdir(parents=True, exist_ok=True)
    calib, evals = write_feeds(entry, corpus, work)
    flags = input_flags(entry)
    row: dict = {k: v for k, v in prev.items() if "error" not in prev}
    for mode in [m for m in ORT_MODES if m not in row]:
        out = work / f"{mode}.qdq.onnx"
        secs = ort_quantize(model, calib, out, mode)
        row[mode] = {**fidelity(model, out, calib, evals), "seconds": round(secs, 1)}
        print(f"  {mode:8s} eval {row[mode]['eval']:.5f}  calib {row[mode]['calib']:.5f}",
              flush=True)
    base = ["quantize", str(model), "--calib", str(calib), "--calib-limit", "32", *flags]
    if "npuc" not in row:
        res = npuc([*base, "-o", str(work / "npuc")], work / "npuc")
        row["npuc"] = {**fidelity(model, work / "npuc" / "model.quant.onnx", calib, evals),
                       "seconds": round(res["wall_s"], 1)}
    print(f"  npuc     eval {row['npuc']['eval']:.5f}  calib {row['npuc']['calib']:.5f}",
          flush=True)
    on = args.budget_on
    target = round(max(row[m][on] for m in ORT_MODES) + args.margin, 5)
    target = min(target, args.cap)
    if "budget" not in row:
        row["budget"] = budget_run(model, work, base, calib, evals, target, on, "budget")
    for extra in args.extra_targets:
        if f"budget@{extra:g}" in row:
            continue
        row[f"budget@{extra:g}"] = budget_run(model, work, base, calib, evals, extra, on,
                                              f"budget{extra:g}")
    return row


def budget_run(model: Path, work: Path, base: list[str], calib: Path, evals: Path,
               target: float, on: str, tag: str) -> dict:
    """`npuc quantize ... --min-cosine TARGET --json`: fidelity of the written model, report."""
    bargs = [*base, "-o", str(work / tag), "--min-cosine", f"{target:g}"]
    if on == "eval":
        bargs += ["--budget-data", str(evals)]
    res = npuc(bargs, work / tag)
    rep = res["budget"]
    raised = rep.get("raised", [])
    b = {
        **fidelity(model, work / tag / "model.quant.onnx", calib, evals),
        "target": target, "on": on, "met": rep["met"], "reason": rep["reason"],
        "loop_before": rep["before"]["cosine"], "loop_after": rep["after"]["cosine"],
        "weights": rep.get("rounding", {}).get("adopted"),
        "weights_results": {k: v["cosine"]
                            for k, v in rep.get("rounding", {}).get("results", {}).items()},
        "int16_ceiling": rep.get("int16", {}).get("ceiling", {}).get("cosine"),
        "int16": [r["name"] for r in raised if r["to"] == "int16"],
        "float": [r["name"] for r in raised if r["to"] != "int16"],
        "macs_raised_share": rep["macs_raised_share"], "layers": rep["layers"],
        "macs_16bit_share": rep.get("macs_16bit_share"),
        "precision": rep.get("int16", {}).get("precision"),
        "latency_ms": rep.get("costs", {}).get("latency_ms"),
        "evaluations": rep["evaluations"], "loop_s": rep["time_s"],
        "seconds": round(res["wall_s"], 1)}
    print(f"  {tag:8s} eval {b['eval']:.5f}  calib {b['calib']:.5f}  (target {target:g} on "
          f"{on}, {'met' if b['met'] else 'NOT met'}; weights {b['weights']}; "
          f"int16 {len(b['int16'])} layers ({b['precision']}), float {len(b['float'])}: "
          f"{b['macs_raised_share']:.1%} of the MACs raised, "
          f"{b['macs_16bit_share'] or 0:.1%} with a 16-bit operand; {b['evaluations']['total']} "
          f"evaluations, {b['seconds']:.0f} s)", flush=True)
    if b["int16"] or b["float"]:
        print(f"    int16: {', '.join(b['int16'])}; float: {', '.join(b['float'])}")
    if b["latency_ms"]:
        print(f"    latency {b['latency_ms']['before']:.3f} -> "
              f"{b['latency_ms']['after']:.3f} ms (1 core, 1 thread)")
    return b


def cmd_run(args: argparse.Namespace) -> None:
    corpus = Path(args.corpus)
    entries = {e["name"]: e for e in json.loads((corpus / "manifest.json").read_text())}
    results = json.loads(Path(args.json).read_text()) if args.json and \
        Path(args.json).exists() else {}
    for name in args.graphs.split(","):
        print(f"== {name}", flush=True)
        try:
            results[name] = run_graph(entries[name], corpus, args, results.get(name, {}))
        except Exception as e:  # noqa: BLE001 - one graph failing must not lose the others
            print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    print(table(results))


def cmd_split(args: argparse.Namespace) -> None:
    """Where the all-int8 error is: the switch model (fake-quant) on the calibration views.

    Cosine with only the weights quantized, only the activations, only the points of the
    layers that cannot run in int16 (lookup tables: Sigmoid, HardSwish, ...), and the budget
    loop's int16 stand-in with every int16-capable layer widened (its ceiling).
    """
    from compiler.core.feeds import load_feeds
    from passes.quantize.api import pristine_float, quantize_model
    from passes.quantize.budget import _Scorer
    from passes.quantize.budget16 import int16_capable
    from passes.quantize.fidelity import Reference

    corpus, out = Path(args.corpus), {}
    for name in args.graphs.split(","):
        calib = corpus / "_work" / name / "calib.npz"
        base = quantize_model(corpus / f"{name}.onnx", calib, input_shapes="")
        fm = pristine_float(corpus / f"{name}.onnx", base, "")
        sc = _Scorer(base, Reference(fm, load_feeds(calib, fm), 8), (), fm)
        acts = {i for layer in sc.layers for i in layer.activations}
        tables = [layer for layer in sc.layers if not int16_capable(layer)]

        def only(points, sc=sc) -> float:
            on = np.zeros(sc.count, np.bool_)
            on[sorted(points)] = True
            return sc.score(on).cosine

        out[name] = {"all_int8": sc.all_int8().cosine,
                     "weights_only": only(set(range(sc.count)) - acts),
                     "activations_only": only(acts),
                     "tables_only": only({i for t in tables for i in t.activations}),
                     "int16_ceiling": sc.score(sc.widened(
                         [la for la in sc.layers if int16_capable(la)])).cosine,
                     "layers": len(sc.layers), "tables": len(tables)}
        print(name, json.dumps(out[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def table(results: dict) -> str:
    """The markdown table of docs/quantization.md."""
    lines = ["| graph | ORT u8 asym | ORT s8 asym | ORT s8 sym | npuc all-int8 | budget target "
             "| npuc budget | int16 layers | int16 MACs | float | weights | evals | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |" + " |" * 11)
            continue
        b = r["budget"]
        win = "**" if b["eval"] > max(r[m]["eval"] for m in ORT_MODES) else ""
        lines.append(
            f"| {name} | {r['ort_u8']['eval']:.4f} | {r['ort_s8']['eval']:.4f} | "
            f"{r['ort_sym']['eval']:.4f} | {r['npuc']['eval']:.4f} | {b['target']:g} "
            f"({b['on']}) | {win}{b['eval']:.4f}{win} | {len(b['int16'])} of {b['layers']} | "
            f"{b['macs_raised_share']:.1%} | {len(b['float'])} | {b['weights'] or '-'} | "
            f"{b['evaluations']['total']} | {b['seconds']:.0f} |")
    lines += ["", "| graph | --min-cosine (on) | met | eval cosine | calib cosine | int16 layers "
              "| float layers | raised MACs | weights | latency ms | evals | wall s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for key in [k for k in r if k.startswith("budget")]:
            b = r[key]
            lat = b["latency_ms"] or {}
            lat = f"{lat['before']:.3f} → {lat['after']:.3f}" if lat else "n/a"
            lines.append(
                f"| {name} | {b['target']:g} ({b['on']}) | {'yes' if b['met'] else 'NO'} | "
                f"{b['eval']:.4f} | {b['calib']:.4f} | {len(b['int16'])} | {len(b['float'])} "
                f"| {b['macs_raised_share']:.1%} | {b['weights'] or '-'} | {lat} | "
                f"{b['evaluations']['total']} | {b['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    """Parse the subcommand and run it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export", help="export the torchvision graphs (torch venv)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--graphs", default=",".join(GRAPHS + MORE))
    p = sub.add_parser("run", help="ORT vs npuc vs the budget loop (npuc venv)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--graphs", default=",".join(GRAPHS))
    p.add_argument("--margin", type=float, default=0.001,
                   help="budget = best ORT mode's cosine + MARGIN")
    p.add_argument("--cap", type=float, default=0.9999, help="upper bound of the budget")
    p.add_argument("--budget-on", choices=("calib", "eval"), default="calib",
                   help="data the budget is set and measured on")
    p.add_argument("--extra-targets", type=lambda v: [float(x) for x in v.split(",")],
                   default=[], help="also run the loop at these fixed --min-cosine values")
    p.add_argument("--json", metavar="OUT.json", help="results (read back and extended)")
    p = sub.add_parser("split", help="weights vs activations vs tables error (npuc venv)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--graphs", default=",".join(GRAPHS))
    p.add_argument("--json", metavar="OUT.json")
    p = sub.add_parser("table", help="the markdown table of a --json file")
    p.add_argument("json")
    args = ap.parse_args()
    if args.cmd == "table":
        print(table(json.loads(Path(args.json).read_text())))
        return
    {"export": cmd_export, "run": cmd_run, "split": cmd_split}[args.cmd](args)


if __name__ == "__main__":
    main()
