"""Run one hostile case and list everything wrong with what happened.

A case is a command line plus the files it starts from. It runs in its own folder (the
working directory, with HOME and TMPDIR inside it) in a fork-server child or a real
`python -m compiler.cli` subprocess, under an address-space cap, a CPU-time cap, a file-size
cap and a wall-clock timeout. Afterwards the folder is compared with a snapshot taken before:
inputs must be byte-identical (same inode, same hash), FIFOs, devices and symlinks untouched,
and nothing may appear outside the declared outputs. The outcome must be exit 0 with an
output that passes its check, or exit 2 with a single `npuc: error:` line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MEM_CAP = 4 << 30          # address space per case
CPU_CAP = 60               # seconds of CPU per case
FSIZE_CAP = 256 << 20      # no tiny input justifies a bigger file
WALL_CAP = 180.0           # seconds, for a loaded 2-core machine

Producer = Callable[["Artefacts"], bytes]
Setup = Callable[[Path, "Artefacts"], None]
# stderr lines a successful or failed run may print besides its one error line
ALLOWED_STDERR = re.compile(r"^npuc: (WARNING: |warning: |\S+ \.\.\.$|interrupted$)")
# a project error that only wraps a Python exception is an internal error in disguise
DISGUISED = re.compile(r"\b(?:[A-Z]\w*(?:Error|Exception)|StopIteration|KeyboardInterrupt):")
TRACEBACK = re.compile(r"^(Traceback \(most recent call last\)|Exception in thread)", re.M)
# libraries' own caches under HOME that any program using them creates (docs/security.md)
LIBRARY_CACHES = (".home/.cache/matplotlib", ".home/.config/matplotlib")


@dataclass
class Artefacts:
    """The session's valid inputs (tiny models, data, quantized models, binaries)."""

    base: Path

    def path(self, rel: str) -> Path:
        """Absolute path of a base artefact."""
        return self.base / rel

    def read(self, rel: str) -> bytes:
        """Bytes of a base artefact."""
        return (self.base / rel).read_bytes()


@dataclass(frozen=True)
class Case:
    """One hostile invocation.

    Attributes:
        id: Unique test id, "kind/what/command".
        kind: Family for the counts (model-bytes, model-semantic, binary, config, calib,
            cli, output).
        argv: The command line after `npuc`, paths relative to the case folder.
        files: (relative path, producer of its bytes) written before the run.
        setup: Extra preparation (FIFOs, symlinks, read-only folders).
        outputs: Paths the command may create or replace (files, or folders and anything
            under them).
        check: `checks.<name>` run on `outputs[0]` after exit 0.
        expect: "ok" (must succeed), "error" (must fail with exit 2) or "any".
        fast: Part of the fast subset.
        interrupt_after: Send SIGINT to the case's process group after this many seconds.
        stdout_closed: stdout is a pipe whose reader has gone (`| head`).
        exec_: Run a real `python -m compiler.cli` subprocess instead of a fork.
    """

    id: str
    kind: str
    argv: tuple[str, ...]
    files: tuple[tuple[str, Producer], ...] = ()
    setup: Setup | None = None
    outputs: tuple[str, ...] = ()
    check: str | None = None
    expect: str = "any"
    fast: bool = False
    interrupt_after: float | None = None
    stdout_closed: bool = False
    exec_: bool = False

    @property
    def command(self) -> str:
        """The sub-command."""
        return next((a for a in self.argv if not a.startswith("-")), "?")


@dataclass
class Outcome:
    """What a run did."""

    rc: int
    stdout: str
    stderr: str
    timed_out: bool
    maxrss_kb: int
    cpu_s: float
    wall_s: float
    problems: list[str] = field(default_factory=list)


class Server:
    """The fork server (`tests/hostile/forkserver.py`) as a context manager."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile.forkserver"], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("hostile fork server did not start")

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        """Send one request, wait for its reply."""
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("hostile fork server died")
        return json.loads(line)

    def close(self) -> None:
        """Stop the server."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# -- snapshots ---------------------------------------------------------------------------------

def _entry(path: Path) -> tuple:
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return ("file", st.st_ino, hashlib.sha256(path.read_bytes()).hexdigest())
    if stat.S_ISLNK(mode):
        return ("link", st.st_ino, os.readlink(path))
    if stat.S_ISDIR(mode):
        return ("dir",)
    if stat.S_ISFIFO(mode):
        return ("fifo", st.st_ino)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return ("dev", st.st_ino, st.st_rdev)
    return ("other", st.st_ino)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (symlinks not followed): type, inode, content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = _entry(path)
    return out


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _is_parent_of_output(path: str, outputs: tuple[str, ...]) -> bool:
    return any(o.startswith(path.rstrip("/") + "/") for o in outputs)


def diff_problems(before: dict[str, tuple], after: dict[str, tuple],
                  outputs: tuple[str, ...]) -> list[str]:
    """Changes the case was not allowed to make."""
    problems = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        if _under(path, LIBRARY_CACHES) or _is_parent_of_output(path, LIBRARY_CACHES):
            continue
        if old is None:
            if not (_under(path, outputs) or (new[0] == "dir" and
                                              _is_parent_of_output(path, outputs))):
                problems.append(f"created outside the outputs: {path}")
        elif old[0] in ("fifo", "dev", "link", "other"):
            problems.append(f"{old[0]} replaced or removed: {path}")
        elif old[0] == "dir" and new is not None and new[0] == "dir":
            continue
        elif not _under(path, outputs):
            what = "removed" if new is None else "changed"
            problems.append(f"input {what}: {path}")
    return problems


# -- running -----------------------------------------------------------------------------------

def _case_env(case_dir: Path) -> dict[str, str]:
    home, tmp = case_dir / ".home", case_dir / ".tmp"
    return {"HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache"),
            "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _limits() -> None:
    os.setpgid(0, 0)
    resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP, MEM_CAP))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_CAP, CPU_CAP + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_CAP, FSIZE_CAP))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_exec(case: Case, case_dir: Path, out: Path, err: Path) -> dict[str, Any]:
    """A real `python -m compiler.cli` subprocess (Ctrl-C, `| head`, and NPUC_HOSTILE_EXEC)."""
    env = {**os.environ, **_case_env(case_dir), "PYTHONPATH": str(ROOT)}
    with open(out, "wb") as fo, open(err, "wb") as fe:
        stdout: Any = subprocess.PIPE if case.stdout_closed else fo
        proc = subprocess.Popen([sys.executable, "-m", "compiler.cli", *case.argv],
                                cwd=case_dir, env=env, stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=fe, preexec_fn=_limits)
    if case.stdout_closed:
        proc.stdout.close()
    reply = wait_child(proc.pid, WALL_CAP, case.interrupt_after)
    proc.returncode = reply["rc"]
    return reply


def wait_child(pid: int, timeout: float, sigint_after: float | None = None) -> dict[str, Any]:
    """Wait for a child (its own process group), interrupting or killing it on time."""
    start = time.monotonic()
    timed_out, delay = False, 0.002
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        elapsed = time.monotonic() - start
        if sigint_after is not None and elapsed >= sigint_after:
            os.killpg(pid, signal.SIGINT)  # what a terminal sends the foreground group
            sigint_after = None
        if elapsed > timeout:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)
    try:  # helpers the case left behind (worker pools) go with it
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return {"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
            "wall_s": time.monotonic() - start, "maxrss_kb": usage.ru_maxrss,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def _run(server: Server, case: Case, case_dir: Path) -> Outcome:
    out, err = case_dir.parent / f"{case_dir.name}.out", case_dir.parent / f"{case_dir.name}.err"
    if case.exec_ or case.stdout_closed or os.environ.get("NPUC_HOSTILE_EXEC"):
        reply = _run_exec(case, case_dir, out, err)
    else:
        reply = server.request({
            "op": "cli", "argv": list(case.argv), "cwd": str(case_dir), "out": str(out),
            "err": str(err), "env": _case_env(case_dir), "mem": MEM_CAP, "cpu": CPU_CAP,
            "fsize": FSIZE_CAP, "timeout": WALL_CAP, "sigint_after": case.interrupt_after})
    return Outcome(reply["rc"], out.read_text(errors="replace"),
                   err.read_text(errors="replace"), reply["timed_out"], reply["maxrss_kb"],
                   reply["cpu_s"], reply["wall_s"])


def stderr_problems(case: Case, o: Outcome) -> list[str]:
    """The exit code and stderr must be one of the two allowed shapes."""
    lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("npuc: error: ")]
    other = [ln for ln in lines if not ln.startswith("npuc: error: ")
             and not ALLOWED_STDERR.match(ln)]
    problems = []
    if TRACEBACK.search(o.stderr) or "npuc: internal error" in o.stderr:
        problems.append("traceback / internal error")
    if o.timed_out:
        problems.append(f"timed out after {o.wall_s:.0f}s")
    elif o.rc < 0 or o.rc > 128 and not (case.interrupt_after and o.rc == 130):
        problems.append(f"killed by signal / exit {o.rc} (cap hit or crash)")
    elif case.interrupt_after:
        if o.rc not in (0, 130):
            problems.append(f"Ctrl-C: exit {o.rc}, expected 130")
    elif case.stdout_closed:
        if o.rc not in (0, 1, 2):
            problems.append(f"closed stdout: exit {o.rc}")
    elif o.rc == 0:
        if errors:
            problems.append("exit 0 with an error line")
        if case.expect == "warn" and not any("WARNING" in ln for ln in lines):
            problems.append("degenerate data accepted without a warning")
    elif o.rc == 1 and case.command == "verify":  # a failed check (mismatches), by contract
        if len(errors) > 1:
            problems.append("verify: more than one error line")
    elif o.rc == 2:
        if len(errors) != 1:
            problems.append(f"exit {o.rc} with {len(errors)} error lines")
        elif DISGUISED.search(errors[0]):
            problems.append(f"Python exception passed off as an error: {errors[0][:160]}")
    else:
        problems.append(f"exit {o.rc}")
    if other and not case.stdout_closed:
        problems.append(f"stray stderr: {other[0][:160]!r}")
    if case.expect == "ok" and o.rc != 0:
        problems.append("expected success")
    if case.expect == "error" and o.rc != 2:
        problems.append("expected exit 2")
    if o.maxrss_kb * 1024 > MEM_CAP:
        problems.append(f"peak RSS {o.maxrss_kb // 1024} MiB over the cap")
    return problems


def _check_output(server: Server, case: Case, case_dir: Path) -> list[str]:
    target = case_dir / case.outputs[0]
    err = case_dir.parent / f"{case_dir.name}.check"
    reply = server.request({
        "op": "call", "func": f"tests.hostile.checks:{case.check}", "args": [str(target)],
        "cwd": str(case_dir), "out": str(err), "err": str(err), "env": _case_env(case_dir),
        "mem": MEM_CAP, "cpu": CPU_CAP, "timeout": WALL_CAP})
    if reply["rc"] == 0:
        return []
    tail = err.read_text(errors="replace").strip().splitlines()
    return [f"output fails {case.check}: {tail[-1][:200] if tail else reply['rc']}"]


def prepare(case: Case, case_dir: Path, art: Artefacts) -> None:
    """Write the case's files and run its setup."""
    case_dir.mkdir(parents=True)
    (case_dir / ".home").mkdir()
    (case_dir / ".tmp").mkdir()
    for rel, produce in case.files:
        path = case_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(produce(art))
    if case.setup:
        case.setup(case_dir, art)


def run_case(server: Server, case: Case, work: Path, art: Artefacts) -> Outcome:
    """Prepare, run and judge one case; `Outcome.problems` lists what went wrong."""
    case_dir = work / re.sub(r"[^A-Za-z0-9_.-]+", "_", case.id)
    for n in range(2, 100):  # hypothesis replays a failing example: keep the first run's
        if not case_dir.exists():
            break
        case_dir = case_dir.with_name(f"{case_dir.name.split('~')[0]}~{n}")
    prepare(case, case_dir, art)
    base_before = snapshot(art.base)
    before = snapshot(case_dir)
    outcome = _run(server, case, case_dir)
    after = snapshot(case_dir)
    _unfreeze(case_dir)
    problems = stderr_problems(case, outcome)
    # An interrupted run may not leave its outputs behind, whole or half-written (a failed
    # compile may: its report says which stage failed).
    allowed = () if case.interrupt_after and outcome.rc != 0 else case.outputs
    problems += diff_problems(before, after, allowed)
    problems += [f"session artefact changed: {p}"
                 for p in diff_problems(base_before, snapshot(art.base), ())]
    if outcome.rc == 0 and case.check and case.outputs and not problems:
        problems += _check_output(server, case, case_dir)
    outcome.problems = problems
    _record(case, outcome)
    if not problems:
        _cleanup(case_dir)
    return outcome


def _cleanup(case_dir: Path) -> None:
    for dirpath, _, _ in os.walk(case_dir):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(case_dir, ignore_errors=True)
    for suffix in (".out", ".err", ".check"):
        case_dir.with_name(case_dir.name + suffix).unlink(missing_ok=True)


def _unfreeze(case_dir: Path) -> None:
    """Undo `chattr +i` (read-only-folder cases run as root) so the folder can be removed."""
    if os.geteuid() == 0 and any(case_dir.rglob("ro")):
        subprocess.run(["chattr", "-R", "-i", str(case_dir)], capture_output=True, check=False)


def _record(case: Case, o: Outcome) -> None:
    log = os.environ.get("NPUC_HOSTILE_LOG")
    if not log:
        return
    line = {"id": case.id, "kind": case.kind, "command": case.command, "rc": o.rc,
            "problems": o.problems, "wall_s": round(o.wall_s, 2),
            "maxrss_mb": o.maxrss_kb // 1024,
            "stderr": o.stderr.strip().splitlines()[-1][:300] if o.stderr.strip() else ""}
    with open(log, "a") as f:
        f.write(json.dumps(line) + "\n")


def describe(case: Case, o: Outcome) -> str:
    """A failure message: the case, its problems and the end of its stderr."""
    tail = "\n".join(o.stderr.strip().splitlines()[-6:])
    return (f"{case.id}: npuc {' '.join(case.argv)}\n  problems: {o.problems}\n"
            f"  exit {o.rc}, {o.wall_s:.1f}s, {o.maxrss_kb // 1024} MiB\n  stderr:\n{tail}")
