"""The op record (`OpDef`) and the types every op family module shares.

An int8 op is defined in one family module of `compiler.core.qops`: its QOp dataclass,
the float patterns it matches, the lowering of a matched unit to the QOp, the numpy
reference, the integer-ONNX emission, the QDQ hook, its target-independent work and its
documentation text. The module lists its ops in `DEFS`; `compiler.core.qops.OPS` collects
them into one immutable mapping (docs/architecture.md, "Adding an int8 op").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.qops.record import QOp


@dataclass
class Unit:
    """A group of float nodes that becomes one quantized op (or one CPU node).

    Attributes:
        kind: The unit kind (an `OpDef.unit_kinds` entry) or "cpu".
        nodes: The float nodes, anchor first.
        inputs: Activation inputs (float tensors; constant operands included for add/mul/
            concat, where they become int8 constant tensors).
        outputs: Output tensors (of the last fused node).
        params: Kind-specific facts: fused activation bounds `act` (lo, hi) in real units,
            lookup-table function and parameters, constant bias of a fused MatMul + Add, ...
        reason: Why a cpu unit could not be quantized.
    """

    kind: str
    nodes: list[gs.Node]
    inputs: list[gs.Tensor]
    outputs: list[gs.Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def anchor(self) -> gs.Node:
        """The first (defining) node."""
        return self.nodes[0]


@dataclass
class UnitIO:
    """The integer view of a unit's tensors.

    Attributes:
        name: Op name (the anchor node's name).
        inputs: int8 tensor names, one per unit input (constants included).
        in_scales: Their scales.
        outputs: int8 output tensor names.
        out_scale: Output scale (all outputs of a unit share it).
        opset: Opset of the float model (for evaluating nodes at build time).
        in_dtypes: Precisions of the inputs ("int8" when not given).
        out_dtype: Precision of the outputs (docs/fixed-point.md §15).
        in_nonneg: Per input: never negative (an unsigned tensor, or a constant without a
            negative value); what `OpDef.nonnegative` decides from.
        weight_dtype: Precision of a conv/FC layer's weights: "int8", or "int16" (W16,
            docs/fixed-point.md §17).
    """

    name: str
    inputs: list[str]
    in_scales: list[float]
    outputs: list[str]
    out_scale: float
    opset: int = 17
    in_dtypes: list[str] = field(default_factory=list)
    out_dtype: str = "int8"
    in_nonneg: list[bool] = field(default_factory=list)
    weight_dtype: str = "int8"

    def in_dtype(self, i: int = 0) -> str:
        """Precision of input `i`."""
        return self.in_dtypes[i] if i < len(self.in_dtypes) else "int8"


@dataclass(frozen=True)
class OpWork:
    """Target-independent work of one op (targets turn it into time).

    Attributes:
        macs: Multiply-accumulates of a MAC-array op (0 otherwise).
        elements: Output elements computed (pooling: window elements read).
        weights: Constant bytes the op reads (weights, biases, tables, index maps).
    """

    macs: int = 0
    elements: int = 0
    weights: int = 0


class GraphView(Protocol):
    """What op code reads from a QGraph (kept structural: qgraph imports this package)."""

    def tensor(self, name: str) -> Any:
        """The QTensor called `name`."""


Matcher = Callable[[gs.Node, gs.Graph], "Unit | str"]
Lowering = Callable[[Unit, UnitIO], QOp]
Reference = Callable[[Any, list[np.ndarray], GraphView], list[np.ndarray]]
IntEmission = Callable[[Any, Any, list[gs.Tensor], list[gs.Tensor]], None]
QdqHook = Callable[[Any, Any], None]
Work = Callable[[Any, GraphView], OpWork]
Sign = Callable[[Unit, UnitIO], bool]


@dataclass(frozen=True)
class OpDef:
    """Everything target-independent about one quantized op kind.

    Attributes:
        cls: The QOp dataclass (its name is the op kind and the JSON `kind`).
        section: Section of docs/fixed-point.md that specifies the arithmetic, e.g. "§11".
        summary: One-line integer formula (generated docs).
        patterns: The float patterns it quantizes, as docs text ("" for builder-made ops).
        matchers: Float ONNX op type -> matcher (empty for ops the builder inserts itself:
            quantize/dequantize at float boundaries, CPU partitions).
        unit_kinds: `Unit.kind` values this op lowers (the link from matchers).
        lower: Matched unit + integer tensor view -> the QOp (None for builder-made ops).
        reference: Numpy execution: (op, inputs, graph) -> outputs.
        emit_int: Integer ONNX emission: (emitter, op, inputs, outputs); see
            passes/quantize/emit_int.py for the emitter's helpers.
        emit_qdq: QDQ hook (emitter, op), or None: generic Q/DQ on every int8 tensor.
        work: Target-independent work (MACs, elements, constant bytes).
        scale_preserving: Outputs reuse the input scale (no calibration of the output).
        channelwise: One int8 input, and y[:, c, ...] depends only on x[:, c, ...]
            elementwise and on c; the reference then accepts any [N, C, ...] input without a
            graph, so a target may run the op as one 256-entry table per channel
            (`channel_tables`).
        nonnegative: (unit, io) -> True when the output is never negative whatever the
            inputs (io.in_dtypes, io.in_nonneg and io.in_scales are set; out_scale is not):
            the builder then makes it unsigned (docs/fixed-point.md §15). None: always
            signed. Scale-preserving ops instead inherit their input's precision.
        signed_input: (unit, io) -> True when the op cannot keep an unsigned input's
            precision (a Pad whose value is negative); the builder then converts the input
            to int8 first (§15).
        int16_input: The op reads int16 activations (A16W8 for MAC ops, §16); the builder
            converts an int16 input of any other op to int8 first.
        int16_output: The op can write an int16 output (its requantization clamps to the
            output type's range); scale-preserving ops inherit their input's type anyway.
    """

    cls: type[QOp]
    section: str
    summary: str
    reference: Reference
    emit_int: IntEmission
    work: Work
    patterns: str = ""
    matchers: Mapping[str, Matcher] = field(default_factory=dict)
    unit_kinds: tuple[str, ...] = ()
    lower: Lowering | None = None
    emit_qdq: QdqHook | None = None
    scale_preserving: bool = False
    channelwise: bool = False
    nonnegative: Sign | None = None
    signed_input: Sign | None = None
    int16_input: bool = False
    int16_output: bool = False

    @property
    def kind(self) -> str:
        """The op kind, e.g. "QConv"."""
        return self.cls.__name__


def elements(graph: GraphView, names: tuple[str, ...]) -> int:
    """Total elements of the named tensors (dynamic dimensions count as 1)."""
    return sum(int(np.prod([max(d, 1) for d in graph.tensor(n).shape], dtype=np.int64))
               for n in names)


def out_elements(op: QOp, graph: GraphView) -> OpWork:
    """Work of an op that computes each output element once (no constants)."""
    return OpWork(elements=elements(graph, op.outputs))


def out_dtype(graph: GraphView, op: QOp, i: int = 0) -> np.dtype:
    """Numpy dtype of output `i` of `op` (its QTensor's precision)."""
    return np.dtype(graph.tensor(op.outputs[i]).dtype)


def act_lo_nonneg(unit: Unit) -> bool:
    """The unit's fused Relu/Clip has a lower bound ≥ 0."""
    lo = unit.params.get("act", (None, None))[0]
    return lo is not None and lo >= 0


def io_fields(io: UnitIO) -> dict[str, Any]:
    """The QOp base fields (name, inputs, outputs) of a unit."""
    return {"name": io.name, "inputs": tuple(io.inputs), "outputs": tuple(io.outputs)}
