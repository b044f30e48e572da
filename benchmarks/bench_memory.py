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

The table gives peak RSS / model size, and the same after subtracting the `imports` floor
(what the model itself costs).

    python benchmarks/bench_memory.py [--mb 400] [--calib-n 4] [--cases load,load+canon]
                                      [--forms inline,external] [--workdir DIR] [--json]
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

CASES = ("imports", "onnx.load", "ort session", "load", "load+canon", "inspect", "quantize")
CHANNELS, HIDDEN, SPATIAL = 512, 4096, 8
FORMS = ("inline", "external")


# -- the synthetic model -------------------------------------------------------------------

def build_model(megabytes: float, seed: int = 0):
    """A CNN with about `megabytes` MB of float32 weights: half in convs, half in Gemms."""
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
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten")]
    x, width = "flat", CHANNELS
    for i, out in enumerate([HIDDEN] * (n_fc + 1) + [1000]):
        x = _gemm(nodes, inits, rng, x, width, out, f"fc{i}", relu=out != 1000)
        width = out
    graph = helper.make_graph(
        nodes, "big_cnn",
        [helper.make_tensor_value_info("input", 1, ["N", 3, SPATIAL, SPATIAL])],
        [helper.make_tensor_value_info(x, 1, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


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
    """The inline model, the external-data model and the calibration samples."""
    import onnx

    proto = build_model(megabytes)
    inline = workdir / "inline" / "big.onnx"
    inline.parent.mkdir(parents=True, exist_ok=True)
    if "inline" in forms:  # protobuf cannot serialize more than 2 GB
        onnx.save(proto, inline)
    external = workdir / "external" / "big.onnx"
    external.parent.mkdir(parents=True, exist_ok=True)
    (external.parent / "big.onnx.data").unlink(missing_ok=True)  # onnx.save appends to it
    onnx.save(proto, external, save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.onnx.data", size_threshold=1024)
    del proto
    calib = workdir / "calib.npy"
    rng = np.random.default_rng(1)
    np.save(calib, rng.standard_normal((calib_n, 3, SPATIAL, SPATIAL)).astype(np.float32))
    return {"inline": inline, "external": external, "calib": calib}


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


def measure(case: str, model: Path, calib: Path, out: Path) -> dict:
    """Run `case` in a fresh interpreter; its peak RSS and wall time."""
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
        floor = None
        for case in cases:
            result = measure(case, model, paths["calib"], workdir / f"out-{form}")
            floor = result["peak_rss"] if case == "imports" else floor
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
    parser.add_argument("--forms", default=",".join(FORMS),
                        help="inline and/or external (inline needs --mb below 2000)")
    parser.add_argument("--workdir", help="keep the generated files here")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if "imports" not in cases:
        cases.insert(0, "imports")
    forms = tuple(f.strip() for f in args.forms.split(",") if f.strip() in FORMS)
    print("| form | case | model | peak RSS | RSS / size | (RSS - imports) / size | wall |")
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
