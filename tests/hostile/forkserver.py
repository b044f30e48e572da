"""A fork server for the hostile-input suite: imports npuc once, forks one child per case.

Starting the CLI costs ~1.5 s of imports (onnx, onnxruntime, numpy, networkx, PIL); a
thousand cases would spend most of their time there. The server imports everything once and
answers JSON-line requests on stdin: each request forks a child that applies the resource
limits (address space, CPU time, file size), its own process group, working directory,
environment and stdout/stderr files, then runs `compiler.cli.main(argv)` exactly as
`python -m compiler.cli` does (the same exit code, the same exit-time flush of stdout).
The reply carries the exit code or signal, whether the wall-clock timeout fired, peak RSS
and CPU time. Run as `python -m tests.hostile.forkserver` from the worktree.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import sys
import traceback
from typing import Any

from tests.hostile.harness import wait_child

PRELOAD = ("compiler.cli", "compiler.driver.pipeline", "compiler.driver.data",
           "compiler.driver.evaluate", "passes.quantize.api", "passes.prune.pipeline",
           "targets.npusim", "onnxruntime", "PIL.Image", "yaml", "tests.hostile.checks")


def _preload() -> None:
    from compiler.cli import build_parser

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    build_parser()  # imports every sub-command module


def _limit(kind: int, value: int | None) -> None:
    if value:
        resource.setrlimit(kind, (value, value))


def _emulate_python(argv: list[str]) -> int:
    """`sys.exit(main(argv))` with the interpreter's handling of what escapes it."""
    from compiler.cli import main

    try:
        code: Any = main(argv)
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        traceback.print_exc()
        return 128 + signal.SIGINT
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        return 1
    import atexit

    atexit._run_exitfuncs()  # what the interpreter runs at exit (multiprocessing clean-up)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        print("Exception ignored on flushing sys.stdout: BrokenPipeError", file=sys.stderr)
        return 120
    return code


def _call(spec: str, args: list[Any]) -> int:
    module, _, name = spec.partition(":")
    try:
        getattr(importlib.import_module(module), name)(*args)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _child(req: dict[str, Any]) -> None:
    code = 99
    try:
        os.setpgid(0, 0)
        _limit(resource.RLIMIT_AS, req.get("mem"))
        cpu = req.get("cpu")
        if cpu:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        _limit(resource.RLIMIT_FSIZE, req.get("fsize"))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        for target, path in ((1, req["out"]), (2, req["err"])):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.update(req.get("env", {}))
        import tempfile

        tempfile.tempdir = None  # TMPDIR may have changed
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if req["op"] == "cli":
            sys.argv = ["npuc", *req["argv"]]
            code = _emulate_python(req["argv"])
        else:
            code = _call(req["func"], req.get("args", []))
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def serve(inp: Any, out: Any) -> None:
    """Answer one JSON request per line until stdin closes."""
    for line in inp:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        try:
            os.setpgid(pid, pid)  # also here: a timeout must not race the child
        except OSError:
            pass
        reply = wait_child(pid, req.get("timeout", 120), req.get("sigint_after"))
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main() -> None:
    """Keep the protocol channel private, preload, then serve."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the imports print goes to stderr, not into the protocol
    _preload()
    channel.write(json.dumps({"ready": os.getpid()}) + "\n")
    channel.flush()
    serve(sys.stdin, channel)


if __name__ == "__main__":
    main()
