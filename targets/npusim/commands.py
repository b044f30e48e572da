"""CLI helpers of the npusim target: `npuc inspect model.bin`, input data for `run`/`verify`.

The sub-command modules in `compiler/commands/` (build, verify, run, perf) stay thin and
call these; everything prints through the shared table/JSON helpers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.commands.common import format_table, human, print_json
from compiler.ir import Model
from targets.npusim import container, isa
from targets.npusim.binary import load_binary


def interface_model(program: isa.Program) -> Model:
    """A node-less model with the binary's inputs.

    `compiler.data.load_feeds` then checks data sources against a binary exactly as it does
    against an ONNX model.
    """
    inputs = [gs.Variable(program.tensors[i].name, np.dtype(program.tensors[i].dtype),
                          [None] + list(program.tensors[i].shape[1:]))
              for i in program.inputs]
    return Model(gs.Graph(inputs=inputs, outputs=[]), 17)


def feeds_for(program: isa.Program, source: Any, samples: int, seed: int
              ) -> tuple[dict[str, np.ndarray], str]:
    """Feeds from a data source (`--inputs`), or seeded standard-normal ones."""
    if source is not None:
        from compiler.data import load_feeds

        feeds = load_feeds(source, interface_model(program), limit=samples)
        return feeds.arrays, str(source)
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in program.inputs:
        t = program.tensors[i]
        arrays[t.name] = rng.standard_normal((samples,) + t.shape[1:]).astype(t.dtype)
    return arrays, f"random (seed {seed})"


def inspect_binary(args: argparse.Namespace) -> int:
    """Disassemble a binary: header, sections, tensors, blobs and instructions."""
    data = Path(args.model).read_bytes()
    program = load_binary(args.model)
    sections = container.unpack(data)
    if getattr(args, "json", False):
        print_json(_binary_dict(program, sections, len(data)))
        return 0
    meta = program.metadata
    print(f"{args.model}: npusim binary v{container.VERSION[0]}.{container.VERSION[1]}, "
          f"{human(len(data))}B, arch {meta.get('arch')}, source {meta.get('source')}")
    print(format_table([(s.name, len(v)) for s, v in sections.items()], ["section", "bytes"]))
    print("\ntensors")
    print(format_table([(i, t.name, "x".join(map(str, t.shape)), t.dtype, t.scale, t.region,
                         t.offset) for i, t in enumerate(program.tensors)],
                       ["id", "name", "shape", "dtype", "scale", "region", "offset"]))
    print(f"arena {program.arena_size:,} bytes\n\ninstructions")
    for i, ins in enumerate(program.code):
        print(f"{i:5d}  {disassemble(program, ins)}")
    return 0


def _binary_dict(program: isa.Program, sections: dict, size: int) -> dict[str, Any]:
    return {"bytes": size, "version": list(container.VERSION),
            "sections": {s.name: len(v) for s, v in sections.items()},
            "metadata": program.metadata, "arena_bytes": program.arena_size,
            "tensors": [{"id": i, "name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                         "scale": t.scale, "region": t.region, "offset": t.offset}
                        for i, t in enumerate(program.tensors)],
            "instructions": [disassemble(program, ins) for ins in program.code]}


def disassemble(program: isa.Program, ins: isa.Instr) -> str:
    """One readable line: mnemonic, unit, operands, parameters, source node."""
    parts = []
    for fname, _ in isa.field_specs(type(ins)):
        value = getattr(ins, fname)
        if fname in ins.TENSORS:
            parts.append(f"{fname}={_tensors(program, value)}")
        elif fname in ins.BLOBS:
            parts.append(f"{fname}={_blobs(program, value)}")
        elif isinstance(value, tuple):
            parts.append(f"{fname}={','.join(map(str, value))}")
        else:
            parts.append(f"{fname}={value:g}" if isinstance(value, float) else
                         f"{fname}={value}")
    unit = "cpu" if ins.unit == isa.CPU else "npu"
    return f"{ins.kind:<10} {unit}  {' '.join(parts)}  ; {ins.name}"


def _tensors(program: isa.Program, ids: int | tuple[int, ...]) -> str:
    ids = ids if isinstance(ids, tuple) else (ids,)
    return ",".join(f"t{i}[{'x'.join(map(str, program.tensors[i].shape))}]" for i in ids)


def _blobs(program: isa.Program, ids: int | tuple[int, ...]) -> str:
    ids = ids if isinstance(ids, tuple) else (ids,)
    out = []
    for i in ids:
        b = program.blobs[i]
        shape = "x".join(map(str, b.array.shape)) if b.array is not None else f"{len(b.raw)}B"
        note = ""
        if b.block:
            note = f" 1x{b.block}-sparse {1 - b.nonzero_blocks / max(b.total_blocks, 1):.0%} zero"
        out.append(f"b{i}<{b.kind} {shape}{note}>")
    return ",".join(out)
