import pytest

from compiler.cli import main
from compiler.core import safe_yaml
from compiler.core.errors import ConfigError
from compiler.core.safe_yaml import load_yaml, read_yaml
from passes.prune.rates import parse_rates

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_plain_documents_and_shared_aliases_load():
    assert load_yaml("a: 1\nb: [1, 2]\n", "t") == {"a": 1, "b": [1, 2]}
    assert load_yaml("x: &v [1, 2]\ny: *v\n", "t") == {"x": [1, 2], "y": [1, 2]}
    assert load_yaml("", "t") is None


def test_billion_laughs_is_refused_before_expanding():
    # 9 levels of 9 aliases: 9^9 = 387M leaves once expanded.
    with pytest.raises(ConfigError, match="expands to more than 100,000 nodes"):
        load_yaml(LAUGHS, "bomb.yaml")


@pytest.mark.parametrize("text,match", [
    ("[" * 5000 + "]" * 5000, "nested"),
    ("a: [1, 2", "not valid YAML"),
    ("a: !!python/object:os.system {}", "not valid YAML"),
])
def test_hostile_yaml_is_one_config_error(text, match):
    with pytest.raises(ConfigError, match=match):
        load_yaml(text, "t.yaml")


def test_size_and_encoding_are_checked_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_yaml, "MAX_BYTES", 64)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "1" * 100)
    with pytest.raises(ConfigError, match="100 bytes|103 bytes"):
        read_yaml(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(latin)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml(tmp_path)


def test_config_bomb_through_the_cli_is_exit_2(tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(LAUGHS)
    assert main(["compile", "-c", str(cfg), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bomb.yaml" in err[0] and "100,000 nodes" in err[0]
    assert not (tmp_path / "out").exists()


def test_rate_expression_cannot_allocate_a_trillion_entries():
    assert parse_rates("[0.1]*3+[0.2]") == [0.1, 0.1, 0.1, 0.2]
    with pytest.raises(ConfigError, match="--rates"):
        parse_rates("[0.1]*1000000000000")
