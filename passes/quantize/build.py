"""Float model + calibrated thresholds -> QGraph (docs/fixed-point.md §12-§13).

`partition` (patterns.py) splits the canonical float graph into quantizable units and CPU
nodes; `QGraphBuilder` walks the units in topological order, inserts QQuantize/QDequantize
at float/int8 boundaries, groups consecutive CPU nodes into partitions and lowers every
other unit to a QOp (the `lower` of its op, compiler/core/qops).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import ConfigError, GraphError
from compiler.core.ir import Model, const_value, is_const
from compiler.core.qops import OpDef, UnitIO, by_unit_kind
from compiler.core.qops.match import clip_bounds
from compiler.core.subgraphs import export_subgraph, outer_inputs
from passes.quantize.dynamic import runtime_tensors
from passes.quantize.patterns import Unit, partition, scale_preserving

log = logging.getLogger(__name__)


def calibration_tensors(units: list[Unit]) -> list[str]:
    """Float tensors that need a threshold: outputs of scaling units, int8 entry points."""
    made_by = {t.name: u for u in units for t in u.outputs}
    names: list[str] = []
    for unit in units:
        if unit.kind == "cpu":
            continue
        if not scale_preserving(unit):
            names += [t.name for t in unit.outputs]
        for t in unit.inputs:
            src = made_by.get(t.name)
            if not is_const(t) and (src is None or src.kind == "cpu"):
                names.append(t.name)
    return list(dict.fromkeys(names))


NONNEGATIVE_FLOAT_OPS = frozenset({"Relu", "Sigmoid", "Softmax", "HardSigmoid", "Softplus",
                                   "Abs", "Exp"})


def float_nonnegative(t: gs.Tensor) -> bool:
    """Float tensor `t` is never negative by its producer's definition (§15).

    For tensors quantized where they enter the NPU from the host (the output of a CPU
    partition): a Relu, Sigmoid, Softmax, Clip(min ≥ 0)... there gets uint8 like an int8
    unit's output.
    """
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is None:
        return False
    if node.op == "Clip":
        lo = (clip_bounds(node) or (None, None))[0]
        return lo is not None and lo >= 0.0
    return node.op in NONNEGATIVE_FLOAT_OPS


def int16_tensors(units: list[Unit], nodes: Collection[str]) -> frozenset[str]:
    """Float tensors an int16 layer list makes 16-bit (docs/fixed-point.md §16).

    A layer named in `nodes` (any node of its unit) reads and writes int16: its activation
    inputs and its outputs. A tensor that a scale-preserving unit (Reshape, MaxPool, ...)
    moves takes its precision from the unit's input, so the input is made int16 as well.

    Raises:
        ConfigError: A name that is no node, or a node that runs on the CPU.
    """
    wanted = set(nodes)
    by_node = {n.name: u for u in units for n in u.nodes}
    missing = sorted(wanted - set(by_node))
    if missing:
        raise ConfigError(f"int16: no node named {missing[0]!r} in the model")
    cpu = sorted(n for n in wanted if by_node[n].kind == "cpu")
    if cpu:
        raise ConfigError(f"int16: node {cpu[0]!r} runs on the CPU ({by_node[cpu[0]].reason})")
    names = {t.name for n in wanted for t in by_node[n].inputs + by_node[n].outputs
             if not is_const(t)}
    made_by = {t.name: u for u in units for t in u.outputs}
    todo = list(names)
    while todo:
        src = made_by.get(todo.pop())
        if src is not None and src.kind != "cpu" and scale_preserving(src):
            for t in src.inputs[:1]:
                if not is_const(t) and t.name not in names:
                    names.add(t.name)
                    todo.append(t.name)
    return frozenset(names)


WEIGHTED_KINDS = frozenset({"conv", "gemm", "matmul"})
"""Unit kinds with a weight matrix (Conv, Gemm, MatMul with a constant operand)."""


def wide_weight_layers(units: list[Unit], nodes: Collection[str]) -> frozenset[str]:
    """Anchor names of the layers whose weights are int16 (W16, docs/fixed-point.md §17).

    A layer is named by any node of its unit.

    Raises:
        ConfigError: A name that is no node, a node on the CPU, or one without weights.
    """
    by_node = {n.name: u for u in units for n in u.nodes}
    anchors = set()
    for name in sorted(set(nodes)):
        unit = by_node.get(name)
        if unit is None:
            raise ConfigError(f"int16_weights: no node named {name!r} in the model")
        if unit.kind == "cpu":
            raise ConfigError(f"int16_weights: node {name!r} runs on the CPU ({unit.reason})")
        if unit.kind not in WEIGHTED_KINDS:
            raise ConfigError(f"int16_weights: node {name!r} ({unit.anchor.op}) has no weights "
                              "(Conv, Gemm or MatMul layers only)")
        anchors.add(unit.anchor.name)
    return frozenset(anchors)


def _shape(t: gs.Tensor) -> tuple[int, ...]:
    if t.shape is None:
        return ()
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else -1 for d in t.shape)


def _dtype(t: gs.Tensor) -> str:
    return np.dtype(t.dtype).name if t.dtype is not None else "float32"


class Thresholds(Protocol):
    """Calibrated thresholds per precision (`passes.quantize.calibrate.CalibrationTable`)."""

    def threshold(self, name: str, dtype: str, *, record: bool = True) -> float:
        """T of float tensor `name` stored as `dtype` (KeyError when not calibrated).

        `record=False`: only read it (a narrowed copy's clip, not the tensor's precision).
        """


@dataclass(frozen=True)
class FixedThresholds:
    """A plain name -> T mapping: the same threshold whatever the precision."""

    values: Mapping[str, float]

    def threshold(self, name: str, dtype: str = "int8", *, record: bool = True) -> float:
        """`values[name]` for every `dtype`."""
        return self.values[name]


@dataclass
class QGraphBuilder:
    """Stateful walk over the units (one instance per build).

    The one place that decides each tensor's precision (`_output_dtype`); it then asks
    `thresholds` for the threshold at that precision.
    """

    model: Model
    thresholds: Thresholds | Mapping[str, float]
    tensors: dict[str, q.QTensor] = field(default_factory=dict)
    ops: list[q.QOp] = field(default_factory=list)
    int8: dict[str, str] = field(default_factory=dict)     # float name -> int8 tensor name
    floats: dict[str, str] = field(default_factory=dict)   # float name -> float tensor name
    scales: dict[str, float] = field(default_factory=dict)  # float name -> int8 scale
    report: list[dict[str, Any]] = field(default_factory=list)
    runtime: dict[str, str] = field(default_factory=dict)  # run-time-shaped float tensors
    unsigned: bool = True  # uint8 for tensors that are never negative (fixed-point.md §15)
    int16: frozenset[str] = frozenset()  # float tensors stored as int16 (§16)
    wide_weights: frozenset[str] = frozenset()  # anchors of layers with int16 weights (§17)
    raised: frozenset[str] | None = None  # anchors of the layers named int16 (None: any)
    converted: dict[tuple[str, str], str] = field(default_factory=dict)  # (tensor, dtype) ->

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, Mapping):
            self.thresholds = FixedThresholds(self.thresholds)
        g = self.model.graph
        self.outputs = {t.name for t in g.outputs}
        for t in g.inputs:
            self._add(t.name, _shape(t), _dtype(t), None)
            self.floats[t.name] = t.name

    # -- tensors ---------------------------------------------------------------------------
    def _add(self, name: str, shape: tuple, dtype: str, scale: float | None,
             data: np.ndarray | None = None) -> str:
        if name in self.tensors:
            raise GraphError(f"qgraph: tensor name {name!r} used twice")
        self.tensors[name] = q.QTensor(name, shape, dtype, scale, data,
                                       runtime_shape=name in self.runtime)
        return name

    def threshold_scale(self, name: str, dtype: str = "int8") -> float:
        """Scale of a calibrated float tensor stored as `dtype` (T/127 or T/255)."""
        try:
            t = self.thresholds.threshold(name, dtype)
        except KeyError:
            raise ConfigError(f"no calibrated threshold for tensor {name!r} "
                              "(calibration table from another model?)") from None
        return fp.activation_scale(t, name, dtype)

    def int8_of(self, t: gs.Tensor, owner: str) -> str:
        """The int8 tensor for float tensor `t`, quantizing constants and float values."""
        if t.name in self.int8:
            return self.int8[t.name]
        if is_const(t):
            values = np.asarray(const_value(t), np.float32)
            if not np.all(np.isfinite(values)):
                raise GraphError(f"node {owner!r}: constant {t.name!r} contains NaN or Inf")
            scale = fp.constant_scale(values)
            name = self._add(f"{t.name}__q", values.shape, "int8", scale,
                             fp.quantize_constant(values, scale))
        else:
            dtype = "uint8" if self.unsigned and float_nonnegative(t) else "int8"
            dtype = "int16" if t.name in self.int16 else dtype
            scale = self.threshold_scale(t.name, dtype)
            name = self._add(f"{t.name}__q", _shape(t), dtype, scale)
            self.ops.append(q.QQuantize(f"{t.name}__quantize", (self.floats[t.name],), (name,),
                                        scale=scale, inv_scale=fp.inverse_scale(scale)))
        self.int8[t.name], self.scales[t.name] = name, scale
        return name

    def float_of(self, t: gs.Tensor) -> str:
        """The float tensor for `t`, dequantizing an int8 tensor when needed."""
        if t.name in self.floats:
            return self.floats[t.name]
        if t.name not in self.int8:
            raise GraphError(f"qgraph: tensor {t.name!r} used before it is produced")
        name = self._add(f"{t.name}__dq", _shape(t), "float32", None)
        self.ops.append(q.QDequantize(f"{t.name}__dequantize", (self.int8[t.name],), (name,),
                                      scale=self.scales[t.name]))
        self.floats[t.name] = name
        return name

    # -- units -----------------------------------------------------------------------------
    def _input_io(self, unit: Unit, inputs: list[str]) -> UnitIO:
        """The unit's integer view before its output precision and scale are chosen."""
        ts = [self.tensors[n] for n in inputs]
        nonneg = [t.dtype == "uint8" or (t.data is not None and bool(np.all(t.data >= 0)))
                  for t in ts]
        return UnitIO(unit.anchor.name, inputs, [t.scale for t in ts], [], 0.0,
                      self.model.opset, [t.dtype for t in ts], "int8", nonneg)

    def _to_int8(self, name: str) -> str:
        """An int8 copy of a uint8 or int16 tensor `name` (§15, §16).

        A one-input QConcat (a requantization). A uint8 copy keeps the same real range
        (scale S·255/127). An int16 copy is clipped at the tensor's int8 threshold (capped
        at the int16 range): the int8 reader then sees the grid it has in the all-int8
        model, not 127 steps over the int16 range, whose threshold (near max|x| for 32767
        levels) would make the int16 layer's int8 readers coarser than with no int16 at all.
        A moved tensor (Pad, MaxPool, ... output: no threshold of its own) keeps the range.
        """
        key = (name, "int8")
        if key not in self.converted:
            t = self.tensors[name]
            ratio = fp.qrange(t.dtype)[1] / fp.qrange("int8")[1]
            scale = float(np.float32(np.float64(t.scale) * ratio))
            if t.dtype == "int16":
                source = next(f for f, n in self.int8.items() if n == name)
                try:
                    clip = self.thresholds.threshold(source, "int8", record=False)
                    scale = min(scale, fp.activation_scale(clip, source, "int8"))
                except KeyError:  # a moved tensor (Pad, MaxPool, ...): not calibrated itself
                    pass
            suffix = q.SIGNED_SUFFIX if t.dtype == "uint8" else q.NARROW_SUFFIX
            out = self._add(f"{name}{suffix}", t.shape, "int8", scale)
            m0, s = fp.quantize_multiplier(float(np.float64(t.scale) / np.float64(scale)))
            self.ops.append(q.QConcat(f"{name}__to_int8", (name,), (out,), axis=0, m0=(m0,),
                                      shift=(s,)))
            self.converted[key] = out
        return self.converted[key]

    def _reads_wide(self, unit: Unit) -> bool:
        """Whether a unit that can read int16 does: a MAC layer only when it was named.

        An unnamed Conv/Gemm/MatMul after a raised layer reads an int8 copy (the all-int8
        model's grid): reading the int16 tensor would run its MACs in two passes that
        nobody asked for (a raised residual Add would otherwise widen every conv reading
        the stream; EfficientNet-Lite0: 1.3 % of the MACs named, 41 % run 16-bit).
        """
        return self.raised is None or unit.kind not in WEIGHTED_KINDS or \
            unit.anchor.name in self.raised

    def _output_dtype(self, unit: Unit, d: OpDef, io: UnitIO) -> str:
        """The unit's output precision (§15).

        The input's for scale-preserving ops, else uint8 when the op guarantees a
        non-negative output.
        """
        if scale_preserving(unit):
            return io.in_dtype(0)
        if d.int16_output and unit.outputs[0].name in self.int16:
            return "int16"
        if self.unsigned and d.nonnegative is not None and d.nonnegative(unit, io):
            return "uint8"
        return "int8"

    def add_unit(self, unit: Unit) -> None:
        """Lower one quantizable unit and register its quantized outputs."""
        d = by_unit_kind(unit.kind)
        inputs = [self.int8_of(t, unit.anchor.name) for t in unit.inputs]
        io = self._input_io(unit, inputs)
        if "int16" in io.in_dtypes and (not d.int16_input or not self._reads_wide(unit)):
            inputs = [self._to_int8(n) if dt == "int16" else n
                      for n, dt in zip(inputs, io.in_dtypes, strict=True)]
            io = self._input_io(unit, inputs)
        if d.signed_input is not None and "uint8" in io.in_dtypes and d.signed_input(unit, io):
            inputs = [self._to_int8(n) if dt == "uint8" else n
                      for n, dt in zip(inputs, io.in_dtypes, strict=True)]
            io = self._input_io(unit, inputs)
        out_dtype = self._output_dtype(unit, d, io)
        out_scale = io.in_scales[0] if scale_preserving(unit) else self.threshold_scale(
            unit.outputs[0].name, out_dtype)
        names = [f"{t.name}__q" if t.name in self.outputs else t.name for t in unit.outputs]
        io = replace(io, outputs=names, out_scale=out_scale, out_dtype=out_dtype,
                     weight_dtype="int16" if unit.anchor.name in self.wide_weights else "int8")
        op = d.lower(unit, io)
        for t, name in zip(unit.outputs, names, strict=True):
            self._add(name, _shape(t), out_dtype, out_scale)
            self.int8[t.name], self.scales[t.name] = name, out_scale
        self.ops.append(op)
        for t in unit.outputs:
            if t.name in self.outputs:
                self._dequantize_output(t)
        self._record(unit, op.kind, op.name)

    def _dequantize_output(self, t: gs.Tensor) -> None:
        self._add(t.name, _shape(t), "float32", None)
        self.ops.append(q.QDequantize(f"{t.name}__dequantize", (self.int8[t.name],), (t.name,),
                                      scale=self.scales[t.name]))
        self.floats[t.name] = t.name

    def add_cpu_run(self, run: list[Unit], index: int, later: set[str]) -> None:
        """One QCpuPartition for consecutive CPU units."""
        nodes = [u.anchor for u in run]
        made = {o.name for n in nodes for o in n.outputs if o.name}
        rename, constants = {}, {}
        for n in nodes:
            for t in list(n.inputs) + outer_inputs(n):
                if not t.name or t.name in made:
                    continue
                if is_const(t):
                    constants[t.name] = np.asarray(const_value(t))
                else:
                    rename[t.name] = self.float_of(t)
        outs = [name for name in made if name in later or name in self.outputs]
        for n in nodes:
            for t in n.outputs:
                if t.name in outs:
                    self._add(t.name, _shape(t), _dtype(t), None)
                    self.floats[t.name] = t.name
        name = f"cpu_partition_{index}"
        self.ops.append(q.QCpuPartition(
            name, tuple(dict.fromkeys(rename.values())), tuple(sorted(outs)),
            nodes=tuple(float_node(n, rename) for n in nodes), constants=constants,
            reasons={u.anchor.name: u.reason for u in run}))
        for u in run:
            self._record(u, "QCpuPartition", name)

    def _record(self, unit: Unit, kind: str, op_name: str) -> None:
        for node in unit.nodes:
            self.report.append({"node": node.name, "op": node.op, "qop": kind, "qop_name": op_name,
                                "reason": unit.reason})

    def build(self, units: list[Unit], info: dict[str, Any]) -> q.QGraph:
        """Walk all units and return the validated QGraph."""
        runs = _runs(npu_first(units))
        for i, run in enumerate(runs):
            if run[0].kind == "cpu":
                later = {t.name for r in runs[i + 1:] for u in r for t in u.inputs}
                self.add_cpu_run(run, sum(r[0].kind == "cpu" for r in runs[:i]), later)
            else:
                self.add_unit(run[0])
        g = self.model.graph
        for t in g.outputs:
            self.float_of(t)
        graph = q.QGraph(dict(self.tensors), tuple(self.ops), tuple(t.name for t in g.inputs),
                         tuple(t.name for t in g.outputs), info)
        graph.validate()
        return graph


def npu_first(units: list[Unit]) -> list[Unit]:
    """A topological order of the units with few switches between int8 and CPU work.

    Greedy: stay with the current kind (int8 first) while one of its units is ready.
    Independent host work (the Gathers of a detection tail around an int8 Squeeze of the
    boxes) then lands in one CPU partition: fewer host round trips, each of which costs a
    partition call.
    """
    made = {t.name: i for i, u in enumerate(units) for n in u.nodes for t in n.outputs
            if t.name}
    needs = [{made[t.name] for n in u.nodes for t in list(n.inputs) + outer_inputs(n)
              if t.name in made and made[t.name] != i} for i, u in enumerate(units)]
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for d in deps:
            users.setdefault(d, []).append(i)
    waiting = [len(d) for d in needs]
    ready: dict[bool, list[int]] = {False: [], True: []}  # is_cpu -> heap of unit indices
    for i, u in enumerate(units):
        if not needs[i]:
            heapq.heappush(ready[u.kind == "cpu"], i)
    order, cpu = [], False
    while ready[False] or ready[True]:
        cpu = cpu if ready[cpu] else not cpu
        i = heapq.heappop(ready[cpu])
        order.append(units[i])
        for j in users.get(i, []):
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready[units[j].kind == "cpu"], j)
    if len(order) != len(units):
        raise GraphError("qgraph: the quantization units form a cycle")
    return order


def _runs(units: list[Unit]) -> list[list[Unit]]:
    runs: list[list[Unit]] = []
    for u in units:
        if u.kind == "cpu" and runs and runs[-1][0].kind == "cpu":
            runs[-1].append(u)
        else:
            runs.append([u])
    return runs


def _attr(value: Any, rename: Mapping[str, str]) -> Any:
    if isinstance(value, gs.Constant):
        return np.asarray(value.values)
    if isinstance(value, gs.Graph):
        return export_subgraph(value, rename)
    if isinstance(value, gs.Tensor):
        raise GraphError(f"unsupported tensor attribute {value.name!r}")
    return value


def float_node(node: gs.Node, rename: Mapping[str, str]) -> q.FloatNode:
    """A CPU-partition node, reading dequantized copies where the renaming says so.

    Subgraph attributes are exported with their outer-scope reads renamed the same way.
    """
    try:
        attrs = {k: _attr(v, rename) for k, v in node.attrs.items()}
    except GraphError as e:
        raise GraphError(f"node {node.name!r} ({node.op}): {e}") from e
    return q.FloatNode(node.op, node.name, tuple(rename.get(t.name, t.name) for t in node.inputs),
                       tuple(t.name for t in node.outputs), attrs, node.domain or "")


def build_qgraph(model: Model, thresholds: Thresholds | Mapping[str, float],
                 units: list[Unit] | None = None,
                 info: dict[str, Any] | None = None,
                 unsigned: bool = True,
                 int16: Collection[str] = (), int16_weights: Collection[str] = ()
                 ) -> tuple[q.QGraph, list[dict[str, Any]]]:
    """Quantize a canonical float model with calibrated thresholds.

    Args:
        model: Canonicalized float model (shapes inferred). Its graph is re-sorted in place.
        thresholds: Float tensor name -> threshold T (see `calibration_tensors`), used
            for every precision; or a `CalibrationTable`, asked for each tensor's
            threshold at the precision the builder chose (and recording it).
        units: A precomputed `partition(model.graph)`.
        info: Provenance stored in the QGraph.
        unsigned: uint8 (scale T/255) for the outputs of ops that are never negative
            (docs/fixed-point.md §15); False: every quantized tensor is int8.
        int16: Nodes whose layers read and write int16 activations (A16W8, §16;
            `int16_tensors`).
        int16_weights: Nodes whose layers get int16 weights (W16, §17;
            `wide_weight_layers`).

    Returns:
        The QGraph and a per-node report (node, op, qop, qop_name, reason).
    """
    units = units if units is not None else partition(model.graph)
    wide = int16_tensors(units, int16) if int16 else frozenset()
    by_node = {n.name: u for u in units for n in u.nodes}
    builder = QGraphBuilder(model, thresholds, runtime=runtime_tensors(model.graph),
                            unsigned=unsigned, int16=wide,
                            raised=frozenset(by_node[n].anchor.name for n in int16),
                            wide_weights=wide_weight_layers(units, int16_weights))
    graph = builder.build(units, dict(info or {}))
    log.info("quantized %d nodes into %d ops (%d CPU partitions)", len(builder.report),
             len(graph.ops), sum(isinstance(o, q.QCpuPartition) for o in graph.ops))
    return graph, builder.report
