"""The `npuc` command line: sub-commands live in `compiler.cli.<name>`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from compiler.cli.examples import attach
from compiler.core import __version__
from compiler.core.errors import ConfigError, NpucError, one_line
from compiler.core.progress import progress_output

# Each module defines `register(subparsers)`, which adds its parser with `func=run`.
COMMANDS = ("inspect", "groups", "prune", "sparsify", "quantize", "compare", "sensitivity",
            "build", "verify", "run", "perf", "eval", "compile", "demo")


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors as project errors: one line, exit 2 (like every error)."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing the usage block and exiting."""
        command = self.prog.removeprefix("npuc").strip()
        where = f"{command}: " if command else ""
        raise ConfigError(f"{where}{message} (see {self.prog} -h)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every available sub-command, or with command `only` alone.

    Registering a sub-command imports its module and that module's dependencies (targets,
    networkx, ...); a command line that names its command needs only that one.
    """
    parser = Parser(
        prog="npuc",
        description="Post-training compression compiler for ONNX CNNs on int8 accelerators.")
    parser.add_argument("--version", action="version", version=f"npuc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"compiler.cli.{name}")
        except ModuleNotFoundError as e:  # only a command not written yet is skipped
            if e.name != f"compiler.cli.{name}":
                raise
            continue
        module.register(sub)
        attach(sub.choices[name], module.EXAMPLES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn project errors into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    try:
        args = parser.parse_args(argv)
    except NpucError as e:
        return _report(e)
    _setup_logging(args.verbose)
    if not getattr(args, "func", None):
        return _report(ConfigError(f"no command given: one of {', '.join(COMMANDS)} "
                                   "(see npuc -h)"))
    # Bars only for a person watching: not under --json / --quiet, not into a pipe or file.
    bars = sys.stderr.isatty() and not getattr(args, "json", False) \
        and not getattr(args, "quiet", False)
    try:
        with progress_output(bars):
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except NpucError as e:
        return _report(e)
    except KeyboardInterrupt:
        print("npuc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (`| head`) left: stop quietly, and keep Python's exit-time flush of
        # stdout from raising a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if args.debug:
            raise
        print(one_line(f"npuc: internal error: {type(e).__name__}: {e} (rerun with --debug)"),
              file=sys.stderr)
        return 3


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named by `argv` (the first word that is not a flag), if it is one.

    The global flags take no value, so that word is the command.
    """
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


class _OneLine(logging.Formatter):
    """Every log record (and captured Python warning) as one `npuc: LEVEL: ...` line."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "py.warnings":  # "file:line: Category: text\n  source line"
            record.msg = str(record.msg).strip().splitlines()[0].split(": ", 1)[-1]
            record.args = ()
        return one_line(super().format(record))


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("npuc: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        handlers=[handler])
    logging.captureWarnings(True)  # library warnings become one line each, not source dumps
    for noisy in ("PIL", "matplotlib"):  # -v is about npuc, not its libraries' internals
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _report(error: NpucError) -> int:
    print(f"npuc: error: {one_line(str(error))}", file=sys.stderr)
    return error.exit_code

