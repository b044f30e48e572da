"""`npuc quantize` with extra flags on every corpus graph: worst-output cosine vs the plain run.

Run after `benchmarks/coverage.py run` (it reuses each graph's calib.npz / eval.npz). Results
go into `docs/coverage.json` under `graphs.NAME.variants.LABEL`; `coverage.py report` then
shows them next to the default command's cosine. Graphs that already have the label are
skipped, so an interrupted run resumes.

    .venv/bin/python benchmarks/coverage_variant.py --label bias_correction \\
        --flags=--bias-correction
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
    input_flags,
    int8_cosine,
    run_cli,
)


def run_variant(entry: dict, corpus: Path, flags: list[str], label: str,
                timeout: float) -> dict:
    """Quantize one graph with `flags` and measure its int8 cosine on the held-out views."""
    work = corpus / "_work" / entry["name"]
    out = work / f"q_{label}"
    args = ["quantize", str(corpus / entry["file"]), "-o", str(out), "--calib",
            str(work / "calib.npz"), "--calib-limit", "32", *input_flags(entry), *flags]
    res = run_cli(args, work / f"quantize_{label}", timeout)
    if not res["ok"]:
        return {"flags": flags, "error": res.get("error"), "seconds": res["seconds"]}
    cos = int8_cosine(corpus / entry["file"], out / "model.quant.onnx", work / "eval.npz")
    return {"flags": flags, "cosine": cos.get("worst"), "seconds": res["seconds"],
            "commit": _commit()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True, help="key under graphs.NAME.variants")
    p.add_argument("--flags", required=True, help="extra quantize flags, space-separated")
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
        result = run_variant(entry, corpus, args.flags.split(), args.label, args.timeout)
        g.setdefault("variants", {})[args.label] = result
        print(f"{entry['name']:45s} {result.get('cosine')} ({time.monotonic() - t0:.0f} s)",
              flush=True)
        path.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
