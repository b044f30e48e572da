"""Memory-lean loading and onnxruntime sessions for large models (used by quantization).

* `load_lean`: `compiler.io.load_model` checks and shape-infers the full protobuf, which
  serializes and copies every weight several times (≈5× the model size at peak). Here the
  weights are moved to numpy arrays right after parsing; checker, opset conversion and shape
  inference run on the weightless graph (weights stand in as typed graph inputs), and the
  arrays are attached to the IR afterwards. Same result, ≈2× the model size at peak.
* `shared_weight_session`: `compiler.numerics.session` serializes the whole model and
  onnxruntime parses its own copy. Here the graph is exported without weight data (each
  large initializer is an external-data placeholder) and onnxruntime receives the IR's
  numpy arrays directly through `SessionOptions.add_external_initializers` (no copy).
"""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from compiler.errors import GraphError
from compiler.io import from_proto, normalize_proto, read_proto, to_proto
from compiler.ir import Model

PLACEHOLDER = "npuc-shared-weights.bin"
DETACH_BYTES = 4096


def release_memory() -> None:
    """Collect reference cycles and hand freed heap pages back to the OS (glibc malloc_trim).

    Large models leave the heap fragmented after weights are replaced; without this the
    next stage starts from an inflated RSS.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def detach_weights(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A weightless copy of `proto` (large initializers -> typed graph inputs) + the arrays."""
    arrays: dict[str, np.ndarray] = {}
    keep = []
    for t in proto.graph.initializer:
        if len(t.raw_data) > DETACH_BYTES or len(t.float_data) > DETACH_BYTES // 4:
            arrays[t.name] = onnx.numpy_helper.to_array(t).copy()
            proto.graph.input.append(onnx.helper.make_tensor_value_info(
                t.name, t.data_type, list(t.dims)))
            t.ClearField("raw_data")
            t.ClearField("float_data")
        else:
            keep.append(t)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    light = onnx.ModelProto()
    light.CopyFrom(proto)  # small now; the caller drops the original and its buffers
    return light, arrays


def load_lean(path: str | Path) -> Model:
    """`compiler.io.load_model(path)` with a peak memory of about twice the weights."""
    path = Path(path)
    proto = read_proto(path)
    light, arrays = detach_weights(proto)
    del proto
    light = normalize_proto(light, str(path))
    model = from_proto(light, source=str(path.resolve()))
    detached = [t for t in model.graph.inputs if t.name in arrays]
    for t in detached:
        t.to_constant(arrays[t.name])
    model.graph.inputs = [t for t in model.graph.inputs if t.name not in arrays]
    return model


def _placeholder(name: str, array: np.ndarray, elem_type: int) -> onnx.TensorProto:
    t = onnx.TensorProto(name=name, data_type=elem_type, dims=list(array.shape))
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", PLACEHOLDER), ("offset", "0"), ("length", str(array.nbytes))):
        t.external_data.add(key=key, value=value)
    return t


def shared_weight_session(model: Model, *, threads: int = 0, min_size: int = 64,
                          layout_optimizations: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session reading the model's large constants in place.

    The arrays must stay alive and unchanged while the session is used (the session keeps
    references to them).

    Args:
        model: The IR model.
        threads: intra-op threads (0: onnxruntime's default).
        min_size: Constants with at least this many elements are shared, not copied.
        layout_optimizations: Allow onnxruntime's layout (NCHWc) rewrites. They make
            convolutions faster but copy every conv weight into a blocked layout, which
            costs about 2.5x the weight size in memory; off by default.
    """
    proto = to_proto(model, skeleton=True)
    weights = {name: np.ascontiguousarray(np.asarray(t.values))
               for name, t in model.graph.tensors().items()
               if isinstance(t, gs.Constant) and t.values.size >= min_size}
    inputs = []
    for value in proto.graph.input:
        if value.name in weights:
            elem = value.type.tensor_type.elem_type
            proto.graph.initializer.append(_placeholder(value.name, weights[value.name], elem))
        else:
            inputs.append(value)
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # no arena / memory pattern: buffers are freed after each op, not kept for the session
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    if not layout_optimizations:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    names = list(weights)
    values = [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names]
    opts.add_external_initializers(names, values)
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception hierarchy
        first = str(e).strip().splitlines()[0]
        raise GraphError(f"onnxruntime cannot load the model: {first}") from e
    sess.npuc_shared = (weights, values)  # keep the buffers alive with the session
    return sess
