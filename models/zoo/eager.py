"""A GraphBuilder that also evaluates each node on calibration images as it is added.

Random-weight networks only behave like trained ones if every BatchNorm normalizes the
activations it actually sees. Running each node through onnxruntime at insertion time gives
the exact pre-BN tensors in a single forward pass, so statistics are fitted layer by layer
without re-running the partial graph (which would cost O(depth^2)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.core.builder import INTERNAL_OPSET, GraphBuilder
from compiler.core.errors import GraphError
from compiler.core.numerics import ort_session, session_options


class EagerBuilder(GraphBuilder):
    """`GraphBuilder` whose `values` holds every tensor computed on calibration inputs.

    Args:
        name: Graph name.
        seed: Seed of `self.rng`.
        calib: Graph-input name -> calibration array. `None` disables evaluation, so the
            builder behaves exactly like `GraphBuilder` (no cost, empty `values`).
    """

    def __init__(self, name: str, seed: int = 0,
                 calib: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__(name, seed)
        self.eager = calib is not None
        self.values: dict[str, np.ndarray] = dict(calib or {})
        # Initializers are read back from their protos when a node needs them, rather than
        # kept as arrays: that would double the memory of VGG's 400 MB FC weight.
        self._protos: dict[str, onnx.TensorProto] = {}

    def const(self, array: np.ndarray, name: str = "const") -> str:
        """Add an initializer (remembered so eager nodes can read it)."""
        out = super().const(array, name)
        self._protos[out] = self._inits[-1]
        return out

    def node(self, op: str, inputs: Sequence[str], n_outputs: int = 1, name: str | None = None,
             **attrs) -> str | list[str]:
        """Add a node and, when eager, evaluate it on the calibration values."""
        out = super().node(op, inputs, n_outputs, name, **attrs)
        if self.eager:
            outs = [out] if isinstance(out, str) else out
            feeds = {i: self._value(i) for i in inputs if i}
            self.values.update(zip(outs, run_node(op, list(inputs), feeds, outs, attrs),
                                   strict=True))
        return out

    def _value(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        if name in self._protos:
            return numpy_helper.to_array(self._protos[name])
        raise GraphError(f"eager node input {name!r} has no calibration value")

    def activation(self, name: str) -> np.ndarray:
        """The calibration value of tensor `name` (raises `GraphError` when not eager)."""
        if name not in self.values:
            raise GraphError(f"no calibration value for {name!r} (builder not eager?)")
        return self.values[name]

    def release(self) -> None:
        """Drop the recorded values (call once building is done to free memory)."""
        self.values.clear()
        self._protos.clear()
        self.eager = False


def run_node(op: str, inputs: list[str], feeds: dict[str, np.ndarray], outputs: list[str],
             attrs: dict) -> list[np.ndarray]:
    """Run one ONNX node with onnxruntime on concrete inputs.

    Args:
        op: Operator type.
        inputs: Node input names in order (may repeat a name).
        feeds: Name -> array for each distinct non-empty input.
        outputs: Node output names.
        attrs: Node attributes.

    Returns:
        The output arrays, in `outputs` order.
    """
    node = helper.make_node(op, inputs, outputs, **attrs)
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in feeds.items()]
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    graph = helper.make_graph([node], f"eager_{op}", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INTERNAL_OPSET)])
    model.ir_version = 8
    # A lone node has nothing to optimize.
    sess = ort_session(model.SerializeToString(), session_options(optimize=False))
    return sess.run(None, feeds)
