"""Shapes of custom-domain ops (com.microsoft Gelu, ...) that ONNX shape inference cannot see.

ONNX shape inference knows only the standard domain, so the outputs of a custom op stay
untyped, and with them everything after it: the Convs after a fused Gelu would all fall
back to the CPU. Each such node runs alone in onnxruntime, twice, on seeded inputs of its
(known) input shapes; its outputs take the observed dtype and shape, a dimension that
differs between the two runs stays unknown (a run-time size), and shape inference then
carries the shapes downstream. A node onnxruntime cannot run keeps its unknown outputs.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import Model, is_const, static_shape
from compiler.core.numerics import session
from compiler.core.shape_inference import refresh_shapes
from passes.base import RewritePass

log = logging.getLogger(__name__)

STANDARD_DOMAINS = (None, "", "ai.onnx")
PROBE_SEEDS = (0, 1)


def probe_custom_shapes(model: Model) -> int:
    """Type the outputs of custom-domain nodes by running them; returns the count typed."""
    total = 0
    while True:
        typed = sum(_probe(n, model.opset) for n in model.graph.nodes if _wants_probe(n))
        if not typed:
            return total
        total += typed
        refresh_shapes(model)


def _wants_probe(node: gs.Node) -> bool:
    if node.domain in STANDARD_DOMAINS:
        return False
    untyped = any(o.name and (o.dtype is None or o.shape is None) for o in node.outputs)
    return untyped and all(is_const(t) or (t.dtype is not None and static_shape(t) is not None)
                           for t in node.inputs if t.name)


def _probe(node: gs.Node, opset: int) -> int:
    runs = [_run_alone(node, opset, seed) for seed in PROBE_SEEDS]
    if any(r is None for r in runs):
        return 0
    typed = 0
    for i, out in enumerate(node.outputs):
        if not out.name or (out.dtype is not None and out.shape is not None):
            continue
        a, b = runs[0][i], runs[1][i]
        out.dtype = a.dtype
        out.shape = [d if d == e else None for d, e in zip(a.shape, b.shape, strict=True)] \
            if a.ndim == b.ndim else None
        typed += 1
    log.debug("probed %s %r: %s", node.op, node.name, [o.shape for o in node.outputs])
    return typed


def _run_alone(node: gs.Node, opset: int, seed: int) -> list[np.ndarray] | None:
    rng = np.random.default_rng(seed)
    inputs, feeds = [], {}
    for t in node.inputs:
        if not t.name or is_const(t):
            inputs.append(gs.Constant(t.name, np.asarray(t.values)) if t.name else t)
            continue
        inputs.append(gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape)))
        feeds[t.name] = _random(rng, np.dtype(t.dtype), static_shape(t))
    outputs = [gs.Variable(o.name or f"{node.name}__unused{i}")
               for i, o in enumerate(node.outputs)]
    clone = gs.Node(node.op, node.name, dict(node.attrs), inputs, outputs, domain=node.domain)
    graph = gs.Graph(nodes=[clone], inputs=[t for t in inputs if t.name in feeds],
                     outputs=outputs, opset=opset)
    try:
        proto = gs.export_onnx(graph, do_type_check=False)
        return session(proto, threads=1).run([o.name for o in outputs], feeds)
    except Exception as e:  # onnxruntime and graphsurgeon raise many types
        log.debug("cannot probe %s %r: %s", node.op, node.name, e)
        return None


def _random(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 4, shape).astype(dtype)


class ProbeCustomShapes(RewritePass):
    """Pass: type custom-domain outputs by running each node alone in onnxruntime."""

    rewrite = staticmethod(probe_custom_shapes)
