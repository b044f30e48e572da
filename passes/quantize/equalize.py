"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

For two layers y = W2·f(W1·x + b1) where f is positive-homogeneous per channel
(f(s·z) = s·f(z) for s > 0: ReLU, LeakyReLU, max/average pooling, Flatten), scaling output
channel i of layer 1 by 1/s_i and input channel i of layer 2 by s_i leaves the function
unchanged. With r1_i the range of W1's output channel i and r2_i that of W2's input channel i,
s_i = sqrt(r1_i / r2_i) makes both ranges sqrt(r1_i·r2_i), which evens out per-channel weight
ranges before per-tensor or per-channel quantization. Chains (conv → depthwise → conv) are
handled by sweeping all pairs repeatedly.

Clip / ReLU6 is not positive-homogeneous (its upper bound would have to become 6/s_i per
channel, which Clip cannot express), so pairs through it are skipped with that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import Model, consumers, is_graph_output
from compiler.core.pass_manager import Pass, PassResult

log = logging.getLogger(__name__)

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
               "GlobalMaxPool"}
CLIPPING = {"Clip", "HardSigmoid", "HardSwish"}
CONVERGED = 1e-6  # stop sweeping once every |log s_i| is below this


@dataclass
class Pair:
    """Two layers to equalize: the channels of `first`'s output feed `second`'s input.

    Attributes:
        first: Conv/Gemm whose output channels are scaled by 1/s.
        second: Conv/Gemm whose input channels are scaled by s.
        expand: Input features of `second` per channel of `first` (H·W after a Flatten).
    """

    first: gs.Node
    second: gs.Node
    expand: int = 1


@dataclass
class CleReport:
    """What `equalize` did: pairs equalized, candidate layers skipped (with reasons)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sweeps: int = 0
    spread_before: float = 0.0
    spread_after: float = 0.0

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"pairs": [list(p) for p in self.pairs],
                "skipped": [{"layer": n, "reason": r} for n, r in self.skipped],
                "sweeps": self.sweeps, "spread_before": self.spread_before,
                "spread_after": self.spread_after}


def equalize(model: Model, iterations: int = 20) -> Model:
    """Cross-layer-equalized copy of `model` (function-preserving); see the module doc."""
    return equalize_with_report(model, iterations)[0]


def equalize_with_report(model: Model, iterations: int = 20) -> tuple[Model, CleReport]:
    """Like `equalize`, also returning the pairs equalized and the layers skipped."""
    out = model.copy()
    pairs, skipped = find_pairs(out)
    report = CleReport([(p.first.name, p.second.name) for p in pairs], skipped)
    report.spread_before = mean_spread(pairs)
    work = {id(n): LayerWeights(n) for p in pairs for n in (p.first, p.second)}
    steps = [(work[id(p.first)], work[id(p.second)], p.expand) for p in pairs]
    for sweep in range(iterations):
        report.sweeps = sweep + 1
        if max((_equalize_pair(*step) for step in steps), default=0.0) < CONVERGED:
            break
    for layer in work.values():
        layer.write()
    report.spread_after = mean_spread(pairs)
    log.info("CLE: %d pairs equalized in %d sweeps, %d layers skipped; mean range spread "
             "%.3g -> %.3g", len(pairs), report.sweeps, len(skipped), report.spread_before,
             report.spread_after)
    return out, report


class CrossLayerEqualization(Pass):
    """Pass wrapper around `equalize_with_report`."""

    def __init__(self, iterations: int = 20) -> None:
        self.iterations = iterations

    def call(self, model: Model) -> PassResult:
        """Equalize; `info` is the `CleReport` as a dict."""
        out, report = equalize_with_report(model, self.iterations)
        return PassResult(out, bool(report.pairs), report.to_dict())


# -- finding pairs ------------------------------------------------------------------------

def find_pairs(model: Model) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Equalizable pairs in graph order, and (layer, reason) for layers that lead nowhere."""
    pairs, skipped = [], []
    for node in model.nodes:
        reason = layer_reason(node)
        if reason is not None:
            if node.op in ("Conv", "Gemm"):
                skipped.append((node.name, reason))
            continue
        found = _follow(model, node)
        if isinstance(found, Pair):
            pairs.append(found)
        elif found:
            skipped.append((node.name, found))
    return pairs, skipped


def layer_reason(node: gs.Node) -> str | None:
    """None when `node` is a Conv/Gemm whose channels can be rescaled, else why not."""
    if node.op not in ("Conv", "Gemm"):
        return f"{node.op} is not Conv/Gemm"
    params = node.inputs[1:3]
    if not all(isinstance(t, gs.Constant) for t in params):
        return "weights or bias are not constants"
    if any(len(t.outputs) != 1 for t in params):
        return "weights or bias are shared with another node"
    if node.op == "Gemm" and node.inputs[1].values.ndim != 2:
        return "Gemm weight is not 2-D"
    return None


def _follow(model: Model, first: gs.Node) -> Pair | str:
    """Walk from `first`'s output through channel-wise ops to the next layer (or a reason)."""
    if first.op == "Gemm" and len(first.inputs) > 2 and _gemm_bias(first) is None:
        return "Gemm bias C is not per output channel"
    tensor, expand, via = first.outputs[0], 1, []
    while True:
        if is_graph_output(model.graph, tensor):
            return "" if not via else f"output of {via[-1]} is a graph output"
        users = consumers(tensor)
        if len(users) != 1:
            return f"{tensor.name!r} feeds {len(users)} consumers" if users else ""
        node = users[0]
        if node.op in ("Conv", "Gemm") and (expand == 1 or node.op == "Gemm"):
            if node.inputs[0] is not tensor:
                return f"{node.op} {node.name!r} reads {tensor.name!r} as a parameter"
            return _make_pair(first, node, expand)
        reason = _through_reason(node, expand) or (
            None if node.inputs[0] is tensor else f"{node.op} {node.name!r} reads "
            f"{tensor.name!r} as a parameter")
        if reason:
            return reason
        if node.op == "Flatten":
            expand = _flatten_expand(node)
            if expand is None:
                return f"Flatten {node.name!r}: input shape unknown or axis != 1"
        via.append(node.name)
        tensor = node.outputs[0]


def _through_reason(node: gs.Node, expand: int) -> str | None:
    if expand != 1:
        return f"{node.op} {node.name!r} after Flatten (only a Gemm may follow)"
    if node.op in HOMOGENEOUS or node.op == "Flatten":
        if node.op == "PRelu" and np.asarray(getattr(node.inputs[1], "values", [0])).size != 1:
            return f"PRelu {node.name!r} has a per-channel slope"
        return None
    if node.op in CLIPPING:
        return (f"{node.op} {node.name!r} (e.g. ReLU6) is not positive-homogeneous: "
                "per-channel scaling would change its clip bound")
    return f"{node.op} {node.name!r} is not a per-channel positive-homogeneous op"


def _flatten_expand(node: gs.Node) -> int | None:
    shape = node.inputs[0].shape
    if shape is None or node.attrs.get("axis", 1) != 1 or len(shape) < 2:
        return None
    inner = shape[2:]  # the batch may be symbolic; the per-channel block must not be
    if not all(isinstance(d, (int, np.integer)) and d > 0 for d in inner):
        return None
    return int(np.prod(inner, dtype=np.int64))


def _make_pair(first: gs.Node, second: gs.Node, expand: int) -> Pair | str:
    reason = layer_reason(second)
    if reason:
        return f"next layer {second.name!r}: {reason}"
    if second.op == "Gemm" and second.attrs.get("transA", 0):
        return f"next layer {second.name!r}: Gemm with transA"
    channels = len(out_ranges(first))
    if len(in_ranges(second)) != channels * expand:
        return f"channel count mismatch between {first.name!r} and {second.name!r}"
    return Pair(first, second, expand)


# -- weight views -------------------------------------------------------------------------

def _gemm_bias(node: gs.Node) -> np.ndarray | None:
    """Gemm's C as a per-output-channel vector of length N, or None when it is not one."""
    c = np.asarray(node.inputs[2].values)
    w = np.asarray(node.inputs[1].values)
    n = w.shape[0] if node.attrs.get("transB", 0) else w.shape[1]
    if c.size == 1 or (c.size == n and c.shape[-1] == n):
        return np.broadcast_to(c.reshape(-1), (n,)).copy()
    return None


class LayerWeights:
    """A float64 working copy of a Conv/Gemm's weights, output channels first.

    Sweeps rescale this copy in place; `write` stores it back into the node's constants
    once, so float32 rounding happens a single time.
    """

    def __init__(self, node: gs.Node) -> None:
        self.node = node
        w = np.asarray(node.inputs[1].values)
        self.transposed = node.op == "Gemm" and not node.attrs.get("transB", 0)
        self.w = np.array(w.T if self.transposed else w, dtype=np.float64, order="C")
        self.group = node.attrs.get("group", 1) if node.op == "Conv" else 1
        self.b = None
        if len(node.inputs) > 2:
            bias = _gemm_bias(node) if node.op == "Gemm" else np.asarray(node.inputs[2].values)
            self.b = np.asarray(bias, np.float64).copy()

    def _grouped(self) -> np.ndarray:
        """View [group, out/group, in/group, rest] (a Gemm is one group with rest 1)."""
        o, i = self.w.shape[0], self.w.shape[1]
        return self.w.reshape(self.group, o // self.group, i, -1)

    def out_ranges(self) -> np.ndarray:
        """max|W| per output channel."""
        return np.abs(self.w.reshape(self.w.shape[0], -1)).max(axis=1)

    def in_ranges(self) -> np.ndarray:
        """max|W| per input channel (input feature, for Gemm)."""
        return np.abs(self._grouped()).max(axis=3).max(axis=1).reshape(-1)

    def scale_outputs(self, factor: np.ndarray) -> None:
        """Multiply output channel i (weights and bias) by factor[i]."""
        self.w *= factor.reshape((-1,) + (1,) * (self.w.ndim - 1))
        if self.b is not None:
            self.b *= factor

    def scale_inputs(self, factor: np.ndarray) -> None:
        """Multiply input channel (feature) i by factor[i]."""
        grouped = self._grouped()
        grouped *= factor.reshape(self.group, 1, -1, 1)

    def write(self) -> None:
        """Store the working copy back into the node's weight and bias constants."""
        weight = self.node.inputs[1]
        weight.values = (self.w.T if self.transposed else self.w).astype(weight.values.dtype)
        if self.b is not None:
            bias = self.node.inputs[2]
            bias.values = self.b.astype(bias.values.dtype)


def out_ranges(node: gs.Node) -> np.ndarray:
    """max|W| per output channel of a Conv/Gemm node."""
    return LayerWeights(node).out_ranges()


def in_ranges(node: gs.Node) -> np.ndarray:
    """max|W| per input channel (input feature, for Gemm) of a Conv/Gemm node."""
    return LayerWeights(node).in_ranges()


def _equalize_pair(first: LayerWeights, second: LayerWeights, expand: int) -> float:
    """One equalization step; returns max|log s| (0 when already equal)."""
    r1 = first.out_ranges()
    r2 = second.in_ranges().reshape(len(r1), expand).max(axis=1)
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    first.scale_outputs(1.0 / s)
    second.scale_inputs(np.repeat(s, expand))
    return float(np.max(np.abs(np.log(s)))) if len(s) else 0.0


def mean_spread(pairs: list[Pair]) -> float:
    """Mean over the pairs' first layers of max/min per-output-channel weight range.

    (Those are the channel ranges equalization evens out; the output ranges of a second
    layer only change through its input channels.)
    """
    layers = {id(p.first): p.first for p in pairs}.values()
    spreads = []
    for node in layers:
        r = out_ranges(node)
        r = r[r > 0]
        if len(r):
            spreads.append(float(r.max() / r.min()))
    return float(np.mean(spreads)) if spreads else 0.0
