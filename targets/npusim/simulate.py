"""The bit-exact simulator: executes a validated `Program` over one flat byte arena.

Every tensor is a view into the arena at its allocated offset, so an allocation bug would
corrupt results and be caught by `npuc verify`. Each instruction is compiled once into a
closure over its views and prepared constants (float32 weight copies, exact K splits,
preallocated scratch: `plans.py`); running a frame is then a loop over closures. Batches run
frame by frame; within an instruction, independent blocks of output channels run on
`threads` worker threads (numpy and BLAS release the GIL), each BLAS call single-threaded.
Convolutions of 8-bit activations run on onnxruntime's int8 GEMM kernels instead of float
BLAS where a probe proves them exact on this machine (`intgemm`, `intconv`), on the calling
thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.core.blas import blas_threads
from compiler.core.errors import DataError, TargetError
from targets.npusim import intgemm, isa, native
from targets.npusim.binary import load_binary
from targets.npusim.ops import COMPILERS
from targets.npusim.plans import Workspace

log = logging.getLogger(__name__)

MAX_THREADS = 8


def default_threads() -> int:
    """One worker thread per core this process may run on, at most `MAX_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


@dataclass(frozen=True)
class StepTime:
    """Wall time of one instruction over a profiled batch."""

    index: int
    name: str
    kind: str
    unit: str
    seconds: float


@dataclass(frozen=True)
class Profile:
    """Per-instruction wall times of one batch (`Simulator.profile`).

    Attributes:
        steps: One entry per instruction, in program order.
        total_seconds: Wall time of the whole batch (feeds checked, outputs copied).
        frames: Frames in the batch.
        threads: Worker threads the simulator used.
        outputs: Each frame's outputs, as `Simulator.run_frames` returns them.
        int8_gemm: Whether 8-bit convolutions ran on the int8 GEMM engine (`intgemm`).
        native_kernels: Whether the native kernels ran (`native`).
    """

    steps: list[StepTime]
    total_seconds: float
    frames: int
    threads: int
    outputs: list[dict[str, np.ndarray]]
    int8_gemm: bool = False
    native_kernels: bool = False

    def slowest(self, limit: int | None = None) -> list[StepTime]:
        """Instructions by wall time, slowest first (the first `limit`)."""
        ranked = sorted(self.steps, key=lambda s: (-s.seconds, s.index))
        return ranked if limit is None else ranked[:limit]

    def by_kind(self) -> dict[str, float]:
        """Seconds per instruction kind, largest first."""
        sums: dict[str, float] = {}
        for s in self.steps:
            sums[s.kind] = sums.get(s.kind, 0.0) + s.seconds
        return dict(sorted(sums.items(), key=lambda kv: -kv[1]))


class Simulator:
    """Run an npusim binary: `Simulator("model.bin").run({"input": x}) -> {name: array}`."""

    def __init__(self, source: str | os.PathLike | bytes | isa.Program,
                 blas_threads: int | None = 1, threads: int | None = None,
                 int8_gemm: bool | None = None, native_kernels: bool | None = None) -> None:
        """Load and prepare a program.

        Args:
            source: model.bin path, its bytes, or a `Program`.
            blas_threads: BLAS threads per GEMM call (None: leave the library's setting).
            threads: Worker threads per instruction (None: one per available core, at most
                `MAX_THREADS`).
            int8_gemm: Run 8-bit convolutions (dense, grouped, depthwise) on onnxruntime's
                int8 GEMM kernels (`intgemm`, `intconv`). None: where a probe proves them
                exact on this machine (`intgemm.exact`); False: float BLAS only; True: the
                engine without the probe (tests).
            native_kernels: Run the requantization, window copies and table lookups in the
                compiled kernels (`native`). None: where they were built; False: numpy
                (same results, slower); True: required (TargetError where not built).
        """
        self.int8_gemm = intgemm.exact() if int8_gemm is None else bool(int8_gemm)
        if native_kernels and not native.available():
            raise TargetError("npusim native kernels were not built (no C compiler at "
                              "install time?)")
        self.native_kernels = (native.available() if native_kernels is None
                               else bool(native_kernels))
        self.blas_threads = blas_threads
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self.program = source if isinstance(source, isa.Program) else load_binary(source)
        self.arena = np.zeros(max(self.program.arena_size, 16), np.uint8)
        self.views = [self._view(t) for t in self.program.tensors]
        self.host: dict[int, np.ndarray] = {}  # values of run-time-shaped tensors
        self.workspace = Workspace()  # scratch shared by the instructions (plans.py)
        for t, view in zip(self.program.tensors, self.views, strict=True):
            if t.region == "const":
                view[...] = self.program.blobs[t.blob].array
        self.steps: list[Callable[[], None]] = [COMPILERS[type(ins)](self, ins)
                                                for ins in self.program.code]
        self.workspace.allocate()  # before any worker thread binds a view

    def _view(self, t: isa.Tensor) -> np.ndarray | None:
        if t.runtime:
            return None  # a host tensor: its value is in `self.host` once written
        raw = self.arena[t.offset:t.offset + t.nbytes]
        return raw.view(np.dtype(t.dtype)).reshape(t.shape)

    @property
    def input_names(self) -> list[str]:
        """Names of the program inputs."""
        return [self.program.tensors[i].name for i in self.program.inputs]

    @property
    def frame_batch(self) -> int:
        """Samples per frame: the program's fixed batch (`Program.frame_batch`)."""
        return self.program.frame_batch

    @property
    def output_names(self) -> list[str]:
        """Names of the program outputs."""
        return [self.program.tensors[i].name for i in self.program.outputs]

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Execute one batch (frames one at a time); float inputs are quantized per spec.

        Outputs are the frames' outputs joined along axis 0 (`join_frames`).

        Raises:
            DataError: A missing input, an input whose shape does not match the program, or
                run-time-shaped outputs whose frames cannot be joined (use `run_frames`).
        """
        return join_frames(self.run_frames(feeds))

    def run_frames(self, feeds: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        """Execute one batch and return each frame's outputs separately."""
        return self._frames(feeds, None)

    def profile(self, feeds: dict[str, Any]) -> Profile:
        """Execute one batch like `run_frames`, timing every instruction.

        Returns:
            The wall time of each instruction summed over the frames, and the outputs.
        """
        seconds = [0.0] * len(self.steps)
        start = time.perf_counter()
        frames = self._frames(feeds, seconds)
        total = time.perf_counter() - start
        rows = [StepTime(i, ins.name, ins.kind, "CPU" if ins.unit == isa.CPU else "NPU", t)
                for i, (ins, t) in enumerate(zip(self.program.code, seconds, strict=True))]
        return Profile(rows, total, len(frames), self.threads, frames, self.int8_gemm,
                       self.native_kernels)

    def _frames(self, feeds: dict[str, Any],
                seconds: list[float] | None) -> list[dict[str, np.ndarray]]:
        arrays = self._check_feeds(feeds)
        b = self.frame_batch
        frames = next(iter(arrays.values())).shape[0] // b if arrays else 1
        self._workers()
        with _blas_limit(self.blas_threads):
            return [self.run_frame({n: a[f * b:(f + 1) * b] for n, a in arrays.items()},
                                   seconds)
                    for f in range(frames)]

    def run_frame(self, feeds: dict[str, np.ndarray],
                  seconds: list[float] | None = None) -> dict[str, np.ndarray]:
        """Execute one frame whose feeds already have the program's exact shapes.

        With `seconds` (one entry per instruction), each instruction's wall time is added.
        """
        self.host.clear()
        for i in self.program.inputs:
            self.views[i][...] = feeds[self.program.tensors[i].name]
        if seconds is None:
            for step in self.steps:
                step()
        else:
            clock = time.perf_counter
            for i, step in enumerate(self.steps):
                start = clock()
                step()
                seconds[i] += clock() - start
        return {self.program.tensors[i].name: self.value(i).copy()
                for i in self.program.outputs}

    def map(self, fn: Callable[[Any], None], items: list) -> None:
        """`fn` over `items`, on the worker threads once started (else in order)."""
        if self._pool is None or len(items) < 2:
            for item in items:
                fn(item)
            return
        # the calling thread takes the first item: one hand-off fewer per instruction
        futures = [self._pool.submit(fn, item) for item in items[1:]]
        try:
            fn(items[0])
        finally:
            for f in futures:
                f.result()  # re-raises a worker's exception here

    def _workers(self) -> None:
        """Start the worker threads on first use; they live as long as the simulator.

        A pool per batch cost 2 ms. A forked child starts its own (threads do not survive
        a fork).
        """
        if self.threads < 2 or (self._pool is not None and self._pool_pid == os.getpid()):
            return
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="npusim")
        self._pool_pid = os.getpid()
        weakref.finalize(self, self._pool.shutdown, wait=False)

    def value(self, i: int) -> np.ndarray:
        """The current value of tensor `i` (arena view, or host array once written)."""
        if self.views[i] is not None:
            return self.views[i]
        if i not in self.host:
            raise TargetError(f"host tensor {self.program.tensors[i].name!r} read before it "
                              "is written")
        return self.host[i]

    def _check_feeds(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays, frames = {}, set()
        for i in self.program.inputs:
            t = self.program.tensors[i]
            if t.name not in feeds:
                raise DataError(f"missing input {t.name!r} (inputs: {self.input_names})")
            a = np.asarray(feeds[t.name])
            if a.ndim == len(t.shape) - 1:
                a = a[None]
            if a.ndim != len(t.shape) or (a.ndim and tuple(a.shape[1:]) != t.shape[1:]):
                raise DataError(f"input {t.name!r}: shape {a.shape} does not match the "
                                f"binary's {t.shape} (any batch size)")
            arrays[t.name] = a.astype(t.dtype, copy=False)
            frames.add(a.shape[0] if a.ndim else 1)
        if len(frames) > 1:
            raise DataError(f"inputs have different batch sizes {sorted(frames)}")
        n, b = (frames.pop() if frames else 1), self.frame_batch
        if n % b or n == 0:
            # a frame of a fixed-batch program is b samples; broadcasting one would be wrong
            raise DataError(f"{n} sample(s) do not make whole frames of the binary's fixed "
                            f"batch of {b}")
        return arrays


def join_frames(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-frame outputs joined along axis 0 (stacked for scalars).

    Raises:
        DataError: A run-time-shaped output whose frames differ beyond axis 0.
    """
    out = {}
    for name in frames[0] if frames else {}:
        values = [f[name] for f in frames]
        if not values[0].ndim:
            out[name] = np.stack(values)
        elif len({v.shape[1:] for v in values}) > 1:
            raise DataError(f"output {name!r} has a run-time shape that differs between "
                            f"frames ({[v.shape for v in values]}); run the frames one at a "
                            "time")
        else:
            out[name] = np.concatenate(values, axis=0)
    return out


def split_frames(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-frame outputs under `name:frame` keys (when `join_frames` cannot join them)."""
    return {f"{name}:{i}": value for i, frame in enumerate(frames) for name, value in
            frame.items()}


def _blas_limit(threads: int | None) -> contextlib.AbstractContextManager:
    """Limit BLAS threads while simulating.

    The GEMMs here are small; a multi-threaded OpenBLAS collapses (10x measured) when the
    machine is oversubscribed, while one thread runs at full speed. The simulator's own
    worker threads use the cores instead.
    """
    return blas_threads(threads)


def run(binary: str | os.PathLike | bytes, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    """One-shot convenience: load, run, return the outputs."""
    return Simulator(binary).run(feeds)



