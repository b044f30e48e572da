"""What `npuc compile` knows as it goes: one typed field per stage result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.core.ir import Model

if TYPE_CHECKING:
    from compiler.core.cost import CostReport
    from compiler.core.feeds import Feeds
    from passes.quantize.api import QuantResult
    from targets.npusim.build import BuildResult
    from targets.npusim.perf import PerfReport
    from targets.npusim.verify import VerifyReport


@dataclass(frozen=True)
class PerfPair:
    """Latency on one core and thread (`single`); FPS on the configured cores (`multi`)."""

    single: PerfReport
    multi: PerfReport

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"single": self.single.to_dict(), "multi": self.multi.to_dict()}


@dataclass
class CompileState:
    """State handed from stage to stage; each stage fills its own field.

    Attributes:
        config: Flat validated configuration.
        out_dir: Where the stages write (a staging folder while `final_dir` is set).
        final_dir: The output folder the staged files move to when the run ends.
        source: What the user asked to compile (path, bundled name, proto or IR model).
        calib_source: Calibration data handed to the API (an onnxruntime
            `CalibrationDataReader`, arrays, `Feeds`); replaces `calibration.data`.
        model: The current float model (after the stages run so far).
        original: The canonicalized input model (the float teacher / reference).
        cost_before: MACs and parameters of `original`.
        calib: Calibration feeds, loaded once for every stage that needs them.
        prune: `npuc prune`'s report of the pruning stage.
        sparsify: `npuc sparsify`'s report of the sparsification stage.
        quant: The quantization result (integer and QDQ models, QGraph, table).
        budget: The accuracy budget loop's report (`passes.quantize.budget`) with its cost
            on the target, when a budget was stated.
        compare_layers: Per-tensor cosine rows of the int8 model against its float model.
        build: The built binary.
        verify: Binary vs `model.quant.onnx`.
        perf: Cycle-model results of the binary; `perf_baseline` of the uncompressed model.
        eval: Metrics per variant ("float", "compressed", "int8").
        files: Output files written so far, by role.
        report: The report being assembled (`report.json` content).
    """

    config: dict[str, Any]
    out_dir: Path
    final_dir: Path | None = None
    source: Any = None
    calib_source: Any = None
    model: Model | None = None
    original: Model | None = None
    cost_before: CostReport | None = None
    calib: Feeds | None = None
    prune: dict[str, Any] | None = None
    sparsify: dict[str, Any] | None = None
    quant: QuantResult | None = None
    budget: dict[str, Any] | None = None
    compare_layers: list[dict[str, Any]] = field(default_factory=list)
    build: BuildResult | None = None
    verify: VerifyReport | None = None
    perf: PerfPair | None = None
    perf_baseline: PerfPair | None = None
    eval: dict[str, dict[str, float]] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def final_path(self, path: Path) -> Path:
        """Where a file written under `out_dir` ends up once the run's outputs are moved."""
        if self.final_dir is None:
            return path
        return self.final_dir / Path(path).relative_to(self.out_dir)
