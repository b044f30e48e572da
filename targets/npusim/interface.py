"""How tools talk to an npusim binary: its input interface, a description, the disassembler.

The sub-commands in `compiler/cli/` (inspect, build, verify, run, perf) call these and do
the printing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.feeds import Feeds
from compiler.core.ir import Model
from targets.npusim import container, isa


def interface_model(program: isa.Program) -> Model:
    """A node-less model with the binary's inputs.

    The driver's data loader then checks data sources against a binary exactly as it does
    against an ONNX model.
    """
    inputs = [gs.Variable(program.tensors[i].name, np.dtype(program.tensors[i].dtype),
                          [None] + list(program.tensors[i].shape[1:]))
              for i in program.inputs]
    return Model(gs.Graph(inputs=inputs, outputs=[]), 17)


def feeds_for(program: isa.Program, data: Feeds | None, samples: int | None, seed: int,
              label: Any = None) -> tuple[dict[str, np.ndarray], str]:
    """The given feeds (`--inputs`, loaded by the driver), or seeded standard-normal ones."""
    if data is not None:
        return data.arrays, str(label if label is not None else data.source)
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in program.inputs:
        t = program.tensors[i]
        arrays[t.name] = rng.standard_normal((samples,) + t.shape[1:]).astype(t.dtype)
    return arrays, f"random (seed {seed})"


def binary_dict(program: isa.Program, sections: dict, size: int) -> dict[str, Any]:
    """Everything `npuc inspect model.bin` shows, as plain data (JSON-ready)."""
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


def shape_text(shape: tuple[int, ...]) -> str:
    """`1x64x4`; a run-time dimension (host tensors) prints as `?`."""
    return "x".join("?" if d == isa.RUNTIME_DIM else str(d) for d in shape)


def _tensors(program: isa.Program, ids: int | tuple[int, ...]) -> str:
    ids = ids if isinstance(ids, tuple) else (ids,)
    return ",".join(f"t{i}[{shape_text(program.tensors[i].shape)}]" for i in ids)


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
