"""Every sub-command's --help ends with examples, and every example parses."""

from __future__ import annotations

import importlib
import shlex

import pytest

from compiler.cli import COMMANDS, build_parser


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_examples_that_parse(command, capsys):
    examples = importlib.import_module(f"compiler.cli.{command}").EXAMPLES
    assert len(examples) >= 1
    parser = build_parser()
    with pytest.raises(SystemExit) as done:
        parser.parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "\nexamples:\n" in text
    for line, what in examples:
        assert f"  npuc {line}\n" in text + "\n" and f"  # {what}" in text
        args = parser.parse_args(shlex.split(line))  # a removed flag raises ConfigError
        assert args.command == command
