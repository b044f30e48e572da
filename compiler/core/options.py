"""One declaration per option: the metadata that config schema, CLI flags and docs read.

A step's options are the fields of the dataclass of the code that uses them (for example
`passes.prune.pipeline.PruneOptions`). Each field is declared with `option(default, help,
...)`, which stores an `Option` record in the field's metadata; the driver builds the YAML
schema from it, the CLI builds its argparse flags from it and `docs/config.md` is generated
from it, so a name, a default or a choice is written exactly once.

Stdlib only: this module is part of the foundation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from compiler.core.errors import ConfigError

Check = Callable[[Any], "str | None"]
_NONE = type(None)


@dataclasses.dataclass(frozen=True)
class Option:
    """How one dataclass field appears in the config, on the command line and in the docs.

    Attributes:
        help: One-line description (docs, `--help`, error messages).
        types: Accepted Python types after YAML parsing (inferred from the default if empty;
            `None` is accepted when the default is None).
        key: Config key below the class's section (default: the field name).
        shared: Full dotted key of an option declared by another class that this field
            reads too (e.g. "seed"); the field then adds no key of its own.
        flag: Primary CLI flag (default: `--field-name`); "" for no flag.
        aliases: Further spellings of the flag.
        choices: Allowed values (checked in config and on the command line).
        check: `(value) -> reason or None` for values that are not None.
        item: Element type of a list option (CLI parsing and validation).
        list_sep: On the CLI a list is one string split at this separator.
        convert: Applied to a valid value before it reaches the dataclass (e.g. `tuple`).
        no_key: Why the flag has no config key (then the option adds no key).
        metavar: CLI metavar.
        required: The CLI flag is required.
        const: For `bool | str` options: the value of the flag given without an argument.
        repeat: The CLI flag may be given several times; its values are collected in a list.
    """

    help: str
    types: tuple[type, ...] = ()
    key: str | None = None
    shared: str | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    check: Check | None = None
    item: type | None = None
    list_sep: str | None = None
    convert: Callable[[Any], Any] | None = None
    no_key: str = ""
    metavar: str | None = None
    required: bool = False
    const: Any = None
    repeat: bool = False


@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared field: its name, default and `Option`."""

    name: str
    default: Any
    option: Option

    def key(self, prefix: str) -> str | None:
        """The full dotted config key, or None when the option has no key."""
        if self.option.shared:
            return self.option.shared
        if self.option.no_key:
            return None
        key = self.option.key or self.name
        return f"{prefix}.{key}" if prefix else key

    def owns_key(self) -> bool:
        """Whether this declaration defines its key (not shared, not keyless)."""
        return not self.option.shared and not self.option.no_key

    @property
    def flag(self) -> str:
        """The primary CLI flag ("" when there is none)."""
        if self.option.flag is not None:
            return self.option.flag
        return "--" + self.name.replace("_", "-")

    @property
    def types(self) -> tuple[type, ...]:
        """Accepted types (declared, or inferred from the default)."""
        types = self.option.types or _infer_types(self.default)
        return types + (_NONE,) if self.default is None and _NONE not in types else types


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with default `default` and an `Option` in its metadata.

    Lists and other mutable defaults are stored as tuples (immutable, comparable).
    """
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"option": Option(help, **kw)})


def options_of(cls: type) -> list[Declared]:
    """The declared options of dataclass `cls`, in field order (fields without one skipped)."""
    return [Declared(f.name, f.default, f.metadata["option"])
            for f in dataclasses.fields(cls) if "option" in f.metadata]


def from_mapping(cls: type, mapping: Mapping[str, Any], prefix: str = "",
                 label: str = "config") -> Any:
    """An instance of `cls` from a flat {dotted key: value} mapping, every value checked.

    Keys the mapping lacks keep their defaults; options without a key are left at their
    defaults.

    Raises:
        ConfigError: `"<label>: key '<dotted key>' = <value> <reason>"`.
    """
    kwargs = {}
    for d in options_of(cls):
        key = d.key(prefix)
        if key is not None and key in mapping:
            kwargs[d.name] = checked(d, mapping[key], f"{label}: key '{key}'")
    return cls(**kwargs)


def checked(d: Declared, value: Any, where: str) -> Any:
    """`value` converted for field `d`, or `ConfigError` starting with `where`."""
    reason = problem(d, value)
    if reason:
        raise ConfigError(f"{where} = {value!r} {reason}")
    return _convert(d, value)


def problem(d: Declared, value: Any) -> str | None:
    """Why `value` is not valid for `d`, or None."""
    types = d.types
    if isinstance(value, bool) and bool not in types:
        return f"must be {type_names(types)}"
    if not isinstance(value, types):
        return f"must be {type_names(types)}"
    if value is None:
        return None
    if not _finite(value):
        return "must be a finite number"
    if isinstance(value, (list, tuple)) and d.option.item is not None:
        if not all(_is_item(v, d.option.item) for v in value):
            return f"must be a list of {type_names((d.option.item,))}"
    if d.option.choices is not None and value not in d.option.choices:
        return f"must be one of {list(d.option.choices)}"
    return d.option.check(value) if d.option.check else None


def _finite(value: Any) -> bool:
    # inf / nan pass every `> 0` check and then poison a latency or a ridge solve.
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def _is_item(value: Any, item: type) -> bool:
    if isinstance(value, bool) and item is not bool:
        return False
    return isinstance(value, (int, float) if item is float else item)


def _convert(d: Declared, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        value = tuple(value)
    if d.option.item is float and isinstance(value, tuple):
        value = tuple(float(v) for v in value)
    return d.option.convert(value) if d.option.convert else value


def _infer_types(default: Any) -> tuple[type, ...]:
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, (list, tuple)):
        return (list, tuple)
    if default is None:
        raise TypeError("an option with default None needs explicit types")
    return (type(default),)


def type_names(types: Sequence[type]) -> str:
    """("int", "NoneType") -> "an integer or null"."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             list: "a list", tuple: "a list", dict: "a mapping", _NONE: "null"}
    shown = [t for t in types if not (t is int and float in types)]  # int is a number
    words = dict.fromkeys(names.get(t, t.__name__) for t in shown)
    return " or ".join(words)


def plain(value: Any) -> Any:
    """A value as it appears in YAML and in the flat config: tuples become lists."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


# Reusable checks: each returns None when the value is fine, else the reason.

def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A check that a number lies in the interval, e.g. `in_range(0, 1, hi_open=True)`."""
    def check(v: Any) -> str | None:
        ok = (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        return None if ok else (f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                                f"{')' if hi_open else ']'}")
    return check


def positive(v: Any) -> str | None:
    """A number > 0."""
    return None if v > 0 else "must be positive"


def non_negative(v: Any) -> str | None:
    """A number >= 0."""
    return None if v >= 0 else "must be >= 0"


def positive_ints(v: Any) -> str | None:
    """A list of positive integers."""
    ok = all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
    return None if ok else "must be a list of positive integers"


__all__ = ["Declared", "Option", "checked", "from_mapping", "in_range", "non_negative",
           "option", "options_of", "plain", "positive", "positive_ints", "problem",
           "type_names"]
