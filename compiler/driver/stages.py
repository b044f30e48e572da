"""The stages of `npuc compile`, each a plain function of the pipeline context.

Every stage reads what earlier stages left in `ctx`, writes its output files into
`ctx.out_dir` (atomically, through `compiler.core.io`) and returns a one-line detail for the
report. Heavy modules are imported inside the stages so `npuc --help` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.core.cost import model_cost
from compiler.core.errors import ConfigError
from compiler.core.io import load_model, save_model

if TYPE_CHECKING:
    from compiler.core.feeds import Feeds
    from compiler.driver.context import Context

log = logging.getLogger(__name__)

# Calibration and evaluation data for the bundled models, used when the config gives none.
BUNDLED_DATA = {
    "fmnist_resnet": ("fmnist-calib", "fmnist-eval"),
    "fmnist_mobilenetv2": ("fmnist-calib", "fmnist-eval"),
    "efficientnet_lite0": ("photos", None),
    "ppocr_rec": ("text-lines", "text-lines"),
}


def load(ctx: Context) -> str:
    """Load the input model (path, bundled name, proto or IR) with a concrete batch of 1."""
    source = ctx.results["input"]
    if isinstance(source, (str, Path)) and not Path(source).exists() and \
            not str(source).endswith(".onnx"):
        from models.registry import get_model

        source = get_model(str(source))[0]
    ctx.model = load_model(source, fix_batch=True)
    return f"{len(ctx.model.nodes)} nodes, opset {ctx.model.opset}"


def canonicalize(ctx: Context) -> str:
    """Canonicalize; the result is the float reference for every later comparison."""
    from passes.canonicalize import canonicalize as run

    result = run(ctx.model)
    ctx.model, ctx.original = result.model, result.model.copy()
    ctx.results["cost_before"] = model_cost(ctx.original)
    return f"{len(ctx.model.nodes)} nodes after folding"


def bundled_name(ctx: Context) -> str | None:
    """The bundled model name when the input is one, else None."""
    source = ctx.results["input"]
    return source if isinstance(source, str) and source in BUNDLED_DATA else None


def calibration_feeds(ctx: Context) -> Feeds:
    """Calibration data (loaded once), from the config or the bundled model's default."""
    if "calib" not in ctx.results:
        from compiler.driver.data import load_data

        source = ctx.config["calibration.data"]
        if source is None and bundled_name(ctx):
            source = BUNDLED_DATA[bundled_name(ctx)][0]
        if source is None:
            raise ConfigError("calibration.data is required (a folder of images, an .npy/.npz "
                              "file or a dataset name)")
        ctx.results["calib"] = load_data(source, ctx.original,
                                          limit=ctx.config["calibration.limit"],
                                          preprocess=_preprocess(ctx.config))
    return ctx.results["calib"]


def _preprocess(config: dict[str, Any]):
    from compiler.core.feeds import Preprocess

    resize = config["input.resize"]
    return Preprocess(size=tuple(resize) if resize else None,
                      mean=tuple(config["input.mean"]), std=tuple(config["input.std"]),
                      layout=config["input.layout"],
                      channel_order=config["input.channel_order"],
                      grayscale=config["input.grayscale"])


def eval_source(ctx: Context) -> str | None:
    """Labelled evaluation data from the config or the bundled model's default."""
    source = ctx.config["eval.data"]
    if source is None and bundled_name(ctx):
        source = BUNDLED_DATA[bundled_name(ctx)][1]
    return source


def save_stage_model(ctx: Context, role: str, filename: str) -> Path:
    """Save the current float model as an output file."""
    path = save_model(ctx.model, ctx.out_dir / filename)
    ctx.files[role] = path
    return path


def prune(ctx: Context) -> str:
    """Channel pruning (criterion, rates / target MACs / ABC search, reconstruction)."""
    from passes.prune.pipeline import prune_model

    c = ctx.config
    options = {"criterion": c["prune.criterion"], "ratio": c["prune.ratio"],
               "rates": c["prune.rates"], "target_macs": c["prune.target_macs"],
               "round_to": c["prune.round_to"], "search": c["prune.search"],
               "reconstruct": c["prune.reconstruct"], "seed": c["seed"],
               "abc_cycles": c["prune.abc_cycles"], "abc_sources": c["prune.abc_food_sources"],
               "abc_limit": c["prune.abc_trial_limit"], "workers": c["prune.workers"],
               "lam": c["prune.ridge"], "max_rows": c["prune.rows"]}
    needs_data = c["prune.reconstruct"] or c["prune.criterion"] == "hrank" or c["prune.search"]
    calib = calibration_feeds(ctx) if needs_data else None
    ctx.model, report = prune_model(ctx.model, options, calib=calib)
    ctx.results["prune"] = report
    save_stage_model(ctx, "pruned", "model.pruned.onnx")
    macs = report["macs"]
    return f"MACs {macs['before']:,} -> {macs['after']:,} ({macs['ratio']:.1%})"


def sparsify(ctx: Context) -> str:
    """1xN block sparsification (reorder, masked reconstruction)."""
    from passes.sparsify.sparsify import sparsify_model

    c = ctx.config
    if c["sparsify.criterion"] == "obs" and not c["sparsify.reconstruct"]:
        raise ConfigError("sparsify.criterion 'obs' chooses blocks during the re-fit: set "
                          "sparsify.reconstruct: true or pick l1/l2/act/css")
    needs_data = c["sparsify.reconstruct"] or c["sparsify.criterion"] in ("act", "obs")
    calib = calibration_feeds(ctx) if needs_data else None
    ctx.model, report = sparsify_model(
        ctx.model, c["sparsify.block"], c["sparsify.sparsity"], calib=calib,
        criterion=c["sparsify.criterion"], reorder=c["sparsify.reorder"],
        reconstruct=c["sparsify.reconstruct"], global_budget=c["sparsify.global"],
        exclude=tuple(c["sparsify.exclude"]),
        include_first_last=c["sparsify.include_first_last"],
        refit_dense=c["sparsify.refit_dense"], rows=c["sparsify.rows"])
    ctx.results["sparsify"] = report
    save_stage_model(ctx, "sparse", "model.sparse.onnx")
    return f"1x{c['sparsify.block']} blocks at {c['sparsify.sparsity']:.0%}"


def quantize(ctx: Context) -> str:
    """int8 quantization: model.quant.onnx, model.qdq.onnx, calibration.json."""
    result = _quantize(ctx, ctx.model)
    ctx.results["quant"] = result
    for role, filename, model in (("quant", "model.quant.onnx", result.quant_model),
                                  ("qdq", "model.qdq.onnx", result.qdq_model)):
        ctx.files[role] = save_model(model, ctx.out_dir / filename)
    ctx.files["calibration"] = ctx.out_dir / "calibration.json"
    result.table.save(ctx.files["calibration"])
    ctx.results["compare_layers"] = _compare_layers(ctx, result)
    ops = result.report.get("op_counts", {})
    return f"{sum(ops.values()) if ops else len(result.qgraph.ops)} quantized ops"


def _quantize(ctx: Context, model: Any, saved_table: bool = True) -> Any:
    """Quantize `model` with the configured calibrator and options.

    `saved_table=False` ignores calibration.table (it describes the compressed model, not
    the baseline).
    """
    from passes.quantize.api import quantize_model

    c = ctx.config
    percentile = c["calibration.percentile"] if c["calibration.calibrator"] == "percentile" \
        else None
    return quantize_model(model, calibration_feeds(ctx), c["calibration.calibrator"],
                          percentile=percentile, cle=c["quantize.cle"],
                          bias_correction=c["quantize.bias_correction"],
                          rounding=c["quantize.rounding"],
                          keep_float=tuple(c["quantize.keep_float"]),
                          table=c["calibration.table"] if saved_table else None,
                          batch_size=c["calibration.batch_size"])


def _compare_layers(ctx: Context, result: Any) -> list[dict]:
    """Per-layer cosine of the int8 model (dequantized) against the float model it came from."""
    from passes.quantize.compare import compare_models_on_data

    feeds = calibration_feeds(ctx).take(32)
    report = compare_models_on_data(result.float_model, result.quant_model, feeds)
    return [row.to_dict() for row in report.outputs + report.layers]


def build(ctx: Context) -> str:
    """Lower model.quant.onnx to the accelerator binary model.bin."""
    from targets.npusim import build_binary

    built = build_binary(ctx.results["quant"].quant_model, ctx.config["target.arch"],
                         options={"seed": ctx.config["seed"]})
    ctx.files["binary"] = ctx.out_dir / "model.bin"
    built.write(ctx.files["binary"])
    ctx.results["build"] = built
    npu = sum(p["unit"] == "NPU" for p in built.placement)
    return f"{npu}/{len(built.placement)} nodes on the NPU, {built.cpu_partitions} CPU partitions"


def verify(ctx: Context) -> str:
    """Bit-exact check of model.bin against model.quant.onnx on calibration samples."""
    from compiler.core.errors import MismatchError
    from targets.npusim import verify as run_verify

    feeds = _verify_feeds(ctx).take(ctx.config["target.verify_samples"])
    report = run_verify(ctx.results["quant"].quant_model, ctx.files["binary"], feeds.arrays)
    ctx.results["verify"] = report
    mismatched = sum(o["mismatched"] for o in report.outputs)
    if not report.consistent:
        raise MismatchError(f"model.bin differs from model.quant.onnx in {mismatched} elements")
    elements = sum(o["elements"] for o in report.outputs)
    return f"0 of {elements:,} output elements differ ({report.samples} samples)"


def _verify_feeds(ctx: Context) -> Feeds:
    """target.verify_data when given (same preprocessing), else the calibration data."""
    from compiler.driver.data import load_data

    source = ctx.config["target.verify_data"]
    if source is None:
        return calibration_feeds(ctx)
    return load_data(source, ctx.original, limit=ctx.config["target.verify_samples"],
                      preprocess=_preprocess(ctx.config))


def perf(ctx: Context) -> str:
    """Cycle-model latency (1 core, 1 thread) and FPS (cores x threads)."""
    c = ctx.config
    ctx.results["perf"] = _perf_pair(ctx.files["binary"], c)
    ctx.results["perf_baseline"] = _baseline_perf(ctx) if _compressed(ctx) else ctx.results["perf"]
    single, multi = ctx.results["perf"]["single"], ctx.results["perf"]["multi"]
    return (f"{single.latency_ms:.3f} ms (1 core, 1 thread), {multi.fps:.0f} FPS "
            f"({c['target.cores']} cores, {c['target.threads']} threads)")


def _perf_pair(binary: Any, c: dict[str, Any]) -> dict[str, Any]:
    """Latency on one core and thread, FPS on the configured cores and threads."""
    from targets.npusim import estimate_perf

    return {"single": estimate_perf(binary, c["target.arch"], cores=1, threads=1,
                                    frames=c["target.frames"]),
            "multi": estimate_perf(binary, c["target.arch"], cores=c["target.cores"],
                                   threads=c["target.threads"], frames=c["target.frames"])}


def _compressed(ctx: Context) -> bool:
    return bool(ctx.config["prune.enabled"] or ctx.config["sparsify.enabled"])


def _baseline_perf(ctx: Context) -> dict[str, Any]:
    """Latency/FPS of the uncompressed model, quantized and built the same way."""
    from targets.npusim import build_binary

    base = _quantize(ctx, ctx.original, saved_table=False)
    return _perf_pair(build_binary(base.quant_model, ctx.config["target.arch"]).data, ctx.config)


def evaluate(ctx: Context) -> str:
    """Accuracy of the float original, the compressed float model and the int8 model."""
    from compiler.core.io import to_proto
    from compiler.driver.evaluate import evaluate as run_eval

    source, limit = eval_source(ctx), ctx.config["eval.limit"]
    variants = {"float": ctx.original, "compressed": ctx.model}
    if "quant" in ctx.results:
        variants["int8"] = ctx.results["quant"].quant_model
    batch = ctx.config["eval.batch_size"]
    scores = {name: run_eval(to_proto(m), source, limit=limit, batch=batch).metrics
              for name, m in variants.items()}
    ctx.results["eval"] = scores
    key = next(iter(scores["float"]), None)
    if key is None:
        return f"no labels in {source}"
    return ", ".join(f"{name} {s[key]:.4f}" for name, s in scores.items())
