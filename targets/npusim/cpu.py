"""CPU partitions in the simulator: the embedded float ONNX run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from compiler.core.errors import TargetError
from compiler.core.numerics import ort_session
from targets.npusim import isa


class PartitionRunner:
    """An onnxruntime session for one `CpuCall`, checked against the instruction's tensors."""

    def __init__(self, program: isa.Program, ins: isa.CpuCall) -> None:
        self.ins = ins
        self.names = [program.tensors[i].name for i in ins.inputs]
        self.outputs = [program.tensors[i].name for i in ins.outputs]
        self._raw = program.blobs[ins.partition].raw
        self._session: ort.InferenceSession | None = None

    def session(self) -> ort.InferenceSession:
        """Create (once) and check the session: its input/output names must match."""
        if self._session is None:
            try:
                sess = ort_session(self._raw)
            except Exception as e:  # onnxruntime raises its own exception types
                raise TargetError(f"CPU partition {self.ins.name!r}: onnxruntime cannot load "
                                  f"it ({str(e).splitlines()[0][:200]})") from e
            got_in = sorted(i.name for i in sess.get_inputs())
            got_out = [o.name for o in sess.get_outputs()]
            if got_in != sorted(self.names) or got_out != self.outputs:
                raise TargetError(f"CPU partition {self.ins.name!r}: interface {got_in} -> "
                                  f"{got_out} does not match the call")
            self._session = sess
        return self._session

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs in the call's order."""
        feeds = dict(zip(self.names, inputs, strict=True))
        try:
            return self.session().run(self.outputs, feeds)
        except TargetError:
            raise
        except Exception as e:
            raise TargetError(f"CPU partition {self.ins.name!r} failed: "
                              f"{str(e).splitlines()[0][:200]}") from e
