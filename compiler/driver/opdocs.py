"""Generated docs tables of the int8 ops: written from the op definitions, checked by a test.

Blocks between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->` markers
are rendered from `compiler.core.qops.OPS` (float patterns, spec sections, formulas) and the
npusim tables (instructions, op support). Regenerate with
`python -m compiler.driver.opdocs`; `--check` exits 1 when a file is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from compiler.core.errors import ConfigError
from compiler.core.qops import OPS
from targets.npusim import isa
from targets.npusim.capability import supported_ops_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def ops_table() -> str:
    """docs/quantization.md: each quantized op with its float patterns and arithmetic."""
    lines = ["| QOp | float patterns (matched in `compiler/core/qops/<family>.py`) | spec | "
             "integer arithmetic |", "|---|---|---|---|"]
    for kind, d in OPS.items():
        patterns = d.patterns or "inserted by the builder"
        lines.append(f"| `{kind}` | {patterns} | {d.section} | {d.summary} |")
    return "\n".join(lines)


def spec_index() -> str:
    """docs/fixed-point.md: every op's section, integer formula and defining module."""
    lines = ["| QOp | section | integer arithmetic | defined in |", "|---|---|---|---|"]
    for kind, d in OPS.items():
        module = d.cls.__module__.replace(".", "/") + ".py"
        lines.append(f"| `{kind}` | {d.section} | {d.summary} | `{module}` |")
    return "\n".join(lines)


def _doc_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0]


def opcode_table() -> str:
    """docs/binary-format.md: every instruction's opcode, mnemonic and payload fields."""
    lines = ["| opcode | mnemonic | fields (after name) | meaning |", "|---|---|---|---|"]
    for cls in sorted(isa.INSTRUCTIONS, key=lambda c: c.OPCODE):
        fields = ", ".join(name for name, _ in isa.field_specs(cls))
        lines.append(f"| {cls.OPCODE} | {isa.MNEMONIC[cls]} | {fields} | "
                     f"{_doc_line(cls).replace('|', '/')} |")
    return "\n".join(lines)


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "ops": ("quantization.md", ops_table),
    "spec": ("fixed-point.md", spec_index),
    "opcodes": ("binary-format.md", opcode_table),
    "capabilities": ("binary-format.md", supported_ops_markdown),
}


def render(text: str, name: str, body: str) -> str:
    """`text` with block `name` replaced by `body` (indented like its BEGIN marker)."""
    pattern = re.compile(rf"^([ \t]*)<!-- BEGIN GENERATED: {name} -->\n.*?"
                         rf"^[ \t]*<!-- END GENERATED: {name} -->$", re.S | re.M)
    match = pattern.search(text)
    if match is None:
        raise ConfigError(f"docs: no GENERATED block {name!r}")
    pad = match.group(1)
    inner = "\n".join(pad + line if line else line for line in body.splitlines())
    block = (f"{pad}<!-- BEGIN GENERATED: {name} -->\n{inner}\n"
             f"{pad}<!-- END GENERATED: {name} -->")
    return text[:match.start()] + block + text[match.end():]


def generated(docs: Path = DOCS) -> dict[Path, str]:
    """Every docs file with a generated block -> its up-to-date text."""
    out: dict[Path, str] = {}
    for name, (file, make) in BLOCKS.items():
        path = docs / file
        out[path] = render(out.get(path) or path.read_text(encoding="utf-8"), name, make())
    return out


def stale(docs: Path = DOCS) -> list[Path]:
    """Docs files whose generated blocks differ from the op definitions."""
    return [p for p, text in generated(docs).items() if p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    """Write the generated blocks (or only check them with --check)."""
    parser = argparse.ArgumentParser(prog="python -m compiler.driver.opdocs")
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        sys.stderr.write("".join(f"stale: {p}\n" for p in paths))
        return 1 if paths else 0
    for path, text in generated().items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
