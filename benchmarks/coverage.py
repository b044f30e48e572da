"""Field corpus: ONNX graphs from many exporters through every npuc step, and the report.

Three phases, each a subcommand (docs/coverage.md shows the commands that produced it):

    # 1. graphs (torch / tf venvs: never npuc dependencies; no network access at run time)
    /work/corpus-venv/bin/python benchmarks/coverage.py generate --out /work/corpus
    # 2. every step on every graph (the npuc venv; results written after each graph)
    nice .venv/bin/python benchmarks/coverage.py run --corpus /work/corpus [--only RE] [--steps ..]
    # 3. the table
    .venv/bin/python benchmarks/coverage.py report --corpus /work/corpus

`generate` writes ``CORPUS/manifest.json`` (origin, exporter, opset, IR version, dynamic dims
and the input preprocessing of each graph); `run` writes ``docs/coverage.json`` (per graph and
step: pass/fail, exit code, wall time, the one-line error, step numbers, int8-vs-float cosine,
peak RSS of ``inspect``); `report` turns that into ``docs/coverage.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage_photos import CALIB, EVAL, load_photos, preprocess  # noqa: E402
from coverage_report import STEPS, cmd_report  # noqa: E402

logger = logging.getLogger("coverage")
REPO = Path(__file__).resolve().parents[1]
NPUC_PYTHON = REPO / ".venv" / "bin" / "python"
TF_PYTHON = Path("/work/tf-venv/bin/python")
DEFAULT_CORPUS = Path("/work/corpus")
NEEDS = {"build": "quantize", "verify": "build"}
NOTABLE = ("If", "Loop", "NonMaxSuppression", "TopK", "NonZero", "RoiAlign", "ConstantOfShape",
           "Shape", "Resize", "Upsample", "Split", "Slice", "Softmax", "HardSwish", "Clip", "Pad",
           "Transpose", "BatchNormalization", "Sigmoid", "HardSigmoid", "Sum", "LRN", "Constant",
           "ConvInteger", "MatMul", "LSTM", "GRU", "Einsum", "ReduceMean", "LayerNormalization")


# ------------------------------------------------------------------------------- generate
def describe(path: Path) -> dict:
    """Opset, IR version, inputs (symbolic dims named), file size and op counts of a graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name: [d.dim_param or d.dim_value or "?" for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input if i.name not in inits}
    data_files = {e.value for t in model.graph.initializer for e in t.external_data
                  if e.key == "location"}
    size = path.stat().st_size + sum((path.parent / f).stat().st_size for f in data_files)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          None),
            "ir_version": model.ir_version, "inputs": inputs,
            "dynamic": {k: [d for d in v if isinstance(d, str)] for k, v in inputs.items()
                        if any(isinstance(d, str) for d in v)},
            "external_data": sorted(data_files), "size_bytes": size,
            "initializer_inputs": len(inits & {i.name for i in model.graph.input}),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def cmd_generate(args: argparse.Namespace) -> None:
    corpus = Path(args.out)
    corpus.mkdir(parents=True, exist_ok=True)
    if not (corpus / "photos.npz").exists():
        subprocess.run([str(NPUC_PYTHON), __file__, "photos", "--out", str(corpus)],
                       cwd=REPO, check=True)
    import coverage_onnx
    import coverage_torch

    entries = coverage_torch.generate(corpus)
    coverage_torch.paddle_style_source(corpus)
    entries += coverage_onnx.generate(corpus)
    entries += _tf_entries(corpus)
    for entry in entries:
        path = corpus / entry["file"]
        if path.exists() and "generate_error" not in entry:
            entry.update(describe(path))
    (corpus / "manifest.json").write_text(json.dumps(entries, indent=1))
    logger.info("%d graphs in %s/manifest.json", len(entries), corpus)


def _tf_entries(corpus: Path) -> list[dict]:
    if not TF_PYTHON.exists():
        logger.warning("%s missing: no tf2onnx graphs", TF_PYTHON)
        return []
    proc = subprocess.run([str(TF_PYTHON), str(Path(__file__).with_name("coverage_tf.py")),
                           str(corpus)], cwd=REPO, capture_output=True, text=True)
    out = corpus / "_tf_entries.json"
    if proc.returncode or not out.exists():
        logger.warning("tf2onnx generation failed: %s", proc.stderr.strip()[-2000:])
        return []
    return json.loads(out.read_text())


def cmd_testdata(args: argparse.Namespace) -> None:
    """The small committed subset: tests/data/field (corpus venv, then the tf venv)."""
    import coverage_torch

    out, corpus = Path(args.out), Path(args.corpus)
    out.mkdir(parents=True, exist_ok=True)
    coverage_torch.field_test_graphs(out, corpus)
    if TF_PYTHON.exists():
        subprocess.run([str(TF_PYTHON), str(Path(__file__).with_name("coverage_tf.py")),
                        "testdata", str(out), str(corpus)], cwd=REPO, check=True)


def cmd_photos(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from coverage_photos import write_photos

    write_photos(Path(args.out))


# ------------------------------------------------------------------------------------ run
def run_cli(args: list[str], log: Path, timeout: float) -> dict:
    """One `python -m compiler.cli` subprocess: exit code, wall time, peak RSS, error line."""
    t0 = time.monotonic()
    peak = log.with_suffix(".rss")
    peak.unlink(missing_ok=True)
    # The child reports its own VmHWM (benchmarks/peak_rss.py): wait4's ru_maxrss would
    # include this process's peak, which exec carries over into the child's.
    cmd = [str(NPUC_PYTHON), str(REPO / "benchmarks" / "peak_rss.py"), str(peak), "compiler.cli"]
    with open(log.with_suffix(".out"), "w") as fo, open(log.with_suffix(".err"), "w") as fe:
        proc = subprocess.Popen([*cmd, *args], cwd=REPO, stdout=fo, stderr=fe)
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
    rc = proc.returncode
    rss = int(peak.read_text()) if peak.exists() and peak.read_text().strip() else None
    res = {"ok": rc == 0 and not timed_out, "exit": rc, "seconds": round(time.monotonic() - t0, 2),
           "peak_rss_mb": round(rss / 2**20, 1) if rss is not None else None}
    if timed_out:
        res["error"] = f"timeout after {timeout:.0f} s"
    elif rc:
        res["error"] = error_line(log.with_suffix(".err").read_text(errors="replace"),
                                  log.with_suffix(".out").read_text(errors="replace"))
    return res


def error_line(stderr: str, stdout: str) -> str:
    """The one-line error npuc printed, or 'traceback: <last line>' when it printed a traceback."""
    lines = [ln.strip() for ln in (stderr or stdout).splitlines() if ln.strip()]
    last = lines[-1] if lines else "(no message)"
    if "Traceback (most recent call last)" in stderr:
        return f"traceback: {last}"[:400]
    # npuc's error line (it can wrap: an onnxruntime message with newlines in it)
    first = next((i for i, ln in enumerate(lines) if ln.startswith("npuc:")), len(lines) - 1)
    return " ".join(lines[first:first + 2] if first >= 0 else [last])[:400]


def _json_out(log: Path) -> dict:
    try:
        return json.loads(log.with_suffix(".out").read_text())
    except (OSError, ValueError):
        return {}


def input_flags(entry: dict) -> list[str]:
    """--input-shape where a non-batch dim is symbolic (a symbolic batch binds to 1 alone)."""
    flags = []
    for name, dims in entry["inputs"].items():
        if any(isinstance(d, str) for d in dims[1:]):
            flags += ["--input-shape", f"{name}:{'x'.join(map(str, entry['input']['shape']))}"]
    return flags


def write_feeds(entry: dict, corpus: Path, work: Path) -> tuple[Path, Path]:
    """calib.npz (32 photo views) and eval.npz (8 held-out views) shaped for the model."""
    photos = load_photos(corpus)
    name = next(iter(entry["inputs"]))
    paths = []
    for tag, part in (("calib", CALIB), ("eval", EVAL)):
        path = work / f"{tag}.npz"
        np.savez(path, **{name: preprocess(photos[part], entry["input"])})
        paths.append(path)
    return paths[0], paths[1]


def step_args(step: str, model: Path, work: Path, calib: Path, evals: Path) -> list[str]:
    q = work / "q"
    return {
        "inspect": ["inspect", str(model), "--json"],
        "groups": ["groups", str(model), "--json"],
        "prune": ["prune", str(model), "-o", str(work / "pruned.onnx"), "--ratio", "0.3",
                  "--no-reconstruct", "--json"],
        "sparsify": ["sparsify", str(model), "-o", str(work / "sparse.onnx"), "--block", "4",
                     "--sparsity", "0.5", "--criterion", "l1", "--no-reconstruct", "--json"],
        "quantize": ["quantize", str(model), "-o", str(q), "--calib", str(calib),
                     "--calib-limit", "32", "--json"],
        "build": ["build", str(q / "model.quant.onnx"), "-o", str(q / "model.bin"), "--json"],
        "verify": ["verify", str(q / "model.quant.onnx"), str(q / "model.bin"), "--inputs",
                   str(evals), "--samples", "4", "--json"],
        "perf": ["perf", str(q / "model.bin"), "--frames", "1", "--json"],
    }[step]


def step_numbers(step: str, out: dict) -> dict:
    """The numbers the report shows, from a step's --json output."""
    if step == "inspect":
        return {"macs": out.get("totals", {}).get("macs"),
                "node_macs": {n["name"]: n["macs"] for n in out.get("nodes", []) if n["macs"]}}
    if step == "groups":
        return {"groups": out.get("total"), "prunable": out.get("prunable")}
    if step == "prune":
        macs = out.get("macs", {})
        return {"macs_before": macs.get("before"), "macs_after": macs.get("after")}
    if step == "sparsify":
        return {"macs_before": out.get("macs"), "macs_after": out.get("effective_macs"),
                "zero_block_fraction": out.get("zero_block_fraction")}
    if step == "build":
        cpu = [f"{p['node']} ({p['op']}): {p['reason']}" for p in out.get("placement", [])
               if p.get("unit") != "NPU"]
        return {"npu_mac_fraction": out.get("npu_mac_fraction"),
                "npu_node_names": [p["node"] for p in out.get("placement", [])
                                   if p.get("unit") == "NPU"], "npu_nodes":
                out.get("npu_nodes"), "cpu_nodes": out.get("cpu_nodes"),
                "cpu_partitions": out.get("cpu_partitions"), "cpu_placement": cpu[:12]}
    if step == "verify":
        return {"mismatches": sum(o.get("mismatched", 0) for o in out.get("outputs", [])),
                "consistent": out.get("consistent")}
    if step == "perf":
        return {"npu_mac_fraction": out.get("npu_mac_fraction")}
    return {}


def run_graph(entry: dict, corpus: Path, steps: tuple[str, ...], timeout: float) -> dict:
    """Every requested step on one graph; a step whose input step failed is skipped."""
    model = corpus / entry["file"]
    work = corpus / "_work" / entry["name"]
    work.mkdir(parents=True, exist_ok=True)
    calib, evals = write_feeds(entry, corpus, work)
    flags = input_flags(entry)
    result: dict = {"input_flags": flags, "steps": {}}
    for step in steps:
        need = NEEDS.get(step)
        if need and not result["steps"].get(need, {}).get("ok"):
            result["steps"][step] = {"ok": False, "skipped": True, "error": f"no {need} output"}
            continue
        args = step_args(step, model, work, calib, evals)
        args += flags if step in ("inspect", "groups", "prune", "sparsify", "quantize") else []
        log = work / step
        res = run_cli(args, log, timeout)
        res.update(step_numbers(step, _json_out(log)))
        result["steps"][step] = res
        logger.info("%-45s %-9s %s %6.1fs %s", entry["name"], step, "ok  " if res["ok"] else
                    "FAIL", res["seconds"], res.get("error", ""))
    _npu_fraction(result, model, work, evals, timeout)
    _derived_npu_fraction(result)
    if result["steps"].get("quantize", {}).get("ok"):
        result["cosine"] = int8_cosine(model, work / "q" / "model.quant.onnx", evals)
    rss = result["steps"].get("inspect", {}).get("peak_rss_mb")
    if rss is not None:
        result["inspect_rss_ratio"] = round(rss * 2**20 / entry["size_bytes"], 2)
    return result


def _npu_fraction(result: dict, model: Path, work: Path, evals: Path, timeout: float) -> None:
    """npu_mac_fraction from build --json, else perf --json, else None (reported as n/a)."""
    build = result["steps"].get("build", {})
    if not build.get("ok") or build.get("npu_mac_fraction") is not None:
        result["npu_mac_fraction"] = build.get("npu_mac_fraction")
        return
    log = work / "perf"
    res = run_cli(step_args("perf", model, work, work, evals), log, timeout)
    result["npu_mac_fraction"] = step_numbers("perf", _json_out(log)).get("npu_mac_fraction") \
        if res["ok"] else None


def _derived_npu_fraction(result: dict) -> None:
    """Fallback when npuc does not report it: float-graph MACs of the nodes placed on the NPU.

    Matches `build`'s placement to `inspect`'s per-node MACs by node name; quantized nodes keep
    their float names, so this undercounts only where lowering renamed a node.
    """
    st = result["steps"]
    node_macs = st.get("inspect", {}).pop("node_macs", None)
    npu = st.get("build", {}).pop("npu_node_names", None)
    if node_macs and npu is not None and st["build"].get("ok"):
        on_npu = sum(node_macs.get(n, 0) for n in set(npu))
        result["npu_mac_fraction_derived"] = round(on_npu / sum(node_macs.values()), 4)


def int8_cosine(float_model: Path, quant_model: Path, evals: Path) -> dict:
    """Cosine of each output, model.quant.onnx vs the float model, over the eval photos."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sf = ort.InferenceSession(str(float_model), opts, providers=["CPUExecutionProvider"])
        sq = ort.InferenceSession(str(quant_model), opts, providers=["CPUExecutionProvider"])
        with np.load(evals) as data:
            x = data[data.files[0]]
        fname, qname = sf.get_inputs()[0].name, sq.get_inputs()[0].name
        pairs = [(sf.run(None, {fname: x[i:i + 1]}), sq.run(None, {qname: x[i:i + 1]}))
                 for i in range(len(x))]
    except Exception as e:  # noqa: BLE001 - recorded, the report shows it
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    names = [o.name for o in sf.get_outputs()]
    per = {}
    for k, name in enumerate(names):
        a = [np.asarray(f[k], np.float64).ravel() for f, _ in pairs]
        b = [np.asarray(q[k], np.float64).ravel() for _, q in pairs if k < len(q)]
        if len(b) != len(a) or any(u.shape != v.shape for u, v in zip(a, b, strict=True)):
            per[name] = None  # data-dependent shape (e.g. NMS output) differs
            continue
        per[name] = _cos(np.concatenate(a), np.concatenate(b))
    vals = [v for v in per.values() if v is not None]
    return {"per_output": per, "worst": min(vals) if vals else None}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return round(float(a @ b / (na * nb)), 5)


def baseline_rss_mb(corpus: Path, timeout: float) -> float:
    """Peak RSS of `inspect` on a one-Conv graph: the interpreter and imports alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    work = corpus / "_work"
    work.mkdir(exist_ok=True)
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "baseline",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    path = work / "_baseline.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return run_cli(["inspect", str(path)], work / "_baseline_inspect", timeout)["peak_rss_mb"]


def cmd_run(args: argparse.Namespace) -> None:
    corpus = Path(args.corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    out = Path(args.json)
    data = json.loads(out.read_text()) if out.exists() and args.only else {"graphs": {}}
    steps = tuple(args.steps.split(",")) if args.steps else STEPS
    t0 = time.monotonic()
    base = baseline_rss_mb(corpus, args.timeout)
    for entry in manifest:
        if args.only and not re.search(args.only, entry["name"]):
            continue
        g0 = time.monotonic()
        if "generate_error" in entry:
            res = {"generate_error": entry["generate_error"], "steps": {}}
        else:
            res = run_graph(entry, corpus, steps, args.timeout)
            rss = res["steps"].get("inspect", {}).get("peak_rss_mb")
            if rss is not None and base is not None:
                net = (rss - base) * 2**20
                res["inspect_rss_net_ratio"] = round(net / entry["size_bytes"], 2)
        res["seconds"] = round(time.monotonic() - g0, 1)
        old = data["graphs"].get(entry["name"], {}) if args.only else {}
        res["steps"] = {**old.get("steps", {}), **res["steps"]}  # --steps merges into old
        data["graphs"][entry["name"]] = {**old, **_summary(entry), **res}
        info = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                "inspect_baseline_rss_mb": base, "steps": list(steps),
                "seconds": round(time.monotonic() - t0, 1), "commit": _commit(),
                "date": time.strftime("%Y-%m-%d %H:%M")}
        if args.only:  # a partial re-run keeps the full run's header, and is listed
            reruns = [r for r in data.get("reruns", []) if r["command"] != info["command"]]
            data["reruns"] = [*reruns, info]
        else:
            data["run"] = info
        out.write_text(json.dumps(data, indent=1))


def _summary(entry: dict) -> dict:
    keys = ("origin", "exporter", "opset", "ir_version", "dynamic", "size_bytes", "note",
            "scope", "initializer_inputs", "external_data")
    return {**{k: entry.get(k) for k in keys}, "ops": entry.get("ops", {}),
            "notable_ops": [op for op in NOTABLE if op in entry.get("ops", {})]}


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True)
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("photos", help="write CORPUS/photos.npz (npuc venv)")
    p.add_argument("--out", default=str(DEFAULT_CORPUS))
    p = sub.add_parser("generate", help="write the graphs and manifest.json (corpus venv)")
    p.add_argument("--out", default=str(DEFAULT_CORPUS))
    p = sub.add_parser("testdata", help="the small graphs of tests/data/field (corpus venv)")
    p.add_argument("--out", default=str(REPO / "tests" / "data" / "field"))
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="where photos.npz is")
    p = sub.add_parser("run", help="every step on every graph (npuc venv)")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    p.add_argument("--json", default=str(REPO / "docs" / "coverage.json"))
    p.add_argument("--only", help="regular expression on graph names (merges into --json)")
    p.add_argument("--steps", help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--timeout", type=float, default=900, help="seconds per step")
    p = sub.add_parser("report", help="docs/coverage.md from docs/coverage.json")
    p.add_argument("--json", default=str(REPO / "docs" / "coverage.json"))
    p.add_argument("--out", default=str(REPO / "docs" / "coverage.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    {"photos": cmd_photos, "generate": cmd_generate, "run": cmd_run, "testdata": cmd_testdata,
     "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
