"""Accuracy of int8 model.quant.onnx vs the float model, per calibrator and option.

    python benchmarks/eval_quantize.py [--models efficientnet_lite0,ppocr_rec,...]
        [--calibrators max,percentile,kl,mse] [--variants plain,bc,gptq,gptq+bc,...] [--json]

Calibration / evaluation data (all offline, docs/quantization.md); evaluation is held out:
  fmnist_*            calib: fmnist-calib (256 train images)   eval: fmnist-eval (2,000 test)
  efficientnet_lite0  calib: every 10th `photos` crop (32)      eval: the other 288 crops
  ppocr_rec           calib: first 32 `text-lines`              eval: the other 168 lines
Also reports the QDQ model's metrics and the fraction of output elements where QDQ and the
integer model differ by more than one output LSB. `--noise-floor` instead measures how far
the float model's own top-1 moves under perturbations much smaller than int8's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

DATA = {"fmnist_resnet": ("fmnist-calib", "fmnist-eval"),
        "fmnist_mobilenetv2": ("fmnist-calib", "fmnist-eval"),
        "efficientnet_lite0": ("photos", "photos"),
        "ppocr_rec": ("text-lines", "text-lines")}
VARIANTS = {"plain": {}, "cle": {"cle": True}, "bc": {"bias_correction": True},
            "gptq": {"rounding": "gptq"}, "gptq+bc": {"rounding": "gptq", "bias_correction": True},
            "cle+bc": {"cle": True, "bias_correction": True},
            "all-int8": {"unsigned": False}, "gptq+all-int8": {"rounding": "gptq",
                                                               "unsigned": False},
            "float-last": {"keep_float": "last"}, "gptq+float-last": {
                "rounding": "gptq", "keep_float": "last"}}
"""`keep_float: "last"` keeps the model's last Conv/Gemm/MatMul (the classifier) in float."""


def calib_inputs(name: str) -> np.ndarray:
    """The calibration images of a model (see module docstring)."""
    from models.datasets import load_dataset

    calib, _ = DATA[name]
    x = load_dataset(calib).inputs
    return x[::10][:32] if calib == "photos" else (x[:32] if calib == "text-lines" else x)


def lsb_fraction(result, x: np.ndarray) -> float:
    """Fraction of output elements where QDQ and integer differ by > 1 LSB (first 16 samples)."""
    from compiler.core.numerics import run

    qg = result.qgraph
    key = qg.inputs[0]
    name = qg.outputs[0]
    t = qg.tensors.get(f"{name}__q")
    if t is None:  # output computed on the CPU: no int8 LSB
        return float("nan")
    fixed = qg.tensor(key).shape[0] > 0
    diffs = []
    for i in range(0, 16, 1 if fixed else 16):
        a, b = run(result.quant_model, {key: x[i:i + (1 if fixed else 16)]}), run(
            result.qdq_model, {key: x[i:i + (1 if fixed else 16)]})
        diffs.append((np.abs(a[name] - b[name]) / t.scale > 1.0 + 1e-6).ravel())
    return float(np.mean(np.concatenate(diffs)))


def last_layer(proto) -> str:
    """Name of the last Conv/Gemm/MatMul node (the classifier of these models)."""
    return [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")][-1]


def held_out(name: str, n: int) -> np.ndarray:
    """Indices of the evaluation samples that are not calibration samples."""
    calib, evaluation = DATA[name]
    if calib != evaluation:
        return np.arange(n)
    if calib == "photos":
        return np.array([i for i in range(n) if i % 10 != 0 or i >= 320])
    return np.arange(32, n)  # text-lines: the first 32 calibrate


def eval_data(name: str, step: int):
    """The held-out evaluation set (`held_out`), every `step`-th sample."""
    from models.datasets import Dataset, load_dataset

    ds = load_dataset(DATA[name][1])
    keep = held_out(name, len(ds.inputs))[::step]
    labels = None if ds.labels is None else _take(ds.labels, keep)
    return Dataset(ds.inputs[keep], labels, ds.name, ds.kind)


def _take(labels, keep: np.ndarray):
    """Labels at `keep` (an array, or a list such as OCR strings)."""
    if isinstance(labels, np.ndarray):
        return labels[keep]
    return type(labels)(labels[i] for i in keep)


def evaluate_one(name: str, calibrator: str, variant: str, step: int = 1) -> dict:
    """Quantize one model one way and score float, int8 and QDQ."""
    from compiler.core.io import to_proto
    from compiler.driver.evaluate import evaluate
    from models.registry import get_model
    from passes.quantize.api import quantize_model

    proto, _ = get_model(name)
    key = proto.graph.input[0].name
    start = time.perf_counter()
    options = dict(VARIANTS[variant])
    if options.get("keep_float") == "last":
        options["keep_float"] = [last_layer(proto)]
    result = quantize_model(proto, {key: calib_inputs(name)}, calibrator, **options)
    seconds = time.perf_counter() - start
    data = eval_data(name, step)
    # The reference is the model as given: with bias correction `result.float_model` carries
    # the corrected biases, which is not the float model a user validated.
    float_proto = proto
    flt = evaluate(float_proto, data).metrics
    int8 = evaluate(to_proto(result.quant_model), data, reference=float_proto).metrics
    qdq = evaluate(to_proto(result.qdq_model), data, reference=float_proto).metrics
    return {"model": name, "calibrator": calibrator, "variant": variant, "float": flt,
            "int8": int8, "qdq": qdq, "quantize_s": round(seconds, 2),
            "samples": len(data), "qdq_vs_int_gt1lsb": lsb_fraction(result, data.inputs),
            "cpu_nodes": result.report["cpu_nodes"], "int8_nodes": result.report["int8_nodes"]}


def noise_floor(name: str, step: int = 1, seeds: int = 5) -> list[dict]:
    """Fidelity of the float model to itself under sub-int8 perturbations (held-out data).

    Rows: weights rounded to float16 (16x finer than int8 per channel), and uniform input
    noise of +-1/8 and +-1/2 of the int8 input step (max |x| of the calibration inputs / 127),
    `seeds` seeded draws each (mean, and the agreement's range). A set on which these
    already flip top-1 often cannot show much higher agreement for any int8 model.
    """
    from compiler.core.io import from_proto, to_proto
    from compiler.driver.evaluate import Runner, fidelity
    from models.registry import get_model

    proto, _ = get_model(name)
    data = eval_data(name, step)
    runner = Runner(proto, name)
    reference = runner.run(data.inputs)
    rows = []
    half = from_proto(proto)
    for tensor in half.graph.tensors().values():
        values = getattr(tensor, "values", None)
        if isinstance(values, np.ndarray) and values.dtype == np.float32:
            tensor.values = values.astype(np.float16).astype(np.float32)
    rows.append({"perturbation": "weights rounded to float16", **fidelity(
        Runner(to_proto(half), name).run(data.inputs), reference)})
    step_size = float(np.abs(calib_inputs(name)).max()) / 127
    for fraction in (0.125, 0.5):
        draws = []
        for draw in range(seeds):
            rng = np.random.default_rng(draw)
            noise = rng.uniform(-fraction * step_size, fraction * step_size, data.inputs.shape)
            noisy = (data.inputs + noise).astype(data.inputs.dtype)
            draws.append(fidelity(runner.run(noisy), reference))
        agreement = [d["agreement"] for d in draws]
        rows.append({"perturbation": f"input noise +-{fraction} int8 step, {seeds} draws",
                     **{k: float(np.mean([d[k] for d in draws])) for k in draws[0]},
                     "agreement_min": min(agreement), "agreement_max": max(agreement)})
    return [{"model": name, "samples": len(data)} | r for r in rows]


def _row(r: dict) -> str:
    key = "top1" if "top1" in r["float"] else ("exact_match" if "exact_match" in r["float"]
                                                else "agreement")
    f, i, d = r["float"].get(key, 1.0), r["int8"].get(key), r["qdq"].get(key)
    return (f"| {r['model']} | {r['calibrator']} | {r['variant']} | {key} | {f:.4f} | {i:.4f} | "
            f"{(f - i) * 100:+.2f} | {r['int8']['agreement']:.4f} | {r['int8']['cosine']:.4f} | "
            f"{d:.4f} | {r['qdq_vs_int_gt1lsb']:.4f} | {r['quantize_s']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,ppocr_rec")
    parser.add_argument("--calibrators", default="max")
    parser.add_argument("--variants", default="plain")
    parser.add_argument("--step", type=int, default=1, help="evaluate every N-th sample")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--noise-floor", action="store_true",
                        help="measure the float model's own top-1 stability instead")
    args = parser.parse_args()
    if args.noise_floor:
        rows = [r for m in args.models.split(",") for r in noise_floor(m, args.step)]
        print(json.dumps(rows, indent=1))
        return
    rows = [evaluate_one(m, c, v, args.step) for m in args.models.split(",")
            for c in args.calibrators.split(",") for v in args.variants.split(",")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| model | calibrator | variant | metric | float | int8 | drop pt | int8/float "
          "agreement | cosine | QDQ | QDQ≠int >1LSB | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(_row(r), flush=True)


if __name__ == "__main__":
    main()
