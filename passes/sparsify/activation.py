"""Input-channel activation scales for the activation-aware criterion (`--criterion act`).

A block's L1 norm ignores how large its input channel's activations are: after BatchNorm
folding a channel with small weights can carry large activations, and zeroing its blocks
then costs far more than the norm says (measured on the Fashion-MNIST ResNet, see
docs/sparsity.md). `act` scores a block by `sum |W| * std(x_c)`, the 1xN analogue of
Wanda's |W|*||X|| (Sun et al., 2023), measured on calibration data. The standard deviation,
not the RMS, because the mean part of a zeroed block's contribution is put back into the
bias (`bias_correct`): zeroing blocks whose inputs are post-ReLU (positive mean) otherwise
shifts every output channel's mean and the folded BatchNorm statistics no longer hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import Model
from passes.recon import iter_tensors
from passes.sparsify.layers import Layer


@dataclass
class ChannelStats:
    """Per-input-channel statistics of one layer's input (`[Cin_total]` each)."""

    mean: np.ndarray
    std: np.ndarray


def input_channel_stats(model: Model, layers: Sequence[Layer],
                        feeds: Mapping[str, np.ndarray]) -> dict[str, ChannelStats]:
    """Node name -> mean and standard deviation of each channel of its input on `feeds`."""
    tensor_of = {layer.name: layer.node.inputs[0].name for layer in layers}
    axis_of = {layer.name: 1 if layer.layout == "OIHW" else -1 for layer in layers}
    acc: dict[str, np.ndarray] = {}
    for values in iter_tensors(model, sorted(set(tensor_of.values())), feeds, 64):
        for name, tensor in tensor_of.items():
            x = np.moveaxis(np.asarray(values[tensor], np.float64), axis_of[name], -1)
            x = x.reshape(-1, x.shape[-1])
            moments = np.stack([np.full(x.shape[1], len(x)), x.sum(0), np.square(x).sum(0)])
            acc[name] = acc.get(name, 0.0) + moments
    out = {}
    for name, (n, s1, s2) in acc.items():
        mean = s1 / np.maximum(n, 1)
        out[name] = ChannelStats(mean, np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 0)))
    return out


def bias_correct(layer: Layer, keep: np.ndarray, mean: np.ndarray) -> bool:
    """Add the expected contribution of the weights about to be zeroed to the bias.

    Args:
        layer: The layer, weights not yet masked.
        keep: Bool element mask of the logical weight (False = about to be zeroed).
        mean: Mean of each input channel (`[Cin_total]`).

    Returns:
        False when the layer has no bias input to correct (MatMul): nothing changed.
    """
    w = layer.logical()
    removed = np.where(keep, 0, w).reshape(w.shape[0], w.shape[1], -1).sum(-1, dtype=np.float64)
    group_of_out = np.arange(layer.cout) // (layer.cout // layer.group)
    per_out_mean = mean.reshape(layer.group, -1)[group_of_out]
    shift = (removed * per_out_mean).sum(axis=1)
    node = layer.node
    if node.op == "MatMul":
        return False
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant) \
            and node.inputs[2].values.size == layer.cout and len(node.inputs[2].outputs) == 1:
        b = node.inputs[2]
        b.values = (np.asarray(b.values, np.float64) + shift.reshape(b.values.shape)).astype(
            b.values.dtype)
    elif len(node.inputs) == 2:
        node.inputs.append(gs.Constant(f"{node.name}.bias_sparsify", shift.astype(w.dtype)))
    else:
        return False
    return True


def block_input_scale(layer: Layer, scale: np.ndarray, block: int) -> np.ndarray:
    """The input scale of each block `[Cout/N, Cin]` (group-relative for grouped convs)."""
    per_group = scale.reshape(layer.group, -1)
    rows = np.arange(layer.cout // block) * block // (layer.cout // layer.group)
    return per_group[rows]
