"""The stages of `npuc compile`, each a plain function of the pipeline context.

Every stage reads what earlier stages left in `ctx`, writes its output files into
`ctx.out_dir` (atomically, through `compiler.io`) and returns a one-line detail for the
report. Heavy modules are imported inside the stages so `npuc --help` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.cost import model_cost
from compiler.errors import ConfigError
from compiler.io import load_model, save_model

if TYPE_CHECKING:
    from compiler.data import Feeds
    from compiler.pipeline import Context

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
        from compiler.data import load_feeds

        source = ctx.config["calibration.data"]
        if source is None and bundled_name(ctx):
            source = BUNDLED_DATA[bundled_name(ctx)][0]
        if source is None:
            raise ConfigError("calibration.data is required (a folder of images, an .npy/.npz "
                              "file or a dataset name)")
        ctx.results["calib"] = load_feeds(source, ctx.original,
                                          limit=ctx.config["calibration.limit"],
                                          preprocess=_preprocess(ctx.config))
    return ctx.results["calib"]


def _preprocess(config: dict[str, Any]):
    from compiler.data import Preprocess

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
