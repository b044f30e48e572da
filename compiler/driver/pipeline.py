"""`npuc compile`: load → canonicalize → prune → sparsify → quantize → build → verify → perf → eval.

Each stage is a plain function `(ctx) -> detail` registered in `STAGES`; the runner times it,
records its status and, on failure, keeps earlier outputs, writes the partial report and
raises one error naming the stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.core.errors import NpucError, PassError
from compiler.core.ir import Model
from compiler.driver import stages
from compiler.driver.config import load_config
from compiler.driver.context import Context
from compiler.driver.report import write_html, write_json
from compiler.driver.summary import summarize

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What `compile` returns."""

    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any]
    model: Model | None
    results: dict[str, Any]


Stage = Callable[[Context], str | None]


def stage_list(config: dict[str, Any]) -> list[tuple[str, Stage]]:
    """The stages this configuration enables, in order."""
    chosen = [("load", stages.load), ("canonicalize", stages.canonicalize)]
    if config["prune.enabled"]:
        chosen.append(("prune", stages.prune))
    if config["sparsify.enabled"]:
        chosen.append(("sparsify", stages.sparsify))
    if config["quantize.enabled"]:
        chosen += [("quantize", stages.quantize), ("build", stages.build)]
        if config["target.verify"]:
            chosen.append(("verify", stages.verify))
        chosen.append(("perf", stages.perf))
    if config["eval.data"] or stages.BUNDLED_DATA.get(config["model"], (None, None))[1]:
        chosen.append(("eval", stages.evaluate))
    return chosen


def compile_model(model: Any = None, config: dict[str, Any] | str | Path | None = None,
                  out_dir: str | Path = "npuc-out", *,
                  progress: Callable[[str], None] | None = None) -> Result:
    """Run the whole pipeline.

    Args:
        model: ONNX path, bundled model name, `ModelProto` or IR `Model`; overrides the
            config's `model` key when given.
        config: A flat config dict, a YAML path, or None for the defaults.
        out_dir: Output folder (created).
        progress: Called with each stage name as it starts.

    Returns:
        The outputs, the report dict and stage results.

    Raises:
        NpucError: "stage X failed: ..." — outputs of earlier stages are kept.
    """
    if isinstance(config, dict):
        cfg = load_config(overrides=config)
    else:
        cfg = load_config(config)
    if isinstance(model, (str, Path)):
        cfg["model"], model = str(model), None
    ctx = Context(cfg, Path(out_dir))
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.results["input"] = model if model is not None else cfg["model"]
    ctx.report = {"model": _model_label(ctx.results["input"]), "config": cfg, "stages": []}
    for name, fn in stage_list(cfg):
        if progress:
            progress(name)
        _run_stage(ctx, name, fn)
    summarize(ctx)
    _write_reports(ctx)
    return Result(ctx.out_dir, ctx.files, ctx.report, ctx.model, ctx.results)


def _model_label(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    return getattr(model, "source", None) or type(model).__name__


def _run_stage(ctx: Context, name: str, fn: Stage) -> None:
    start = time.perf_counter()
    record = {"name": name, "status": "running"}
    ctx.report["stages"].append(record)
    try:
        detail = fn(ctx)
    except Exception as e:
        record.update(status="failed", seconds=time.perf_counter() - start, detail=str(e))
        _write_reports(ctx)
        if isinstance(e, NpucError):
            raise PassError(f"stage {name} failed: {e}") from e
        raise PassError(f"stage {name} failed: {type(e).__name__}: {e}") from e
    record.update(status="ok", seconds=round(time.perf_counter() - start, 3),
                  detail=detail or "")
    log.info("stage %s done in %.2fs", name, record["seconds"])


def _write_reports(ctx: Context) -> None:
    json_path, html_path = ctx.out_dir / "report.json", ctx.out_dir / "report.html"
    write_json(ctx.report, json_path)
    write_html(ctx.report, html_path)
    ctx.files.update(report_json=json_path, report_html=html_path)
