"""A step with other flags on every corpus graph: worst-output cosine vs the float graph.

Run after `benchmarks/coverage.py run` (it reuses each graph's calib.npz / eval.npz). Results
go into `docs/coverage.json` under `graphs.NAME.variants.LABEL`; `coverage.py report` then
shows them next to the default command's cosine. Graphs that already have the label are
skipped, so an interrupted run resumes.

- `--command quantize` (default): `npuc quantize M -o Q --calib calib.npz --calib-limit 32
  FLAGS`; the cosine is model.quant.onnx's.
- `--command prune` / `sparsify`: `npuc prune M -o OUT.onnx --calib calib.npz --calib-limit
  32 FLAGS` (the runner's plain rows use `--no-reconstruct` and no data; these run the
  defaults a user with data gets: reconstruction); the cosine is the compressed float
  model's, and the MACs before/after are recorded.

    .venv/bin/python benchmarks/coverage_variant.py --label bias_correction \\
        --flags=--bias-correction
    .venv/bin/python benchmarks/coverage_variant.py --label prune_recon --command prune \\
        --flags="--ratio 0.3"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage import (  # noqa: E402
    DEFAULT_CORPUS,
    REPO,
    _commit,
    _json_out,
    input_flags,
    int8_cosine,
    run_cli,
    step_numbers,
    write_feeds,
)


def run_variant(entry: dict, corpus: Path, flags: list[str], label: str,
                timeout: float, command: str = "quantize") -> dict:
    """Run `command` on one graph with `flags`; measure its cosine on the held-out views."""
    work = corpus / "_work" / entry["name"]
    if not (work / "calib.npz").exists() or not (work / "eval.npz").exists():
        work.mkdir(parents=True, exist_ok=True)
        write_feeds(entry, corpus, work)
    out = work / (f"q_{label}" if command == "quantize" else f"{label}.onnx")
    args = [command, str(corpus / entry["file"]), "-o", str(out), "--calib",
            str(work / "calib.npz"), "--calib-limit", "32", *input_flags(entry), *flags,
            *(["--json"] if "--json" not in flags else [])]
    log = work / f"{command}_{label}"
    res = run_cli(args, log, timeout)
    if not res["ok"]:
        return {"flags": flags, "error": res.get("error"), "seconds": res["seconds"],
                "commit": _commit()}
    final = out / "model.quant.onnx" if command == "quantize" else out
    cos = int8_cosine(corpus / entry["file"], final, work / "eval.npz")
    if command != "quantize":
        out.unlink(missing_ok=True)  # the corpus work folder keeps logs, not models
    return {"flags": flags, "cosine": cos.get("worst"), "seconds": res["seconds"],
            "peak_rss_mb": res["peak_rss_mb"], **step_numbers(command, _json_out(log)),
            "commit": _commit()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True, help="key under graphs.NAME.variants")
    p.add_argument("--flags", required=True, help="extra flags of the step, space-separated")
    p.add_argument("--command", default="quantize", choices=("quantize", "prune", "sparsify"))
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    p.add_argument("--json", default=str(REPO / "docs" / "coverage.json"))
    p.add_argument("--only", help="regular expression on graph names")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args(argv)
    corpus, path = Path(args.corpus), Path(args.json)
    data = json.loads(path.read_text())
    for entry in json.loads((corpus / "manifest.json").read_text()):
        g = data["graphs"].get(entry["name"])
        if g is None or (args.only and not re.search(args.only, entry["name"])):
            continue
        if args.label in g.get("variants", {}) or not (g.get("cosine") or {}).get("worst"):
            continue  # done, or the default run has no cosine to compare with
        t0 = time.monotonic()
        result = run_variant(entry, corpus, args.flags.split(), args.label, args.timeout,
                             args.command)
        g.setdefault("variants", {})[args.label] = result
        print(f"{entry['name']:45s} {result.get('cosine')} ({time.monotonic() - t0:.0f} s)",
              flush=True)
        path.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
