"""The `npuc compile` configuration: schema, defaults, validation, CLI overrides.

Every option is declared once, in the dataclass of the code that uses it (`PruneOptions`,
`SparsifyOptions`, `CalibrationOptions`, `QuantizeOptions`, `Preprocess`, the npusim
`BuildOptions` / `VerifyOptions` / `PerfOptions`, `EvalOptions`); the keys only the driver
reads are declared here in `CompileOptions`. `SCHEMA` (dotted key -> `Field`) is generated
from those declarations, so validation, `--set key=value` overrides, the CLI flags
(`compiler.cli.options`) and `docs/config.md` all read the same records.

`step_options(config, step)` turns a validated flat config into the typed options of a step.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compiler.core.errors import ConfigError
from compiler.core.executor import ExecutorOptions
from compiler.core.feeds import Preprocess
from compiler.core.options import (
    Declared,
    from_mapping,
    non_negative,
    option,
    options_of,
    plain,
    positive,
    problem,
    type_names,
)
from compiler.core.safe_yaml import load_yaml, read_yaml
from compiler.core.shapes import InputShapes
from compiler.driver.evaluate import EvalOptions
from passes.prune.pipeline import PruneOptions
from passes.quantize.options import CalibrationOptions, QuantizeOptions
from passes.sparsify.options import SparsifyOptions
from targets.npusim.options import BuildOptions, PerfOptions, VerifyOptions

DEFAULT_MODEL = "fmnist_resnet"


@dataclass
class CompileOptions:
    """The keys only `npuc compile` reads (which steps run, the report); full dotted keys."""

    model: str = option(DEFAULT_MODEL, "ONNX file or bundled model name", flag="")
    seed: int = option(0, "seed for every random choice (search, sampling, random inputs)",
                       check=non_negative)
    prune: bool = option(False, "run channel pruning", key="prune.enabled", flag="")
    sparsify: bool = option(False, "run 1xN block sparsification", key="sparsify.enabled",
                            flag="")
    quantize: bool = option(True, "quantize to int8", key="quantize.enabled", flag="")
    verify: bool = option(True, "check the binary against model.quant.onnx",
                          key="target.verify", flag="")
    fps_cores: int = option(2, "cores of the report's FPS figure (latency: 1 core, 1 thread)",
                            key="target.cores", choices=(1, 2), flag="")
    fps_threads: int = option(8, "host threads of the report's FPS figure", key="target.threads",
                              check=positive, flag="")
    top_layers: int = option(5, "slowest binary steps (layers, CPU partitions) printed "
                             "after the summary (0: none)",
                             key="report.top_layers", check=non_negative, flag="")


# Step name -> (config section, options class). The order is the order of docs/config.md.
STEPS: dict[str, tuple[str, type]] = {
    "compile": ("", CompileOptions),
    "input": ("input", Preprocess),
    "shape": ("input", InputShapes),
    "calibration": ("calibration", CalibrationOptions),
    "eval": ("eval", EvalOptions),
    "prune": ("prune", PruneOptions),
    "sparsify": ("sparsify", SparsifyOptions),
    "quantize": ("quantize", QuantizeOptions),
    "build": ("target", BuildOptions),
    "verify": ("target", VerifyOptions),
    "perf": ("target", PerfOptions),
    "executor": ("executor", ExecutorOptions),
}
_SECTION_ORDER = ("", "input", "calibration", "eval", "prune", "sparsify", "quantize", "target",
                  "report", "executor")


@dataclass(frozen=True)
class Field:
    """One configuration key, generated from its declaration.

    Attributes:
        declared: The declaration (name, default, `Option`) in its options class.
        owner: Name of the step whose class declares it.
    """

    declared: Declared
    owner: str

    @property
    def default(self) -> Any:
        """Default value as YAML/the flat config holds it (lists, not tuples)."""
        return plain(self.declared.default)

    @property
    def help(self) -> str:
        """One-line description."""
        return self.declared.option.help

    @property
    def types(self) -> tuple[type, ...]:
        """Accepted types."""
        return self.declared.types


def _build_schema() -> dict[str, Field]:
    entries = []
    for step, (prefix, cls) in STEPS.items():
        for d in options_of(cls):
            if d.owns_key():
                key = d.key(prefix)
                entries.append((_rank(key, step), key, Field(d, step)))
    entries.sort(key=lambda e: e[0])
    return {key: field for _, key, field in entries}


def _rank(key: str, step: str) -> tuple[int, int]:
    section = key.split(".")[0] if "." in key else ""
    return _SECTION_ORDER.index(section), 0 if step == "compile" else 1


SCHEMA: dict[str, Field] = _build_schema()


def step_options(config: Mapping[str, Any], step: str, label: str = "config") -> Any:
    """The typed options of `step` from a validated flat config.

    Args:
        config: Flat {dotted key: value} dict (`load_config`).
        step: "compile", "input" (`Preprocess`), "shape" (`InputShapes`), "calibration",
            "eval", "prune", "sparsify", "quantize", "build", "verify", "perf", or "target" (a
            `TargetOptions` with build, verify and perf).
        label: Where the config came from, for messages.

    Raises:
        ConfigError: A bad value or combination, naming the key.
    """
    if step == "target":
        return TargetOptions(*(step_options(config, s, label) for s in ("build", "verify",
                                                                         "perf")))
    if step not in STEPS:
        raise ConfigError(f"unknown step {step!r} (steps: {', '.join(STEPS)}, target)")
    prefix, cls = STEPS[step]
    options = from_mapping(cls, config, prefix, label)
    if hasattr(options, "validate"):
        _validate_step(options, step, label)
    return options


@dataclass(frozen=True)
class TargetOptions:
    """The target's options of one compile run."""

    build: BuildOptions
    verify: VerifyOptions
    perf: PerfOptions


def _validate_step(options: Any, step: str, label: str) -> None:
    """The checks across options of `step`, with flags in messages named as config keys."""
    try:
        options.validate()
    except ConfigError as e:
        raise ConfigError(f"{label}: {_flags_to_keys(str(e), step)}") from e


def _flags_to_keys(message: str, step: str) -> str:
    prefix, cls = STEPS[step]
    names = {d.flag: d.key(prefix) for d in options_of(cls) if d.flag and d.key(prefix)}
    return re.sub(r"--[a-z][a-z-]*", lambda m: names.get(m.group(0), m.group(0)), message)


def defaults() -> dict[str, Any]:
    """The default configuration as a flat {dotted key: value} dict."""
    return {k: copy.deepcopy(f.default) for k, f in SCHEMA.items()}


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file, then overrides; validated.

    Returns:
        A flat {dotted key: value} dict.

    Raises:
        ConfigError: naming the file and key of the first mistake.
    """
    config, label = defaults(), "config"
    if path is not None:
        label = str(path)
        config.update(flatten(_read_yaml(Path(path)), label))
    # Overrides may be flat ("prune.ratio") or nested like the YAML ({"prune": {"ratio"}}).
    config.update(flatten(overrides or {}, "command line"))
    validate(config, label)
    return config


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    return data


def flatten(data: Mapping[str, Any], label: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys; unknown keys raise with a suggestion."""
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in SCHEMA:
            flat.update(flatten(value, label, dotted + "."))
        else:
            _known(dotted, label)
            flat[dotted] = value
    return flat


def _known(key: str, label: str) -> None:
    if key in SCHEMA:
        return
    hint = difflib.get_close_matches(key, SCHEMA, n=1)
    suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise ConfigError(f"{label}: unknown key '{key}'{suffix}")


def validate(config: Mapping[str, Any], label: str = "config") -> None:
    """Type- and range-check every key, then the enabled steps' checks across options.

    Raises:
        ConfigError: naming the file and the key.
    """
    for key, value in config.items():
        reason = problem(SCHEMA[key].declared, value)
        if reason:
            _bad(label, key, value, reason)
    _check_prune_rates(config, label)
    for step in ("prune", "sparsify"):
        if config.get(f"{step}.enabled"):
            step_options(config, step, label)


def _check_prune_rates(config: Mapping[str, Any], label: str) -> None:
    chosen = [k for k in ("prune.ratio", "prune.rates", "prune.target_macs")
              if config.get(k) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{label}: give only one of {chosen}")
    if config.get("prune.enabled") and not chosen:
        raise ConfigError(f"{label}: prune.enabled needs prune.ratio, prune.rates or "
                          "prune.target_macs (the budget of prune.search)")


def _bad(label: str, key: str, value: Any, reason: str) -> None:
    raise ConfigError(f"{label}: key '{key}' = {value!r} {reason}")


def parse_override(text: str) -> tuple[str, Any]:
    """'prune.ratio=0.3' -> ('prune.ratio', 0.3), values parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    _known(key.strip(), "--set")
    return key.strip(), load_yaml(raw, f"--set {text[:60]!r}")


def schema_markdown() -> str:
    """The schema as a Markdown table (a generated block of docs/config.md)."""
    rows = ["| key | default | type | description |", "|---|---|---|---|"]
    for key, f in SCHEMA.items():
        choices = f.declared.option.choices
        kind = " / ".join(map(_yaml, choices)) if choices else type_names(f.types)
        rows.append(f"| `{key}` | `{_yaml(f.default)}` | {kind} | {_cell(f.help)} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _yaml(value: Any) -> str:
    """A value as YAML writes it (null, true, [0.0])."""
    return yaml.safe_dump(plain(value), default_flow_style=True, width=1000).strip().removesuffix(
        "\n...").removesuffix("...").strip()
