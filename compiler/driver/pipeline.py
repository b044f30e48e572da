"""`npuc compile`: load → [canonicalize, prune, sparsify, quantize] → build, verify, perf, eval.

The bracketed part is one `PassManager` run of the same `Pass` objects the step commands
use (`npuc prune`, `npuc sparsify`, `npuc quantize`); the stages after it drive the target
and the evaluation. Every stage is timed and recorded; on failure the earlier outputs and a
partial report are kept and one error names the stage.
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
from compiler.core.pass_manager import Pass, PassManager, PassObserver, PassResult
from compiler.driver import stages, target_stages
from compiler.driver.config import load_config
from compiler.driver.context import CompileState
from compiler.driver.report import write_html, write_json
from compiler.driver.summary import summarize

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What `compile` returns.

    Attributes:
        out_dir: The output folder.
        files: Output files by role (`quant`, `binary`, `report_html`, ...).
        report: The `report.json` content.
        model: The compressed float model.
        state: Every stage's typed result (`CompileState`).
    """

    out_dir: Path
    files: dict[str, Path]
    report: dict[str, Any]
    model: Model | None
    state: CompileState


def compile_model(model: Any = None, config: dict[str, Any] | str | Path | None = None,
                  out_dir: str | Path = "npuc-out", *, calibration: Any = None,
                  progress: Callable[[str], None] | None = None) -> Result:
    """Run the whole pipeline.

    Args:
        model: ONNX path, bundled model name, `ModelProto` or IR `Model`; overrides the
            config's `model` key when given.
        config: A config dict (flat dotted keys or nested like the YAML), a YAML path, or
            None for the defaults.
        out_dir: Output folder (created).
        calibration: Calibration data as objects instead of `calibration.data`: an
            onnxruntime `CalibrationDataReader` (anything with `get_next()`), an array, a
            dict of arrays or `Feeds`.
        progress: Called with each stage name as it starts.

    Returns:
        The outputs, the report dict and the typed stage results.

    Raises:
        NpucError: "stage X failed: ..." — outputs of earlier stages are kept.
    """
    cfg = load_config(overrides=config) if isinstance(config, dict) else load_config(config)
    if isinstance(model, (str, Path)):
        cfg["model"], model = str(model), None
    state = CompileState(cfg, Path(out_dir), source=model if model is not None else cfg["model"],
                         calib_source=calibration)
    state.out_dir.mkdir(parents=True, exist_ok=True)
    state.report = {"model": _model_label(state.source), "config": cfg, "stages": []}
    recorder = StageRecorder(state, progress)
    recorder.run("load", stages.load)
    recorder.run_passes(stages.model_passes(state))
    for name, step in target_stages.target_steps(state):
        recorder.run(name, step)
    summarize(state)
    _write_reports(state)
    return Result(state.out_dir, state.files, state.report, state.model, state)


def _model_label(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    return getattr(model, "source", None) or type(model).__name__


class StageRecorder(PassObserver):
    """Times each stage, records it in the report, announces it, and names it on failure."""

    def __init__(self, state: CompileState, progress: Callable[[str], None] | None) -> None:
        self.state, self.progress = state, progress
        self.names: dict[int, str] = {}
        self.record: dict[str, Any] = {}
        self.start = 0.0

    def run(self, name: str, step: Callable[[CompileState], str | None]) -> None:
        """Run a driver stage (not a pass) as a recorded stage."""
        self._begin(name)
        try:
            detail = step(self.state)
        except Exception as e:
            raise self._fail(e) from e
        self._end(detail)

    def run_passes(self, passes: list[tuple[str, Pass]]) -> None:
        """Run the model passes as one `PassManager` run; each pass is a recorded stage."""
        self.names = {id(p): name for name, p in passes}
        # the loaded model is ours alone (load stage): no defensive copy of its weights
        manager = PassManager([p for _, p in passes], observer=self, copy_input=False)
        try:
            manager(self.state.model)
        except Exception as e:  # a PassError wraps the pass's own error: report that one
            cause = e.__cause__ if isinstance(e, PassError) and e.__cause__ else e
            raise self._fail(cause) from e

    def started(self, p: Pass) -> None:
        """PassObserver: a model pass begins."""
        self._begin(self.names[id(p)])

    def finished(self, p: Pass, result: PassResult, seconds: float) -> None:
        """PassObserver: keep the pass's result in the state and write its outputs."""
        self._end(stages.AFTER_PASS[self.names[id(p)]](self.state, result))

    def _begin(self, name: str) -> None:
        if self.progress:
            self.progress(name)
        self.start = time.perf_counter()
        self.record = {"name": name, "status": "running"}
        self.state.report["stages"].append(self.record)

    def _end(self, detail: str | None) -> None:
        self.record.update(status="ok", seconds=round(time.perf_counter() - self.start, 3),
                           detail=detail or "")
        log.info("stage %s done in %.2fs", self.record["name"], self.record["seconds"])

    def _fail(self, error: BaseException) -> PassError:
        self.record.update(status="failed", seconds=time.perf_counter() - self.start,
                           detail=str(error))
        _write_reports(self.state)
        text = str(error) if isinstance(error, NpucError) else f"{type(error).__name__}: {error}"
        return PassError(f"stage {self.record['name']} failed: {text}")


def _write_reports(state: CompileState) -> None:
    json_path, html_path = state.out_dir / "report.json", state.out_dir / "report.html"
    write_json(state.report, json_path)
    write_html(state.report, html_path)
    state.files.update(report_json=json_path, report_html=html_path)
