"""Where parallel work runs: a local process pool (default) or a Ray cluster.

One interface for every embarrassingly parallel part of npuc (ABC candidates, evaluation
shards, the models of a fleet compile): `open_pool(options, init=..., payload=...)` gives a
`WorkerPool` whose `map(fn, items)` returns `[fn(item) for item in items]` in order.

* `local` runs the tasks in worker processes of this machine (`ProcessPoolExecutor`,
  forkserver start), each initialised once with `init(payload)`.
* `ray` ships the payload to Ray's object store once (`ray.put`) and runs the tasks on
  `workers` actors, each initialised once from that reference; tasks take only their item.
  Tasks whose actor died are run again on fresh actors (`RETRIES` times, counted in
  `RayPool.retried`); a task that raises stops the run with a one-line error naming it.

Tasks are deterministic functions of (payload, item): results do not depend on the executor,
the number of workers, or which worker ran which item (docs/scaling.md).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from typing import Any

from compiler.core.errors import ConfigError, NpucError, one_line
from compiler.core.options import option, positive

log = logging.getLogger(__name__)

KINDS = ("local", "ray")
RETRIES = 2
MAX_WORKERS = 256  # more workers than this only exhausts the machine
RAY_EXTRA = 'pip install -e ".[ray]"'

Init = Callable[[Any], None]


@dataclass
class ExecutorOptions:
    """Where npuc's parallel work runs (`executor.*`)."""

    kind: str = option("local", "where parallel work runs: local (process pool) or ray "
                       "(the ray extra)", choices=KINDS, flag="--executor")
    address: str | None = option(None, "ray: cluster address (auto: the running cluster; "
                                 "null: start a private one on this machine)", types=(str,),
                                 flag="--ray-address", metavar="ADDR")
    workers: int | None = option(None, "parallel workers (null: the CPU count)", types=(int,),
                                 check=positive, flag="--workers", metavar="N")

    def requested(self) -> bool:
        """Whether the user asked for workers (Ray, or a worker count).

        Work that is already parallel inside one process (onnxruntime's threads) runs
        in-process unless they did.
        """
        return self.kind != "local" or self.workers is not None

    def worker_count(self) -> int:
        """Workers to start: the option, else the CPU count (at least 1)."""
        count = self.workers or os.cpu_count() or 1
        if count > MAX_WORKERS:
            raise ConfigError(f"executor.workers = {count}: at most {MAX_WORKERS}")
        return count


class WorkerPool:
    """Workers initialised once; `map` runs `fn(item)` on them and keeps the item order."""

    kind = ""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.retried = 0  # tasks run again because their worker was lost

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`[fn(item) for item in items]`, computed by the workers."""
        raise NotImplementedError

    def close(self, cancel: bool = False) -> None:
        """Stop the workers (`cancel`: now, dropping queued tasks)."""

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


def open_pool(options: ExecutorOptions | None = None, *, init: Init | None = None,
              payload: Any = None, workers: int | None = None) -> WorkerPool:
    """Start workers of `options.kind`, each initialised once with `init(payload)`.

    Args:
        options: Where to run (default: local, CPU-count workers).
        init: Module-level function run once per worker with the payload (it typically
            fills a module-level state the task function reads).
        payload: Picklable data every worker needs (model bytes, calibration arrays).
        workers: Overrides `options.workers` (e.g. `prune.workers` for the ABC search).

    Raises:
        ConfigError: `ray` without the ray extra, or a Ray cluster that cannot be reached.
    """
    options = options or ExecutorOptions()
    count = workers or options.worker_count()
    if options.kind == "ray":
        return RayPool(count, options.address, init, payload)
    if options.kind != "local":
        raise ConfigError(f"executor.kind = {options.kind!r}: expected one of {', '.join(KINDS)}")
    return LocalPool(count, init, payload)


# --- local ----------------------------------------------------------------------------------

class LocalPool(WorkerPool):
    """Worker processes on this machine (forkserver, else spawn: no inherited threads)."""

    kind = "local"

    def __init__(self, workers: int, init: Init | None, payload: Any) -> None:
        super().__init__(workers)
        _quiet_resource_tracker()
        method = "forkserver" if "forkserver" in get_all_start_methods() else "spawn"
        self._pool = ProcessPoolExecutor(workers, mp_context=get_context(method),
                                         initializer=_local_init, initargs=(init, payload))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`[fn(item) for item in items]` on the worker processes."""
        return list(self._pool.map(fn, items))

    def close(self, cancel: bool = False) -> None:
        """Wait for the workers, or (`cancel`) terminate them now."""
        if not cancel:
            self._pool.shutdown()
            return
        # the executor keeps its worker processes in a private dict; terminate them directly
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout=5)


TRACKER_QUIET = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    """Keep multiprocessing's resource tracker from warning about leaked semaphores.

    A worker terminated on Ctrl-C can die holding one of the pool's semaphores; the tracker
    frees it when the program exits, and its warning would be a second stderr line after
    npuc's one-line "interrupted". The tracker is a separate interpreter started on the
    first pool with the parent's -W options, so the filter goes there.
    """
    if TRACKER_QUIET not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_QUIET)


def _local_init(init: Init | None, payload: Any) -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent stops the run and the pool;
    # a worker dying of it would only add its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _single_threaded()
    if init is not None:
        init(payload)


def _single_threaded() -> None:
    """The workers already fill the cores: no nested BLAS / onnxruntime thread pools."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # optional speed-up only
        pass


# --- ray ------------------------------------------------------------------------------------

def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"executor ray needs the ray extra ({RAY_EXTRA})") from exc
    return ray


class _Actor:
    """One Ray worker: initialised once from the shared payload, then runs tasks."""

    def __init__(self, init: Init | None, payload: Any) -> None:
        _single_threaded()
        if init is not None:
            init(payload)

    def run(self, fn: Callable[[Any], Any], item: Any) -> Any:
        return fn(item)


class RayPool(WorkerPool):
    """`workers` Ray actors sharing one `ray.put` payload; tasks are dealt round-robin.

    A task whose actor died (node lost, process killed) is run again on fresh actors, up to
    `RETRIES` times; `retried` counts those re-runs. A task that raises is not retried: the
    same item would raise again.
    """

    kind = "ray"

    def __init__(self, workers: int, address: str | None, init: Init | None,
                 payload: Any) -> None:
        super().__init__(workers)
        self._actors: list[Any] = []
        self._payload: Any = None
        self._init = init
        ray = self._ray = _ray()
        self._owns = not ray.is_initialized()
        if self._owns:
            _start(ray, address, workers)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            self.close()
            raise ConfigError("executor ray: the cluster has no CPU to run tasks on")
        if cpus < workers:  # one CPU per actor: more actors than CPUs would wait forever
            log.warning("ray cluster has %d CPUs: %d workers instead of %d", cpus, cpus,
                        workers)
            self.workers = cpus
        self._payload = ray.put(payload)  # shipped once; every actor reads the same object
        self._actors = self._start_actors()

    def _start_actors(self) -> list[Any]:
        actor = self._ray.remote(num_cpus=1)(_Actor)
        return [actor.remote(self._init, self._payload) for _ in range(self.workers)]

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`[fn(item) for item in items]` on the actors (NpucError when a task fails)."""
        results: list[Any] = [None] * len(items)
        pending = list(range(len(items)))
        for attempt in range(RETRIES + 1):
            refs = {i: self._actors[k % len(self._actors)].run.remote(fn, items[i])
                    for k, i in enumerate(pending)}
            lost = self._collect(refs, results)
            if not lost:
                return results
            if attempt == RETRIES:
                break
            log.warning("ray: %d task(s) lost with their worker; running them again",
                        len(lost))
            self.retried += len(lost)
            self._restart()
            pending = lost
        raise NpucError(f"ray: {len(lost)} task(s) lost their worker {RETRIES + 1} times; "
                        "stopping")

    def _collect(self, refs: dict[int, Any], results: list[Any]) -> list[int]:
        """Fill `results`; return the items whose actor died. A task's own error stops."""
        ray, lost = self._ray, []
        for i, ref in refs.items():
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayActorError:
                lost.append(i)
            except ray.exceptions.RayError as exc:  # the pool's close() kills the actors
                cause = getattr(exc, "cause", None)
                if isinstance(cause, NpucError):
                    raise cause from None  # the same one-line error as in this process
                what = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
                raise NpucError(f"ray task {i} failed: {one_line(what, 300)}") from exc
        return lost

    def _restart(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = self._start_actors()

    def close(self, cancel: bool = False) -> None:
        """Kill the actors; shut down the Ray instance this pool started."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors, self._payload = [], None
        if self._owns:
            self._ray.shutdown()


def _start(ray: Any, address: str | None, workers: int) -> None:
    """Connect to `address`, or start a private single-machine Ray with `workers` CPUs."""
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"executor ray: cannot start or reach a cluster at "
                          f"{address or 'this machine'}: {one_line(str(exc), 200)}") from exc


__all__ = ["ExecutorOptions", "KINDS", "MAX_WORKERS", "LocalPool", "RayPool", "WorkerPool",
           "open_pool"]
