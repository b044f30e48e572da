"""YAML from files the user may not have written: size, expansion and nesting are capped.

`yaml.safe_load` builds no arbitrary objects, but a 1 kB document of nested aliases
("billion laughs") expands to 10^9 nodes the moment anything walks it, and deep nesting
overflows the parser's recursion. Every YAML the project reads (configs, architecture files,
rate lists, `--set` values) goes through `load_yaml` / `read_yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compiler.core.errors import ConfigError

MAX_BYTES = 1 << 20        # 1 MiB: configs and architecture files are a few kB
MAX_EXPANDED_NODES = 100_000  # nodes after expanding every alias
MAX_DEPTH = 100


def load_yaml(text: str, label: str) -> Any:
    """Parse one YAML document from `text` with the caps above.

    Raises:
        ConfigError: Too large, too deeply nested, expanding beyond the node cap, or not YAML.
    """
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{label}: {len(text):,} characters of YAML; the limit is "
                          f"{MAX_BYTES:,}")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, label)
        return loader.construct_document(node)
    except RecursionError as e:
        raise ConfigError(f"{label}: YAML nested too deeply") from e
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{label}: not valid YAML ({first})") from e
    finally:
        loader.dispose()


def read_yaml(path: Path, label: str | None = None) -> Any:
    """`load_yaml` of a regular file, its size checked before it is read."""
    label = label or str(path)
    try:
        if not path.is_file():
            what = "no such file" if not path.exists() else "not a regular file"
            raise ConfigError(f"{label}: {what}")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{label}: {size:,} bytes of YAML; the limit is {MAX_BYTES:,}")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{label}: cannot read ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: not UTF-8 text (byte {e.start})") from e
    return load_yaml(text, label)


def _check_expansion(root: yaml.Node, label: str) -> None:
    # Aliases make the node graph a DAG; its expanded size is the tree size, computed once
    # per distinct node (memoized), so counting costs what the document costs.
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ConfigError(f"{label}: YAML nested more than {MAX_DEPTH} levels deep")
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
                if total > MAX_EXPANDED_NODES:
                    raise ConfigError(f"{label}: YAML expands to more than "
                                      f"{MAX_EXPANDED_NODES:,} nodes (aliases)")
            sizes[key] = total
        return sizes[key]

    size(root, 0)
