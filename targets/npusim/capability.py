"""What the npusim NPU runs: a view of the op table (`optable.py`).

`CAPABILITIES` maps each quantized op kind (`compiler.core.qops`) to the constraints it must
satisfy to run on the NPU; each constraint is a small function returning `(ok, reason)`
(the reason is what `npuc build` prints). An op kind absent from the table, or an op
failing a constraint, runs on the host CPU (the same integer kernel, bit-exact). Float CPU
partitions from the quantizer always run on the CPU. `supported_ops_markdown()` renders the
table for docs/binary-format.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from compiler.core.qgraph import QGraph, QOp
from targets.npusim.constraints import Constraint
from targets.npusim.optable import support, supported

CAPABILITIES: Mapping[str, tuple[Constraint, ...]] = MappingProxyType(
    {kind: s.constraints for kind, s in supported().items() if s and not s.cpu_reason})


def legalize(op: QOp, graph: QGraph) -> tuple[str, str]:
    """("NPU" | "CPU", reason): the first failing constraint decides."""
    rules = support(op.kind)
    if rules is None:
        return "CPU", f"{op.kind} is not in the NPU capability table"
    if rules.cpu_reason:
        return "CPU", rules.cpu_reason
    for rule in rules.constraints:
        ok, reason = rule.check(op, graph)
        if not ok:
            return "CPU", reason
    return "NPU", ""


def supported_ops_markdown() -> str:
    """The op table as Markdown (generated into docs/binary-format.md)."""
    lines = ["| quantized op | NPU constraints (otherwise: host CPU, same integer kernel) |",
             "|---|---|"]
    for kind, rules in supported().items():
        text = "never: no lowering" if rules is None else f"never: {rules.cpu_reason}" \
            if rules.cpu_reason else "; ".join(r.text for r in rules.constraints)
        lines.append(f"| `{kind}` | {text} |")
    return "\n".join(lines)


def is_depthwise(op: QOp) -> bool:
    """A conv with one input and one output channel per group."""
    return bool(getattr(op, "depthwise", False)) and np.ndim(op.weight) == 4
