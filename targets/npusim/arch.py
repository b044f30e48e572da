"""Architecture descriptions for the perf model: YAML presets and user files, validated.

A description is a YAML mapping (see `presets/default.yaml` and docs/perf-model.md). Every
field is required, typed and range-checked here, so the perf model never meets a missing or
negative number; errors are `ConfigError`s naming the file and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.core.errors import ConfigError
from compiler.core.safe_yaml import read_yaml

PRESET_DIR = Path(__file__).parent / "presets"
SPARSE_BLOCKS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Host:
    """The host CPU that runs inference threads and CPU partitions."""

    cores: int
    gflops_per_core: float
    partition_overhead_us: float


@dataclass(frozen=True)
class Arch:
    """One NPU architecture (all per-core figures unless noted)."""

    name: str
    description: str
    cores: int
    clock_mhz: float
    mac_array: tuple[int, int, int]  # (pixels, in_channels, out_channels) per cycle
    depthwise_macs_per_cycle: int
    vector_elements_per_cycle: int
    sram_bytes: int
    ddr_bandwidth_gbps: float  # shared by all cores
    instruction_overhead_cycles: int
    frame_overhead_us: float
    sparse_efficiency: dict[int, float]
    host: Host
    lane_bits: int = 8  # activation bits per MAC / vector lane: int16 takes 16 / lane_bits passes

    @property
    def macs_per_cycle(self) -> int:
        """Peak MACs per cycle per core (the product of the MAC array dimensions)."""
        pixels, cin, cout = self.mac_array
        return pixels * cin * cout

    @property
    def ddr_bytes_per_cycle(self) -> float:
        """Shared DDR bytes per NPU clock cycle."""
        return self.ddr_bandwidth_gbps * 1e3 / self.clock_mhz

    def to_dict(self) -> dict[str, Any]:
        """Plain data for reports."""
        return {"name": self.name, "cores": self.cores, "clock_mhz": self.clock_mhz,
                "macs_per_cycle": self.macs_per_cycle, "sram_bytes": self.sram_bytes,
                "ddr_bandwidth_gbps": self.ddr_bandwidth_gbps}


def presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_arch(name_or_path: str | Path | None = "default") -> Arch:
    """Load a preset by name or a YAML file by path, validating every field.

    Raises:
        ConfigError: Unknown preset (the message lists the presets), unreadable or invalid
            YAML, or a missing, mistyped or out-of-range field (named in the message).
    """
    name = "default" if name_or_path is None else str(name_or_path)
    path = Path(name)
    if not (name.endswith((".yaml", ".yml")) or path.is_file()):
        if name not in presets():
            raise ConfigError(f"unknown architecture preset {name!r} (presets: "
                              f"{', '.join(presets())}; or give a YAML file)")
        path = PRESET_DIR / f"{name}.yaml"
    return parse_arch(_read(path), str(path))


def _read(path: Path) -> Any:
    return read_yaml(path, f"architecture file {path}")


def _number(kind: type, minimum: float, strict: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (kind is int and not float(value).is_integer()):
            raise ValueError(f"must be {'an integer' if kind is int else 'a number'}, "
                             f"got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if value < minimum or (strict and value == minimum):
            raise ValueError(f"must be {'>' if strict else '>='} {minimum}, got {value!r}")
        return kind(value)
    return check


_POS_INT, _POS_NUM, _NONNEG_INT = _number(int, 0, True), _number(float, 0, True), _number(int, 0)
_NONNEG = _number(float, 0)
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "cores": _POS_INT, "clock_mhz": _POS_NUM, "depthwise_macs_per_cycle": _POS_INT,
    "vector_elements_per_cycle": _POS_INT, "sram_bytes": _POS_INT,
    "ddr_bandwidth_gbps": _POS_NUM, "instruction_overhead_cycles": _NONNEG_INT,
    "frame_overhead_us": _NONNEG,
}
_HOST = {"cores": _POS_INT, "gflops_per_core": _POS_NUM, "partition_overhead_us": _NONNEG}
_ARRAY = ("pixels", "in_channels", "out_channels")
LANE_BITS = (8, 16)
"""Activation lane widths: 8 (an int8 NPU; A16W8 runs as two byte passes) or 16."""


def parse_arch(data: Any, label: str = "<arch>") -> Arch:
    """Validate a decoded YAML mapping and build the `Arch`.

    Raises:
        ConfigError: Naming `label` and the offending field.
    """
    top = _mapping(data, label, "the document")
    values = {key: _field(top, key, check, label) for key, check in _FIELDS.items()}
    host = _mapping(_get(top, "host", label), label, "host")
    array = _mapping(_get(top, "mac_array", label), label, "mac_array")
    return Arch(
        name=str(top.get("name", Path(label).stem)), description=str(top.get("description", "")),
        mac_array=tuple(_field(array, k, _POS_INT, label, "mac_array.") for k in _ARRAY),
        sparse_efficiency=_efficiency(_get(top, "sparse_efficiency", label), label),
        host=Host(**{k: _field(host, k, check, label, "host.") for k, check in _HOST.items()}),
        lane_bits=_lane_bits(top, label), **values)


def _lane_bits(top: dict, label: str) -> int:
    """Optional `lane_bits` (default 8, so architecture files written before it stay valid)."""
    if top.get("lane_bits") is None:
        return 8
    bits = _field(top, "lane_bits", _POS_INT, label)
    if bits not in LANE_BITS:
        raise ConfigError(f"{label}: field lane_bits must be one of {LANE_BITS}, got {bits}")
    return bits


def _mapping(value: Any, label: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: {what} must be a mapping, got {type(value).__name__}")
    return value


def _get(data: dict, key: str, label: str, prefix: str = "") -> Any:
    if key not in data or data[key] is None:
        raise ConfigError(f"{label}: missing field {prefix}{key}")
    return data[key]


def _field(data: dict, key: str, check: Callable[[Any], Any], label: str,
           prefix: str = "") -> Any:
    try:
        return check(_get(data, key, label, prefix))
    except ValueError as e:
        raise ConfigError(f"{label}: field {prefix}{key} {e}") from e


def _efficiency(value: Any, label: str) -> dict[int, float]:
    table = _mapping(value, label, "sparse_efficiency")
    out = {}
    for n in SPARSE_BLOCKS:
        if n not in table and str(n) not in table:
            raise ConfigError(f"{label}: missing field sparse_efficiency.{n}")
        raw = table.get(n, table.get(str(n)))
        eff = _field({n: raw}, n, _NONNEG, label, "sparse_efficiency.")
        if eff > 1:
            raise ConfigError(f"{label}: field sparse_efficiency.{n} must be <= 1, got {eff}")
        out[n] = eff
    return out
