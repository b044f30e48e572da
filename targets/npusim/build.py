"""`build_binary`: a quantized model (`model.quant.onnx`) becomes an npusim binary."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.core import __version__
from compiler.core.errors import GraphError, TargetError
from compiler.core.io import load_model, model_hash, write_atomic
from compiler.core.ir import Model
from compiler.core.qgraph import METADATA_KEY, QGraph
from targets.npusim import isa
from targets.npusim.alloc import Allocation
from targets.npusim.arch import load_arch
from targets.npusim.binary import write_binary
from targets.npusim.lower import lower
from targets.npusim.macs import MacSplit, mac_split

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """A built binary and what the build decided.

    Attributes:
        data: The binary (`model.bin` bytes).
        placement: Per node: `{"node", "op", "unit": "NPU"|"CPU", "reason"}`.
        cpu_partitions: Number of maximal runs of CPU work.
        instructions: The lowered instruction list.
        program: The full lowered program.
        allocation: Arena figures (size, no-reuse size, peak live bytes).
        sparse_layers: Weight blob index -> chosen 1xN block size.
    """

    data: bytes
    placement: list[dict[str, str]]
    cpu_partitions: int
    instructions: tuple[isa.Instr, ...]
    program: isa.Program
    allocation: Allocation
    sparse_layers: dict[int, int]

    def write(self, path: str | os.PathLike) -> Path:
        """Write the binary atomically; returns the path."""
        path = Path(path)
        write_atomic(path, self.data)
        return path

    @property
    def macs(self) -> MacSplit:
        """Dense MACs on the NPU and on the host (`npu_mac_fraction` = its fraction)."""
        return mac_split(self.program)

    def summary(self) -> dict[str, Any]:
        """Counts for reports."""
        units = Counter(p["unit"] for p in self.placement)
        macs = self.macs
        return {"bytes": len(self.data), "instructions": len(self.instructions),
                "npu_nodes": units.get("NPU", 0), "cpu_nodes": units.get("CPU", 0),
                "cpu_partitions": self.cpu_partitions,
                "npu_mac_fraction": round(macs.fraction, 6), "npu_macs": macs.npu_macs,
                "cpu_macs": macs.cpu_macs, "cpu_partition_ops": [r["ops"] for r in
                                                               macs.partitions],
                "sparse_layers": len(self.sparse_layers),
                "arena_bytes": self.allocation.arena_size,
                "arena_no_reuse_bytes": self.allocation.naive_bytes}


def build_binary(quant_model: Model | str | os.PathLike, arch: str | os.PathLike = "default",
                 options: dict[str, Any] | None = None) -> BuildResult:
    """Legalize, lower and serialize a quantized model.

    Raises:
        TargetError: The model is not an npuc quantized model, or cannot be lowered.
        ConfigError: Unknown architecture preset or invalid architecture file.
    """
    arch_desc = load_arch(arch)
    model = quant_model if isinstance(quant_model, Model) else load_model(quant_model)
    label = model.source or "<model>"
    graph = _qgraph(model, label)
    meta = {"format": "npuc-npusim", "npuc_version": __version__, "source": label,
            "source_hash": model_hash(model), "arch": arch_desc.name,
            "options": dict(options or {}), "quantization": graph.info}
    lowered = lower(graph, _block_hints(model), meta)
    lowered.program.metadata["placement"] = lowered.placement
    lowered.program.metadata["cpu_partitions"] = lowered.cpu_partitions
    data = write_binary(lowered.program, lowered.blocks)
    log.info("built %d instructions, %d bytes, %d CPU partitions", len(lowered.program.code),
             len(data), lowered.cpu_partitions)
    return BuildResult(data, lowered.placement, lowered.cpu_partitions, lowered.program.code,
                       lowered.program, lowered.allocation, lowered.blocks)


def _qgraph(model: Model, label: str) -> QGraph:
    if METADATA_KEY not in model.metadata:
        raise TargetError(f"{label}: not a quantized model (no {METADATA_KEY!r} metadata); "
                          "build from DIR/model.quant.onnx written by `npuc quantize`")
    try:
        graph = QGraph.from_model(model)
        graph.validate()
    except GraphError as e:
        raise TargetError(f"{label}: {e}") from e
    return graph


def _block_hints(model: Model) -> dict[str, int]:
    """Node -> 1xN block from the sparsity metadata, when it survived quantization."""
    try:
        from compiler.core.sparsity import read_sparsity_metadata

        layers = read_sparsity_metadata(model)
    except (ImportError, GraphError, ValueError, KeyError) as e:
        log.debug("no usable sparsity metadata: %s", e)
        return {}
    return {name: int(mask.block) for name, mask in layers.items() if mask.block > 1}
