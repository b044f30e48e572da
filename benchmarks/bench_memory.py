"""Peak memory of npuc on a large model, as a multiple of the model's size.

A synthetic CNN (3x3 convs with BatchNorm + a few large Gemms, float32 weights, `--mb`
megabytes of them) is written twice: as one inline `.onnx` file and as an `.onnx` with its
weights in external data next to it. Each case then runs in a fresh interpreter, which
reports its peak RSS (VmHWM, imports included):

* `imports`      - Python + numpy + onnx + onnxruntime + every npuc command imported: the floor
* `onnx.load`    - the anchor: `onnx.load(path)` alone
* `ort session`  - `onnxruntime.InferenceSession(path)`
* `load`         - `compiler.core.io.load_model(path, bind=True)` (what every command does)
* `load+canon`   - the same followed by `passes.canonicalize.canonicalize`
* `inspect`      - `npuc inspect MODEL --json`
* `quantize`     - `npuc quantize MODEL -o DIR --calib calib.npy` (`--calib-n` samples)
* `inspect-cli`  - a whole `python -m compiler.cli inspect MODEL --json` process
                   (`benchmarks/peak_rss.py` reports its VmHWM)
* `inspect-base` - the same on a one-Conv graph: the floor of `inspect-cli`

The table gives peak RSS / model size, and the same after subtracting the `imports` floor
(what the model itself costs); `inspect-cli` subtracts the `inspect-base` floor instead, as
`benchmarks/coverage.py` does for the field corpus.

Model forms: `inline` and `external` (opset 17, IR 8), and two exporter-style inline files:
`op9-irv3` (opset 9, IR version 3, every initializer also listed as a graph input: goes
through opset conversion), `op13` (opset 13, IR 7, a dynamic batch and torch's legacy
flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, folded at load) and `op13-const`
(the same with every weight in a Constant node, as Paddle and PP-OCR export them).

    python benchmarks/bench_memory.py [--mb 400] [--calib-n 4] [--cases load,load+canon]
                                      [--forms inline,external] [--workdir DIR] [--json]
    python benchmarks/bench_memory.py --mb 100 --forms op9-irv3,op13 --cases inspect-cli
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run the checkout's code, not an installed copy
    sys.path.insert(0, str(ROOT))

CASES = ("imports", "onnx.load", "ort session", "load", "load+canon", "inspect", "quantize",
         "inspect-cli")
CLI_CASES = ("inspect-base", "inspect-cli")  # run as `python -m compiler.cli`
CHANNELS, HIDDEN, SPATIAL = 512, 4096, 8
FORMS = ("inline", "external", "op9-irv3", "op13", "op13-const")
OPSETS = {"inline": (17, 8), "external": (17, 8), "op9-irv3": (9, 3), "op13": (13, 7),
          "op13-const": (13, 7)}


# -- the synthetic model -------------------------------------------------------------------

def build_model(megabytes: float, seed: int = 0, form: str = "inline"):
    """A CNN with about `megabytes` MB of float32 weights: half in convs, half in Gemms.

    `form` picks the opset and IR version and the exporter habits of `OPSETS` / the module
    docstring.
    """
    from onnx import helper

    rng = np.random.default_rng(seed)
    conv_bytes = CHANNELS * CHANNELS * 9 * 4
    fc_bytes = HIDDEN * HIDDEN * 4
    n_conv = max(1, round(megabytes * 1e6 / 2 / conv_bytes))
    n_fc = max(1, round(megabytes * 1e6 / 2 / fc_bytes))
    nodes, inits = [], []
    x = "input"
    x = _conv_bn_relu(nodes, inits, rng, x, 3, "conv0")
    for i in range(1, n_conv + 1):
        x = _conv_bn_relu(nodes, inits, rng, x, CHANNELS, f"conv{i}")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes += _legacy_flatten("gap", "flat") if form.startswith("op13") else [
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten")]
    x, width = "flat", CHANNELS
    for i, out in enumerate([HIDDEN] * (n_fc + 1) + [1000]):
        x = _gemm(nodes, inits, rng, x, width, out, f"fc{i}", relu=out != 1000)
        width = out
    if form == "op13-const":
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in inits] + nodes
        inits = []
    inputs = [helper.make_tensor_value_info("input", 1, ["N", 3, SPATIAL, SPATIAL])]
    if form == "op9-irv3":  # IR 3: initializers are graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = helper.make_graph(nodes, "big_cnn", inputs,
                              [helper.make_tensor_value_info(x, 1, ["N", 1000])], inits)
    opset, ir_version = OPSETS[form]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _legacy_flatten(x: str, y: str) -> list:
    """torch.onnx's legacy flatten: Reshape to [batch from Shape, -1]."""
    from onnx import helper, numpy_helper

    def const(name: str, value) -> object:
        return helper.make_node("Constant", [], [name], name=name,
                                value=numpy_helper.from_array(np.asarray(value, np.int64)))

    return [helper.make_node("Shape", [x], ["f.shape"], name="f.shape"),
            const("f.zero", 0), const("f.minus1", [-1]), const("f.axes", [0]),
            helper.make_node("Gather", ["f.shape", "f.zero"], ["f.batch"], name="f.gather"),
            helper.make_node("Unsqueeze", ["f.batch", "f.axes"], ["f.batch1"], name="f.unsq"),
            helper.make_node("Concat", ["f.batch1", "f.minus1"], ["f.dims"], name="f.concat",
                             axis=0),
            helper.make_node("Reshape", [x, "f.dims"], [y], name="f.reshape")]


def _conv_bn_relu(nodes: list, inits: list, rng, x: str, cin: int, name: str) -> str:
    from onnx import helper, numpy_helper

    w = (rng.standard_normal((CHANNELS, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, f"{name}.w"))
    stats = {"g": rng.uniform(0.5, 1.5, CHANNELS), "b": rng.normal(0, 0.1, CHANNELS),
             "m": rng.normal(0, 0.1, CHANNELS), "v": rng.uniform(0.5, 1.5, CHANNELS)}
    for key, value in stats.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}.bn.{key}"))
    nodes += [
        helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.c"], name=name, pads=[1] * 4),
        helper.make_node("BatchNormalization", [f"{name}.c"] + [f"{name}.bn.{k}" for k in stats],
                         [f"{name}.n"], name=f"{name}.bn"),
        helper.make_node("Relu", [f"{name}.n"], [f"{name}.r"], name=f"{name}.relu")]
    return f"{name}.r"


def _gemm(nodes: list, inits: list, rng, x: str, cin: int, cout: int, name: str,
          relu: bool) -> str:
    from onnx import helper, numpy_helper

    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}.w"),
              numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b")]
    nodes.append(helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"],
                                  name=name, transB=1))
    if not relu:
        return f"{name}.y"
    nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"], name=f"{name}.relu"))
    return f"{name}.r"


def write_models(workdir: Path, megabytes: float, calib_n: int,
                 forms: tuple[str, ...] = FORMS) -> dict[str, Path]:
    """The model of each form, the one-Conv baseline graph and the calibration samples."""
    import onnx

    paths = {}
    for form in forms:
        proto = build_model(megabytes, form=form)
        path = paths[form] = workdir / form / "big.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        if form == "external":
            (path.parent / "big.onnx.data").unlink(missing_ok=True)  # onnx.save appends to it
            onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location="big.onnx.data", size_threshold=1024)
        else:  # protobuf cannot serialize more than 2 GB
            onnx.save(proto, path)
        del proto
    paths["base"] = workdir / "base" / "one_conv.onnx"
    paths["base"].parent.mkdir(parents=True, exist_ok=True)
    onnx.save(one_conv_model(), paths["base"])
    paths["calib"] = workdir / "calib.npy"
    rng = np.random.default_rng(1)
    np.save(paths["calib"],
            rng.standard_normal((calib_n, 3, SPATIAL, SPATIAL)).astype(np.float32))
    return paths


def one_conv_model():
    """The floor of `inspect-cli`: inspect of this graph is the interpreter and imports."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "baseline",
        [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", 1, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def model_bytes(path: Path) -> int:
    """The model file plus its external data files (everything in its folder)."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())


# -- one measurement per fresh interpreter -------------------------------------------------

def _import_all() -> None:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    from compiler.cli import build_parser
    build_parser()  # imports every command module


def run_case(case: str, model: str, calib: str, out: str) -> None:
    """Subprocess body: run one case."""
    _import_all()
    if case == "onnx.load":
        import onnx
        onnx.load(model)
    elif case == "ort session":
        import onnxruntime as ort
        ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    elif case in ("load", "load+canon"):
        from compiler.core.io import load_model
        from passes.canonicalize import canonicalize
        loaded = load_model(model, bind=True)
        if case == "load+canon":  # as inspect and groups run it: the loaded model handed over
            canonicalize(loaded, in_place=True)
    elif case in ("inspect", "quantize"):
        from compiler.cli import main
        argv = (["inspect", model, "--json"] if case == "inspect"
                else ["quantize", model, "-o", out, "--calib", calib])
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        if code:
            raise SystemExit(f"npuc {case} exited {code}")


def peak_rss_bytes() -> int:
    """VmHWM of this process (ru_maxrss would include the parent's peak after fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_cli(model: Path, report: Path) -> dict:
    """A whole `python -m compiler.cli inspect MODEL --json` process: peak RSS, wall time."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peak_rss.py"), str(report),
           "compiler.cli", "inspect", str(model), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"inspect of {model} failed:\n{proc.stderr[-3000:]}")
    return {"peak_rss": int(report.read_text()), "wall_s": time.perf_counter() - start}


def measure(case: str, model: Path, calib: Path, out: Path) -> dict:
    """Run `case` in a fresh interpreter; its peak RSS and wall time."""
    if case in CLI_CASES:
        return measure_cli(model, out.with_suffix(".rss"))
    cmd = [sys.executable, __file__, "--child", case, str(model), str(calib), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{case} on {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(case: str, model: str, calib: str, out: str) -> None:
    """Run one case and print {"peak_rss", "wall_s"} as JSON."""
    start = time.perf_counter()
    run_case(case, model, calib, out)
    print(json.dumps({"peak_rss": peak_rss_bytes(), "wall_s": time.perf_counter() - start}))


def run_all(workdir: Path, megabytes: float, calib_n: int, cases: list[str],
            forms: tuple[str, ...] = FORMS) -> list[dict]:
    """Every case on each model form; one row per (form, case)."""
    paths = write_models(workdir, megabytes, calib_n, forms)
    rows = []
    for form in forms:
        model = paths[form]
        size = model_bytes(model)
        floors: dict[str, int] = {}
        for case in cases:
            source = paths["base"] if case == "inspect-base" else model
            result = measure(case, source, paths["calib"], workdir / f"out-{form}-{case}")
            if case in ("imports", "inspect-base"):
                floors[case] = result["peak_rss"]
            floor = floors.get("inspect-base" if case == "inspect-cli" else "imports")
            net = (result["peak_rss"] - floor) / size if floor is not None else None
            rows.append({"form": form, "case": case, "model_mb": size / 1e6,
                         "peak_rss_mb": result["peak_rss"] / 1e6, "wall_s": result["wall_s"],
                         "ratio": result["peak_rss"] / size, "net_ratio": net})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    net = f"{r['net_ratio']:.2f}x" if r["net_ratio"] is not None else "-"
    return (f"| {r['form']} | {r['case']} | {r['model_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB "
            f"| {r['ratio']:.2f}x | {net} | {r['wall_s']:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=400, help="weight megabytes (default 400)")
    parser.add_argument("--calib-n", type=int, default=4, help="calibration samples")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--forms", default="inline,external",
                        help=f"comma-separated subset of: {', '.join(FORMS)} (all but external "
                             "need --mb below 2000)")
    parser.add_argument("--workdir", help="keep the generated files here")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if "imports" not in cases and any(c != "inspect-cli" for c in cases):
        cases.insert(0, "imports")
    if "inspect-cli" in cases and "inspect-base" not in cases:
        cases.insert(cases.index("inspect-cli"), "inspect-base")
    forms = tuple(f.strip() for f in args.forms.split(",") if f.strip() in FORMS)
    print("| form | case | model | peak RSS | RSS / size | (RSS - floor) / size | wall |")
    print("|---|---|---|---|---|---|---|")
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        rows = run_all(Path(args.workdir), args.mb, args.calib_n, cases, forms)
    else:
        with tempfile.TemporaryDirectory(prefix="npuc-bench-memory-") as tmp:
            rows = run_all(Path(tmp), args.mb, args.calib_n, cases, forms)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
