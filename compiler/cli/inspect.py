"""`npuc inspect MODEL`: per-node op, shapes, MACs and parameters, with totals."""

from __future__ import annotations

import argparse
from pathlib import Path

from compiler.cli.common import add_input_shape_flag, format_table, human, load_bound, print_json
from compiler.core.cost import model_cost
from passes.canonicalize import canonicalize

EXAMPLES = (
    ('inspect model.onnx',
     'layers, shapes, MACs and parameters of a float model'),
    ('inspect model.onnx --input-shape 1x3x640x640',
     'bind a dynamic input size first'),
    ('inspect out/model.bin --json',
     'the sections and program of a built binary'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `inspect` sub-command."""
    p = sub.add_parser("inspect", help="per-node shapes, MACs and parameters of a model",
                       description="Show each node's op, input/output shapes, MACs and "
                                   "parameters, and the totals.")
    p.add_argument("model", help="an .onnx model (or an npuc binary, model.bin)")
    p.add_argument("--raw", action="store_true",
                   help="show the model as loaded (large Constant-node weights are already "
                        "initializers), without canonicalization (constant and BatchNorm "
                        "folding)")
    add_input_shape_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the cost table (or disassemble a binary)."""
    if _is_binary(args.model):
        return _inspect_binary(args)
    model = load_bound(args.model, args)
    if not args.raw:
        model = canonicalize(model, in_place=True).model
    report = model_cost(model)
    if args.json:
        print_json({"model": args.model, "opset": model.opset, "inputs": _inputs(model),
                    **report.to_dict()})
        return 0
    rows = [(n.name, n.op, _shapes(n.input_shapes[:1]), _shapes(n.output_shapes), n.macs,
             n.params) for n in report.nodes]
    inputs = ", ".join(f"{name} {_shapes([shape])}" for name, shape in _inputs(model).items())
    print(f"inputs: {inputs}\n")
    print(format_table(rows, ["node", "op", "input", "output", "MACs", "params"]))
    print(f"\ntotal: {len(report.nodes)} nodes, {human(report.macs)} MACs ({report.macs:,}), "
          f"{human(report.ops)} other ops, {human(report.params)} params ({report.params:,})")
    return 0


def _inspect_binary(args: argparse.Namespace) -> int:
    """Disassemble a binary: header, sections, tensors and instructions."""
    from targets.npusim import container
    from targets.npusim.binary import load_binary
    from targets.npusim.interface import binary_dict, disassemble, shape_text

    data = Path(args.model).read_bytes()
    program = load_binary(args.model)
    sections = container.unpack(data)
    if args.json:
        print_json({"model": args.model, **binary_dict(program, sections, len(data))})
        return 0
    meta = program.metadata
    print(f"{args.model}: npusim binary v{container.VERSION[0]}.{container.VERSION[1]}, "
          f"{human(len(data))}B, arch {meta.get('arch')}, source {meta.get('source')}")
    print(format_table([(s.name, len(v)) for s, v in sections.items()], ["section", "bytes"]))
    print("\ntensors")
    print(format_table([(i, t.name, shape_text(t.shape), t.dtype, t.scale, t.region,
                         t.offset) for i, t in enumerate(program.tensors)],
                       ["id", "name", "shape", "dtype", "scale", "region", "offset"]))
    print(f"arena {program.arena_size:,} bytes\n\ninstructions")
    for i, ins in enumerate(program.code):
        print(f"{i:5d}  {disassemble(program, ins)}")
    return 0


def _inputs(model) -> dict[str, list | None]:
    """{input name: bound shape} of the model's graph inputs."""
    return {t.name: list(t.shape) if t.shape is not None else None
            for t in model.graph.inputs}


def _shapes(shapes: list) -> str:
    return " ".join("x".join(map(str, s)) if s is not None else "?" for s in shapes)


def _is_binary(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"NPUB"
    except OSError:
        return False
