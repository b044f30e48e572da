"""Per-group pruning rates: uniform ratio, explicit lists/maps (incl. HRankPlus), MACs target.

A rate r of a group of C channels keeps int(C * (1 - r)) channels (at least one), as
HRankPlus computes its widths; `round_to` then rounds the kept count to a multiple.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.core.errors import ConfigError
from compiler.core.safe_yaml import load_yaml, read_yaml
from passes.prune.groups import Group

log = logging.getLogger(__name__)
MAX_RATES = 100_000  # far above any network's group count; keeps `[0.1]*10**12` out


def keep_count(channels: int, rate: float, round_to: int = 1) -> int:
    """Channels kept by pruning a group of `channels` at `rate`, rounded to a multiple."""
    keep = max(1, int(round(channels * (1.0 - rate), 6)))
    return round_keep(channels, keep, round_to)


def round_keep(channels: int, keep: int, round_to: int = 1) -> int:
    """Round a kept count to the nearest multiple of `round_to` (never 0, never > channels).

    A group kept whole stays whole (42 channels at rate 0 are not rounded to 40).
    """
    if keep >= channels:
        return channels
    if round_to <= 1 or channels <= round_to:
        return min(channels, max(1, keep))
    rounded = max(round_to, int(round(keep / round_to)) * round_to)
    return min(channels, rounded)


def check_rate(rate: Any, what: str) -> float:
    """A rate must be a number in [0, 1)."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: rate {rate!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what}: rate {value:g} is outside [0, 1)")
    return value


def uniform_rates(groups: Sequence[Group], ratio: float) -> dict[int, float]:
    """Same rate for every prunable group."""
    ratio = check_rate(ratio, "--ratio")
    return {g.id: ratio for g in groups if g.prunable}


def parse_rates(spec: Any) -> list[float] | dict[Any, float]:
    """Read `--rates`: a YAML file, a YAML/JSON list or map, or a list expression.

    Expressions like HRankPlus's `[0.0]+[0.24]*3+[0.7]*7+[0.45]*9` are evaluated safely
    (list literals, + and * only).
    """
    if isinstance(spec, (list, tuple, dict)):
        return spec
    text = str(spec).strip()
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        text = read_yaml(path, f"--rates {path}")
        if isinstance(text, (list, dict)):
            return text
        text = str(text)
    try:
        value = load_yaml(text, "--rates")
    except ConfigError:
        value = None
    if isinstance(value, (list, dict)):
        return value
    try:
        return _eval_list(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ConfigError(f"--rates: cannot read {text[:60]!r}: expected a list like "
                          "[0.1, 0.2], a map like {3: 0.5}, or a YAML file") from e


def _eval_list(node: ast.AST) -> list[float]:
    if isinstance(node, ast.List):
        return [float(_number(e)) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _eval_list(node.left) + _eval_list(node.right)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = node.left, node.right
        if isinstance(left, ast.Constant):
            left, right = right, left
        count = int(_number(right))
        items = _eval_list(left)
        if len(items) * max(count, 0) > MAX_RATES:
            raise ValueError(f"more than {MAX_RATES:,} rates")
        return items * count
    raise ValueError("unsupported expression")


def _number(node: ast.AST) -> float:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_number(node.operand)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    raise ValueError("not a number")


def rates_from_spec(groups: Sequence[Group], spec: Any) -> dict[int, float]:
    """Per-group rates from `--rates` (see `parse_rates`).

    A list has one rate per prunable group in group order, or follows HRankPlus's ResNet
    layout (stem, one rate per stage output, one per bottleneck block). A map's keys are group
    ids or member names ("conv1.out"). Groups not mentioned in a map keep all channels.
    """
    value = parse_rates(spec)
    prunable = [g for g in groups if g.prunable]
    if isinstance(value, Mapping):
        return _rates_from_map(groups, value)
    if len(value) == len(prunable):
        return {g.id: check_rate(r, f"--rates[{i}]") for i, (g, r)
                in enumerate(zip(prunable, value, strict=True))}
    layout = hrankplus_layout(groups)
    if layout is not None and len(value) == layout["length"]:
        return hrankplus_rates(groups, [check_rate(r, f"--rates[{i}]")
                                        for i, r in enumerate(value)])
    order = ", ".join(f"{g.id}:{g.members[0]}" for g in prunable[:8])
    more = ", ..." if len(prunable) > 8 else ""
    alt = f" or {layout['length']} (HRankPlus ResNet layout)" if layout else ""
    raise ConfigError(f"--rates: got {len(value)} rates, expected {len(prunable)} (one per "
                      f"prunable group, in order {order}{more}){alt}")


def _rates_from_map(groups: Sequence[Group], value: Mapping) -> dict[int, float]:
    by_member = {m: g for g in groups for m in g.members}
    out = {}
    for key, rate in value.items():
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            idx = int(key)
            group = groups[idx] if 0 <= idx < len(groups) else None
        else:
            group = by_member.get(str(key))
        if group is None:
            raise ConfigError(f"--rates: no group {key!r} (use a group id or a member name "
                              "from `npuc groups`)")
        if not group.prunable:
            raise ConfigError(f"--rates: group {group.id} ({key}) is not prunable: "
                              f"{group.reason}")
        out[group.id] = check_rate(rate, f"--rates[{key}]")
    return out


def hrankplus_layout(groups: Sequence[Group]) -> dict | None:
    """Recognise a bottleneck ResNet: stem group, residual stage groups, two mids per block."""
    prunable = [g for g in groups if g.prunable]
    if not prunable:
        return None
    stem = prunable[0]
    stages = [g for g in prunable if g.kind == "residual"]
    mids = [g for g in prunable[1:] if g.kind != "residual"]
    if not stages or len(mids) % 2 or stem.kind == "residual":
        return None
    blocks = len(mids) // 2
    return {"stem": stem, "stages": stages, "mids": mids, "blocks": blocks,
            "length": len(stages) + blocks}


def hrankplus_rates(groups: Sequence[Group], compress_rate: Sequence[float]) -> dict[int, float]:
    """HRankPlus's ResNet-50 mapping of `compress_rate` to groups.

    rate[0] prunes the stem; rate[1..S-1] the outputs of stages 1..S-1 (the last stage
    output is kept whole); rate[S + b] both middle convs of bottleneck block b.
    """
    layout = hrankplus_layout(groups)
    if layout is None or len(compress_rate) != layout["length"]:
        raise ConfigError("--rates: the HRankPlus layout needs a bottleneck ResNet and "
                          f"{layout['length'] if layout else '?'} rates")
    n_stages = len(layout["stages"])
    rates = {layout["stem"].id: compress_rate[0]}
    for s, group in enumerate(layout["stages"]):
        rates[group.id] = compress_rate[s + 1] if s + 1 < n_stages else 0.0
    for i, group in enumerate(layout["mids"]):
        rates[group.id] = compress_rate[n_stages + i // 2]
    return rates


def keep_counts(groups: Sequence[Group], rates: Mapping[int, float],
                round_to: int = 1) -> dict[int, int]:
    """Kept channels per prunable group (groups without a rate keep everything)."""
    return {g.id: keep_count(g.channels, rates.get(g.id, 0.0), round_to)
            for g in groups if g.prunable}


def rates_of_counts(groups: Sequence[Group], counts: Mapping[int, int]) -> dict[int, float]:
    """Effective rate per group for a report."""
    return {gid: 1.0 - n / groups[gid].channels for gid, n in counts.items()}


def as_array(counts: Mapping[int, int], groups: Sequence[Group]) -> np.ndarray:
    """Kept counts as an array over all groups (unprunable: full width)."""
    arr = np.array([g.channels for g in groups], np.float64)
    for gid, n in counts.items():
        arr[gid] = n
    return arr
