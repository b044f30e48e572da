"""Where the latency goes: per-step rows of the binary, the partition map, the host share.

Every figure comes from the target's perf model (`targets/npusim/perf.py`): its per-
instruction rows (cycles, time, MACs, utilisation, compute- or memory-bound) and its latency
totals. Nothing here re-models time; it joins those rows with the build's placement (which
node runs where, and why) and with the uncompressed baseline, and says in one line when the
host, not the NPU, decides the latency.
"""

from __future__ import annotations

from itertools import groupby
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compiler.driver.context import CompileState
    from targets.npusim.perf import PerfReport

HOST_SHARE_NOTE = 0.25  # from this host share of the latency on, the report says why
HOST_SHARE_DOMINANT = 0.5
BREAKDOWN = (  # (perf totals key, label)
    ("npu_ms", "NPU layers"),
    ("host_compute_ms", "CPU partitions and fallbacks"),
    ("switch_ms", "partition switches"),
    ("frame_overhead_ms", "per-frame driver overhead"),
    ("weight_load_ms", "first-frame weight load (averaged)"),
)
HOST_KEYS = ("host_compute_ms", "switch_ms", "frame_overhead_ms")


def step_table(state: CompileState) -> list[dict[str, Any]]:
    """One row per executed instruction of the binary (1 core, 1 thread), in program order.

    NPU and CPU steps alike (quantize, Add, Concat, LUT, CPU partitions ...), with the
    uncompressed model's figures (`*_before`) where the step exists in both binaries.
    """
    if not state.perf:
        return []
    nodes = _step_nodes(state)
    macs = _host_macs(state)
    before = _baseline_rows(state)
    overhead = _instruction_overhead(state)
    rows, previous, switch_us = [], "NPU", _switch_us(state)
    for lay in state.perf.single.layers:
        row = _step_row(lay, nodes.get(lay["name"], [lay["name"]]), overhead)
        if lay["unit"] == "CPU":
            row["macs"] = macs.get(lay["name"], lay["macs"])
        # the perf model charges one partition switch per run of CPU steps, on entry
        row["switch_us"] = switch_us if lay["unit"] == "CPU" and previous == "NPU" else 0.0
        previous = lay["unit"]
        if before is not None:
            old = before.get(lay["name"])
            row.update({f"{k}_before": old and old[k] for k in ("macs", "cycles", "us")})
        rows.append(row)
    return rows


def _step_row(lay: dict[str, Any], nodes: list[str], overhead: int) -> dict[str, Any]:
    return {"step": lay["name"], "op": lay["kind"], "unit": lay["unit"], "nodes": nodes,
            "macs": lay["macs"], "cycles": lay["cycles"], "us": lay["us"],
            "utilisation": lay["utilisation"], "bound": _bound(lay, overhead),
            "ddr_bytes": lay["ddr_bytes"]}


def _bound(lay: dict[str, Any], overhead: int) -> str:
    """The perf model's compute/memory verdict; 'overhead' when the fixed cost dominates."""
    if lay["unit"] == "CPU":
        return "host"
    if not lay["cycles"]:
        return "free"  # reshapes: a view, no work
    if lay["cycles"] < 2 * overhead:  # cycles = max(compute, DDR) + overhead
        return "overhead"
    return lay["bound"]


def _instruction_overhead(state: CompileState) -> int:
    from targets.npusim.arch import load_arch

    return load_arch(state.config["target.arch"]).instruction_overhead_cycles


def _step_nodes(state: CompileState) -> dict[str, list[str]]:
    """Instruction name -> the model nodes it runs (a CPU partition runs several)."""
    from compiler.core.qgraph import QCpuPartition

    if state.quant is None:
        return {}
    return {op.name: [n.name for n in op.nodes] if isinstance(op, QCpuPartition) else [op.name]
            for op in state.quant.qgraph.ops}


def _host_macs(state: CompileState) -> dict[str, int]:
    """Float MACs of each CPU step (the perf rows count NPU work only)."""
    if state.build is None:
        return {}
    from targets.npusim import isa
    from targets.npusim.macs import instruction_macs

    program = state.build.program
    return {ins.name: instruction_macs(program, ins) for ins in program.code
            if ins.unit == isa.CPU}


def _baseline_rows(state: CompileState) -> dict[str, dict[str, Any]] | None:
    base = state.perf_baseline
    if base is None or base is state.perf:
        return None
    return {lay["name"]: lay for lay in base.single.layers}


def latency_breakdown(perf: PerfReport) -> dict[str, Any]:
    """The latency (1 core, 1 thread) split into NPU, host and switch time, with shares."""
    total, t = perf.latency_ms, perf.totals
    parts = [{"part": label, "ms": t.get(key, 0.0),
              "share": round(t.get(key, 0.0) / total, 4) if total else 0.0}
             for key, label in BREAKDOWN]
    host = sum(t.get(k, 0.0) for k in HOST_KEYS)
    return {"latency_ms": total, "parts": parts,
            "host_ms": round(host, 6), "host_share": round(host / total, 4) if total else 0.0,
            "partition_switches": t.get("partition_switches", 0)}


def latency_report(state: CompileState) -> dict[str, Any] | None:
    """Breakdown after (and before) compression, the FPS limit and the one-line note."""
    if not state.perf:
        return None
    out = latency_breakdown(state.perf.single)
    if state.perf_baseline is not None and state.perf_baseline is not state.perf:
        out["before"] = latency_breakdown(state.perf_baseline.single)
    multi = state.perf.multi
    out["fps"] = {"fps": multi.fps, "cores": multi.cores, "threads": multi.threads,
                  "limit": multi.totals.get("fps_limit")}
    out["note"] = host_note(out)
    return out


def host_note(lat: dict[str, Any]) -> str | None:
    """One line when the host decides much of the latency, naming what it spends it on."""
    share = lat["host_share"]
    if share < HOST_SHARE_NOTE:
        return None
    head = f"{share:.0%} of the latency is on the host ({_host_parts(lat)})"
    if share >= HOST_SHARE_DOMINANT:
        tail = "pruning the NPU layers cannot move latency or single-stream FPS much"
    else:
        tail = f"compressing the NPU layers can shorten at most the other {1 - share:.0%}"
    fps = lat["fps"]
    setup = f"with {fps['cores']} cores and {fps['threads']} threads"
    if fps["limit"] == "host":
        tail += f"; {setup} FPS is limited by the host CPU, which compression does not change"
    elif fps["limit"] == "npu":
        tail += f"; {setup} FPS is NPU-bound, so compression still raises it"
    return f"{head}: {tail}."


def _host_parts(lat: dict[str, Any]) -> str:
    ms = {p["part"]: p["ms"] for p in lat["parts"]}
    n = lat["partition_switches"]
    named = ((ms["CPU partitions and fallbacks"], "CPU partitions"),
             (ms["partition switches"], f"{n} partition switch{'es' if n != 1 else ''}"),
             (ms["per-frame driver overhead"], "per-frame driver"))
    return ", ".join(f"{label} {value * 1e3:.0f} µs" for value, label in named if value)


def partition_map(state: CompileState, steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Runs of consecutive NPU or CPU `steps`, with their nodes, time and the CPU reasons."""
    if state.build is None or not state.perf:
        return None
    reasons = {p["node"]: p for p in state.build.placement}
    total_us = state.perf.single.latency_ms * 1e3
    segments = [_segment(unit, list(run), reasons, total_us)
                for unit, run in groupby(steps, key=lambda r: r["unit"])]
    nodes = [{**p, "reason": p["reason"] or "runs on the NPU"} for p in state.build.placement]
    return {"segments": segments, "nodes": nodes}


def _segment(unit: str, run: list[dict[str, Any]], placement: dict[str, dict],
             total_us: float) -> dict[str, Any]:
    nodes = [n for r in run for n in r["nodes"]]
    ops = list(dict.fromkeys(placement[n]["op"] if unit == "CPU" and n in placement
                             else r["op"] for r in run for n in r["nodes"]))
    why = list(dict.fromkeys(placement[n]["reason"] for n in nodes
                             if n in placement and placement[n]["reason"]))
    switch_us = sum(r["switch_us"] for r in run)
    us = sum(r["us"] for r in run) + switch_us
    return {"unit": unit, "steps": [r["step"] for r in run], "nodes": nodes, "ops": ops,
            "reasons": why, "us": round(us, 3), "switch_us": switch_us,
            "share": round(us / total_us, 4) if total_us else 0.0}


def _switch_us(state: CompileState) -> float:
    t = state.perf.single.totals
    runs = t.get("partition_switches", 0)
    return round(t.get("switch_ms", 0.0) * 1e3 / runs, 3) if runs else 0.0
