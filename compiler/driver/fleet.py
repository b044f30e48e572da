"""Fleet compile: many models, one config, compiled in parallel, one index page.

`npuc compile --models a.onnx b.onnx ... -c config.yaml -o DIR` compiles every model into
`DIR/<name>/` (the usual outputs and report) on the executor's workers (local processes or
Ray; the config is shipped once) and writes `DIR/index.json` and `DIR/index.html`: one row
per model with its outcome and key figures, linking to its report. A model that fails is a
row with its one-line error; the others still compile.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compiler.core.errors import ConfigError, NpucError, one_line
from compiler.core.executor import ExecutorOptions, open_pool
from compiler.core.onnxfile import write_atomic
from compiler.core.outpaths import check_output_dir
from compiler.driver.pipeline import INPUT_KEYS
from compiler.driver.sources import is_bundled

INDEX_FILES = ("index.json", "index.html")
MAX_MODELS = 10_000
FIGURES = ("MACs", "latency ms (1 core, 1 thread)", "FPS (2 cores, 8 threads)",
           "agreement with float", "cosine with float", "binary vs model.quant.onnx")


@dataclass
class FleetEntry:
    """The outcome of one model of the fleet (small: it travels back from a worker)."""

    model: str
    folder: str
    ok: bool = False
    error: str = ""
    time_s: float = 0.0
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_model_list(path: str | Path) -> list[str]:
    """Model paths or bundled names, one per line (blank lines and `#` comments skipped).

    Raises:
        ConfigError: The list cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--model-list {path}: cannot be read ({e})") from e
    return [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]


def folder_names(models: Sequence[str]) -> list[str]:
    """One output sub-folder per model: its file stem or bundled name, made unique."""
    names, seen = [], set()
    for model in models:
        stem = model if is_bundled(model) else Path(model).stem or "model"
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "model"
        name, i = base, 2
        while name.lower() in seen:  # case-insensitive file systems
            name, i = f"{base}_{i}", i + 1
        seen.add(name.lower())
        names.append(name)
    return names


def compile_fleet(models: Sequence[str], config: dict[str, Any], out_dir: str | Path,
                  executor: ExecutorOptions | None = None) -> list[FleetEntry]:
    """Compile every model with `config` into `out_dir/<name>/`, in parallel.

    Args:
        models: ONNX paths or bundled model names.
        config: The validated flat config (`load_config`); its `model` key is ignored.
        out_dir: The fleet's output folder (created).
        executor: Where the compiles run (default: local processes, CPU count).

    Returns:
        One entry per model, in the given order (also written to index.json/index.html).

    Raises:
        ConfigError: No models, too many, or an unusable output folder.
    """
    if not models:
        raise ConfigError("--models: no model given")
    if len(models) > MAX_MODELS:
        raise ConfigError(f"--models: {len(models)} models, at most {MAX_MODELS}")
    out = check_output_dir(out_dir, INDEX_FILES).absolute()
    out.mkdir(parents=True, exist_ok=True)
    # workers (Ray's especially) may run in another folder: ship absolute paths
    config = {k: _absolute(v) if k in INPUT_KEYS else v for k, v in config.items()}
    jobs = [(_absolute(m), str(out / name))
            for m, name in zip(models, folder_names(models), strict=True)]
    executor = executor or ExecutorOptions()
    workers = min(executor.worker_count(), len(jobs))
    with open_pool(executor, init=_init_fleet_worker, payload=config, workers=workers) as pool:
        entries = pool.map(_compile_one, jobs)
    write_index(out, entries)
    return entries


def _absolute(value: Any) -> Any:
    """An existing relative path made absolute; anything else unchanged."""
    if isinstance(value, str) and value and not is_bundled(value) and Path(value).exists():
        return str(Path(value).absolute())
    return value


_CONFIG: dict[str, Any] = {}


def _init_fleet_worker(config: dict[str, Any]) -> None:
    _CONFIG.clear()
    _CONFIG.update(config)


def _compile_one(job: tuple[str, str]) -> FleetEntry:
    """Compile one model; any failure becomes the entry's one-line error."""
    from compiler.driver.pipeline import compile_model

    model, folder = job
    entry, start = FleetEntry(model, folder), time.perf_counter()
    try:
        result = compile_model(model, dict(_CONFIG), folder)
        entry.ok = True
        entry.figures = {k: v for k, v in result.report.get("summary", {}).items()
                         if k in FIGURES}
    except NpucError as e:
        entry.error = one_line(str(e), 300)
    except Exception as e:  # noqa: BLE001 - one model's bug must not stop the fleet
        entry.error = one_line(f"internal error: {type(e).__name__}: {e}", 300)
    entry.time_s = round(time.perf_counter() - start, 2)
    return entry


def write_index(out: Path, entries: list[FleetEntry]) -> None:
    """index.json (the entries) and index.html (a table linking each report)."""
    doc = {"models": len(entries), "compiled": sum(e.ok for e in entries),
           "entries": [asdict(e) for e in entries]}
    write_atomic(out / "index.json", json.dumps(doc, indent=2, default=str).encode())
    write_atomic(out / "index.html", index_html(out, entries).encode())


def index_html(out: Path, entries: list[FleetEntry]) -> str:
    """A self-contained page: one row per model, its figures and a link to its report."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("model", "status", *FIGURES,
                                                          "time s"))
    rows = []
    for e in entries:
        link = Path(e.folder).relative_to(out).as_posix() + "/report.html"
        status = "ok" if e.ok else f"failed: {html.escape(e.error)}"
        cells = [f"<a href='{html.escape(link)}'>{html.escape(e.model)}</a>", status]
        cells += [html.escape(_figure(e.figures.get(k))) for k in FIGURES]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in [*cells, f"{e.time_s:.1f}"])
                    + "</tr>")
    ok = sum(e.ok for e in entries)
    return ("<!doctype html><meta charset='utf-8'><title>npuc fleet</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid"
            " #ddd;text-align:left}</style>"
            f"<h1>npuc fleet: {ok} of {len(entries)} models compiled</h1>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>")


def _figure(value: dict[str, Any] | None) -> str:
    if not value:
        return "-"
    before, after = value.get("before"), value.get("after")
    return _fmt(after) if before is None else f"{_fmt(before)} -> {_fmt(after)}"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}"
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


__all__ = ["FleetEntry", "INDEX_FILES", "compile_fleet", "folder_names", "index_html",
           "read_model_list", "write_index"]
