"""Masked reconstruction: re-fit each sparsified layer's surviving weights by least squares.

Layers are visited in graph order. For each one, the regressors are its inputs in the sparse
model as it is so far (earlier layers already re-fitted, so later ones compensate their
error) and the targets are the float teacher's outputs of the same layer; the rows come from
`passes.recon.collect_layer_io`. In 1xN every output channel of a block keeps the same input
columns, so `passes.recon.ridge_fit` solves one ridge problem per distinct mask column and
masked weights are not in the solve: zero blocks stay exactly zero. Weights are written back
into the original initializers so the metadata's names stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from compiler.core.errors import GraphError
from compiler.core.ir import Model, const_value, is_const
from compiler.core.progress import track
from compiler.core.sparsity import LayerMask
from passes.recon import (
    LayerIO,
    activation_bounds,
    censored_targets,
    collect_layer_tensors,
    collect_mapped_rows,
    refit_reason,
    residual_add,
    ridge_fit,
)
from passes.recon_block import BlockOptions, reconstruct_blocks, teacher_tensors
from passes.sparsify.criteria import element_mask, select_uniform, unit_scores
from passes.sparsify.layers import Layer, reaches, weight_layers
from passes.sparsify.obs import gradual_obs_keep

log = logging.getLogger(__name__)

ACT_ITERS = 2  # activation-aware re-fit rounds (measured: docs/results.md, issue #22)


@dataclass
class ReconOptions:
    """Knobs of the reconstruction.

    Attributes:
        rows: Output positions (regression rows) sampled per layer.
        ridge: Ridge strength relative to the mean diagonal of the input Gram matrix.
        seed: Seed of the position sampling.
        residual: Fit a layer feeding a residual Add to the block output.
        act_iters: Activation-aware re-fits after the plain one (`censored_targets`);
            0 fits the pre-activation output only.
    """

    rows: int = 8192
    ridge: float = 1e-3
    seed: int = 0
    residual: bool = True
    act_iters: int = ACT_ITERS


def reconstruct(student: Model, teacher: Model | Teacher, masks: dict[str, LayerMask],
                feeds: Mapping[str, np.ndarray], options: ReconOptions | None = None,
                select: Callable[[Layer, np.ndarray | None, np.ndarray | None], LayerMask]
                | None = None, pending: Sequence[str] = ()) -> dict[str, dict]:
    """Re-fit the masked layers of `student` (in place) to match `teacher`'s layer outputs.

    Args:
        student: The sparse model (same node names and shapes as the teacher).
        teacher: The model before masking (after any reordering), or a `Teacher` that
            also holds the uncompressed float model.
        masks: Node name -> block mask of each sparsified layer; masks chosen here are
            added to it.
        feeds: Calibration inputs, batch on axis 0.
        options: Rows, ridge strength, seed.
        select: For data-dependent criteria (`obs`): (layer, inputs, targets) -> mask,
            called for the layers in `pending` when their turn comes, so the choice sees
            the inputs the earlier re-fits produced (inputs/targets are None when the layer
            cannot be re-fitted).
        pending: Layers whose mask `select` chooses; their weights are masked here.

    Returns:
        Node name -> {"error_before", "error_after"} (relative L2 error of the layer output
        on held-out sampled rows), or {"skipped": reason}.
    """
    opts = options or ReconOptions()
    report = {}
    todo = set(masks) | set(pending)
    for layer in track([x for x in weight_layers(student) if x.name in todo], "reconstruct"):
        reason = refit_reason(layer.node)
        io = None if reason else layer_io(student, teacher, layer, feeds, opts)
        if layer.name in pending and select is not None:
            masks[layer.name] = select(layer, io and io.x, io and io.y)
            mask_weights(layer, masks[layer.name])
        if reason:
            report[layer.name] = {"skipped": reason}
            continue
        report[layer.name] = refit_layer(layer, masks[layer.name], io.x, io.y, opts.ridge,
                                         act=io, iters=opts.act_iters)
    return report


def layer_io(student: Model, teacher: Model | Teacher, layer: Layer, feeds,
             opts: ReconOptions) -> LayerIO:
    """Regression rows of one layer: one run of the student, one of the teacher.

    Regressors are the layer's input patches in the student. Targets are the teacher's
    layer output, except for a layer feeding `Add(layer, shortcut)` (with `opts.residual`):
    there they are `teacher(Add) - student(shortcut)`, so the sum matches the float model
    even though the shortcut carries the error of every earlier block, which nothing else
    compensates.
    """
    kw = {"max_rows": opts.rows, "seed": opts.seed}
    found = residual_add(layer.node, student.graph) if opts.residual else None
    x_specs = {"x": (layer.node.inputs[0].name, False)}
    y_specs = {"y": (layer.node.outputs[0].name, True)}
    if found is not None:
        add, other = found
        x_specs["shortcut"] = (other.name, True)
        y_specs = {"y": (add.outputs[0].name, True)}
    xs = collect_layer_tensors(student, layer.name, x_specs, feeds, **kw)
    y = None
    if isinstance(teacher, Teacher):
        y = teacher.float_rows(layer, y_specs["y"][0], feeds, opts)
        teacher = teacher.model
    if y is None:
        y = collect_layer_tensors(teacher, layer.name, y_specs, feeds, **kw)["y"]
    y = y - xs["shortcut"] if found is not None else y
    bounds = activation_bounds(layer.node, student.graph) if opts.act_iters else None
    if bounds is not None and bounds.tensor != y_specs["y"][0]:
        bounds = None  # the activation reads a residual sum this fit does not target
    return LayerIO(layer.name, xs["x"], y, xs.get("shortcut"), bounds)


@dataclass
class Teacher:
    """The models a re-fit matches: the float model where it can, else the input model.

    Attributes:
        model: The input model before masking (same widths as the student).
        float_model: The uncompressed float model, or None. A pruned student's tensors are
            narrower: `channels` names the float channel behind each of its channels.
        channels: Student tensor -> float channel per position (pruning and reordering
            composed); a tensor absent here has the float channels in the float order.
    """

    model: Model
    float_model: Model | None = None
    channels: Mapping[str, np.ndarray] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    _names: set[str] | None = field(default=None, init=False, repr=False)

    def float_rows(self, layer: Layer, tensor: str, feeds,
                   opts: ReconOptions) -> np.ndarray | None:
        """Rows of the float model's `tensor` matching the student layer, or None.

        None when there is no float model, it lacks the tensor, or its channels cannot be
        matched to the student's (the input model is the teacher then).
        """
        if self.float_model is None or tensor not in self._float_tensors():
            return None
        rows = collect_mapped_rows(self.float_model, layer.node, tensor,
                                   self.channels.get(tensor), feeds, max_rows=opts.rows,
                                   seed=opts.seed)
        if rows is not None:
            self.used.append(layer.name)
        return rows

    def full_tensor(self, tensor: str, feeds, limit: int | None = None) -> np.ndarray | None:
        """The teacher's `tensor` on the first `limit` calibration samples, student's channels.

        `limit` None: all samples. The float model's when it has the tensor and its channels
        map onto the student's (`channels`), else the input model's; None when neither has it.
        """
        if self.float_model is not None and tensor in self._float_tensors():
            value = teacher_tensors(self.float_model, [tensor], feeds, limit=limit)[tensor]
            pos = self.channels.get(tensor)
            if pos is not None and value.ndim > 1:
                fits = not pos.size or pos.max() < value.shape[1]
                value = np.take(value, pos, axis=1) if fits else None
            width = _width(self.model, tensor)
            if value is not None and (width is None or value.shape[1] == width):
                return value
        try:
            return teacher_tensors(self.model, [tensor], feeds, limit=limit)[tensor]
        except GraphError:
            return None

    def _float_tensors(self) -> set[str]:
        if self._names is None:
            self._names = {n for n, t in self.float_model.graph.tensors().items()
                           if not is_const(t)}
        return self._names


def _width(model: Model, tensor: str) -> int | None:
    t = model.graph.tensors().get(tensor)
    shape = getattr(t, "shape", None)
    if not shape or len(shape) < 2 or not isinstance(shape[1], (int, np.integer)):
        return None
    return int(shape[1])


def block_refit(student: Model, teacher: Teacher, masks: Mapping[str, LayerMask], feeds,
                options: BlockOptions | None = None) -> dict:
    """Block-wise gradient reconstruction (`passes.recon_block`) after the layer re-fits.

    The sparsified convs keep their 1xN masks (masked gradients: zero blocks stay zero);
    the other convs of a block train freely. Targets are the teacher's block outputs (the
    float model's, channel-mapped, where there is one).
    """
    by_name = {n.name: n for n in student.graph.nodes}
    keep = {}
    for name, mask in masks.items():
        node = by_name.get(name)
        if node is None or node.op != "Conv" or mask.mask.all():
            continue
        shape = const_value(node.inputs[1]).shape
        keep[name] = element_mask(mask.mask, mask.block, shape)
    trained = set(masks)
    return reconstruct_blocks(student, lambda t, n: teacher.full_tensor(t, feeds, n), feeds,
                              masks=keep, only=trained, options=options)


def mask_weights(layer: Layer, mask: LayerMask) -> None:
    """Zero the masked blocks of the layer's weight, in place."""
    w = layer.logical()
    layer.store(np.where(element_mask(mask.mask, mask.block, w.shape), w, 0).astype(w.dtype))


def obs_mask(layer: Layer, x: np.ndarray | None, y: np.ndarray | None, block: int,
             sparsity: float) -> LayerMask:
    """The `obs` block mask of one layer at uniform `sparsity` (see `obs.py`).

    The saliencies come from the layer's inputs in the sparse model so far and the
    teacher's outputs; a layer without rows (cannot be re-fitted) falls back to block L1
    norms.
    """
    if x is None:
        keep = select_uniform(unit_scores(layer.logical(), block, "l1"), sparsity)
    else:
        x, y = (x, y) if x.ndim == 3 else (x[None], y[None])
        keep = gradual_obs_keep(x, y, block, layer.cin, sparsity,
                                centre=bias_tensor(layer) is not None)
    return LayerMask(layer.name, layer.weight.name, block, keep, layer.layout,
                     float(1.0 - keep.mean()))


def dense_followers(layers: Sequence[Layer], sparse: Iterable[str]) -> dict[str, LayerMask]:
    """All-ones masks for the dense layers downstream of a sparsified one.

    Re-fitting them too (classifier, depthwise convs, excluded layers) lets them absorb the
    error the sparsified layers leave: on the Fashion-MNIST ResNet at 1x4 / 50 % this took the
    float top-1 drop from 1.55 to 0.9 points. Their weights stay dense; they are not recorded
    as sparsified.
    """
    sparse = set(sparse)
    out = {}
    for layer in layers:
        if layer.name not in sparse and reaches(layer.node, sparse, upstream=True):
            out[layer.name] = LayerMask(layer.name, layer.weight.name, 1,
                                        np.ones((layer.cout, layer.cin), bool), layer.layout)
    return out


def refit_layer(layer: Layer, mask: LayerMask, x: np.ndarray, y: np.ndarray,
                ridge: float, act: LayerIO | None = None, iters: int = 0) -> dict[str, float]:
    """Masked ridge fit of one layer's weights (and per-channel bias) on rows (x, y).

    Args:
        layer: The layer (weights rewritten in place).
        mask: Its block mask.
        x: Regressors `[G, P, Cin/G * K]` (or `[P, D]` for one group).
        y: Targets `[G, P, Cout/G]` (or `[P, Cout]`).
        ridge: Relative ridge strength.
        act: Rows whose `bounds` / `offset` describe the activation after the layer (with
            `iters` > 0 the fit then matches the activated output, see
            `passes.recon.censored_targets`); None: the pre-activation output.
        iters: Activation-aware re-fits after the plain one.

    Every fifth row is held out to pick the ridge strength (`ridge` times 1, 10, 100 or
    1000) and to decide whether to keep the fit at all: a layer with many weights and few
    rows (a classifier fitted on a few hundred images) would otherwise overfit. The chosen
    fit is then redone on all rows.
    """
    x, y = (x, y) if x.ndim == 3 else (x[None], y[None])
    w0 = layer.logical()
    keep = np.ascontiguousarray(element_mask(mask.mask, mask.block, w0.shape))
    keep = keep.reshape(w0.shape[0], -1)
    w_old = np.where(keep, w0.reshape(w0.shape[0], -1), 0)
    bias = bias_tensor(layer)
    b_old = None if bias is None else np.asarray(bias.values).reshape(-1)
    val = np.arange(x.shape[1]) % 5 == 4
    before = _rel_error(x[:, val], y[:, val], w_old, b_old)
    tried = {}
    for lam in (ridge * 10.0 ** k for k in range(4)):
        w_try, b_try = _fit_groups(x[:, ~val], y[:, ~val], keep, b_old is not None, lam)
        tried[lam] = _rel_error(x[:, val], y[:, val], w_try, b_try)
    best = min(tried, key=tried.get)
    if tried[best] >= before:
        log.info("%s: re-fit did not lower the held-out error (%.4g >= %.4g), kept",
                 layer.name, tried[best], before)
        return {"error_before": before, "error_after": before}
    w_new, b_new = _fit_groups(x, y, keep, b_old is not None, best)
    if act is not None and act.bounds is not None and iters > 0:
        w_new, b_new = _act_refit(x, y, keep, (w_old, b_old), (w_new, b_new), best, act,
                                  iters, val)
    layer.store(w_new.reshape(w0.shape))
    if bias is not None:
        bias.values = b_new.reshape(np.shape(bias.values)).astype(bias.values.dtype)
    return {"error_before": before, "error_after": tried[best], "ridge": best}


def _act_refit(x: np.ndarray, y: np.ndarray, keep: np.ndarray, old: tuple, plain: tuple,
               ridge: float, act: LayerIO, iters: int,
               val: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Activation-aware re-fit: `iters` rounds of `censored_targets` then least squares.

    Decided on the held-out rows like the plain fit: the rounds run on the other rows, and
    the result is redone on all rows only when it lowers the held-out error after the
    activation (else the plain fit is returned).
    """
    off = np.zeros_like(y) if act.offset is None else act.offset
    with_bias = old[1] is not None

    def rounds(rows: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple:
        for _ in range(iters):
            pred = _predict(x[:, rows], w, b)
            target = censored_targets(y[:, rows], pred, off[:, rows], act.bounds)
            w, b = _fit_groups(x[:, rows], target, keep, with_bias, ridge)
        return w, b

    train = ~val
    w_t, b_t = _fit_groups(x[:, train], y[:, train], keep, with_bias, ridge)
    e_plain = _act_error(x[:, val], y[:, val], off[:, val], w_t, b_t, act.bounds)
    w_a, b_a = rounds(train, w_t, b_t)
    e_act = _act_error(x[:, val], y[:, val], off[:, val], w_a, b_a, act.bounds)
    if e_act >= e_plain:
        return plain
    return rounds(np.ones(len(val), bool), *plain)


def _predict(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """`[G, P, Cout/G]` layer outputs of rows `x` for weights `[Cout, D]`."""
    per = w.shape[0] // len(x)
    out = np.stack([x[g] @ w[g * per:(g + 1) * per].T for g in range(len(x))])
    if b is not None:
        out = out + b.reshape(len(x), 1, per)
    return out.astype(np.float32)


def _act_error(x: np.ndarray, y: np.ndarray, off: np.ndarray, w: np.ndarray,
               b: np.ndarray | None, bounds) -> float:
    """Squared error after the activation: `act(pred + off)` against `act(y + off)`."""
    pred = _predict(x, w, b)
    lo, hi = bounds.lo, bounds.hi
    return float(np.square(np.clip(pred + off, lo, hi) - np.clip(y + off, lo, hi),
                           dtype=np.float64).sum())


def _fit_groups(x: np.ndarray, y: np.ndarray, keep: np.ndarray, with_bias: bool,
                ridge: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Masked ridge fit of each conv group: weights `[Cout, D]` and bias `[Cout]` or None."""
    per = keep.shape[0] // len(x)
    ws, bs = [], []
    for g in range(len(x)):
        w, b = ridge_fit(x[g], y[g], ridge, mask=keep[g * per:(g + 1) * per].T,
                         fit_intercept=with_bias)
        ws.append(w.T)
        bs.append(b)
    return np.concatenate(ws), (np.concatenate(bs) if with_bias else None)


def bias_tensor(layer: Layer):
    """The layer's own per-output-channel bias constant, or None."""
    node = layer.node
    if node.op not in ("Conv", "Gemm") or len(node.inputs) <= 2:
        return None
    b = node.inputs[2]
    if not is_const(b) or const_value(b).size != layer.cout or len(b.outputs) > 1:
        return None
    return b


def _rel_error(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> float:
    """Relative L2 error of the layer output on rows (x, y)."""
    scale = float(np.linalg.norm(np.asarray(y, np.float64))) or 1.0
    return float(np.sqrt(_sq_error(x, y, w, b))) / scale


def _sq_error(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> float:
    """Summed squared error over groups of `x[g] @ w_g.T + b_g` against `y[g]`."""
    per = w.shape[0] // len(x)
    total = 0.0
    for g in range(len(x)):
        pred = np.asarray(x[g], np.float64) @ np.asarray(w[g * per:(g + 1) * per], np.float64).T
        if b is not None:
            pred = pred + b[g * per:(g + 1) * per]
        total += float(np.square(pred - y[g]).sum())
    return total
