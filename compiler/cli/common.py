"""Helpers shared by the sub-commands: tables, JSON output, calibration-data flags."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compiler.cli.options import add_flags, from_args
from compiler.core.feeds import Preprocess
from compiler.core.io import load_model
from compiler.core.ir import Model
from compiler.core.npfiles import array_shapes
from compiler.core.shapes import DataShapes, InputShapes, ShapeSpec
from passes.quantize.options import CalibrationOptions

CALIB_FIELDS = ("data", "limit")


def add_step_data_flags(p: argparse.ArgumentParser, calib: Sequence[str] = CALIB_FIELDS) -> None:
    """The calibration flags `calib` of `CalibrationOptions` and the preprocessing flags."""
    add_flags(p.add_argument_group("calibration data"), CalibrationOptions, only=calib)
    add_flags(p.add_argument_group("image preprocessing (folders of images)"), Preprocess)


def step_data(args: argparse.Namespace) -> tuple[str | None, int, Preprocess]:
    """(calibration source or None, sample limit, preprocessing) from the parsed flags."""
    calib = from_args(args, CalibrationOptions)
    return calib.data, calib.limit, from_args(args, Preprocess)


def add_input_shape_flag(p: argparse.ArgumentParser) -> None:
    """`--input-shape [NAME:]1x3x224x224` (repeatable), declared by `InputShapes`."""
    add_flags(p, InputShapes)


def input_shapes(args: argparse.Namespace) -> ShapeSpec:
    """The parsed `--input-shape` flags (`{name: dims}`, "" for a bare shape).

    Without the flag, the shapes of an `.npy`/`.npz` data file given to the command
    (`--calib`, `--data`) fill the dims the model leaves symbolic (`DataShapes`).
    """
    spec = from_args(args, InputShapes).spec
    if spec:
        return spec
    for attr in ("calib", "data"):
        path = getattr(args, attr, None)
        if isinstance(path, str) and path.endswith((".npy", ".npz")) and Path(path).is_file():
            return DataShapes(array_shapes(Path(path)))
    return spec


def load_bound(path: str, args: argparse.Namespace, *, keep_batch: bool = False) -> Model:
    """Load a float model (file or bundled name) with its inputs bound by `--input-shape`.

    Without the flag a symbolic batch becomes 1.

    With `keep_batch` a symbolic batch the flag does not give stays symbolic (prune and
    sparsify write a model that keeps the exporter's dynamic batch).
    """
    from compiler.driver.sources import resolve_model

    return load_model(resolve_model(path), input_shapes=input_shapes(args), bind=True,
                      keep_batch=keep_batch)


def print_json(data: Any) -> None:
    """Print JSON to stdout (numpy scalars become plain numbers)."""
    json.dump(data, sys.stdout, indent=2, default=_plain)
    sys.stdout.write("\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with right-aligned numbers and left-aligned text."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), sep] + [line(r) for r in cells])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"
