"""The `npuc` command line: sub-commands live in `compiler.cli.<name>`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from compiler.core import __version__
from compiler.core.errors import NpucError

# Each module defines `register(subparsers)`, which adds its parser with `func=run`.
COMMANDS = ("inspect", "groups", "prune", "sparsify", "quantize", "compare", "build", "verify",
            "run", "perf", "eval", "compile", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="npuc",
        description="Post-training compression compiler for ONNX CNNs on int8 accelerators.")
    parser.add_argument("--version", action="version", version=f"npuc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"compiler.cli.{name}")
        except ModuleNotFoundError as e:  # only a command not written yet is skipped
            if e.name != f"compiler.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn project errors into one line and an exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="npuc: %(levelname)s: %(message)s")
    for noisy in ("PIL", "matplotlib"):  # -v is about npuc, not its libraries' internals
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NpucError as e:
        print(f"npuc: error: {e}", file=sys.stderr)
        return e.exit_code
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
        print(f"npuc: internal error: {type(e).__name__}: {e} (rerun with --debug)",
              file=sys.stderr)
        return 3

