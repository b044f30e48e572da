"""``npuc compare FLOAT.onnx QUANT.onnx --calib DATA``: per-output and per-layer similarity."""

from __future__ import annotations

import argparse

from compiler.cli.common import add_input_shape_flag, format_table, load_bound, print_json
from compiler.cli.options import add_flags, from_args
from compiler.core.errors import ConfigError
from compiler.core.feeds import Preprocess, check_feeds
from compiler.driver.data import load_data

HEADERS = ("tensor", "cosine", "max abs err", "max |ref|", "SNR dB")


EXAMPLES = (
    ('compare model.onnx q/model.quant.onnx --calib calib.npz',
     'per-layer cosine and error of the int8 model against the float one'),
    ('compare model.onnx q/model.quant.onnx --calib calib.npz --outputs-only --json',
     'only the outputs, as JSON'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command to the CLI's subparsers."""
    p = sub.add_parser(
        "compare", help="cosine / max error / SNR per output and per layer",
        description="Run FLOAT and TEST on the same data and report, per graph output and per "
                    "paired intermediate tensor (int8 tensors of an npuc model.quant.onnx are "
                    "dequantized; QDQ models pair DequantizeLinear outputs; other models pair "
                    "tensors by name), cosine similarity, max abs error and SNR, worst first.")
    p.add_argument("float_model", metavar="FLOAT.onnx", help="reference float model")
    p.add_argument("test_model", metavar="QUANT.onnx",
                   help="model under test (model.quant.onnx, model.qdq.onnx, any ONNX)")
    p.add_argument("--calib", required=True, metavar="DATA",
                   help="data: bundled dataset name, .npy/.npz file or image folder")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N samples")
    p.add_argument("--batch", type=int, default=8, metavar="B",
                   help="samples per run for models with a symbolic batch (default 8)")
    p.add_argument("--top", type=int, default=20, metavar="K",
                   help="layers shown in the table, worst first (0: all; default 20)")
    add_input_shape_flag(p)
    p.add_argument("--outputs-only", action="store_true", help="skip intermediate tensors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_flags(p.add_argument_group("image preprocessing (folders of images)"), Preprocess)
    p.set_defaults(func=run)


def _rows(rows) -> list[tuple]:
    # Cosines near 1 are what matters: 4 significant digits would print most as "1".
    return [(r.name, f"{r.cosine:.6f}", r.max_abs, r.ref_max, r.snr_db) for r in rows]


def run(args: argparse.Namespace) -> int:
    """Execute ``npuc compare``; errors propagate as `NpucError` for the CLI to report."""
    from passes.quantize.compare import compare_models_on_data

    # both models bound alike; a batch the flag leaves symbolic stays so (batched runs)
    for flag, value in (("--limit", args.limit), ("--batch", args.batch)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be a positive number of samples")
    float_model = load_bound(args.float_model, args, keep_batch=True)
    test_model = load_bound(args.test_model, args, keep_batch=True)
    feeds = load_data(args.calib, float_model, limit=args.limit,
                      preprocess=from_args(args, Preprocess))
    check_feeds(feeds, test_model)
    report = compare_models_on_data(float_model, test_model, feeds, args.batch,
                                    layers=not args.outputs_only)
    if args.json:
        print_json({"float_model": args.float_model, "test_model": args.test_model,
                    **report.to_dict()})
        return 0
    print(f"{report.samples} samples from {feeds.source}; reference: {report.reference}\n")
    print("graph outputs")
    print(format_table(_rows(report.outputs), HEADERS))
    for note in report.notes:
        print(f"note: {note}")
    if not args.outputs_only:
        shown = report.layers if args.top <= 0 else report.layers[:args.top]
        print(f"\nlayers, worst first ({len(shown)} of {len(report.layers)})")
        print(format_table(_rows(shown), HEADERS))
    return 0
