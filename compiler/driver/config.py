"""The `npuc compile` configuration: schema, defaults, validation, CLI overrides.

The schema is data: `SCHEMA` maps each dotted key to its `Field` (type, default, check),
so validation, documentation (`docs/config.md`) and `--set key=value` overrides all read
the same table.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compiler.core.errors import ConfigError

DEFAULT_MODEL = "fmnist_resnet"


@dataclass(frozen=True)
class Field:
    """One configuration key.

    Attributes:
        types: Accepted Python types (after YAML parsing).
        default: Default value.
        help: One-line description for docs and errors.
        check: Optional `(value) -> reason or None` extra validation.
    """

    types: tuple[type, ...]
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None


def _in(*choices: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {list(choices)}"


def _range(lo: float, hi: float, hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"must be in [{lo}, {hi}{')' if hi_open else ']'}"
    return check


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def _shape(v: Any) -> str | None:
    ok = all(isinstance(d, int) and d > 0 for d in v)
    return None if ok else "must be a list of positive integers"


_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))

SCHEMA: dict[str, Field] = {
    "model": Field((str,), DEFAULT_MODEL, "ONNX file or bundled model name"),
    "seed": Field((int,), 0, "seed for every random choice (search, sampling)"),
    "input.shape": Field((list, type(None)), None, "concrete input shape, e.g. [1, 3, 224, 224]",
                         lambda v: v and _shape(v)),
    "input.resize": Field((list, type(None)), None, "image folders: [height, width]",
                          lambda v: v and _shape(v)),
    "input.mean": Field((list,), [0.0], "image folders: per-channel mean (after /255)"),
    "input.std": Field((list,), [1.0], "image folders: per-channel std (after /255)"),
    "input.layout": Field((str,), "NCHW", "image folders: NCHW or NHWC", _in("NCHW", "NHWC")),
    "input.channel_order": Field((str,), "RGB", "image folders: RGB or BGR", _in("RGB", "BGR")),
    "input.grayscale": Field((bool,), False, "image folders: convert to one channel"),
    "calibration.data": Field(_OPT_STR, None,
                              "calibration data: folder, .npy/.npz or dataset name"),
    "calibration.limit": Field((int,), 256, "samples used for calibration", _positive),
    "calibration.calibrator": Field((str,), "max", "max, percentile, kl or mse",
                                    _in("max", "percentile", "kl", "mse")),
    "calibration.percentile": Field(_NUM, 99.99, "percentile calibrator: percentile",
                                    _range(50, 100)),
    "calibration.batch_size": Field((int,), 8, "samples per calibration run", _positive),
    "calibration.table": Field(_OPT_STR, None,
                               "saved calibration.json to reuse instead of calibrating"),
    "eval.data": Field(_OPT_STR, None, "labelled evaluation data (dataset name or .npz)"),
    "eval.limit": Field((int, type(None)), None, "evaluate on at most this many samples"),
    "eval.batch_size": Field((int,), 64, "samples per evaluation run", _positive),
    "prune.enabled": Field((bool,), False, "run channel pruning"),
    "prune.criterion": Field((str,), "l1", "l1, l2, random, hrank or css",
                             _in("l1", "l2", "random", "hrank", "css")),
    "prune.ratio": Field(_OPT_NUM, None, "uniform fraction of channels removed per group",
                         lambda v: v is None or _range(0, 1, hi_open=True)(v)),
    "prune.rates": Field((list, dict, str, type(None)), None,
                         "per-group rates: list, map or YAML file"),
    "prune.target_macs": Field(_OPT_NUM, None, "keep this fraction of the MACs (global)",
                               lambda v: v is None or _range(0, 1)(v)),
    "prune.round_to": Field((int,), 8, "keep channel counts a multiple of this", _positive),
    "prune.search": Field(_OPT_STR, None, "rate search: abc", lambda v: _in(None, "abc")(v)),
    "prune.abc_cycles": Field((int,), 4, "ABC: cycles T", _positive),
    "prune.abc_food_sources": Field((int,), 6, "ABC: food sources n", _positive),
    "prune.abc_trial_limit": Field((int,), 3, "ABC: trial limit M", _positive),
    "prune.reconstruct": Field((bool, str), True,
                               "recovery of consumers: true/lsq (ridge re-fit), bias (mean "
                               "folding only) or false", _in(True, False, "lsq", "bias")),
    "prune.ridge": Field(_NUM, 1e-3, "reconstruction: relative ridge strength",
                         lambda v: None if v >= 0 else "must be >= 0"),
    "prune.rows": Field((int,), 4096, "reconstruction: sampled positions per layer", _positive),
    "prune.workers": Field((int, type(None)), None, "ABC worker processes (null: all cores)",
                           _positive),
    "sparsify.enabled": Field((bool,), False, "run 1xN block sparsification"),
    "sparsify.block": Field((int,), 4, "block size N", _in(2, 4, 8, 16, 32)),
    "sparsify.sparsity": Field(_NUM, 0.5, "fraction of blocks zeroed", _range(0, 1, True)),
    "sparsify.criterion": Field((str,), "obs",
                                "l1, l2, act, obs (needs reconstruct) or css (whole filters)",
                                _in("l1", "l2", "act", "obs", "css")),
    "sparsify.global": Field((bool,), False, "one MACs-weighted budget across layers"),
    "sparsify.exclude": Field((list,), [], "node names or glob patterns kept dense"),
    "sparsify.include_first_last": Field((bool,), False,
                                         "also sparsify the first conv and last classifier"),
    "sparsify.reorder": Field((bool,), True, "reorder filters before forming blocks"),
    "sparsify.reconstruct": Field((bool,), True, "masked least-squares recovery"),
    "sparsify.refit_dense": Field((bool,), True,
                                  "reconstruct: also re-fit dense layers after sparse ones"),
    "sparsify.rows": Field((int,), 8192, "reconstruct: sampled positions per layer", _positive),
    "quantize.enabled": Field((bool,), True, "quantize to int8"),
    "quantize.cle": Field((bool,), False, "cross-layer equalization before quantizing"),
    "quantize.bias_correction": Field((bool,), False, "empirical bias correction"),
    "quantize.rounding": Field((str,), "nearest", "weight rounding: nearest | gptq",
                               _in("nearest", "gptq")),
    "quantize.keep_float": Field((list,), [], "node names left in float on the CPU"),
    "target.name": Field((str,), "npusim", "target backend", _in("npusim")),
    "target.arch": Field((str,), "default", "architecture preset name or YAML file"),
    "target.verify": Field((bool,), True, "check the binary against model.quant.onnx"),
    "target.verify_samples": Field((int,), 8, "samples used by verify", _positive),
    "target.verify_data": Field(_OPT_STR, None, "inputs for verify (default: calibration data)"),
    "target.cores": Field((int,), 2, "perf: cores for the FPS figure", _in(1, 2)),
    "target.threads": Field((int,), 8, "perf: threads for the FPS figure", _positive),
    "target.frames": Field((int,), 1000, "perf: frames averaged", _positive),
    "report.top_layers": Field((int,), 5, "slowest layers printed after the summary (0: none)",
                               lambda v: None if v >= 0 else "must be >= 0"),
}

# Every flag of the single-step sub-commands (positionals by name) -> the config key
# `npuc compile` reads instead (a string), or why there is none (a sentence in parentheses).
# tests/test_config.py checks that this covers every flag; docs/config.md lists it.
SUBCOMMAND_KEYS: dict[str, dict[str, str]] = {
    "prune": {
        "model": "model", "--output": "(written as model.pruned.onnx in -o DIR)",
        "--ratio": "prune.ratio", "--rates": "prune.rates", "--target-macs": "prune.target_macs",
        "--criterion": "prune.criterion", "--round-to": "prune.round_to",
        "--search": "prune.search", "--abc-cycles": "prune.abc_cycles",
        "--abc-sources": "prune.abc_food_sources", "--abc-limit": "prune.abc_trial_limit",
        "--workers": "prune.workers", "--calib": "calibration.data",
        "--calib-limit": "calibration.limit", "--reconstruct": "prune.reconstruct",
        "--seed": "seed",
        "--json": "(npuc compile --json)",
    },
    "sparsify": {
        "model": "model", "--output": "(written as model.sparse.onnx in -o DIR)",
        "--block": "sparsify.block", "--sparsity": "sparsify.sparsity",
        "--criterion": "sparsify.criterion", "--global": "sparsify.global",
        "--exclude": "sparsify.exclude", "--include-first-last": "sparsify.include_first_last",
        "--reorder": "sparsify.reorder", "--calib": "calibration.data",
        "--calib-limit": "calibration.limit", "--reconstruct": "sparsify.reconstruct",
        "--no-refit-dense": "sparsify.refit_dense", "--rows": "sparsify.rows",
        "--json": "(npuc compile --json)",
    },
    "quantize": {
        "model": "model", "--output": "(written as model.quant.onnx / model.qdq.onnx in -o DIR)",
        "--calib": "calibration.data", "--calibrator": "calibration.calibrator",
        "--percentile": "calibration.percentile", "--calib-limit": "calibration.limit",
        "--batch-size": "calibration.batch_size", "--cle": "quantize.cle",
        "--bias-correction": "quantize.bias_correction", "--calib-table": "calibration.table",
        "--rounding": "quantize.rounding", "--keep-float": "quantize.keep_float",
        "--json": "(npuc compile --json)",
    },
    "build": {
        "model": "(the quantized model of the run)", "--output": "(written as model.bin in -o DIR)",
        "--target": "target.name", "--arch": "target.arch", "--json": "(npuc compile --json)",
    },
    "verify": {
        "model": "(the quantized model of the run)", "binary": "(model.bin of the run)",
        "--inputs": "target.verify_data", "--samples": "target.verify_samples", "--seed": "seed",
        "--json": "(npuc compile --json)",
    },
    "perf": {
        "binary": "(model.bin of the run)", "--cores": "target.cores",
        "--threads": "target.threads", "--frames": "target.frames", "--arch": "target.arch",
        "--top": "report.top_layers", "--json": "(npuc compile --json)",
    },
    "eval": {
        "model": "(float, compressed and int8 models of the run)", "--data": "eval.data",
        "--reference": "(always the float model of the run)", "--batch": "eval.batch_size",
        "--limit": "eval.limit", "--json": "(npuc compile --json)",
    },
}


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
    for key, value in (overrides or {}).items():
        _known(key, "command line")
        config[key] = value
    validate(config, label)
    return config


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first})") from e
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
    """Type- and range-check every key; raises `ConfigError` naming the key."""
    for key, value in config.items():
        spec = SCHEMA[key]
        if isinstance(value, bool) and bool not in spec.types:
            _bad(label, key, value, f"must be {_type_names(spec)}")
        if not isinstance(value, spec.types):
            _bad(label, key, value, f"must be {_type_names(spec)}")
        reason = spec.check(value) if spec.check and value is not None else None
        if reason:
            _bad(label, key, value, reason)
    _check_prune_rates(config, label)


def _check_prune_rates(config: Mapping[str, Any], label: str) -> None:
    chosen = [k for k in ("prune.ratio", "prune.rates", "prune.target_macs")
              if config.get(k) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{label}: give only one of {chosen}")
    if config.get("prune.enabled") and not chosen and not config.get("prune.search"):
        raise ConfigError(f"{label}: prune.enabled needs prune.ratio, prune.rates, "
                          "prune.target_macs or prune.search")


def _bad(label: str, key: str, value: Any, reason: str) -> None:
    raise ConfigError(f"{label}: key '{key}' = {value!r} {reason}")


def _type_names(spec: Field) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             list: "a list", dict: "a mapping", type(None): "null"}
    return " or ".join(names[t] for t in spec.types)


def parse_override(text: str) -> tuple[str, Any]:
    """'prune.ratio=0.3' -> ('prune.ratio', 0.3), values parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    _known(key.strip(), "--set")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML") from e


def schema_markdown() -> str:
    """The schema as a Markdown table (used to write docs/config.md)."""
    rows = ["| key | default | description |", "|---|---|---|"]
    rows += [f"| `{k}` | `{f.default!r}` | {f.help} |" for k, f in SCHEMA.items()]
    return "\n".join(rows)


def flags_markdown() -> str:
    """The sub-command flag -> config key table (docs/config.md)."""
    rows = ["| command | flag | config key |", "|---|---|---|"]
    for command, flags in SUBCOMMAND_KEYS.items():
        for flag, key in flags.items():
            cell = key if key.startswith("(") else f"`{key}`"
            rows.append(f"| `npuc {command}` | `{flag}` | {cell} |")
    return "\n".join(rows)
