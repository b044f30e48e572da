"""Memory-lean loading and onnxruntime sessions for large models (used by quantization).

* `load_lean`: the old name of `compiler.core.io.load_model`, which now reads the weights
  straight into numpy arrays and checks, converts and shape-infers the weightless graph
  (`compiler.core.onnxfile`): about 1x the model size at peak.
* `shared_weight_session`: `compiler.core.numerics.session` serializes the whole model and
  onnxruntime parses its own copy. Here the graph is exported without weight data (each
  large constant becomes a graph input) and every run feeds the IR's numpy arrays, which
  onnxruntime reads in place; initializers, even ones handed over as external buffers,
  would be copied.
"""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from compiler.core.errors import DataError, GraphError
from compiler.core.io import SKELETON_MIN_SIZE, ShapeArg, load_model, to_proto
from compiler.core.ir import Model
from compiler.core.numerics import ort_session, session_options
from compiler.core.onnxfile import detach, detach_from_proto


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
    light, arrays = detach_from_proto(proto)
    detach(light, arrays)
    return light, arrays


def load_lean(path: str | Path, *, input_shapes: ShapeArg = None, bind: bool = False) -> Model:
    """`compiler.core.io.load_model(path)`, which now loads every model this way.

    `input_shapes` and `bind` are those of `load_model`. Kept for callers of the old name.
    """
    return load_model(path, input_shapes=input_shapes, bind=bind)


class SharedWeightSession:
    """An onnxruntime session whose weights are graph inputs, fed from the IR's arrays.

    onnxruntime copies every initializer it is given, including buffers handed over with
    `SessionOptions.add_external_initializers` (+1x the weights, measured on 1.32), but it
    reads input tensors in place. So the session is built from the weightless skeleton and
    each `run` passes the weights along with the data. They must stay alive and unchanged
    while the session is used; the session keeps references to them.
    """

    def __init__(self, sess: ort.InferenceSession, weights: dict[str, np.ndarray]) -> None:
        self._sess = sess
        used = {i.name for i in sess.get_inputs()}  # export drops constants no output needs
        self._arrays = {n: w for n, w in weights.items() if n in used}
        self._weights = {n: ort.OrtValue.ortvalue_from_numpy(w) for n, w in self._arrays.items()}

    def get_inputs(self) -> list:
        """The data inputs (weights excluded)."""
        return [i for i in self._sess.get_inputs() if i.name not in self._weights]

    def get_outputs(self) -> list:
        """The graph outputs."""
        return self._sess.get_outputs()

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list:
        """Like `InferenceSession.run`, with the weights added to `feeds`."""
        names = output_names or [o.name for o in self._sess.get_outputs()]
        values = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                  for n, v in feeds.items()}
        try:
            results = self._sess.run_with_ort_values(names, values | self._weights)
        except Exception as e:  # onnxruntime's InvalidArgument, RuntimeException, ...
            shapes = ", ".join(f"{n} {'x'.join(map(str, np.shape(v)))}" for n, v in feeds.items())
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise DataError(f"cannot run the model on inputs {shapes}: {first}") from e
        return [v.numpy() for v in results]


def shared_weight_session(model: Model, *, threads: int = 0,
                          layout_optimizations: bool = False) -> SharedWeightSession:
    """An onnxruntime CPU session reading the model's large constants in place.

    Args:
        model: The IR model.
        threads: intra-op threads (0: onnxruntime's default).
        layout_optimizations: Allow onnxruntime's layout (NCHWc) rewrites. They make
            convolutions faster but copy every conv weight into a blocked layout, which
            costs about 2.5x the weight size in memory; off by default.
    """
    proto = to_proto(model, skeleton=True)
    weights = {name: np.ascontiguousarray(np.asarray(t.values))
               for name, t in model.graph.tensors().items()
               if isinstance(t, gs.Constant) and t.values.size >= SKELETON_MIN_SIZE}
    opts = session_options(threads=threads)
    # no arena / memory pattern: buffers are freed after each op, not kept for the session
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    if not layout_optimizations:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        sess = ort_session(proto.SerializeToString(), opts)
    except Exception as e:  # onnxruntime raises its own exception hierarchy
        first = str(e).strip().splitlines()[0]
        raise GraphError(f"onnxruntime cannot load the model: {first}") from e
    return SharedWeightSession(sess, weights)
