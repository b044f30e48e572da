import pytest

from compiler.core.errors import ConfigError
from compiler.driver.config import SCHEMA, defaults, load_config, parse_override, schema_markdown


def test_defaults_validate():
    config = load_config()
    assert config["model"] == "fmnist_resnet"
    assert config["quantize.enabled"] is True
    assert set(config) == set(SCHEMA)


def test_yaml_nested_keys_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prune:\n  enabled: true\n  ratio: 0.3\nsparsify:\n  block: 8\n")
    config = load_config(path, {"seed": 7})
    assert config["prune.ratio"] == 0.3 and config["sparsify.block"] == 8
    assert config["seed"] == 7


@pytest.mark.parametrize("text,match", [
    ("prune:\n  ratoi: 0.3\n", "unknown key 'prune.ratoi' \\(did you mean 'prune.ratio'\\?\\)"),
    ("prune:\n  ratio: 1.5\n", "key 'prune.ratio' = 1.5 must be in"),
    ("sparsify:\n  block: 3\n", "key 'sparsify.block' = 3 must be one of"),
    ("calibration:\n  calibrator: entropy\n", "key 'calibration.calibrator'"),
    ("quantize:\n  cle: yes please\n", "key 'quantize.cle' = 'yes please' must be true/false"),
    ("seed: true\n", "key 'seed'"),
    ("prune:\n  enabled: true\n", "prune.enabled needs"),
    ("prune:\n  ratio: 0.2\n  target_macs: 0.5\n", "give only one of"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_mistakes_name_the_key(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/c.yaml")


def test_parse_override():
    assert parse_override("prune.ratio=0.25") == ("prune.ratio", 0.25)
    assert parse_override("input.resize=[8, 8]") == ("input.resize", [8, 8])
    with pytest.raises(ConfigError, match="unknown key"):
        parse_override("nope=1")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("seed")


def test_schema_markdown_lists_every_key():
    table = schema_markdown()
    assert all(f"`{k}`" in table for k in defaults())


def test_docs_config_is_current():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "config.md").read_text()
    assert schema_markdown() in doc


@pytest.mark.parametrize("command", ["prune", "sparsify", "quantize", "build", "verify", "perf",
                                     "eval"])
def test_every_subcommand_flag_has_a_config_key(command):
    from compiler.cli.options import command_parser, flag_keys, parser_flags

    mapped = flag_keys(command)
    assert set(parser_flags(command_parser(command))) == set(mapped)
    for key in mapped.values():
        assert key.startswith("(") or key in SCHEMA, key


def test_docs_config_lists_flag_keys():
    from pathlib import Path

    from compiler.cli.options import flags_markdown

    doc = (Path(__file__).resolve().parents[3] / "docs" / "config.md").read_text()
    assert flags_markdown() in doc
