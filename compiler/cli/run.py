"""`npuc run model.bin --inputs DATA -o out.npz`: execute a binary in the simulator."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np

from compiler.cli.common import format_table, print_json

EXAMPLES = (
    ('run model.bin --inputs images.npz -o outputs.npz',
     'execute the binary in the simulator'),
    ('run model.bin --inputs photos --samples 4 --profile',
     'where the simulator spends its time: the slowest instructions'),
)
PROFILE_TOP = 10

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `run` sub-command."""
    p = sub.add_parser("run", help="run a binary in the bit-exact simulator",
                       description="Execute model.bin on input data and save the outputs.")
    p.add_argument("binary", help="model.bin")
    p.add_argument("--inputs", help="input data: .npy/.npz, image folder or dataset name "
                                    "(default: seeded random inputs)")
    p.add_argument("--samples", type=int, default=None, help="use at most this many inputs")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.add_argument("--threads", type=int, default=None,
                   help="simulator worker threads (default: one per core)")
    p.add_argument("--profile", type=int, nargs="?", const=PROFILE_TOP, default=None,
                   metavar="N", help="time every instruction and show the N slowest "
                                     f"(default {PROFILE_TOP}; 0: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run and summarize (or save) the outputs."""
    from compiler.core.errors import ConfigError, DataError
    from compiler.core.io import write_atomic
    from compiler.core.outpaths import check_output, input_files
    from compiler.driver.data import load_data
    from targets.npusim import Simulator
    from targets.npusim.interface import feeds_for, interface_model
    from targets.npusim.simulate import join_frames, split_frames

    if args.samples is not None and args.samples < 1 or args.seed < 0:
        raise ConfigError(f"--samples {args.samples} --seed {args.seed}: need at least one "
                          "sample and a seed >= 0")
    if args.threads is not None and args.threads < 1 or (args.profile or 0) < 0:
        raise ConfigError(f"--threads {args.threads} --profile {args.profile}: need at least "
                          "one thread and a row count >= 0")
    if args.output is not None:
        check_output(args.output, input_files(args.binary, args.inputs))
    sim = Simulator(args.binary, threads=args.threads)
    samples = args.samples or (None if args.inputs else 1)
    data = load_data(args.inputs, interface_model(sim.program), limit=samples,
                     preprocess=recorded_preprocess(sim.program.metadata)) \
        if args.inputs is not None else None
    feeds, source = feeds_for(sim.program, data, samples, args.seed, label=args.inputs)
    profile = sim.profile(feeds) if args.profile is not None else None
    frames = profile.outputs if profile is not None else sim.run_frames(feeds)
    try:
        outputs = join_frames(frames)
    except DataError:  # run-time-shaped outputs of different sizes: keep frames apart
        outputs = split_frames(frames)
    if args.output:
        buf = io.BytesIO()
        np.savez(buf, **outputs)
        write_atomic(Path(args.output), buf.getvalue())
    rows = [{"name": n, "shape": list(v.shape), "dtype": str(v.dtype),
             "min": float(v.min()) if v.size else 0.0, "max": float(v.max()) if v.size else 0.0}
            for n, v in outputs.items()]
    summary = profile_summary(profile, args.profile) if profile is not None else None
    if args.json:
        print_json({"inputs": source, "output_file": args.output, "outputs": rows}
                   | ({"profile": summary} if summary else {}))
        return 0
    print(format_table([(r["name"], "x".join(map(str, r["shape"])), r["dtype"], r["min"],
                         r["max"]) for r in rows], ["output", "shape", "dtype", "min", "max"]))
    print(f"\ninputs: {source}" + (f"; wrote {args.output}" if args.output else ""))
    if summary:
        print_profile(summary)
    return 0


def profile_summary(profile: Any, top: int) -> dict[str, Any]:
    """Per-frame wall times of `Simulator.profile`: totals, per op kind, slowest first."""
    frames = max(profile.frames, 1)
    spent = sum(s.seconds for s in profile.steps) or 1.0
    return {"frames": profile.frames, "threads": profile.threads,
            "int8_gemm": profile.int8_gemm, "native_kernels": profile.native_kernels,
            "ms_per_frame": round(profile.total_seconds * 1e3 / frames, 3),
            "by_op_ms": {k: round(v * 1e3 / frames, 3) for k, v in profile.by_kind().items()},
            "slowest": [{"index": s.index, "name": s.name, "op": s.kind, "unit": s.unit,
                         "ms": round(s.seconds * 1e3 / frames, 3),
                         "share": round(s.seconds / spent, 4)}
                        for s in profile.slowest(top or None)]}


def print_profile(summary: dict[str, Any]) -> None:
    """The profile as a table of the slowest instructions and a per-op line."""
    print(f"\nsimulator profile: {summary['ms_per_frame']:.2f} ms/frame over "
          f"{summary['frames']} frame(s), {summary['threads']} thread(s), int8 GEMM engine "
          f"{'on' if summary['int8_gemm'] else 'off (float BLAS)'}, native kernels "
          f"{'on' if summary['native_kernels'] else 'off (numpy)'}")
    print("by op (ms/frame): " + ", ".join(f"{k} {v:.2f}"
                                            for k, v in summary["by_op_ms"].items()))
    print(format_table([(r["index"], r["name"], r["op"], r["unit"], r["ms"],
                         f"{r['share']:.1%}") for r in summary["slowest"]],
                       ["#", "instruction", "op", "unit", "ms/frame", "share"]))


def recorded_preprocess(metadata: dict) -> Any:
    """The image preprocessing `npuc compile` recorded in the binary (None: the defaults)."""
    from compiler.core.feeds import Preprocess

    options = metadata.get("options") if isinstance(metadata, dict) else None
    record = options.get("preprocess") if isinstance(options, dict) else None
    if not isinstance(record, dict):
        return None
    return Preprocess.from_record(record, "model.bin metadata: preprocess")
