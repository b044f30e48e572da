"""Run a module as `python -m MODULE ARGS...` and write this process's own peak RSS to a file.

    python benchmarks/peak_rss.py REPORT MODULE [ARGS...]

The peak is the process's VmHWM (bytes, written to REPORT as text when the module exits, also
by an exception or `sys.exit`). The parent's view of a child's peak, `ru_maxrss` from
`wait4`/`getrusage(RUSAGE_CHILDREN)`, cannot be used for this on Linux: `exec` folds the
high-water mark of the address space it replaces (the parent's, for a vfork-style spawn as
Python's `subprocess` does) into the child's `maxrss`, so every child of a parent that once
held 380 MB reports at least 380 MB. VmHWM belongs to the new address space only.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def vm_hwm() -> int:
    """Peak resident set size of this process since `exec`, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status (not Linux?)")


def main() -> None:
    """Run MODULE as __main__ with ARGS, then write VmHWM to REPORT."""
    report, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.argv = [module, *args]
    sys.path[0] = os.getcwd()  # as `python -m` does: the caller's folder, not benchmarks/
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(report).write_text(str(vm_hwm()))


if __name__ == "__main__":
    main()
