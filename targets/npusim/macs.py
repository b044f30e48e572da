"""Where a binary's MACs run: NPU instructions versus the host (CPU partitions, fallbacks).

MACs are counted dense (every weight, zero blocks included), so the fraction says where the
model's work is placed, independent of 1xN sparsity. NPU and CPU-fallback Conv /
FullyConnected instructions count `costs.dense_macs`; a CPU partition counts the MACs
`compiler.core.cost` finds in its embedded ONNX (Conv, Gemm, MatMul, Einsum; nodes whose
shapes are only known at run time count 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from targets.npusim import isa
from targets.npusim.costs import dense_macs

log = logging.getLogger(__name__)
MAX_OPS_SHOWN = 4  # per partition, in the one-line summary
MAX_PARTITIONS_SHOWN = 6


@dataclass(frozen=True)
class PartitionInfo:
    """The op types and float MACs of one embedded CPU partition.

    `uncounted` names the MAC layers (Conv, Gemm, ...) whose MACs are not in `macs`: their
    sizes are only known at run time, or they sit in an If/Loop body.
    """

    ops: tuple[str, ...]
    macs: int
    uncounted: tuple[str, ...] = ()
    search_ops: int = 0  # NonMaxSuppression's sort and overlap tests (not per element)


def partition_info(raw: bytes, name: str) -> PartitionInfo:
    """Ops (in order, distinct) and MACs of a serialized partition; unreadable: no MACs."""
    from compiler.core.cost import MAC_OPS, model_cost
    from compiler.core.io import load_model, parse_proto

    try:
        model = load_model(parse_proto(raw, name))
    except Exception as e:  # an unmeasurable partition is costed by its elements only
        log.debug("cannot cost CPU partition %r: %s", name, e)
        return PartitionInfo((), 0)
    cost = model_cost(model)
    uncounted = [n.name for n in cost.nodes if n.op in MAC_OPS and not n.macs]
    uncounted += [n.name for g in model.graph.subgraphs(recursive=True) for n in g.nodes
                  if n.op in MAC_OPS]
    search = sum(n.ops for n in cost.nodes if n.op == "NonMaxSuppression")
    return PartitionInfo(tuple(dict.fromkeys(n.op for n in cost.nodes)), cost.macs,
                         tuple(uncounted), search)


@lru_cache(maxsize=2)  # perf and build ask for the same program several times
def program_partitions(p: isa.Program) -> dict[int, PartitionInfo]:
    """`partition_info` of every CPU partition blob of a program, by blob index."""
    return {ins.partition: partition_info(p.blobs[ins.partition].raw, ins.name)
            for ins in p.code if isinstance(ins, isa.CpuCall)}


def search_ops(p: isa.Program, ins: isa.Instr) -> int:
    """Host ops of a CPU partition's NonMaxSuppression nodes (0 for other instructions)."""
    if isinstance(ins, isa.CpuCall):
        return program_partitions(p)[ins.partition].search_ops
    return 0


def instruction_macs(p: isa.Program, ins: isa.Instr) -> int:
    """Dense MACs of one instruction, a CPU partition's float MACs included."""
    if isinstance(ins, isa.CpuCall):
        return program_partitions(p)[ins.partition].macs
    return dense_macs(p, ins)


@dataclass
class MacSplit:
    """Dense MACs on the NPU and on the host, and the host's partitions.

    Attributes:
        npu_macs: MACs of NPU instructions.
        cpu_macs: MACs of CPU partitions and CPU-fallback instructions.
        partitions: Per maximal run of CPU work: `{"ops": [...], "macs": int}`.
    """

    npu_macs: int
    cpu_macs: int
    partitions: list[dict[str, Any]] = field(default_factory=list)
    uncounted: list[str] = field(default_factory=list)  # host MAC layers of unknown size

    @property
    def fraction(self) -> float:
        """The NPU share of the MACs: npu / (npu + cpu); 1.0 without MACs."""
        total = self.npu_macs + self.cpu_macs
        return self.npu_macs / total if total else 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for reports."""
        return {"npu_mac_fraction": round(self.fraction, 6), "npu_macs": self.npu_macs,
                "cpu_macs": self.cpu_macs, "cpu_partitions": self.partitions,
                "cpu_layers_uncounted": self.uncounted}

    @property
    def percent(self) -> str:
        """The fraction as a percentage; never "100.0%" while the host has MACs."""
        text = f"{self.fraction:.1%}"
        if text == "100.0%" and self.cpu_macs:
            text = f"{min(self.fraction, 0.99999):.3%}"
        return text

    def line(self) -> str:
        """E.g. `MACs on NPU: 97.3% (2 CPU partitions: NonMaxSuppression, Gather; TopK)`."""
        head = f"MACs on NPU: {self.percent}"
        if not self.partitions:
            return head + " (no CPU partitions)"
        n = len(self.partitions)
        tail = ""
        if self.uncounted:  # say so rather than overstate the NPU share
            tail = (f"; not counted: {len(self.uncounted)} CPU layer(s) of run-time size or "
                    f"inside If/Loop bodies ({', '.join(self.uncounted[:3])})")
        shown = [_ops_text(r["ops"]) for r in self.partitions[:MAX_PARTITIONS_SHOWN]]
        if n > MAX_PARTITIONS_SHOWN:
            shown.append(f"... {n - MAX_PARTITIONS_SHOWN} more")
        return f"{head} ({n} CPU partition{'s' if n > 1 else ''}: {'; '.join(shown)}{tail})"


def _ops_text(ops: list[str]) -> str:
    shown = ", ".join(ops[:MAX_OPS_SHOWN])
    return shown + (", ..." if len(ops) > MAX_OPS_SHOWN else "")


def mac_split(p: isa.Program) -> MacSplit:
    """Split the binary's dense MACs between the NPU and the host."""
    split, previous = MacSplit(0, 0), isa.NPU
    for ins in p.code:
        macs = instruction_macs(p, ins)
        if ins.unit == isa.NPU:
            split.npu_macs += macs
        else:
            if previous != isa.CPU:
                split.partitions.append({"ops": [], "macs": 0})
            run = split.partitions[-1]
            run["ops"] = list(dict.fromkeys(run["ops"] + _ops(p, ins)))
            run["macs"] += macs
            split.cpu_macs += macs
            if isinstance(ins, isa.CpuCall):
                split.uncounted += program_partitions(p)[ins.partition].uncounted
        previous = ins.unit
    return split


def _ops(p: isa.Program, ins: isa.Instr) -> list[str]:
    if isinstance(ins, isa.CpuCall):
        return list(program_partitions(p)[ins.partition].ops)
    return [ins.kind]
