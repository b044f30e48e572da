"""Run models in onnxruntime and compare them: the numerical oracle passes are tested with."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort

from compiler.core.errors import DataError, GraphError, one_line
from compiler.core.fold_numpy import numpy_value
from compiler.core.io import to_lean_proto
from compiler.core.ir import Model

NP_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}
"""onnxruntime's input/output type names -> numpy dtypes."""


def session_options(*, threads: int = 0, optimize: bool = True,
                    fuse_qdq: bool = True) -> ort.SessionOptions:
    """Quiet onnxruntime session options (warnings and errors reach the user as exceptions).

    `fuse_qdq=False` keeps QuantizeLinear/DequantizeLinear as written: onnxruntime would
    otherwise fuse DQ -> op -> Q into its own integer kernels (QLinearAdd, ...), whose
    rounding is not the fake-quantized float arithmetic a QDQ simulation means.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 4  # fatal only: errors reach the user once, as our exception
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not fuse_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return opts


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def ort_message(error: BaseException, limit: int = 400) -> str:
    """The (multi-line, prefixed) text of an onnxruntime error as one short line."""
    text = _ORT_PREFIX.sub("", one_line(str(error)).strip())
    if isinstance(error, MemoryError) or "bad_alloc" in text:
        text = f"out of memory ({text or type(error).__name__})"
    return one_line(text or type(error).__name__, limit)


class Session(ort.InferenceSession):
    """onnxruntime's session whose failures while running are one-line `GraphError`s.

    A model that loads can still fail on the first run (a size bomb behind a data-dependent
    shape, kernels that disagree with their weights): every caller gets a project error
    instead of onnxruntime's exception types.
    """

    def run(self, output_names, input_feed, run_options=None):  # noqa: D102 - as onnxruntime
        try:
            return super().run(output_names, input_feed, run_options)
        except Exception as e:
            raise GraphError(f"onnxruntime cannot run the model: {ort_message(e)}") from e

    def run_with_ort_values(self, output_names, input_dict_ort_values,  # noqa: D102
                            run_options=None):
        try:
            return super().run_with_ort_values(output_names, input_dict_ort_values, run_options)
        except Exception as e:
            raise GraphError(f"onnxruntime cannot run the model: {ort_message(e)}") from e


DISABLED_OPTIMIZERS = ["ReshapeFusion"]
"""onnxruntime graph rewrites left off: they make valid models fail.

ReshapeFusion replaces a run-time Reshape target built from Shape -> Gather -> Concat (as
torch.onnx writes `x.reshape(boxes.shape)`) with a constant of 0s ("copy the dim") and one
-1, reading dim equality from the symbolic dims of value_info. The IR's inferred shapes name
the data-dependent dims of a detector's tail, so the rewrite fires there, and a Reshape of an
empty tensor (a pyramid level with no detection: [0, 2, 2] to [0, -1]) fails, since -1 cannot
be inferred from 0 elements; the unrewritten [0, 4] target is fine.
"""


def ort_session(model: bytes | str, opts: ort.SessionOptions | None = None
                ) -> ort.InferenceSession:
    """The one place the project opens an onnxruntime session: CPU only, telemetry off.

    Raises whatever onnxruntime raises; callers turn it into their own one-line error.
    """
    # Telemetry is a process-wide switch; turning it off before each session also covers
    # sessions opened after someone else turned it back on.
    ort.disable_telemetry_events()
    ort.set_default_logger_severity(4)  # run-time node errors are logged by the default logger
    return Session(model, opts or session_options(), providers=["CPUExecutionProvider"],
                   disabled_optimizers=DISABLED_OPTIMIZERS)


def session(model: Model | onnx.ModelProto, *, threads: int = 0,
            optimize: bool = True, fuse_qdq: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session for an IR model or protobuf.

    An IR model's large weights are handed to onnxruntime as external initializers from
    the IR's arrays instead of being serialized into the model bytes: no serialized copy of
    the weights, and models above protobuf's 2 GB limit run too.
    """
    opts = session_options(threads=threads, optimize=optimize, fuse_qdq=fuse_qdq)
    weights: list[ort.OrtValue] = []
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
    else:
        proto, arrays = to_lean_proto(model)
        weights = _external_initializers(proto, arrays, opts)
        data = proto.SerializeToString()
    try:
        sess = ort_session(data, opts)
    except Exception as e:  # onnxruntime raises its own exception hierarchy
        first = str(e).strip().splitlines()[0]
        raise GraphError(f"onnxruntime cannot load the model: {first}") from e
    sess.npuc_weights = weights  # the buffers stay alive as long as the session
    return sess


def _external_initializers(proto: onnx.ModelProto, arrays: dict[str, np.ndarray],
                           opts: ort.SessionOptions) -> list[ort.OrtValue]:
    """Mark the data-less initializers external and give onnxruntime their arrays."""
    for tensor in proto.graph.initializer:
        if tensor.name in arrays:  # onnxruntime only replaces initializers marked external
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value="npuc-memory")
    names = list(arrays)
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arrays[n])) for n in names]
    if names:
        opts.add_external_initializers(names, values)
    return values


def run(model: Model | onnx.ModelProto | ort.InferenceSession,
        feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model (or an existing session) and return outputs by name."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, dict(feeds))
    except GraphError as e:
        raise DataError(f"cannot run the model on these inputs: "
                        f"{ort_message(e.__cause__ or e)}") from e
    return dict(zip(names, values, strict=True))


def random_feeds(model: Model | ort.InferenceSession, seed: int = 0,
                 batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs (uniform ints for integer inputs); symbolic dims -> batch."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in inp.shape]
        dtype = NP_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def relative_error(ref: np.ndarray, out: np.ndarray) -> float:
    """max|ref - out| / max|ref| (absolute error when the reference is all zero)."""
    ref64, out64 = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref64.shape != out64.shape:
        return float("inf")
    if ref64.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref64)))
    diff = float(np.max(np.abs(ref64 - out64)))
    return diff / scale if scale > 0 else diff


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened tensors (1.0 when both are all zero)."""
    a64, b64 = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a64 @ b64 / (na * nb))


def compare_models(before: Model | onnx.ModelProto, after: Model | onnx.ModelProto,
                   feeds: Mapping[str, np.ndarray] | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Relative error per output between two models on the same (seeded) inputs."""
    sess_a = session(before)
    feeds = dict(feeds) if feeds is not None else random_feeds(sess_a, seed)
    ref, out = run(sess_a, feeds), run(after, feeds)
    if ref.keys() != out.keys():
        raise GraphError(f"outputs differ: {sorted(ref)} vs {sorted(out)}")
    return {k: relative_error(ref[k], out[k]) for k in ref}


def function_checker(rtol: float = 1e-4, seed: int = 0):
    """A `(before, after)` check for `PassManager(check_function=...)`."""

    def check(before: Model, after: Model) -> None:
        errors = compare_models(before, after, seed=seed)
        worst = max(errors, key=errors.get)
        if errors[worst] > rtol:
            raise GraphError(
                f"output {worst!r} changed by {errors[worst]:.3g} relative (tolerance {rtol})")

    return check


def eval_node(node, opset: int) -> list[np.ndarray]:
    """Evaluate one graphsurgeon node whose inputs are all constants.

    Used by constant folding. Layout and shape-arithmetic ops where numpy is exactly ONNX
    run in numpy (`compiler.core.fold_numpy`): a session per folded node cost copies of
    its inputs and, for the first one, about 20 MB. Other nodes run in onnxruntime, with
    the ONNX reference evaluator as a fallback for ops onnxruntime lacks.
    """
    fast = numpy_value(node, opset)
    if fast is not None:
        return fast
    import onnx_graphsurgeon as gs
    from onnx.reference import ReferenceEvaluator  # costs memory: imported when needed

    clone = gs.Node(node.op, node.name or "fold", dict(node.attrs), domain=node.domain,
                    inputs=[gs.Constant(t.name, np.asarray(t.values)) if t.name else t
                            for t in node.inputs],
                    outputs=[gs.Variable(t.name, dtype=t.dtype) for t in node.outputs])
    graph = gs.Graph(nodes=[clone], outputs=list(clone.outputs), opset=opset)
    proto = gs.export_onnx(graph, do_type_check=False)
    names = [t.name for t in node.outputs]
    try:
        return session(proto, threads=1).run(names, {})
    except Exception:  # fall back to the slower but more complete reference evaluator
        return list(ReferenceEvaluator(proto).run(names, {}))
