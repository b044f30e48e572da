"""One source per option: config schema, CLI flags, library defaults and docs agree."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass

import pytest

from compiler.cli.options import (
    FLAG_REASONS,
    STEP_COMMANDS,
    add_flags,
    command_parser,
    flag_name,
    from_args,
    generated_flags,
    parser_flags,
    render,
)
from compiler.core.errors import ConfigError
from compiler.core.options import from_mapping, option, options_of, plain
from compiler.driver.config import SCHEMA, STEPS, defaults, load_config, step_options

SECTION = {cls: prefix for prefix, cls in STEPS.values()}
DECLARED = [(step, d) for step, (_, cls) in STEPS.items() for d in options_of(cls)]


def _id(item):
    step, d = item
    return f"{step}.{d.name}"


@pytest.mark.parametrize("item", DECLARED, ids=_id)
def test_config_default_is_the_dataclass_default(item):
    step, d = item
    prefix, cls = STEPS[step]
    key = d.key(prefix)
    if key is None:
        assert d.option.no_key, f"{step}.{d.name}: no key and no reason"
        return
    assert key in SCHEMA, f"{step}.{d.name} reads {key!r}, which nobody declares"
    assert defaults()[key] == plain(d.default), key
    if not d.owns_key():  # a shared option: same default and type as its owner's
        assert SCHEMA[key].declared.types == d.types, key


@pytest.mark.parametrize("step", list(STEPS))
def test_default_config_gives_default_options(step):
    prefix, cls = STEPS[step]
    assert from_mapping(cls, load_config(), prefix) == cls()
    if step != "prune":  # prune's checks need a rate
        assert step_options(load_config(), step) == cls()


def test_step_options_reads_the_flat_keys():
    config = load_config(overrides={"prune.enabled": True, "prune.ratio": 0.3,
                                    "prune.abc_food_sources": 4, "sparsify.exclude": ["fc"],
                                    "input.resize": [32, 32], "seed": 5})
    prune = step_options(config, "prune")
    assert (prune.ratio, prune.abc_sources, prune.seed, prune.round_to) == (0.3, 4, 5, 8)
    assert step_options(config, "sparsify").exclude == ("fc",)
    assert step_options(config, "input").size == (32, 32)
    target = step_options(config, "target")
    assert (target.build.arch, target.verify.samples, target.perf.frames) == ("default", 8, 1000)
    assert config["prune.round_to"] == 8  # the flat keys stay valid


@pytest.mark.parametrize("command", STEP_COMMANDS)
def test_every_flag_is_generated_or_has_a_reason(command):
    parser = command_parser(command)
    generated, reasons = set(generated_flags(parser)), set(FLAG_REASONS[command])
    flags = set(parser_flags(parser))
    assert flags == generated | reasons, flags ^ (generated | reasons)
    assert not generated & reasons, generated & reasons


@pytest.mark.parametrize("command", [*STEP_COMMANDS, "compile"])
def test_parser_defaults_and_choices_are_the_declarations(command):
    parser = command_parser(command)
    for action in parser._actions:
        mark = getattr(action, "npuc_option", None)
        if mark is None:
            continue
        cls, name = mark
        d = next(x for x in options_of(cls) if x.name == name)
        expected = None if command == "compile" else d.default
        assert action.default == expected, (command, flag_name(action))
        assert action.choices is None  # choices are checked by from_args, with the flag named
        assert flag_name(action) == d.flag or command == "compile"


def test_compile_shortcuts_are_config_keys():
    from compiler.cli.compile import ENABLES, shortcut_keys

    keys = shortcut_keys()
    assert set(keys) == set(generated_flags(command_parser("compile")))
    assert all(k in SCHEMA for k in keys.values())
    assert set(ENABLES) <= set(keys.values()) and all(v in SCHEMA for v in ENABLES.values())


def test_library_constants_are_the_choices():
    from passes.prune.criteria import CRITERIA as PRUNE_CRITERIA
    from passes.quantize.api import ROUNDINGS
    from passes.quantize.calibrate import DEFAULT_PERCENTILE, METHODS
    from passes.quantize.options import DEFAULT_CALIBRATOR
    from passes.sparsify.criteria import CRITERIA as SPARSE_CRITERIA
    from passes.sparsify.layers import BLOCK_SIZES

    choices = {k: f.declared.option.choices for k, f in SCHEMA.items()}
    assert choices["prune.criterion"] == PRUNE_CRITERIA
    assert choices["sparsify.criterion"] == SPARSE_CRITERIA
    assert choices["sparsify.block"] == BLOCK_SIZES
    assert choices["calibration.calibrator"] == METHODS
    assert choices["quantize.rounding"] == ROUNDINGS
    assert defaults()["calibration.percentile"] == DEFAULT_PERCENTILE
    assert defaults()["calibration.calibrator"] == DEFAULT_CALIBRATOR == "mse"


def _signature_defaults(func):
    return {n: p.default for n, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _check_signature(func, cls, names):
    """`func`'s keyword defaults equal the declared defaults; `names`: parameter -> field."""
    sig = _signature_defaults(func)
    fields = {d.name: d.default for d in options_of(cls)}
    for param, field in names.items():
        assert sig[param] == fields[field], f"{func.__name__}({param}=...) vs {cls.__name__}"


def test_library_signature_defaults_agree():
    from compiler.driver.evaluate import EvalOptions, Runner, evaluate
    from passes.quantize.api import quantize_model
    from passes.quantize.options import CalibrationOptions, QuantizeOptions
    from passes.sparsify.options import SparsifyOptions
    from passes.sparsify.sparsify import BlockSparsify, sparsify_model
    from targets.npusim import build_binary, estimate_perf
    from targets.npusim.options import BuildOptions, PerfOptions

    _check_signature(quantize_model, CalibrationOptions,
                     {"calibrator": "calibrator", "percentile": "percentile",
                      "batch_size": "batch_size", "calib_limit": "limit", "table": "table"})
    _check_signature(quantize_model, QuantizeOptions,
                     {n: n for n in ("cle", "bias_correction", "rounding", "keep_float")})
    _check_signature(evaluate, EvalOptions, {"batch": "batch_size", "limit": "limit"})
    _check_signature(Runner.run, EvalOptions, {"batch": "batch_size"})
    for func in (sparsify_model, BlockSparsify.__init__):
        _check_signature(func, SparsifyOptions, {"block": "block", "sparsity": "sparsity"})
    _check_signature(estimate_perf, PerfOptions, {n: n for n in ("arch", "cores", "threads",
                                                                 "frames")})
    _check_signature(build_binary, BuildOptions, {"arch": "arch"})


def test_prune_options_keep_their_old_name():
    from passes.prune import PruneConfig
    from passes.prune.pipeline import PruneOptions

    assert PruneConfig is PruneOptions


def test_docs_config_is_generated():
    from compiler.cli.options import DOC, generated_blocks

    text = DOC.read_text()
    assert render(text, generated_blocks()) == text, \
        "docs/config.md is stale: python -m compiler.cli.options --write-docs"


# The helpers themselves, on a small declaration.

@dataclass
class _Demo:
    rate: float = option(0.5, "a rate", check=lambda v: None if 0 <= v < 1 else "must be < 1")
    mode: str = option("a", "a mode", choices=("a", "b"))
    names: tuple = option((), "names", item=str, list_sep=",")
    on: bool = option(True, "a switch", key="enabled", flag="--on")
    seed: int = option(0, "seed", shared="seed")


def test_from_mapping_reads_keys_and_names_the_bad_one():
    got = from_mapping(_Demo, {"demo.rate": 0.25, "demo.names": ["x"], "demo.enabled": False,
                               "seed": 3}, "demo")
    assert got == _Demo(0.25, "a", ("x",), False, 3)
    for key, value, reason in [("demo.rate", 1.5, "must be < 1"),
                               ("demo.mode", "c", "must be one of ['a', 'b']"),
                               ("demo.names", [1], "must be a list of a string"),
                               ("demo.enabled", "yes", "must be true/false"),
                               ("demo.rate", True, "must be a number")]:
        with pytest.raises(ConfigError, match="^f.yaml: key") as info:
            from_mapping(_Demo, {key: value}, "demo", "f.yaml")
        assert f"key '{key}' = {value!r} {reason}" in str(info.value)


def test_flags_round_trip_and_bool_negation():
    parser = argparse.ArgumentParser()
    add_flags(parser, _Demo)
    assert set(parser_flags(parser)) == {"--rate", "--mode", "--names", "--on", "--seed"}
    assert from_args(parser.parse_args([]), _Demo) == _Demo()
    args = parser.parse_args(["--rate", "0.1", "--names", "a, b", "--no-on", "--mode", "b"])
    assert from_args(args, _Demo) == _Demo(0.1, "b", ("a", "b"), False, 0)
    with pytest.raises(ConfigError, match="^--mode 'c': unknown mode \\(choose from a, b\\)"):
        from_args(parser.parse_args(["--mode", "c"]), _Demo)


def test_existing_flag_spellings_still_work():
    prune, sparsify = command_parser("prune"), command_parser("sparsify")
    args = prune.parse_args(["m.onnx", "-o", "o.onnx", "--abc-sources", "4", "--abc-limit", "2",
                             "--reconstruct", "bias"])
    assert (args.abc_sources, args.abc_limit, args.reconstruct) == (4, 2, "bias")
    assert prune.parse_args(["m", "-o", "o", "--reconstruct"]).reconstruct is True
    assert prune.parse_args(["m", "-o", "o", "--no-reconstruct"]).reconstruct is False
    args = sparsify.parse_args(["m", "-o", "o", "--no-refit-dense", "--global", "--reorder"])
    assert (args.refit_dense, getattr(args, "global"), args.reorder) == (False, True, True)


def test_missing_calibration_data_says_how_to_opt_out(tmp_path, capsys):
    from compiler.cli import main

    for argv, hint in [(["sparsify", "m.onnx", "-o", str(tmp_path / "s.onnx")],
                        "--criterion l1 --no-reconstruct"),
                       (["prune", "m.onnx", "-o", str(tmp_path / "p.onnx"), "--ratio", "0.3"],
                        "--no-reconstruct")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--calib DATA" in err and hint in err


def test_config_checks_across_options_name_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sparsify:\n  enabled: true\n  reconstruct: false\n")
    with pytest.raises(ConfigError, match="sparsify.criterion obs chooses blocks") as info:
        load_config(path)
    assert "add sparsify.reconstruct" in str(info.value)
    path.write_text("prune:\n  enabled: true\n  search: abc\n")
    with pytest.raises(ConfigError, match="prune.enabled needs"):
        load_config(path)
