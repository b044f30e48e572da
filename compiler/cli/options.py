"""argparse flags generated from the option declarations (`compiler.core.options`).

`add_flags(parser, cls)` adds one flag per declared option of `cls` (bools as `--x/--no-x`,
lists as one separated string, defaults and choices from the declaration);
`from_args(args, cls)` builds the validated options object back. `FLAG_REASONS` holds the
flags that are not generated from a declaration, each with the reason, and
`flag_keys(command)` maps every flag of a step command to its config key (or reason).

Run `python -m compiler.cli.options --write-docs` to rewrite the generated blocks of
docs/config.md (`--check` exits 1 when they are stale).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from compiler.core.errors import ConfigError
from compiler.core.options import Declared, checked, options_of, plain, problem

_MARK = "npuc_option"  # attribute of a generated argparse action: (options class, field name)


class ValueOrBool(argparse.Action):
    """`--x [VALUE]` (VALUE, or `const` without one) and `--no-x` (False)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        negated = [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        super().__init__([*option_strings, *negated], dest, nargs="?", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        """Store False for `--no-x`, else the value or `const`."""
        if option_string and option_string.startswith("--no-"):
            values = False
        setattr(namespace, self.dest, self.const if values is None else values)


def dest_of(flag: str) -> str:
    """`--calib-limit` -> `calib_limit` (the argparse dest of a generated flag)."""
    return flag.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
              only: Iterable[str] | None = None, skip: Iterable[str] = (),
              shortcut: bool = False, flags: dict[str, str] | None = None) -> None:
    """Add the flags of the options declared by `cls`.

    A flag already on the parser (an option shared by two classes, e.g. `--seed`) is not
    added twice.

    Args:
        parser: Parser or argument group.
        cls: Options dataclass.
        only: Field names to add (default: all with a flag).
        skip: Field names not to add.
        shortcut: `npuc compile` shortcuts: default None (unset keeps the config value).
        flags: Field name -> flag spelling used instead of the declared one.
    """
    wanted = set(only) if only is not None else None
    for d in options_of(cls):
        flag = (flags or {}).get(d.name, d.flag)
        if not flag or d.name in skip or (wanted is not None and d.name not in wanted):
            continue
        if flag in {s for a in parser._actions for s in a.option_strings}:
            continue
        setattr(_add(parser, d, flag, shortcut), _MARK, (cls, d.name))


def _add(parser: Any, d: Declared, flag: str, shortcut: bool) -> argparse.Action:
    opt = d.option
    kw: dict[str, Any] = {"dest": dest_of(flag), "help": _help(d, shortcut)}
    kw["default"] = None if shortcut else d.default
    if opt.metavar:
        kw["metavar"] = opt.metavar
    elif opt.choices and not _is_bool(d):
        kw["metavar"] = "|".join(str(c) for c in opt.choices if not isinstance(c, bool))
    if opt.required and not shortcut:
        kw["required"] = True
    if _is_bool(d):
        kw.pop("metavar", None)
        return parser.add_argument(flag, *opt.aliases, action=argparse.BooleanOptionalAction,
                                   **kw)
    if opt.repeat:
        return parser.add_argument(flag, *opt.aliases, action="append", **kw)
    if opt.const is not None:
        return parser.add_argument(flag, *opt.aliases, action=ValueOrBool, const=opt.const, **kw)
    return parser.add_argument(flag, *opt.aliases, type=_cli_type(d), **kw)


def _is_bool(d: Declared) -> bool:
    return set(d.types) <= {bool, type(None)} and bool in d.types


def _cli_type(d: Declared) -> type:
    types = set(d.types) - {type(None)}
    if d.option.list_sep or not types <= {int, float}:
        return str
    return float if float in types else int


def _help(d: Declared, shortcut: bool) -> str:
    text = d.option.help
    if _is_bool(d) or d.default is None or shortcut:
        return text.replace("%", "%%")
    return f"{text} (default {_show(d)})".replace("%", "%%")


def _show(d: Declared) -> str:
    value = plain(d.default)
    if isinstance(value, list) and d.option.list_sep:
        return d.option.list_sep.join(map(str, value)) or "none"
    return str(value)


def from_args(args: argparse.Namespace, cls: type, *, flags: dict[str, str] | None = None,
              **fixed: Any) -> Any:
    """The options object of `cls` from parsed arguments, validated.

    Fields without a flag on this parser keep their defaults (or the values in `fixed`).
    Checks across options run first (`cls.validate()`, whose messages name the flags),
    then each value is checked against its declaration.

    Raises:
        ConfigError: One line naming the flag.
    """
    values, flagged = dict(fixed), {}
    for d in options_of(cls):
        flag = (flags or {}).get(d.name, d.flag)
        if d.name in fixed or not flag or not hasattr(args, dest_of(flag)):
            continue
        values[d.name] = _parse(d, getattr(args, dest_of(flag)), flag)
        flagged[d.name] = (d, flag)
    options = cls(**values)
    if hasattr(options, "validate"):
        options.validate()
    for name, (d, flag) in flagged.items():
        reason = problem(d, values[name])
        if reason:
            raise ConfigError(f"{flag} {values[name]!r}: {_cli_reason(d, values[name], reason)}")
        values[name] = checked(d, values[name], flag)
    return cls(**values)


def _cli_reason(d: Declared, value: Any, reason: str) -> str:
    """A choice error in the words of the library's own checks ("unknown calibrator")."""
    choices = d.option.choices
    if choices is None or value in choices:
        return reason
    names = ", ".join(str(c) for c in choices if not isinstance(c, bool))
    return f"unknown {d.name.replace('_', ' ')} (choose from {names})"


def _parse(d: Declared, value: Any, flag: str) -> Any:
    """A list option's separated string -> a list of its items."""
    if not (d.option.list_sep and isinstance(value, str)):
        return value
    parts = [p.strip() for p in value.split(d.option.list_sep) if p.strip()]
    item = d.option.item or str
    try:
        return [item(p) for p in parts]
    except ValueError as e:
        raise ConfigError(f"{flag} {value!r}: items must be {item.__name__} values "
                          f"separated by {d.option.list_sep!r}") from e


def flag_name(action: argparse.Action) -> str:
    """An action's name in tables: its first `--` spelling, or the positional's dest."""
    long = [s for s in action.option_strings if s.startswith("--")]
    return (long or action.option_strings or [action.dest])[0]


def generated_flags(parser: argparse.ArgumentParser) -> dict[str, tuple[type, str]]:
    """{flag: (options class, field name)} of the flags `add_flags` put on `parser`."""
    return {flag_name(a): getattr(a, _MARK) for a in parser._actions if hasattr(a, _MARK)}


def parser_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag and positional of `parser` (see `flag_name`), except --help."""
    return [flag_name(a) for a in parser._actions if a.dest != "help"]


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one `npuc` sub-command (built the way `npuc` builds it)."""
    from compiler.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0]
    return sub.choices[command]


# Flags of the step commands that are not generated from an option declaration, and why
# `npuc compile` has no config key for them. A test fails if a flag is in neither place.
FLAG_REASONS: dict[str, dict[str, str]] = {
    "prune": {"model": "model", "--output": "(written as model.pruned.onnx in -o DIR)",
              "--json": "(npuc compile --json)"},
    "sparsify": {"model": "model", "--output": "(written as model.sparse.onnx in -o DIR)",
                 "--json": "(npuc compile --json)"},
    "quantize": {"model": "model",
                 "--output": "(written as model.quant.onnx / model.qdq.onnx in -o DIR)",
                 "--json": "(npuc compile --json)"},
    "build": {"model": "(the quantized model of the run)",
              "--output": "(written as model.bin in -o DIR)", "--json": "(npuc compile --json)"},
    "verify": {"model": "(the quantized model of the run)", "binary": "(model.bin of the run)",
               "--json": "(npuc compile --json)"},
    "perf": {"binary": "(model.bin of the run)",
             "--top": "(display: the N slowest layers, 0 all; compile prints "
                      "report.top_layers of them after its summary)",
             "--json": "(npuc compile --json)"},
    "eval": {"model": "(float, compressed and int8 models of the run)",
             "--reference": "(always the float model of the run)",
             "--json": "(npuc compile --json)"},
}
STEP_COMMANDS = tuple(FLAG_REASONS)


def flag_keys(command: str) -> dict[str, str]:
    """Every flag of a step command -> the config key compile reads, or "(reason)"."""
    from compiler.driver.config import STEPS

    section = {cls: prefix for prefix, cls in STEPS.values()}
    parser = command_parser(command)
    out = {}
    for flag in parser_flags(parser):
        if flag in FLAG_REASONS[command]:
            out[flag] = FLAG_REASONS[command][flag]
            continue
        cls, name = generated_flags(parser)[flag]
        d = next(x for x in options_of(cls) if x.name == name)
        out[flag] = d.key(section.get(cls, "")) or f"({d.option.no_key})"
    return out


def flags_markdown() -> str:
    """The step-command flag -> config key table (a generated block of docs/config.md)."""
    rows = ["| command | flag | config key |", "|---|---|---|"]
    for command in STEP_COMMANDS:
        for flag, key in flag_keys(command).items():
            cell = key if key.startswith("(") else f"`{key}`"
            rows.append(f"| `npuc {command}` | `{flag}` | {cell} |")
    return "\n".join(rows)


DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def generated_blocks() -> dict[str, str]:
    """Block name -> generated Markdown, for the `<!-- BEGIN name -->` markers."""
    from compiler.driver.config import schema_markdown

    return {"keys": schema_markdown(), "flags": flags_markdown()}


def render(text: str, blocks: dict[str, str]) -> str:
    """`text` with each marked block replaced by its generated content."""
    for name, body in blocks.items():
        begin, end = f"<!-- BEGIN {name} (generated) -->", f"<!-- END {name} -->"
        head, sep, rest = text.partition(begin)
        if not sep or end not in rest:
            raise ConfigError(f"docs/config.md: no block '{name}' ({begin} ... {end})")
        text = f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """`--write-docs` rewrites docs/config.md's generated blocks; `--check` compares."""
    parser = argparse.ArgumentParser(prog="python -m compiler.cli.options")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = render(current, generated_blocks())
    if args.write_docs and wanted != current:
        DOC.write_text(wanted)
        print(f"wrote {DOC}")
    if args.check and wanted != current:
        print(f"{DOC} is stale: run python -m compiler.cli.options --write-docs",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
