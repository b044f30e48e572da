"""YAML and JSON from files the user may not have written: size, expansion, nesting capped.

`yaml.safe_load` builds no arbitrary objects, but a 1 kB document of nested aliases
("billion laughs") expands to 10^9 nodes the moment anything walks it, and deep nesting
overflows the parser's recursion. Every YAML the project reads (configs, architecture files,
rate lists, `--set` values) goes through `load_yaml` / `read_yaml`; JSON from files or from
a model's metadata (calibration tables, embedded QGraph and sparsity descriptions) through
`load_json`, which turns deep nesting (RecursionError) into the same one-line error.
The caps are `compiler.core.limits` TEXT_BYTES, YAML_NODES and NESTING.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from compiler.core import limits
from compiler.core.errors import ConfigError, NpucError


def load_yaml(text: str, label: str) -> Any:
    """Parse one YAML document from `text` with the caps above.

    Raises:
        ConfigError: Too large, too deeply nested, expanding beyond the node cap, or not YAML.
    """
    cap = limits.limit("TEXT_BYTES")
    if len(text) > cap:
        raise ConfigError(f"{label}: {len(text):,} characters of YAML; the limit is {cap:,} "
                          "(NPUC_LIMIT_TEXT_BYTES raises it)")
    try:
        loader = yaml.SafeLoader(text)  # rejects NUL and other non-printable characters
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: not valid YAML ({_first_line(e)})") from e
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, label)
        return loader.construct_document(node)
    except RecursionError as e:
        raise ConfigError(f"{label}: YAML nested too deeply") from e
    except (ValueError, OverflowError) as e:  # a scalar its constructor rejects
        raise ConfigError(f"{label}: bad YAML value ({_first_line(e)})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: not valid YAML ({_first_line(e)})") from e
    finally:
        loader.dispose()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_text(path: Path, label: str, max_bytes: int | None = None) -> str:
    """The UTF-8 text of a regular file, its size checked before it is read.

    Raises:
        ConfigError: Missing, not a regular file, too large, unreadable or not UTF-8.
    """
    cap = max_bytes or limits.limit("TEXT_BYTES")
    try:
        if not path.is_file():
            what = "no such file" if not path.exists() else "not a regular file"
            raise ConfigError(f"{label}: {what}")
        size = path.stat().st_size
        if size > cap:
            raise ConfigError(f"{label}: {size:,} bytes; the limit is {cap:,} "
                              "(NPUC_LIMIT_TEXT_BYTES raises it)")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{label}: cannot read ({e.strerror or e})") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: not UTF-8 text (byte {e.start})") from e


def load_json(text: str | bytes, label: str, error: type[NpucError] = ConfigError) -> Any:
    """`json.loads` with bad text, deep nesting and non-UTF-8 bytes as one-line `error`s."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise error(f"{label}: JSON nested too deeply") from e
    except (ValueError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise error(f"{label}: not valid JSON ({_first_line(e)})") from e


def read_yaml(path: Path, label: str | None = None) -> Any:
    """`load_yaml` of a regular file, its size checked before it is read."""
    label = label or str(path)
    return load_yaml(read_text(path, label), label)


def _check_expansion(root: yaml.Node, label: str) -> None:
    # Aliases make the node graph a DAG; its expanded size is the tree size, computed once
    # per distinct node (memoized), so counting costs what the document costs.
    sizes: dict[int, int] = {}
    max_depth, max_nodes = limits.limit("NESTING"), limits.limit("YAML_NODES")

    def size(node: yaml.Node, depth: int) -> int:
        if depth > max_depth:
            raise ConfigError(f"{label}: YAML nested more than {max_depth} levels deep")
        key = id(node)
        if key not in sizes:
            sizes[key] = 0  # a recursive alias counts as a leaf, not forever
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            total = 1
            for child in children:
                total += size(child, depth + 1)
                if total > max_nodes:
                    raise ConfigError(f"{label}: YAML expands to more than "
                                      f"{max_nodes:,} nodes (aliases)")
            sizes[key] = total
        return sizes[key]

    size(root, 0)
