"""Block-wise gradient reconstruction (BRECQ-style) of a compressed model against its teacher.

The closed-form re-fits (`passes.recon_stream`, `passes.sparsify.reconstruct`) fit one layer
at a time to its own (or its residual sum's) output. Here the layers of a *block* (a
residual block, a conv -> ReLU -> conv chain, an inverted-residual block: the nodes between
two tensors every path of the network runs through, grouped up to `max_convs` convs) are
optimised jointly: all their conv weights and biases are trained with Adam, in numpy, to
minimise the squared error of the block output (after its ReLU / ReLU6 / residual Add)
against the teacher's same tensor, with the student's own block input (so the error of the
earlier blocks is compensated). Masked weights (1xN blocks) get masked gradients and stay
exactly zero. Every `HOLDOUT`-th calibration sample is held out; the weights with the lowest
held-out error during training are kept, and a block keeps its old weights when training does
not lower that error.

    blocks = find_blocks(student)
    report = reconstruct_blocks(student, targets, feeds, masks={"conv": keep_bool_oihw})

`targets(tensor, limit)` returns the teacher's tensor on the first `limit` calibration samples
(all for None; NCHW, channels mapped to the student's), or None when it cannot (the block is
then skipped). A block trains on as many leading samples as fit in `BlockOptions.max_mb`, so
a large calibration set does not raise the memory of the blocks with large feature maps; one
training step holds at most `max_step_mb` (smaller mini-batches for large feature maps), one
block spends at most `max_tmacs` and all blocks together `max_total_tmacs` (fewer steps), so
the cost on other people's 224x224 or 640x640 models stays bounded.

The numpy layers (`passes.recon_nhwc`) work in NHWC: a conv is im2col + matmul (1x1
stride-1 convs a plain matmul, depthwise convs per-tap multiply-adds), its backward the
transposed products and a per-tap scatter (col2im).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.blas import blas_single_thread
from compiler.core.errors import GraphError
from compiler.core.ir import Model, const_value, is_const
from compiler.core.progress import track
from passes.recon import _clip_limits, _feed_dict, iter_tensors
from passes.recon_nhwc import Conv, clamp_backward

log = logging.getLogger(__name__)

SUPPORTED = ("Conv", "Relu", "Clip", "Add")
# Most nodes in one block: a residual or inverted-residual block has under 12; a chain of
# thousands of activations would otherwise join one block and cost each step its length.
MAX_NODES = 24
# Most convs in one block. Measured on the Fashion-MNIST rows of issue #22 (2,048 calibration
# images, docs/results.md): 3 (one residual / inverted-residual block) ResNet 1x4 0.69 pt,
# MobileNetV2 1x4 0.71; 6: 0.59 / 0.54; 9: 0.53 / 0.43; the whole network as one block:
# ResNet 1x4 0.71 (it overfits the calibration images as a fine-tuning would).
MAX_CONVS = 9
HOLDOUT = 5  # every 5th calibration sample is held out
# Adam steps per block (docs/results.md, issue #22). Read when `BlockOptions` is made, so
# the unit tests' conftest can lower it for the small models; the 10k tests use it as is.
STEPS = 800


# Multiply-accumulates one block's training may cost (forward and backward of every step;
# 3x the forward). Fashion-MNIST blocks need at most ~0.4 TMAC for the full 800 steps; a
# 224x224 MobileNetV2 block at batch 32 would need ~20 TMAC, an hour of numpy: such blocks
# train fewer steps (never fewer than MIN_STEPS, else they keep their closed-form weights).
MAX_TMACS = 1.0
# ... and all blocks of one model together: a block gets at most an equal share of what the
# blocks before it left. The Fashion-MNIST models need 2.0 / 1.5 TMAC in all; torchvision's
# EfficientNet-B0 has 17 blocks, which at 1 TMAC each kept `npuc prune --reconstruct` busy
# for over 20 minutes on 32 images.
MAX_TOTAL_TMACS = 4.0
MIN_STEPS = 100
# A block whose held-out error has not fallen below its closed-form weights' by this
# fraction of its steps stops training (it keeps those weights). On the field corpus with 32
# calibration images 3 of 6 blocks of torchvision's MobileNetV2 never improve and trained
# their whole schedule for nothing; a block that improves before then runs its whole schedule.
GIVE_UP = 0.5
MIN_SAMPLES = 64  # fewer than this (2 mini-batches) within max_mb: the block is not trained
# Smallest mini-batch a block trains with when one step of `batch` samples would exceed
# `max_step_mb` (a 640x640 detector's early blocks keep ~100 MB per sample for backward).
MIN_BATCH = 4
# Held-out relative squared error below which a block counts as matching its teacher already
# (float rounding of an untouched block: EfficientNet-B0's stem blocks start at ~1e-9).
MATCHED = 1e-6


def _steps() -> int:
    return STEPS


@dataclass
class BlockOptions:
    """Knobs of the block-wise reconstruction.

    Attributes:
        steps: Adam steps per block.
        batch: Calibration samples per step.
        lr: Step size relative to each weight tensor's RMS (cosine-decayed to 0).
        max_convs: Most convs grouped into one block.
        eval_every: Held-out evaluation interval (steps); the best weights are kept.
        seed: Seed of the mini-batch order.
        max_mb: Memory of one block's teacher output on the samples it trains on (its
            input and the im2col buffers are of the same order): a block trains on the
            leading samples that fit, and is not trained when fewer than `MIN_SAMPLES` do.
        max_tmacs: Most multiply-accumulates (10^12) one block's training may cost; a
            block that would need more trains proportionally fewer steps (at least
            `MIN_STEPS`, else it is not trained). Deterministic, unlike a time limit.
        max_total_tmacs: The same for all blocks together: each block may spend at most
            an equal share of what the blocks before it left.
        max_step_mb: Memory of one training step (the activations and im2col buffers the
            backward pass keeps, and their gradients): a block with large feature maps
            trains on smaller mini-batches (at least `MIN_BATCH`, else it is not trained).
    """

    steps: int = field(default_factory=_steps)
    batch: int = 32
    lr: float = 1e-2
    max_convs: int = MAX_CONVS
    eval_every: int = 25
    seed: int = 0
    max_mb: float = 256.0
    max_tmacs: float = MAX_TMACS
    max_total_tmacs: float = MAX_TOTAL_TMACS
    max_step_mb: float = 1024.0


@dataclass
class Block:
    """A subgraph trained as one unit.

    Attributes:
        input: The tensor the block reads (its only non-constant input).
        output: The tensor matched against the teacher.
        nodes: The block's nodes in topological order.
    """

    input: str
    output: str
    nodes: list[gs.Node] = field(default_factory=list)

    @property
    def convs(self) -> list[gs.Node]:
        """The block's Conv nodes."""
        return [n for n in self.nodes if n.op == "Conv"]


# ---------------------------------------------------------------- block discovery


def find_blocks(model: Model, max_convs: int = MAX_CONVS) -> list[Block]:
    """Blocks of `model`: runs of nodes between single-tensor cuts, up to `max_convs` convs.

    A cut is a point of the topological order where one tensor alone carries everything the
    rest of the network reads. Segments (the nodes between two cuts) are grouped greedily in
    order while the group holds at most `max_convs` convs; a segment without convs (e.g. the
    ReLU after a residual Add) joins the group before it, so a block ends after its
    activation. Segments with ops other than Conv / Relu / Clip / Add (or convs this module
    cannot train) end a group and are not trained.
    """
    graph = model.graph
    nodes = list(graph.nodes)
    consumers_after = _last_use(graph, nodes)
    inputs = [t.name for t in graph.inputs]
    live = set(inputs)
    cut_before = inputs[0] if len(inputs) == 1 else None
    segments: list[tuple[str, list[gs.Node], str]] = []
    current: list[gs.Node] = []
    for i, node in enumerate(nodes):
        current.append(node)
        live |= {t.name for t in node.outputs}
        live = {t for t in live if consumers_after.get(t, -1) > i}
        if len(live) == 1:
            cut = next(iter(live))
            if cut_before is not None:
                segments.append((cut_before, current, cut))
            cut_before, current = cut, []
    return _group(segments, max_convs)


def _last_use(graph: gs.Graph, nodes: list[gs.Node]) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for t in node.inputs:
            if not is_const(t):
                last[t.name] = i
    for t in graph.outputs:
        last[t.name] = len(nodes)
    return last


def _group(segments: list[tuple[str, list[gs.Node], str]], max_convs: int) -> list[Block]:
    blocks: list[Block] = []
    group: Block | None = None
    for start, nodes, end in segments:
        ok = all(_trainable(n) for n in nodes) and len(nodes) <= MAX_NODES
        convs = sum(n.op == "Conv" for n in nodes)
        if not ok:
            group = None
            continue
        if group is not None and len(group.nodes) + len(nodes) <= MAX_NODES \
                and (convs == 0 or len(group.convs) + convs <= max_convs):
            group.nodes += nodes
            group.output = end
            continue
        group = Block(start, end, list(nodes))
        blocks.append(group)
    return [b for b in blocks if b.convs]


def _trainable(node: gs.Node) -> bool:
    if node.op not in SUPPORTED:
        return False
    if node.op == "Conv":
        w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None or w.ndim != 4 or w.size == 0:
            return False
        if len(node.inputs) > 2 and node.inputs[2].name and const_value(node.inputs[2]) is None:
            return False
        g = int(node.attrs.get("group", 1))
        return g == 1 or (g == w.shape[0] and w.shape[1] == 1)
    if node.op == "Add":
        return not any(is_const(t) for t in node.inputs)
    if node.op == "Clip":
        return _clip_limits(node)[0] is not None
    return True


# ---------------------------------------------------------------- a block in numpy


class BlockNet:
    """A `Block` as numpy layers with trainable conv parameters."""

    def __init__(self, block: Block, in_hw: tuple[int, int],
                 masks: Mapping[str, np.ndarray] | None = None) -> None:
        self.block = block
        self.convs: dict[str, Conv] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.macs = 0  # per sample, forward
        hw = {block.input: in_hw}
        for node in block.nodes:
            src = next(t.name for t in node.inputs if not is_const(t))
            if node.op == "Conv":
                layer = Conv.of(node, hw[src])
                self.convs[node.name] = layer
                hw[node.outputs[0].name] = layer._out_hw(*hw[src])
                self.macs += int(np.prod(hw[node.outputs[0].name])) * layer.w.size
                if masks is not None and node.name in masks:
                    m = np.asarray(masks[node.name], bool).reshape(layer.w.shape)
                    self.masks[node.name] = m
                    layer.w *= m
            else:
                hw[node.outputs[0].name] = hw[src]
        self._clamps = {n.name: ((0.0, np.inf) if n.op == "Relu" else _clip_limits(n))
                        for n in block.nodes if n.op in ("Relu", "Clip")}

    def params(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Conv name -> (weights OIHW, bias), the live arrays."""
        return {k: (c.w, c.b) for k, c in self.convs.items()}

    def forward(self, x: np.ndarray, keep: bool = False) -> tuple[np.ndarray, dict]:
        """Block output (NHWC) of input `x` (NHWC); with `keep` what `backward` needs."""
        env = {self.block.input: x}
        saved: dict = {}
        for node in self.block.nodes:
            ins = [env[t.name] for t in node.inputs if not is_const(t)]
            if node.op == "Conv":
                y, s = self.convs[node.name].forward(ins[0])
                if keep:
                    saved[node.name] = s
            elif node.op == "Add":
                y = ins[0] + ins[1]
            else:
                lo, hi = self._clamps[node.name]
                y = np.clip(ins[0], lo, hi)
                if keep:
                    saved[node.name] = ins[0]
            env[node.outputs[0].name] = y
        return env[self.block.output], saved

    def backward(self, dout: np.ndarray, saved: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Conv name -> (dW, db) of the output gradient `dout` (masked where masked)."""
        grads: dict[str, np.ndarray] = {self.block.output: dout}
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for node in reversed(self.block.nodes):
            g = grads.pop(node.outputs[0].name, None)
            if g is None:
                continue
            srcs = [t.name for t in node.inputs if not is_const(t)]
            if node.op == "Conv":
                need = srcs[0] != self.block.input
                dx, dw, db = self.convs[node.name].backward(g, saved[node.name], need)
                if node.name in self.masks:
                    dw = dw * self.masks[node.name]
                out[node.name] = (dw, db)
                douts = [dx] if need else []
            elif node.op == "Add":
                douts = [g, g]
            else:
                lo, hi = self._clamps[node.name]
                douts = [clamp_backward(g, saved[node.name], lo, hi)]
            for name, d in zip(srcs, douts, strict=False):
                if name == self.block.input or d is None:
                    continue
                grads[name] = grads[name] + d if name in grads else d
        return out


# ---------------------------------------------------------------- training


def _sq_err(net: BlockNet, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    total = 0.0
    for s in range(0, len(x), batch):
        out, _ = net.forward(x[s:s + batch])
        total += float(np.square(out - y[s:s + batch], dtype=np.float64).sum())
    return total


def train_block(net: BlockNet, x: np.ndarray, y: np.ndarray, opts: BlockOptions) -> dict:
    """Adam on the block's conv parameters (in place): inputs/targets NHWC, all samples.

    Returns:
        {"error_before", "error_after"} (held-out relative squared error) and "kept".
    """
    held = np.arange(len(x)) % HOLDOUT == HOLDOUT - 1
    if held.sum() == 0 or held.all():
        held = np.zeros(len(x), bool)
    xt, yt = x[~held], y[~held]
    xh, yh = (x[held], y[held]) if held.any() else (xt, yt)
    scale = max(float(np.square(yh, dtype=np.float64).sum()), 1e-30)
    best_err = before = _sq_err(net, xh, yh, opts.batch) / scale
    if before < MATCHED:  # the block matches its teacher (compression did not touch it)
        return {"error_before": round(before, 6), "error_after": round(before, 6),
                "kept": False, "steps_run": 0}
    params = net.params()
    best = {k: (w.copy(), b.copy()) for k, (w, b) in params.items()}
    rates = {k: opts.lr * max(float(np.sqrt(np.mean(np.square(w)))), 1e-4)
             for k, (w, _) in params.items()}
    m = {k: (np.zeros_like(w), np.zeros_like(b)) for k, (w, b) in params.items()}
    v = {k: (np.zeros_like(w), np.zeros_like(b)) for k, (w, b) in params.items()}
    rng = np.random.default_rng(opts.seed)
    b1, b2, eps = 0.9, 0.999, 1e-12
    norm = 1.0 / max(float(np.square(yt, dtype=np.float64).sum()) / len(xt), 1e-30)
    step = 0
    for step in range(1, opts.steps + 1):
        idx = rng.choice(len(xt), min(opts.batch, len(xt)), replace=False)
        out, saved = net.forward(xt[idx], keep=True)
        grads = net.backward((2.0 * norm / len(idx)) * (out - yt[idx]), saved)
        lr_t = 0.5 * (1 + np.cos(np.pi * (step - 1) / opts.steps))
        for k, (w, b) in params.items():
            if k not in grads:
                continue
            for i, (p, g) in enumerate(zip((w, b), grads[k], strict=True)):
                mi, vi = m[k][i], v[k][i]
                mi *= b1
                mi += (1 - b1) * g
                vi *= b2
                vi += (1 - b2) * g * g
                mhat = mi / (1 - b1 ** step)
                vhat = vi / (1 - b2 ** step)
                p -= (rates[k] * lr_t * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)
            if k in net.masks:
                w *= net.masks[k]
        if step % opts.eval_every == 0 or step == opts.steps:
            err = _sq_err(net, xh, yh, opts.batch) / scale
            if err < best_err:
                best_err = err
                best = {k: (w.copy(), b.copy()) for k, (w, b) in params.items()}
            if best_err >= before and step >= opts.steps * GIVE_UP:
                break  # no held-out gain in half the schedule: keep the closed-form weights
    for k, (w, b) in params.items():
        w[...], b[...] = best[k]
    return {"error_before": round(before, 6), "error_after": round(best_err, 6),
            "kept": bool(best_err < before), "steps_run": step}


def reconstruct_blocks(student: Model, targets: Callable[[str, int | None], np.ndarray | None],
                       feeds, *,
                       masks: Mapping[str, np.ndarray] | None = None,
                       only: Collection[str] | None = None,
                       options: BlockOptions | None = None, batch_size: int = 32) -> dict:
    """Train each block of `student` (in place) to match the teacher's block outputs.

    Args:
        student: The compressed model (canonical: BatchNorm folded).
        targets: Tensor name -> the teacher's tensor on all calibration samples (NCHW,
            channels in the student's order), or None to skip the block.
        feeds: Calibration inputs.
        masks: Conv name -> bool array of its weight's shape (True: may be non-zero).
        only: Train only blocks holding one of these convs (None: every block).
        options: Steps, batch, learning rate, block size.
        batch_size: Samples per onnxruntime run.

    Returns:
        Report: per block its output tensor, convs and held-out errors, and the time.
    """
    opts = options or BlockOptions()
    start = time.perf_counter()
    rows = []
    blocks = [b for b in find_blocks(student, opts.max_convs)
              if only is None or any(c.name in only for c in b.convs)]
    with blas_single_thread():
        left = opts.max_total_tmacs
        for i, block in enumerate(track(blocks, "reconstruct (blocks)")):
            share = replace(opts, max_tmacs=min(opts.max_tmacs, left / (len(blocks) - i)))
            rows.append(_one_block(student, block, targets, feeds, masks, share, batch_size))
            left -= rows[-1].get("tmacs", 0.0)
    return {"method": "block", "blocks": rows, "time_s": round(time.perf_counter() - start, 3)}


def _one_block(student: Model, block: Block, targets, feeds, masks, opts: BlockOptions,
               batch_size: int) -> dict:
    info = {"output": block.output, "convs": [c.name for c in block.convs]}
    cap = int(opts.max_mb * 2**20)
    # A calibration set smaller than MIN_SAMPLES trains when all of it fits.
    need = min(MIN_SAMPLES, len(next(iter(_feed_dict(feeds).values()))))
    too_large = {**info, "skipped": f"block output over {opts.max_mb} MB for {need} samples"}
    limit = _sample_limit(student, block.output, cap)
    if limit is not None and limit < need:
        return too_large
    y = targets(block.output, limit)
    if y is None:
        return {**info, "skipped": "no teacher tensor"}
    if y.nbytes > cap:  # shape unknown before the run: keep the samples that fit
        limit = cap // max(y[:1].nbytes, 1)
        if limit < need:
            return too_large
        y = y[:limit].copy()
    x = teacher_tensors(student, [block.input], feeds, batch_size, limit=len(y))[block.input]
    if x.ndim != 4 or y.ndim != 4 or len(x) != len(y):
        return {**info, "skipped": "not a 4-D feature map"}
    info["samples"] = len(y)
    net = BlockNet(block, x.shape[2:], masks)
    x = _nhwc(x)
    y = _nhwc(y)
    out, saved = net.forward(x[:1], keep=True)
    if out.shape[1:] != y.shape[1:]:
        return {**info, "skipped": f"teacher shape {y.shape[1:]} != block {out.shape[1:]}"}
    # what backward keeps per sample, twice (its gradients are of the same size)
    sample_bytes = 2 * (_nbytes(saved) + out.nbytes)
    fit = int(opts.max_step_mb * 2**20 // max(sample_bytes, 1))
    if fit < min(opts.batch, MIN_BATCH):
        return {**info, "skipped": f"a training step over {opts.max_step_mb:g} MB for "
                                   f"{MIN_BATCH} samples"}
    if fit < opts.batch:
        info["batch"] = fit
        opts = replace(opts, batch=fit)
    per_step = 3 * min(opts.batch, len(x)) * net.macs
    steps = min(opts.steps, int(opts.max_tmacs * 1e12 // max(per_step, 1)))
    if steps < min(MIN_STEPS, opts.steps):
        return {**info, "skipped": f"training costs {per_step / 1e9:.1f} GMAC a step: "
                                   f"{MIN_STEPS} steps exceed {opts.max_tmacs:g} TMAC"}
    if steps < opts.steps:
        info["steps"] = steps
        opts = replace(opts, steps=steps)
    result = train_block(net, x, y, opts)
    result["tmacs"] = round(result["steps_run"] * per_step / 1e12, 6)
    if result["kept"]:
        for node in block.convs:
            conv = net.convs[node.name]
            write_conv(node, conv.w, conv.b)
    log.debug("block %s: held-out rel err %.5f -> %.5f", block.output,
              result["error_before"], result["error_after"])
    return {**info, **result}


def _nbytes(saved: Any) -> int:
    """Bytes of the arrays in `BlockNet.forward`'s saved state (nested tuples, dicts)."""
    if isinstance(saved, np.ndarray):
        return saved.nbytes
    if isinstance(saved, dict):
        return sum(_nbytes(v) for v in saved.values())
    if isinstance(saved, (tuple, list)):
        return sum(_nbytes(v) for v in saved)
    return 0


def write_conv(node: gs.Node, w: np.ndarray, b: np.ndarray) -> None:
    """Write weights and bias into a Conv node (in place; shared constants are not touched)."""
    old = node.inputs[1]
    if not isinstance(old, gs.Constant):
        raise GraphError(f"conv {node.name!r}: weights are not a constant")
    new_w = w.astype(np.asarray(old.values).dtype)
    if len(old.outputs) <= 1:
        old.values = new_w
    else:
        node.inputs[1] = gs.Constant(f"{old.name}_block", new_w)
    has_b = len(node.inputs) > 2 and node.inputs[2].name
    if has_b and isinstance(node.inputs[2], gs.Constant) and len(node.inputs[2].outputs) <= 1:
        bias = node.inputs[2]
        bias.values = b.reshape(np.shape(bias.values)).astype(np.asarray(bias.values).dtype)
    elif has_b:
        node.inputs[2] = gs.Constant(f"{node.name}.bias_block", b.astype(np.float32))
    else:
        node.inputs.append(gs.Constant(f"{node.name}.bias_block", b.astype(np.float32)))


def teacher_tensors(teacher: Model, names: Collection[str], feeds, batch_size: int = 32,
                    limit: int | None = None) -> dict[str, np.ndarray]:
    """The teacher's tensors `names` on the first `limit` calibration samples (None: all)."""
    names = list(dict.fromkeys(names))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    seen = 0
    for values in iter_tensors(teacher, names, feeds, batch_size, only=True):
        for n in names:
            parts[n].append(values[n] if limit is None else values[n][:limit - seen])
        seen += len(parts[names[0]][-1]) if names else 0
        if limit is not None and seen >= limit:
            break
    return {n: _join(p) for n, p in parts.items()}


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """One array from the batches, releasing each batch as it is copied."""
    if len(parts) == 1:
        return parts.pop()
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    start = 0
    while parts:
        part = parts.pop(0)
        out[start:start + len(part)] = part
        start += len(part)
    return out


def _nhwc(a: np.ndarray) -> np.ndarray:
    """float32 NHWC copy of an NCHW array (the caller drops the NCHW one)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1), np.float32)


def _sample_limit(model: Model, tensor: str, cap: int) -> int | None:
    """Samples of `tensor` (float32, static shape) that fit in `cap` bytes; None if unknown."""
    shape = getattr(model.graph.tensors().get(tensor), "shape", None)
    dims = list(shape[1:]) if shape else []
    if not dims or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
        return None
    return cap // (4 * int(np.prod(dims)))


def block_outputs(model: Model, max_convs: int = MAX_CONVS) -> list[str]:
    """The output tensors of `model`'s blocks (what `targets` will be asked for)."""
    return [b.output for b in find_blocks(model, max_convs)]


__all__ = ["Block", "BlockNet", "BlockOptions", "Conv", "block_outputs", "clamp_backward",
           "find_blocks", "reconstruct_blocks", "teacher_tensors",
           "train_block", "write_conv"]
