"""The npusim target: capability table, lowering, binary, simulator, verifier, perf model.

Python API (the CLI commands `build`, `run`, `verify`, `perf` and `npuc compile` use it):

    build_binary(quant_model, arch="default", options=None) -> BuildResult
    Simulator(path_or_bytes).run(feeds) -> {output: array}
    verify(quant_model, binary, feeds) -> VerifyReport
    estimate_perf(binary, arch=None, cores=1, threads=1, frames=1000) -> PerfReport
    load_arch(name_or_path) -> Arch
    load_binary(path_or_bytes) -> Program
"""

from targets.npusim.arch import Arch, load_arch, presets
from targets.npusim.binary import load_binary, write_binary
from targets.npusim.build import BuildResult, build_binary
from targets.npusim.perf import PerfReport, estimate_perf
from targets.npusim.simulate import Simulator
from targets.npusim.verify import VerifyReport, verify

__all__ = ["Arch", "BuildResult", "PerfReport", "Simulator", "VerifyReport", "build_binary",
           "estimate_perf", "load_arch", "load_binary", "presets", "verify", "write_binary"]
