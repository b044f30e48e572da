"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Quantizing weights W to W_q shifts a layer's output by (W_q - W)·x, whose mean per output
channel is generally not zero (e.g. ReLU inputs have a positive mean). For every Conv/Gemm
with constant weights, this module estimates E[(W_q - W)·x] per output channel on
calibration data, with x the layer's input in the *float* model, and subtracts it from the
bias (creating a bias when the layer has none).

The estimate streams: one forward of the float model fetches the layers' inputs batch by
batch, and since the layers are linear, E[(W_q - W)·x] is (W_q - W) applied to the mean of
what each weight tap reads (`_tap_means`): per layer only its input summed over samples
and over the rows of the first spatial axis each tap reads is kept. No error branch runs
(an earlier version ran every layer a second time with W_q - W in onnxruntime: twice the
MACs and a second copy of the weights).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import ConfigError, GraphError
from compiler.core.feeds import Feeds, load_feeds
from compiler.core.ir import Model, static_shape
from passes.quantize.calibrate import fit_batch, stream_tensors
from passes.recon import conv_geometry, split_layers

log = logging.getLogger(__name__)

WEIGHT_MAX = 127
WeightQuantizer = Callable[[np.ndarray], np.ndarray]


def fake_quant_weight(w: np.ndarray) -> np.ndarray:
    """Per-output-channel (axis 0) symmetric int8 quantize-dequantize (docs/fixed-point.md §1).

    `Sw[c] = f32(max|W[c]| / 127)`, `Wq = clamp(floor(W / Sw + 0.5), -127, 127)`; an all-zero
    channel keeps zeros. Returns `Wq·Sw` in the weight's dtype.
    """
    w64 = np.asarray(w, np.float64)
    if not np.all(np.isfinite(w64)):
        raise GraphError("weights contain NaN or Inf")
    if w64.size == 0:
        return np.asarray(w).copy()
    peak = np.abs(w64.reshape(w64.shape[0], -1)).max(axis=1)
    scale = (peak / WEIGHT_MAX).astype(np.float32).astype(np.float64)
    scale = np.where(scale > 0, scale, 1.0).reshape((-1,) + (1,) * (w64.ndim - 1))
    q = np.clip(np.floor(w64 / scale + 0.5), -WEIGHT_MAX, WEIGHT_MAX)
    return (q * scale).astype(np.asarray(w).dtype)


def correct_bias(float_model: Model, quantize_weight: WeightQuantizer = fake_quant_weight,
                 feeds: Any = None, batch_size: int = 8,
                 quantized: Mapping[str, np.ndarray] | None = None,
                 only: Collection[str] | None = None) -> Model:
    """Bias-corrected copy of `float_model` (weights unchanged, biases shifted).

    Args:
        float_model: The float model (IR), canonicalized (BatchNorm folded).
        quantize_weight: Maps a float weight, output channels first (OIHW for Conv,
            [out, in] for Gemm), to its quantize-dequantized value.
        feeds: Calibration data (`Feeds` or anything `compiler.core.feeds.load_feeds` accepts).
        batch_size: Samples per run when the model's batch is symbolic.
        quantized: Layer name -> the quantize-dequantized weight (node layout) the integer
            model will use, for layers not rounded by `quantize_weight` (e.g. GPTQ rounding).
        only: Correct only these layers (e.g. the ones that will run in int8); others are
            reported as skipped.

    Returns:
        A new model whose bias b of each corrected layer is b - E[(W_q - W)·x].
    """
    return correct_bias_with_report(float_model, quantize_weight, feeds, batch_size, quantized,
                                    only)[0]


def correct_bias_with_report(float_model: Model,
                             quantize_weight: WeightQuantizer = fake_quant_weight,
                             feeds: Any = None, batch_size: int = 8,
                             quantized: Mapping[str, np.ndarray] | None = None,
                             only: Collection[str] | None = None,
                             ) -> tuple[Model, dict[str, Any]]:
    """Like `correct_bias`; also returns its report.

    The report is {"corrected": {layer: max|shift|}, "skipped": {layer: reason}, "shifts":
    {layer: shift per output channel}}. The shifts reproduce the correction without data
    (`apply_shifts`); `quantize_model` saves them in the calibration table.
    """
    if feeds is None:
        raise GraphError("bias correction needs calibration data (feeds)")
    feeds = feeds if isinstance(feeds, Feeds) else load_feeds(feeds, float_model)
    out = float_model.copy()
    layers, skipped = eligible_layers(out, only)
    quantized = quantized or {}
    means = _mean_errors(float_model, layers,
                         lambda n: _delta(n, quantize_weight, quantized.get(n.name)),
                         feeds, batch_size)
    report = _subtract_all(out, layers, means)
    log.info("bias correction: %d layers corrected, %d skipped", len(report["corrected"]),
             len(skipped))
    return out, report | {"skipped": skipped}


def apply_shifts(float_model: Model, shifts: Mapping[str, Any],
                 only: Collection[str] | None = None) -> tuple[Model, dict[str, Any]]:
    """A copy of `float_model` with saved shifts subtracted from the biases (no data needed).

    Args:
        float_model: The float model (IR), canonicalized; same layers as when measured.
        shifts: Layer name -> shift per output channel (the report's "shifts").
        only: The layers to correct; each must have a shift of its channel count.

    Returns:
        The corrected copy and its report (as `correct_bias_with_report`).

    Raises:
        ConfigError: A layer to correct has no shift, or one of the wrong length.
    """
    out = float_model.copy()
    layers, skipped = eligible_layers(out, only)
    means = {}
    for node in layers:
        shift = shifts.get(node.name)
        if shift is None or len(shift) != _out_channels(node):
            got = "none" if shift is None else f"{len(shift)} values"
            raise ConfigError(f"calibration table: bias_correction shifts for layer "
                              f"{node.name!r}: {got}, expected {_out_channels(node)} (made "
                              f"for another model or options?)")
        means[node.name] = np.asarray(shift, np.float64)
    return out, _subtract_all(out, layers, means) | {"skipped": skipped}


def _subtract_all(model: Model, layers: list[gs.Node], means: Mapping[str, np.ndarray],
                  ) -> dict[str, Any]:
    corrected, shifts = {}, {}
    for node in layers:
        _subtract_bias(model, node, means[node.name])
        corrected[node.name] = float(np.max(np.abs(means[node.name]), initial=0.0))
        shifts[node.name] = [float(v) for v in np.asarray(means[node.name], np.float64)]
    return {"corrected": corrected, "shifts": shifts}


def eligible_layers(model: Model, only: Collection[str] | None = None,
                    ) -> tuple[list[gs.Node], dict[str, str]]:
    """Conv/Gemm nodes whose bias can be corrected, and {name: reason} for the others."""
    return split_layers(model, _ineligible, only)


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


def _delta(node: gs.Node, quantize_weight: WeightQuantizer,
           given: np.ndarray | None = None) -> np.ndarray:
    """W_q - W in the node's own weight layout (`given`: W_q already known, node layout)."""
    w = np.asarray(node.inputs[1].values)
    if given is not None:
        return (np.asarray(given, np.float64) - w.astype(np.float64)).astype(np.float32)
    transposed = node.op == "Gemm" and not node.attrs.get("transB", 0)
    major = w.T if transposed else w
    wq = np.asarray(quantize_weight(np.ascontiguousarray(major)))
    if wq.shape != major.shape:
        raise GraphError(f"node {node.name!r}: quantize_weight returned shape {wq.shape}, "
                         f"expected {major.shape}")
    delta = wq.astype(np.float64) - major.astype(np.float64)
    return (delta.T if transposed else delta).astype(np.float32)


def _mean_errors(model: Model, layers: list[gs.Node],
                 delta: Callable[[gs.Node], np.ndarray], feeds: Feeds, batch_size: int,
                 ) -> dict[str, np.ndarray]:
    """E[op(x, W_q - W)] per output channel, from one forward that fetches the layers' inputs.

    The mean of a linear op's output is the op applied to the mean of what each weight tap
    reads, so no error branch runs: a Conv's mean error is Σ ΔW[o, c, k]·M[c, k] with
    M[c, k] the mean, over samples and output positions, of the input element tap k reads
    (0 in the padding), a Gemm's is ΔW·E[x]. While streaming, each layer keeps its input
    summed over samples and, for a Conv, over the rows each tap of the first spatial axis
    reads ([C, k1, W, ...]: small, whatever the number of samples); the other axes follow
    at the end (`_tap_means`).
    """
    if not layers:
        return {}
    names = list(dict.fromkeys(n.inputs[0].name for n in layers))
    sums: dict[str, np.ndarray] = {}
    samples = dict.fromkeys((n.name for n in layers), 0)
    heights: dict[str, int] = {}  # a Conv input's first spatial size (reduced while streaming)
    for batch in stream_tensors(model, feeds, names, fit_batch(model, names, batch_size)):
        for node in layers:
            x = batch.get(node.inputs[0].name)
            if x is None:  # a constant input is yielded with the first batch only
                continue
            part = _row_sums(node, np.asarray(x))
            if node.name in sums:
                np.add(sums[node.name], part, out=sums[node.name])
            else:
                sums[node.name] = part
            samples[node.name] += len(x)
            heights[node.name] = x.shape[2] if node.op == "Conv" else 0
        del batch  # one batch of activations alive at a time
    # each layer's W_q - W is made here, one at a time: not a second copy of all weights
    return {n.name: _contract(n, delta(n), _tap_means(n, sums[n.name], samples[n.name],
                                                      heights[n.name]))
            for n in layers}


def _row_sums(node: gs.Node, x: np.ndarray) -> np.ndarray:
    """A batch summed over samples; for a Conv also over the rows each first-axis tap reads.

    Conv: [C, k1, rest...] from x [N, C, H, rest...]; Gemm: [K] from x [N, K].
    """
    if node.op != "Conv":
        return x.sum(axis=0, dtype=np.float64)
    k, s, d, begin, out = _geometry(node, x.shape[2:])[0]
    size, parts = x.shape[2], []
    for tap in range(k):
        first = tap * d - begin  # row read by output position p: p·s + first
        lo, hi = max(0, -(first // s)), min(out - 1, (size - 1 - first) // s)
        rows = x[:, :, lo * s + first:hi * s + first + 1:s] if lo <= hi else x[:, :, :0]
        parts.append(rows.sum(axis=(0, 2), dtype=np.float64))
    return np.stack(parts, axis=1)


def _tap_means(node: gs.Node, total: np.ndarray, samples: int, height: int) -> np.ndarray:
    """The mean input each weight tap reads, from `_row_sums` summed over `samples` samples.

    `height` is the Conv input's first spatial size (that axis is reduced already).
    Conv: [C, k1, ..., kd], the mean over samples and output positions of the input element
    tap (k1, ..., kd) reads (0 in the padding); each further spatial axis maps through a
    0/1 matrix of the rows a tap reads. Gemm: [K], the mean over samples.
    """
    if node.op != "Conv":
        return total.reshape(-1) / max(samples, 1)
    geometry = _geometry(node, (height, *total.shape[2:]))
    positions = samples * geometry[0][4]
    for axis, (k, s, d, begin, out) in enumerate(geometry[1:], start=1):
        size = total.shape[1 + axis]
        reads = np.zeros((k, size))
        for tap in range(k):
            rows = np.arange(out) * s + tap * d - begin
            reads[tap, rows[(rows >= 0) & (rows < size)]] = 1.0
        # einsum's own loops, not BLAS: the same sums whatever BLAS's thread count (a fleet
        # compiled locally and on Ray workers must give the same model)
        moved = np.moveaxis(total, 1 + axis, -1)
        total = np.moveaxis(np.einsum("...h,kh->...k", moved, reads), -1, 1 + axis)
        positions *= out
    return total / max(positions, 1)


def _geometry(node: gs.Node, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per spatial axis of a Conv's input: (kernel, stride, dilation, leading pad, outputs)."""
    kernel = np.asarray(node.inputs[1].values).shape[2:]
    strides, dilations, pads, outs = conv_geometry(node, spatial, kernel)
    return list(zip(kernel, strides, dilations, pads[:len(kernel)], outs, strict=True))


def _contract(node: gs.Node, delta: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The mean error per output channel from a layer's ΔW and its tap means (`_tap_means`)."""
    d = np.asarray(delta, np.float64)
    if node.op == "Gemm":  # elementwise products summed by numpy, not BLAS (see _tap_means)
        alpha = float(node.attrs.get("alpha", 1.0))
        rows = d if node.attrs.get("transB", 0) else d.T
        return alpha * (rows * means).sum(axis=1)
    groups = int(node.attrs.get("group", 1))
    taps = means.reshape(groups, 1, -1)  # [groups, 1, C/groups · taps]
    return (d.reshape(groups, d.shape[0] // groups, -1) * taps).sum(axis=2).reshape(-1)


def _subtract_bias(model: Model, node: gs.Node, mean_error: np.ndarray) -> None:
    dtype = np.asarray(node.inputs[1].values).dtype
    if node.op == "Gemm":
        bias = _gemm_bias(node) - mean_error
        node.attrs["beta"] = 1.0
    else:
        old = node.inputs[2].values if len(node.inputs) > 2 else 0.0
        bias = np.asarray(old, np.float64) - mean_error
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
