"""Post-training layer reconstruction: collect a layer's inputs/outputs, re-fit by ridge regression.

The float model acts as the teacher: a compressed layer's weights are re-fitted so that, on
calibration data, its output (pre-activation, since BatchNorm is folded into the conv) matches
the teacher's output of the same layer. Channel pruning and 1xN sparsification both use it:

    io = collect_layer_io(student, ["layer1.0.conv2"], feeds, teacher=original)
    w, b = fit_layer(io["layer1.0.conv2"], lam=1e-3, fit_intercept=True)
    set_layer_weights(student, "layer1.0.conv2", w, b)

Rows of the regression problem are sampled output positions (a conv output pixel is one row,
its receptive-field patch the regressors), so memory stays bounded on large feature maps. A
grouped conv is `G` independent problems; arrays carry the group on axis 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.blas import blas_single_thread
from compiler.core.errors import GraphError
from compiler.core.ir import Model, const_value, is_const, is_graph_output
from compiler.core.numerics import session

REFITTABLE = ("Conv", "Gemm", "MatMul")
# onnxruntime intra-op threads for calibration runs (0: all cores); worker processes set 1.
ORT_THREADS = 0


@dataclass
class LayerIO:
    """Regression data of one layer.

    Attributes:
        node: The node name.
        x: Regressors [G, n, k] (patches of the student's input, per group).
        y: Targets [G, n, m] (the teacher's output at the same positions, per group).
        offset: What is added to the layer output before its activation (a residual
            shortcut, rows like `y`), or None.
        bounds: The activation's clamp (see `activation_bounds`), or None.
    """

    node: str
    x: np.ndarray
    y: np.ndarray
    offset: np.ndarray | None = None
    bounds: Bounds | None = None


def refit_reason(node: gs.Node) -> str | None:
    """Why `node`'s weights cannot be re-fitted by `fit_layer`, or None when they can."""
    if node.op not in REFITTABLE:
        return f"{node.op} has no weights to re-fit"
    if const_value(node.inputs[1]) is None:
        return "weights are not a constant"
    w = const_value(node.inputs[1])
    if w.size == 0:
        return f"empty weight (shape {tuple(w.shape)}): nothing to re-fit"
    if node.op == "Conv" and w.ndim != 4:
        return f"only 2-D convolutions are re-fitted (weight rank {w.ndim})"
    if node.op == "Gemm" and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0
                              or node.attrs.get("beta", 1.0) != 1.0):
        return "Gemm with transA/alpha/beta is not re-fitted"
    if node.op == "MatMul" and w.ndim != 2:
        return "MatMul with a batched weight is not re-fitted"
    return None


NOT_INT8 = "runs in float on the CPU (not quantized)"


def split_layers(model: Model, reason_of: Callable[[gs.Node], str | None],
                 only: Collection[str] | None = None) -> tuple[list[gs.Node], dict[str, str]]:
    """Conv/Gemm/MatMul nodes `reason_of` accepts, and {name: reason} for the others.

    With `only` (e.g. the layers that will run in int8), any other layer is skipped too.
    """
    layers, skipped = [], {}
    for node in model.graph.nodes:
        if node.op not in REFITTABLE:
            continue
        reason = NOT_INT8 if only is not None and node.name not in only else reason_of(node)
        if reason:
            skipped[node.name] = reason
        else:
            layers.append(node)
    return layers, skipped


def _feed_dict(feeds) -> Mapping[str, np.ndarray]:
    return feeds.arrays if hasattr(feeds, "arrays") else feeds


def iter_tensors(model: Model, names: Sequence[str], feeds, batch_size: int = 16, *,
                 only: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Run `model` batch by batch, yielding the named (intermediate) tensors of each batch.

    Args:
        model: The model (not modified: intermediates are exposed on a copy).
        names: Tensor names to expose.
        feeds: A dict of input arrays with the batch on axis 0, or a `compiler.core.feeds.Feeds`.
        batch_size: Samples per onnxruntime run.
        only: Make the named tensors the only outputs, so the nodes after them do not run
            (an early layer's input costs a fraction of a whole run).
    """
    exposed = model.copy()
    tensors = exposed.graph.tensors()
    missing = [n for n in names if n not in tensors]
    if missing:
        raise GraphError(f"tensors {missing[:3]} are not in the model")
    inputs = {t.name for t in exposed.graph.inputs}
    fetch = [n for n in dict.fromkeys(names) if n not in inputs]
    if only:
        exposed.graph.outputs = []
    present = {t.name for t in exposed.graph.outputs}
    for name in fetch:
        if name not in present:
            tensors[name].dtype = tensors[name].dtype or np.float32
            exposed.graph.outputs.append(tensors[name])
    if only:
        exposed.graph.cleanup()
    sess = session(exposed, threads=ORT_THREADS) if fetch else None
    arrays = _feed_dict(feeds)
    batch_size = effective_batch(model, batch_size)
    total = len(next(iter(arrays.values())))
    for start in range(0, total, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
        values = dict(zip(fetch, sess.run(fetch, batch), strict=True)) if sess else {}
        yield {n: batch[n] if n in inputs else values[n] for n in names}


def effective_batch(model: Model, batch_size: int) -> int:
    """`batch_size`, or the model's batch when its inputs have a fixed batch dimension."""
    shape = model.graph.inputs[0].shape if model.graph.inputs else None
    if shape and isinstance(shape[0], (int, np.integer)) and shape[0] > 0:
        return int(shape[0])
    return batch_size


def collect_layer_io(model: Model, layers: Sequence[str], feeds, *, teacher: Model | None = None,
                     max_rows: int = 4096, batch_size: int = 16,
                     seed: int = 0) -> dict[str, LayerIO]:
    """Regression rows (input patches, outputs) of each layer on calibration data.

    Args:
        model: The student model whose layer inputs are the regressors.
        layers: Names of Conv / Gemm / MatMul nodes (see `refit_reason`).
        feeds: Calibration inputs (dict of arrays or `Feeds`).
        teacher: Model whose same-named layers give the targets (default: `model` itself).
            Output positions sampled are identical in both, so they must have equal
            spatial shapes (channel counts may differ).
        max_rows: Rows kept per layer (spread evenly over batches).
        batch_size: Samples per onnxruntime run.
        seed: Seed of the position sampling.

    Returns:
        Layer name -> `LayerIO`.
    """
    xs = collect_rows(model, layers, feeds, max_rows=max_rows, batch_size=batch_size,
                      seed=seed, outputs=False)
    ys = collect_rows(teacher or model, layers, feeds, max_rows=max_rows,
                      batch_size=batch_size, seed=seed, outputs=True)
    return {name: LayerIO(name, xs[name], ys[name]) for name in layers}


def collect_rows(model: Model, layers: Sequence[str], feeds, *, max_rows: int = 4096,
                 batch_size: int = 16, seed: int = 0, outputs: bool = False,
                 reason: Callable[[gs.Node], str | None] = refit_reason,
                 ) -> dict[str, np.ndarray]:
    """Only the regressors (`outputs=False`) or only the targets of `collect_layer_io`.

    Calls with equal `feeds`, `max_rows`, `batch_size` and `seed` sample the same positions,
    so inputs of one model can be paired with outputs of another. `reason` says why a layer
    cannot be used (default: `refit_reason`; weight rounding ignores a Gemm's beta).
    """
    nodes = _nodes_by_name(model, layers, reason)
    batch_size, per_batch = _sampling(model, feeds, max_rows, batch_size)
    return _rows_from(model, nodes, feeds, batch_size, per_batch, seed, use_output=outputs)


def collect_layer_tensors(model: Model, layer: str, specs: Mapping[str, tuple[str, bool]],
                          feeds, *, max_rows: int = 4096, batch_size: int = 16,
                          seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of several tensors at one layer's sampled positions, from a single run of `model`.

    Args:
        model: The model to run.
        layer: The layer whose output positions are sampled (as in `collect_rows`).
        specs: Key -> (tensor name, is_output). `is_output=False` turns the tensor into the
            layer's input patches; `True` reads it like the layer's output, so it must have
            the output's shape (e.g. the other operand of a residual Add).
        feeds: Calibration inputs.
        max_rows: Rows kept (spread evenly over batches).
        batch_size: Samples per onnxruntime run.
        seed: Seed of the position sampling (same positions as `collect_rows`).

    Returns:
        Key -> rows `[G, n, k]`.
    """
    node = _nodes_by_name(model, [layer])[layer]
    batch_size, per_batch = _sampling(model, feeds, max_rows, batch_size)
    shape = _out_shape_hint(node)
    names = list(dict.fromkeys(tensor for tensor, _ in specs.values()))
    parts: dict[str, list[np.ndarray]] = {key: [] for key in specs}
    # only the requested tensors are outputs: the nodes after them do not run
    for b, values in enumerate(iter_tensors(model, names, feeds, batch_size, only=True)):
        for key, (tensor, is_output) in specs.items():
            rng = np.random.default_rng([seed, zlib.crc32(layer.encode()), b])
            parts[key].append(layer_rows(node, values[tensor], per_batch, rng, is_output, shape))
    return {key: np.concatenate(p, axis=1) for key, p in parts.items()}


def _sampling(model: Model, feeds, max_rows: int, batch_size: int) -> tuple[int, int]:
    """(samples per run, rows drawn per run) so that about `max_rows` rows are kept."""
    batch_size = effective_batch(model, batch_size)
    n_samples = len(next(iter(_feed_dict(feeds).values())))
    return batch_size, max(1, -(-max_rows // max(1, -(-n_samples // batch_size))))


def _nodes_by_name(model: Model, names: Sequence[str],
                   reason_of: Callable[[gs.Node], str | None] = refit_reason,
                   ) -> dict[str, gs.Node]:
    by_name = {n.name: n for n in model.graph.nodes}
    out = {}
    for name in names:
        node = by_name.get(name)
        if node is None:
            raise GraphError(f"layer {name!r} is not in the model")
        reason = reason_of(node)
        if reason:
            raise GraphError(f"layer {name!r} cannot be re-fitted: {reason}")
        out[name] = node
    return out


def _rows_from(model: Model, nodes: dict[str, gs.Node], feeds, batch_size: int, per_batch: int,
               seed: int, *, use_output: bool) -> dict[str, np.ndarray]:
    tensor_of = {name: (n.outputs[0] if use_output else n.inputs[0]).name
                 for name, n in nodes.items()}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in nodes}
    shapes = {name: _out_shape_hint(n) for name, n in nodes.items()}
    for b, values in enumerate(iter_tensors(model, list(dict.fromkeys(tensor_of.values())),
                                            feeds, batch_size)):
        for name, node in nodes.items():
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), b])
            value = values[tensor_of[name]]
            parts[name].append(layer_rows(node, value, per_batch, rng, use_output,
                                          shapes[name]))
    return {name: np.concatenate(p, axis=1) for name, p in parts.items()}


def _out_shape_hint(node: gs.Node) -> tuple | None:
    shape = node.outputs[0].shape
    return tuple(shape) if shape is not None else None


def layer_rows(node: gs.Node, value: np.ndarray, rows: int, rng: np.random.Generator,
               is_output: bool, out_shape: tuple | None = None) -> np.ndarray:
    """Turn one batch of a layer's input (or output) into regression rows [G, n, k].

    Positions are drawn from `rng` over the output grid, so an input and an output drawn
    with equally seeded generators line up row for row.
    """
    if node.op != "Conv":
        flat = value.reshape(-1, value.shape[-1])
        idx = _choose(rng, len(flat), rows)
        return flat[idx][None].astype(np.float32)
    group = int(node.attrs.get("group", 1))
    if is_output:
        b, oh, ow = _positions(rng, value.shape[0], value.shape[2], value.shape[3], rows)
        y = value[b, :, oh, ow]
        return y.reshape(len(b), group, -1).transpose(1, 0, 2)
    return _conv_patches(node, value, rng, rows, out_shape, group)


def _choose(rng: np.random.Generator, total: int, rows: int) -> np.ndarray:
    if total <= rows:
        return np.arange(total)
    return np.sort(rng.choice(total, rows, replace=False))


def _positions(rng: np.random.Generator, n: int, h: int, w: int,
               rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = _choose(rng, n * h * w, rows)
    return idx // (h * w), (idx // w) % h, idx % w


def conv_geometry(node: gs.Node, in_hw: Sequence[int], kernel: Sequence[int],
                  ) -> tuple[list[int], list[int], list[int], list[int]]:
    """(strides, dilations, pads [begins..., ends...], output sizes) of a Conv, any rank.

    `in_hw` and `kernel` are the spatial input sizes and kernel (2 for a 2-D Conv: pads are
    [top, left, bottom, right]); auto_pad SAME_UPPER/SAME_LOWER/VALID is resolved.
    """
    n = len(kernel)
    strides = list(node.attrs.get("strides") or [1] * n)
    dil = list(node.attrs.get("dilations") or [1] * n)
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = list(node.attrs.get("pads") or [0] * 2 * n)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * n
        for i in range(n):
            out = -(-in_hw[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1 - in_hw[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * 2 * n
    out_hw = [(in_hw[i] + pads[i] + pads[i + n] - dil[i] * (kernel[i] - 1) - 1) // strides[i] + 1
              for i in range(n)]
    return strides, dil, pads, out_hw


def _conv_patches(node: gs.Node, x: np.ndarray, rng: np.random.Generator, rows: int,
                  out_shape: tuple | None, group: int) -> np.ndarray:
    kh, kw = const_value(node.inputs[1]).shape[2:]
    strides, dil, pads, out_hw = conv_geometry(node, x.shape[2:], (kh, kw))
    b, oh, ow = _positions(rng, x.shape[0], out_hw[0], out_hw[1], rows)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ih = (oh * strides[0])[:, None, None, None] + (np.arange(kh) * dil[0])[None, None, :, None]
    iw = (ow * strides[1])[:, None, None, None] + (np.arange(kw) * dil[1])[None, None, None, :]
    ch = np.arange(x.shape[1])[None, :, None, None]
    patches = xp[b[:, None, None, None], ch, ih, iw]  # [n, C, kh, kw]
    n = len(b)
    return patches.reshape(n, group, -1).transpose(1, 0, 2).astype(np.float32)


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float = 1e-3, mask: np.ndarray | None = None,
              fit_intercept: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Solve min_W ||X W + b - Y||^2 + lam' ||W||^2 in float64.

    Args:
        x: Regressors [n, k].
        y: Targets [n, m].
        lam: Ridge strength relative to the mean diagonal of X^T X (scale-free).
        mask: Optional bool [k, m]: True where W may be non-zero; entries outside stay 0
            (masked reconstruction, e.g. 1xN sparsity keeps zero blocks zero).
        fit_intercept: Also fit a bias b [m] (centres X and Y first).

    Returns:
        (W [k, m] float32, b [m] float32 or None).
    """
    with blas_single_thread():
        return _ridge(x, y, lam, mask, fit_intercept)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float, mask: np.ndarray | None,
           fit_intercept: bool) -> tuple[np.ndarray, np.ndarray | None]:
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x_mean = x64.mean(0) if fit_intercept else np.zeros(x64.shape[1])
    y_mean = y64.mean(0) if fit_intercept else np.zeros(y64.shape[1])
    xc, yc = x64 - x_mean, y64 - y_mean
    gram, cross = xc.T @ xc, xc.T @ yc
    reg = lam * max(float(np.mean(np.diag(gram))), 1e-12)
    if mask is None:
        w = _solve(gram, cross, reg)
    else:
        w = _solve_masked(gram, cross, reg, np.asarray(mask, bool))
    bias = (y_mean - x_mean @ w).astype(np.float32) if fit_intercept else None
    return w.astype(np.float32), bias


def _solve(gram: np.ndarray, cross: np.ndarray, reg: float) -> np.ndarray:
    a = gram + reg * np.eye(len(gram))
    try:
        return np.linalg.solve(a, cross)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, cross, rcond=None)[0]


def _solve_masked(gram: np.ndarray, cross: np.ndarray, reg: float,
                  mask: np.ndarray) -> np.ndarray:
    if mask.shape != cross.shape:
        raise GraphError(f"mask shape {mask.shape} does not match weights {cross.shape}")
    if mask.all():
        return _solve(gram, cross, reg)
    w = np.zeros_like(cross)
    if mask.shape[1] == 1:  # one output (a depthwise channel): no patterns to group
        free = np.flatnonzero(mask[:, 0])
        if free.size:
            w[free] = _solve(gram[np.ix_(free, free)], cross[free], reg)
        return w
    # Columns sharing one sparsity pattern (e.g. the N outputs of a 1xN block) share a solve.
    patterns, inverse = np.unique(mask.T, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols, free = np.flatnonzero(inverse.ravel() == p), np.flatnonzero(pattern)
        if free.size:
            sub = _solve(gram[np.ix_(free, free)], cross[np.ix_(free, cols)], reg)
            w[np.ix_(free, cols)] = sub
    return w


def fit_layer(io: LayerIO, lam: float = 1e-3, mask: np.ndarray | None = None,
              fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Ridge-fit every group of a layer: returns (W [G, k, m], b [G*m] or None).

    `mask`, when given, is [G, k, m] (or [k, m] for G == 1) in the same layout as W.
    """
    ws, bs = [], []
    for g in range(io.x.shape[0]):
        m = None if mask is None else (mask[g] if mask.ndim == 3 else mask)
        w, b = ridge_fit(io.x[g], io.y[g], lam, m, fit_intercept)
        ws.append(w)
        bs.append(b)
    return np.stack(ws), (np.concatenate(bs) if fit_intercept else None)


def weight_matrix(node: gs.Node) -> np.ndarray:
    """A layer's weights as regression matrices [G, k, m] (the layout `fit_layer` returns)."""
    w = const_value(node.inputs[1])
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        cout = w.shape[0]
        return w.reshape(group, cout // group, -1).transpose(0, 2, 1)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return w.T[None]
    return w[None]


def set_layer_weights(model: Model, name: str, w: np.ndarray, b: np.ndarray | None) -> None:
    """Write `fit_layer`'s (W [G, k, m], b) back into the named layer, in place.

    A bias is added as a new input when the layer had none (Conv, Gemm); a MatMul's bias must
    be None (it has no bias input).
    """
    node = next((n for n in model.graph.nodes if n.name == name), None)
    if node is None:
        raise GraphError(f"layer {name!r} is not in the model")
    old = const_value(node.inputs[1])
    if node.op == "Conv":
        g, k, m = w.shape
        new = w.transpose(0, 2, 1).reshape(g * m, *old.shape[1:])
    else:
        new = w[0].T if node.op == "Gemm" and node.attrs.get("transB", 0) else w[0]
    node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_refit", new.astype(old.dtype))
    if b is not None:
        _set_bias(node, b.astype(old.dtype))


def _set_bias(node: gs.Node, b: np.ndarray) -> None:
    if node.op == "MatMul":
        raise GraphError(f"layer {node.name!r}: a MatMul has no bias input to re-fit")
    name = f"{node.name}.bias_refit"
    if len(node.inputs) > 2 and node.inputs[2].name:
        node.inputs[2] = gs.Constant(name, b)
    else:
        node.inputs.append(gs.Constant(name, b))


def residual_add(node: gs.Node, graph: gs.Graph) -> tuple[gs.Node, gs.Tensor] | None:
    """(Add, its other operand) when `node`'s output only feeds a same-shape Add.

    Such a layer is fitted to `teacher(Add) - student(shortcut)`: the sum then matches the
    float model although the shortcut carries the error of every earlier block, which
    nothing else compensates.
    """
    out = node.outputs[0]
    users = list(out.outputs)
    if len(users) != 1 or users[0].op != "Add" or is_graph_output(graph, out):
        return None
    add = users[0]
    other = [t for t in add.inputs if t is not out]
    if len(other) != 1 or is_const(other[0]) or other[0].shape != out.shape:
        return None
    return add, other[0]


def collect_mapped_rows(teacher: Model, node: gs.Node, tensor: str,
                        positions: np.ndarray | None, feeds, *, max_rows: int = 4096,
                        batch_size: int = 16, seed: int = 0) -> np.ndarray | None:
    """Rows of a teacher tensor at the sampled output positions of a *student* layer.

    The teacher may be wider than the student (the float model of a pruned one): its
    channels `positions` (new position -> teacher channel) are taken first, so the rows line
    up with `collect_layer_tensors(student, node.name, {key: (tensor, True)}, ...)` row for
    row and column for column.

    Args:
        teacher: The model to read `tensor` from.
        node: The student's layer whose output positions are sampled.
        tensor: Teacher tensor name with the layer output's spatial shape.
        positions: Teacher channels per student channel, or None for the same channels.
        feeds: Calibration inputs.
        max_rows: Rows kept (as in `collect_rows`).
        batch_size: Samples per onnxruntime run.
        seed: Seed of the position sampling.

    Returns:
        Rows `[G, n, Cout/G]`, or None when the teacher's channels do not match the layer's
        output width (the caller then needs another teacher).
    """
    width = _channel_width(node)
    batch_size, per_batch = _sampling(teacher, feeds, max_rows, batch_size)
    shape = _out_shape_hint(node)
    axis = 1 if node.op == "Conv" else -1
    parts = []
    for b, values in enumerate(iter_tensors(teacher, [tensor], feeds, batch_size)):
        value = values[tensor]
        if positions is not None:
            if positions.size and positions.max() >= value.shape[axis]:
                return None
            value = np.take(value, positions, axis=axis)
        if width is not None and value.shape[axis] != width:
            return None
        rng = np.random.default_rng([seed, zlib.crc32(node.name.encode()), b])
        parts.append(layer_rows(node, value, per_batch, rng, True, shape))
    return np.concatenate(parts, axis=1)


def _channel_width(node: gs.Node) -> int | None:
    w = const_value(node.inputs[1])
    if node.op == "Conv":
        return int(w.shape[0])
    if node.op == "Gemm":
        return int(w.shape[0] if node.attrs.get("transB", 0) else w.shape[1])
    return int(w.shape[-1])


@dataclass
class Bounds:
    """The clamp an activation applies after a layer: `min(max(v, lo), hi)`.

    Attributes:
        tensor: The tensor the activation reads (the layer output or its residual sum).
        lo: Lower clamp (ReLU: 0).
        hi: Upper clamp (ReLU6: 6; `inf` for ReLU).
    """

    tensor: str
    lo: float
    hi: float = float("inf")


def activation_bounds(node: gs.Node, graph: gs.Graph) -> Bounds | None:
    """The lower clamp of the ReLU / ReLU6 (Clip) after `node`'s output or its residual sum.

    Only the lower clamp is returned (`hi` is inf): also freeing the targets above a ReLU6's
    6 measured worse (MobileNetV2-style, 1x4 at 50 %: 1.15 pt vs 0.90 with the lower clamp
    alone, 0.96 without either; docs/results.md). None when there is no such activation, or
    when the tensor is also used before it.
    """
    out = node.outputs[0]
    found = residual_add(node, graph)
    if found is not None:
        out = found[0].outputs[0]
    users = list(out.outputs)
    if len(users) != 1 or is_graph_output(graph, out):
        return None
    act = users[0]
    if act.op == "Relu":
        return Bounds(out.name, 0.0)
    if act.op == "Clip":
        lo, _ = _clip_limits(act)
        if lo is not None:
            return Bounds(out.name, lo)
    return None


def _clip_limits(node: gs.Node) -> tuple[float | None, float]:
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    lo = hi = None
    if len(node.inputs) > 1 and node.inputs[1].name:
        lo = const_value(node.inputs[1])
    if len(node.inputs) > 2 and node.inputs[2].name:
        hi = const_value(node.inputs[2])
    if lo is None or np.size(lo) != 1:
        return None, float("inf")
    return float(np.ravel(lo)[0]), float(np.ravel(hi)[0]) if hi is not None else float("inf")


def censored_targets(y: np.ndarray, pred: np.ndarray, offset: np.ndarray | float,
                     bounds: Bounds) -> np.ndarray:
    """Targets freed where the activation hides the difference.

    Where the teacher's value and the prediction (both plus `offset`, the shortcut of a
    residual sum) are clamped to the same bound, any prediction is exact after the
    activation: the target there becomes the prediction, so the next least-squares fit spends
    its freedom on the values the activation passes. Iterating fit -> `censored_targets` ->
    fit is a fixed-point scheme for `min ||act(XW + b + s) - act(Y + s)||^2`.
    """
    t, p = y + offset, pred + offset
    free = ((t <= bounds.lo) & (p <= bounds.lo)) | ((t >= bounds.hi) & (p >= bounds.hi))
    return np.where(free, pred, y).astype(np.float32)
