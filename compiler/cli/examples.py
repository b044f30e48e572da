"""The `examples:` block at the end of every sub-command's `--help`.

Each command module declares `EXAMPLES` (command line, what it does); `attach` renders them.
tests/compiler/cli/test_examples.py parses every example with the real parser, so an example
that names a removed flag fails the tests instead of misleading a user.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

Example = tuple[str, str]  # (the command line after `npuc`, what it does)

HEADER = "examples:"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but the examples block keeps its line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(HEADER):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def render(examples: Sequence[Example]) -> str:
    """The epilog text: each example as a comment line and the command."""
    lines = [HEADER]
    for command, what in examples:
        lines += [f"  # {what}", f"  npuc {command}"]
    return "\n".join(lines)


def attach(parser: argparse.ArgumentParser, examples: Sequence[Example]) -> None:
    """Show `examples` at the end of `parser`'s help."""
    parser.epilog = render(examples)
    parser.formatter_class = HelpFormatter
