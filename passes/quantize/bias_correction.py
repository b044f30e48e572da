"""Bias correction of each int8 layer's own mean error, measured on the quantized model.

Nagel et al. 2019 ("Data-Free Quantization", section 4.2) in its empirical form; NNCF's bias
correction also measures the quantized model rather than the weights alone.

Where the float model computes L(x) for an int8 Conv/Gemm L, the quantized model computes
L_q(DQ(Q(x))): int8 weights, int32 bias, the input rounded and clipped to its calibrated
range. The difference has a mean per output channel that is generally not zero: weight
rounding meets inputs of non-zero mean (e.g. after ReLU), and clipping an input's range
removes only one side of its tail. This module measures

    shift[c] = E[L_q(DQ(Q(x))) - L(x)][c]

on calibration data, with x the tensor *as the quantized model computes it*, and subtracts it
from the layer's float bias; the caller rebuilds the integer model with the same activation
scales. Error that reaches x from earlier layers is not counted: each layer removes only the
shift it adds, so every layer is corrected from one run. (Correcting each layer's whole output
error at once counts an upstream shift again in every layer below it; measured worse, e.g.
torchvision RegNet-Y-400MF worst-output cosine 0.9897 -> 0.9871, where this form gives 0.9898.)

A calibration set is small (typically 32 images), so a shift is noisy where the error varies a
lot between samples, as on a classifier's per-class outputs. Each channel's estimate m is
shrunk by max(0, 1 - se^2/m^2), se its standard error across samples: the plug-in form of the
factor mu^2/(mu^2 + se^2) that minimises the expected squared error of the correction. A shift
the data cannot tell from zero is mostly left out; a well-measured one is applied whole.

The estimate streams: a probe copy of the QDQ model (`model.qdq.onnx`, unfused, so that its
float arithmetic is the integer model's to about one LSB) computes next to every layer the
float layer on the pre-quantization input, and both outputs reduced to their mean per sample
and channel; onnxruntime runs it batch by batch and only per-channel sums of the differences
and of their squares are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import ConfigError, GraphError
from compiler.core.feeds import Feeds, load_feeds
from compiler.core.ir import Model, static_shape
from compiler.core.numerics import run, session
from passes.quantize.calibrate import iter_batches
from passes.recon import split_layers

log = logging.getLogger(__name__)

PROBE = "__bias_shift"


@dataclass(frozen=True)
class FloatLayer:
    """A Conv/Gemm as the float model has it: op, attributes, constant weight (and bias)."""

    op: str
    attrs: dict[str, Any]
    params: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, node: gs.Node) -> FloatLayer:
        """The layer of a node whose inputs after the first are constants."""
        return cls(node.op, dict(node.attrs), tuple(np.asarray(t.values)
                                                     for t in node.inputs[1:]))


def correct_bias(float_model: Model, qdq_model: Model | None, feeds: Any,
                 batch_size: int = 8, reference: Mapping[str, FloatLayer] | None = None,
                 only: Collection[str] | None = None,
                 shifts: Mapping[str, Sequence[float]] | None = None,
                 ) -> tuple[Model, dict[str, Any]]:
    """Copy of `float_model` whose int8 layers' biases cancel their own mean error.

    Args:
        float_model: The canonical float model `qdq_model` was emitted from.
        qdq_model: Its QDQ model (`passes.quantize.emit_qdq.emit_qdq`).
        feeds: Calibration data (`Feeds` or anything `compiler.core.feeds.load_feeds` takes).
        batch_size: Samples per run when the model's batch is symbolic.
        reference: Layer name -> the float layer to measure against, where `float_model`'s
            own weights are already rounded (GPTQ); other layers: `float_model`'s.
        only: Correct only these layers (the ones that run in int8).
        shifts: Shifts measured before (a saved calibration table's): applied as they are,
            nothing is measured and `qdq_model` and `feeds` are not used.

    Returns:
        (model, report): report["corrected"] maps each layer to its largest |shift|,
        report["skipped"] each other Conv/Gemm/MatMul to the reason, report["shifts"] each
        corrected layer to its shift per channel.

    Raises:
        GraphError: No feeds (and no `shifts`).
        ConfigError: A given shift whose length is not the layer's channel count.
    """
    out = float_model.copy()
    layers, skipped = eligible_layers(out, only)
    if shifts is None:
        if feeds is None:
            raise GraphError("bias correction needs calibration data (feeds)")
        shifts = _measure(float_model, qdq_model, feeds, batch_size, reference or {}, layers,
                          skipped)
    corrected, applied = {}, {}
    for node in layers:
        if node.name not in shifts:
            skipped.setdefault(node.name, "no shift in the calibration table")
            continue
        shift = np.asarray(shifts[node.name], np.float64)
        if shift.shape != (_out_channels(node),):
            raise ConfigError(f"bias shift of layer {node.name!r} has {shift.size} values, "
                              f"the layer {_out_channels(node)} output channels")
        _subtract_bias(out, node, shift)
        corrected[node.name] = float(np.max(np.abs(shift), initial=0.0))
        applied[node.name] = shift.tolist()
    log.info("bias correction: %d layers corrected, %d skipped", len(corrected), len(skipped))
    return out, {"corrected": corrected, "skipped": skipped, "shifts": applied}


def _measure(float_model: Model, qdq_model: Model | None, feeds: Any, batch_size: int,
             reference: Mapping[str, FloatLayer], layers: list[gs.Node],
             skipped: dict[str, str]) -> dict[str, np.ndarray]:
    if qdq_model is None:
        raise GraphError("bias correction: measuring the shifts needs the QDQ model")
    qdq_nodes = {n.name for n in qdq_model.graph.nodes}
    for node in layers:
        if node.name not in qdq_nodes:
            skipped[node.name] = "not in the quantized model"
    ref = {n.name: reference.get(n.name) or FloatLayer.of(n) for n in layers
           if n.name in qdq_nodes}
    return measure_shifts(qdq_model, ref, feeds, float_model, batch_size)


def eligible_layers(model: Model, only: Collection[str] | None = None,
                    ) -> tuple[list[gs.Node], dict[str, str]]:
    """Conv/Gemm nodes whose bias can be corrected, and {name: reason} for the others."""
    return split_layers(model, _ineligible, only)


def measure_shifts(qdq_model: Model, reference: Mapping[str, FloatLayer], feeds: Any,
                   shape_model: Model, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per layer of `reference`, the shrunk mean of L_q(DQ(Q(x))) - L(x) per channel.

    `shape_model` (the float model) decides how `feeds` are batched.
    """
    if not reference:
        return {}
    feeds = feeds if isinstance(feeds, Feeds) else load_feeds(feeds, shape_model)
    probe, pairs = _probe(qdq_model, reference)
    sess = session(probe, fuse_qdq=False)
    moments = {layer: ChannelMoments() for layer in pairs}
    for batch in iter_batches(shape_model, feeds, batch_size):
        values = run(sess, batch)
        for layer, (quant, flt) in pairs.items():
            moments[layer].add(np.asarray(values[quant], np.float64)
                               - np.asarray(values[flt], np.float64))
    return {layer: m.shrunk_mean() for layer, m in moments.items()}


class ChannelMoments:
    """Running count, sum and sum of squares of per-sample rows [samples, channels]."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, rows: np.ndarray) -> None:
        """Accumulate rows (any leading shape; channels last)."""
        rows = rows.reshape(-1, rows.shape[-1])
        self.count += rows.shape[0]
        self.total = self.total + rows.sum(axis=0)
        self.squares = self.squares + np.square(rows).sum(axis=0)

    def shrunk_mean(self) -> np.ndarray:
        """Mean per channel times max(0, 1 - se²/mean²); the plain mean from one sample."""
        mean = self.total / self.count
        if self.count < 2:
            return mean
        var = np.maximum(self.squares / self.count - np.square(mean), 0.0)
        se2 = var / (self.count - 1)  # unbiased variance / count
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = np.where(mean != 0, 1.0 - se2 / np.square(mean), 0.0)
        return mean * np.clip(keep, 0.0, 1.0)


def _ineligible(node: gs.Node) -> str | None:
    if node.op == "MatMul":
        return "MatMul has no bias input (canonicalize to Gemm to correct it)"
    if not isinstance(node.inputs[1], gs.Constant):
        return "weights are not constant"
    if len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
        return "bias is not constant"
    if node.op == "Gemm":
        if node.attrs.get("transA", 0) or np.asarray(node.inputs[1].values).ndim != 2:
            return "Gemm with transA or a non-2-D weight"
        if len(node.inputs) > 2 and _gemm_bias(node) is None:
            return "Gemm bias C is not per output channel"
    if static_shape(node.outputs[0]) is None and node.outputs[0].shape is None:
        return "output rank unknown"
    return None


def _out_channels(node: gs.Node) -> int:
    w = np.asarray(node.inputs[1].values)
    if node.op == "Gemm" and not node.attrs.get("transB", 0):
        return w.shape[1]
    return w.shape[0]


def _gemm_bias(node: gs.Node) -> np.ndarray | None:
    """Gemm's effective bias beta·C as a length-N vector, or None when not per channel."""
    n = _out_channels(node)
    if len(node.inputs) < 3:
        return np.zeros(n)
    c = np.asarray(node.inputs[2].values, np.float64)
    beta = float(node.attrs.get("beta", 1.0))
    if c.size == 1 or (c.size == n and c.shape[-1] == n):
        return beta * np.broadcast_to(c.reshape(-1), (n,))
    return None


def _probe(qdq_model: Model, reference: Mapping[str, FloatLayer],
           ) -> tuple[Model, dict[str, tuple[str, str]]]:
    """A copy of the QDQ model that outputs, per layer, its own and the float layer's output.

    Both are averaged over everything but the sample and channel axes.
    """
    probe = qdq_model.copy()
    probe.graph.outputs = []  # only the means are fetched; unneeded nodes are dropped
    nodes = {n.name: n for n in probe.graph.nodes}
    pairs = {}
    for name, ref in reference.items():
        node = nodes.get(name)
        if node is None:
            raise GraphError(f"bias correction: the quantized model has no node {name!r}")
        flt = _float_branch(probe, node, ref)
        rank = len(node.outputs[0].shape)  # the float model's tensor: known (`_ineligible`)
        pairs[name] = (_channel_means(probe, node.outputs[0], rank, f"{name}{PROBE}_q"),
                       _channel_means(probe, flt, rank, f"{name}{PROBE}_f"))
    return probe, pairs


def _float_branch(probe: Model, node: gs.Node, ref: FloatLayer) -> gs.Variable:
    """The float layer `ref` applied to the pre-quantization value of `node`'s input."""
    x = _before_qdq(node.inputs[0])
    params = [gs.Constant(f"{node.name}{PROBE}_p{i}", v) for i, v in enumerate(ref.params)]
    out = gs.Variable(f"{node.name}{PROBE}_float", dtype=np.float32)
    probe.graph.nodes.append(gs.Node(ref.op, f"{node.name}{PROBE}_op", dict(ref.attrs),
                                     inputs=[x, *params], outputs=[out]))
    return out


def _before_qdq(t: gs.Tensor) -> gs.Tensor:
    """The x of `t` = DequantizeLinear(QuantizeLinear(x)); else `t` itself (an exact input)."""
    dq = t.inputs[0] if len(t.inputs) == 1 else None
    if dq is None or dq.op != "DequantizeLinear":
        return t
    q = dq.inputs[0].inputs[0] if len(dq.inputs[0].inputs) == 1 else None
    return q.inputs[0] if q is not None and q.op == "QuantizeLinear" else t


def _channel_means(probe: Model, t: gs.Tensor, rank: int, name: str) -> str:
    """Graph output: `t` [N, C, ...] averaged over its spatial axes ([N, C] kept as is)."""
    if rank <= 2:
        out = gs.Variable(name, dtype=np.float32)
        probe.graph.nodes.append(gs.Node("Identity", f"{name}_id", inputs=[t], outputs=[out]))
    else:
        axes = list(range(2, rank))
        out = gs.Variable(name, dtype=np.float32)
        inputs, attrs = [t], {"keepdims": 0}
        if probe.opset >= 18:
            inputs.append(gs.Constant(f"{name}_axes", np.array(axes, np.int64)))
        else:
            attrs["axes"] = axes
        probe.graph.nodes.append(gs.Node("ReduceMean", f"{name}_mean", attrs, inputs=inputs,
                                         outputs=[out]))
    probe.graph.outputs.append(out)
    return out.name


def _subtract_bias(model: Model, node: gs.Node, shift: np.ndarray) -> None:
    dtype = np.asarray(node.inputs[1].values).dtype
    if node.op == "Gemm":
        bias = _gemm_bias(node) - shift
        node.attrs["beta"] = 1.0
    else:
        old = node.inputs[2].values if len(node.inputs) > 2 else 0.0
        bias = np.asarray(old, np.float64) - shift
    if len(node.inputs) > 2 and len(node.inputs[2].outputs) == 1:
        node.inputs[2].values = bias.astype(dtype)  # sole user: replace the value in place
        return
    const = gs.Constant(_fresh_name(model, f"{node.name}.bias_corrected"), bias.astype(dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = const
    else:
        node.inputs.append(const)


def _fresh_name(model: Model, base: str) -> str:
    taken = model.graph.tensors()
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name
