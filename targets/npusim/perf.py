"""Analytical performance model: per-instruction cycles, latency and FPS (docs/perf-model.md).

Per NPU instruction: `cycles = max(compute, DDR bytes / per-core bandwidth) + overhead`
(DMA overlaps compute, as with double buffering); compute comes from `costs.work`. Host
work (CPU partitions, CPU-fallback instructions, per-frame driver overhead) is added on the
host side. With several cores the DDR bandwidth is shared by the cores running at once;
threads pipeline host and NPU work of different frames.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from compiler.core.errors import ConfigError
from targets.npusim import isa
from targets.npusim.arch import Arch, load_arch, presets
from targets.npusim.binary import load_binary
from targets.npusim.costs import Work, elements, work
from targets.npusim.macs import MacSplit, instruction_macs, mac_split, search_ops

log = logging.getLogger(__name__)
CPU_OPS_PER_ELEMENT = 8  # host float ops per element of a partition's inputs/outputs
NMS_OPS_PER_TEST = 16  # host float ops per NMS comparison or box-overlap (IoU) test
KINDS_ON_MAC_ARRAY = (isa.Conv, isa.DepthwiseConv, isa.FullyConnected)


@dataclass
class PerfReport:
    """Predicted latency and throughput, with the per-layer table.

    A frame is one execution of the program: `batch` samples for a model with a fixed
    batch, else one. `latency_ms` is per frame, `fps` counts samples (images) per second.
    """

    latency_ms: float
    fps: float
    layers: list[dict[str, Any]]
    cores: int
    threads: int
    frames: int
    arch: str
    totals: dict[str, Any] = field(default_factory=dict)
    macs: MacSplit = field(default_factory=lambda: MacSplit(0, 0))
    batch: int = 1

    @property
    def npu_mac_fraction(self) -> float:
        """Fraction (0..1) of the model's dense MACs that run on the NPU."""
        return self.macs.fraction

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return {"arch": self.arch, "cores": self.cores, "threads": self.threads,
                "frames": self.frames, "batch": self.batch, "latency_ms": self.latency_ms,
                "fps": self.fps,
                **self.macs.to_dict(), "totals": self.totals, "layers": self.layers}


def _layer(p: isa.Program, ins: isa.Instr, w: Work, arch: Arch, bw_per_core: float,
           weights_resident: bool) -> dict[str, Any]:
    on_npu = ins.unit == isa.NPU and not isinstance(ins, isa.CpuCall)
    # Activations stay in SRAM when the layer's inputs and outputs fit in half of it (the
    # other half double-buffers weights); otherwise they stream through DDR. Graph inputs
    # and outputs always cross DDR.
    io = _interface_bytes(p, ins)
    fits = w.in_bytes + w.out_bytes <= arch.sram_bytes // 2
    act = io if fits and on_npu else w.in_bytes + w.out_bytes
    ddr = act + (0 if weights_resident else w.weight_bytes)
    compute = w.array_cycles + w.vector_elements / arch.vector_elements_per_cycle
    memory = ddr / bw_per_core
    free = isinstance(ins, isa.Reshape)
    cycles = 0.0 if free else max(compute, memory) + arch.instruction_overhead_cycles
    host_s = 0.0 if on_npu else _host_seconds(p, ins, w, arch)
    return {"name": ins.name, "kind": ins.kind, "unit": "NPU" if on_npu else "CPU",
            "cycles": round(cycles) if on_npu else 0, "macs": w.macs,
            "utilisation": round(w.macs / (cycles * arch.macs_per_cycle), 4)
            if on_npu and cycles and isinstance(ins, KINDS_ON_MAC_ARRAY) else 0.0,
            "ddr_bytes": int(ddr), "bound": "compute" if compute >= memory else "memory",
            "sparse_block": w.sparse_block, "zero_blocks": round(w.zero_fraction, 4),
            "host_us": round(host_s * 1e6, 2),
            "us": round(cycles / arch.clock_mhz, 3) if on_npu else round(host_s * 1e6, 2)}


def _interface_bytes(p: isa.Program, ins: isa.Instr) -> int:
    ends = set(p.inputs) | set(p.outputs)
    return sum(p.tensors[t].nbytes for t in ins.reads() + ins.writes() if t in ends)


def _host_seconds(p: isa.Program, ins: isa.Instr, w: Work, arch: Arch) -> float:
    """Host time of a CPU partition or CPU-fallback instruction (no call overhead)."""
    macs = w.macs or instruction_macs(p, ins)
    count = w.vector_elements + sum(elements(p.tensors[i]) for i in ins.writes())
    flops = 2 * macs + CPU_OPS_PER_ELEMENT * count + NMS_OPS_PER_TEST * search_ops(p, ins)
    return flops / (arch.host.gflops_per_core * 1e9)


def _weights_fit(p: isa.Program, arch: Arch) -> bool:
    consts = sum(b.stored_bytes or (b.array.nbytes if b.array is not None else 0)
                 for b in p.blobs if b.kind != "onnx")
    return consts <= arch.sram_bytes // 2


def _frame(p: isa.Program, arch: Arch, active: int, resident: bool) -> tuple[list, float,
                                                                             float]:
    """(layers, NPU seconds, host seconds) of one frame with `active` cores sharing DDR."""
    bw = arch.ddr_bytes_per_cycle / active
    layers = [_layer(p, ins, work(p, ins, arch), arch, bw, resident) for ins in p.code]
    npu_s = sum(lay["cycles"] for lay in layers) / (arch.clock_mhz * 1e6)
    runs = _cpu_runs(p.code)
    host_s = sum(lay["host_us"] for lay in layers) / 1e6 + arch.frame_overhead_us / 1e6 + \
        runs * arch.host.partition_overhead_us / 1e6
    return layers, npu_s, host_s


def _cpu_runs(code: tuple[isa.Instr, ...]) -> int:
    runs, prev = 0, isa.NPU
    for ins in code:
        runs += ins.unit == isa.CPU and prev != isa.CPU
        prev = ins.unit
    return runs


def estimate_perf(binary: str | os.PathLike | bytes | isa.Program, arch: str | os.PathLike |
                  Arch | None = None, cores: int = 1, threads: int = 1,
                  frames: int = 1000) -> PerfReport:
    """Predict latency and FPS of a binary on an architecture.

    Args:
        binary: Path, bytes or loaded program.
        arch: Preset name, YAML path or `Arch` (default: the binary's build arch, else
            "default").
        cores: NPU cores used (≤ the architecture's cores).
        threads: Host threads submitting frames.
        frames: Frames averaged (the first frame also loads SRAM-resident weights).

    Raises:
        ConfigError: Bad cores/threads/frames or architecture.
        TargetError: Invalid binary.
    """
    p = binary if isinstance(binary, isa.Program) else load_binary(binary)
    spec = arch if isinstance(arch, Arch) else load_arch(arch or _build_arch(p))
    _check_args(spec, cores, threads, frames)
    active = min(cores, threads)
    resident = _weights_fit(p, spec)
    layers, npu_s, host_s = _frame(p, spec, active, resident)
    first_npu = _frame(p, spec, active, False)[1] if resident else npu_s
    steady, first = npu_s + host_s, first_npu + host_s
    latency = (first + (frames - 1) * steady) / frames
    npu_avg = (first_npu + (frames - 1) * npu_s) / frames
    limits = {"threads": threads / latency,
              "npu": active / npu_avg if npu_avg else float("inf"),
              "host": spec.host.cores / host_s if host_s else float("inf")}
    batch = p.frame_batch
    fps = min(limits.values()) * batch  # frames/s -> samples/s
    totals = _totals(layers, npu_s, host_s, resident, p, spec)
    totals.update(weight_load_ms=round((first - steady) / frames * 1e3, 6),
                  fps_limit=min(limits, key=limits.get))
    return PerfReport(round(latency * 1e3, 6), round(fps, 3), layers, cores, threads, frames,
                      spec.name, totals, mac_split(p), batch)



def _build_arch(p: isa.Program) -> str:
    """The preset the binary was built for; only preset names are trusted from a file."""
    name = p.metadata.get("arch")
    if name in presets():
        return name
    log.warning("binary names architecture %r, not a preset: using 'default'", name)
    return "default"


def _check_args(arch: Arch, cores: int, threads: int, frames: int) -> None:
    if not 1 <= cores <= arch.cores:
        raise ConfigError(f"--cores {cores}: architecture {arch.name!r} has {arch.cores} "
                          "core(s)")
    if threads < 1 or frames < 1:
        raise ConfigError(f"--threads and --frames must be >= 1 (got {threads}, {frames})")


def _totals(layers: list[dict[str, Any]], npu_s: float, host_s: float, resident: bool,
            p: isa.Program, arch: Arch) -> dict[str, Any]:
    cycles = sum(lay["cycles"] for lay in layers)
    macs = sum(lay["macs"] for lay in layers)
    runs = _cpu_runs(p.code)
    return {"macs": macs, "cycles": cycles, "ddr_bytes": sum(lay["ddr_bytes"] for lay in layers),
            "npu_ms": round(npu_s * 1e3, 4), "host_ms": round(host_s * 1e3, 4),
            # host_ms = host_compute_ms + switch_ms + frame_overhead_ms
            "host_compute_ms": round(sum(lay["host_us"] for lay in layers) / 1e3, 4),
            "partition_switches": runs,
            "switch_ms": round(runs * arch.host.partition_overhead_us / 1e3, 4),
            "frame_overhead_ms": round(arch.frame_overhead_us / 1e3, 4),
            "utilisation": round(macs / (cycles * arch.macs_per_cycle), 4) if cycles else 0.0,
            "weights_resident": resident, "arena_bytes": p.arena_size}
