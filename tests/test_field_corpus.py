"""Small graphs written by real exporters (tests/data/field) through the npuc steps, in-process.

The committed subset of the field corpus (benchmarks/coverage.py, docs/coverage.md): random
weights, reduced width and resolution, BatchNorm statistics re-estimated on photos before
export. Regenerate with ``/work/corpus-venv/bin/python benchmarks/coverage.py testdata``.

Each step is checked against an oracle that does not use npuc: MACs against the layer shapes
onnxruntime computes, pruning against the MACs it claims to remove, the int8 model against the
float graph in onnxruntime, and the binary bit for bit against model.quant.onnx (`verify`).
A step that fails goes in its case's ``xfail`` (strict, with the reason), so a fix shows up as
XPASS. (None today: the channel-shuffle prune and the opset-18 ReduceMean failures of the first
run were fixed on main before this was merged.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler.cli import main

FIELD = Path(__file__).parent / "data" / "field"

@dataclass(frozen=True)
class Case:
    """One committed graph: where it came from, its input, and today's known failures."""

    file: str
    exporter: str
    shape: tuple[int, ...]
    layout: str = "NCHW"
    unit_range: bool = False
    """Inputs in [0, 1] (Ultralytics) instead of ImageNet-style ±1."""
    xfail: dict[str, str] = field(default_factory=dict)
    min_cosine: float = 0.9


CASES = [
    Case("legacy_mobilenet_v2_w025_op11_dyn.onnx", "torch.onnx TorchScript, dynamic batch",
         (1, 3, 64, 64)),
    Case("legacy_shufflenet_v2_tiny_op11.onnx", "torch.onnx TorchScript", (1, 3, 64, 64)),
    Case("legacy_shufflenet_v2_tiny_op8_irv3.onnx", "torch.onnx TorchScript opset 8, IR v3",
         (1, 3, 64, 64)),
    Case("dynamo_mobilenet_v3_small_w025_op18.onnx", "torch.onnx dynamo, opset 18",
         (1, 3, 64, 64)),
    Case("ultralytics_yolov8_tiny_128_op17.onnx", "Ultralytics export", (1, 3, 128, 128),
         unit_range=True),
    Case("tf2onnx_keras_tiny_mobilenet_op13_dyn.onnx", "tf2onnx from keras, NHWC",
         (1, 64, 64, 3), layout="NHWC"),
]


def _params(step: str, slow: bool = False) -> list:
    marks = [pytest.mark.slow] if slow else []
    return [pytest.param(c, id=c.file.removesuffix(".onnx"), marks=marks + (
        [pytest.mark.xfail(strict=True, reason=c.xfail[step])] if step in c.xfail else []))
        for c in CASES]


def _cli(argv: list) -> tuple[int, dict]:
    """Run one npuc command with --json; return its exit code and parsed output."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in argv] + ["--json"])
    text = buf.getvalue()
    return code, json.loads(text) if code == 0 and text.strip() else {}


def _input_name(path: Path) -> str:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


@pytest.fixture(scope="module")
def photo_views() -> list[np.ndarray]:
    """24 square crops of the bundled photos (uint8 RGB)."""
    pytest.importorskip("skimage")
    from models.datasets.photos import all_views, source_photos

    views = all_views()
    picked = np.random.default_rng(0).permutation(len(views))[:24]
    out = []
    for i in picked:
        v = views[i]
        crop = source_photos()[v.photo][v.top:v.top + v.side, v.left:v.left + v.side]
        out.append(np.ascontiguousarray(crop[:, ::-1] if v.flip else crop))
    return out


def _images(case: Case, views: list[np.ndarray]) -> np.ndarray:
    from models.datasets.photos import preprocess_imagenet

    size = case.shape[2] if case.layout == "NCHW" else case.shape[1]
    x = np.concatenate([preprocess_imagenet(v, size) for v in views])  # ±1, NCHW
    x = x * 0.5 + 0.5 if case.unit_range else x
    return (x.transpose(0, 2, 3, 1) if case.layout == "NHWC" else x).astype(np.float32)


@pytest.fixture
def feeds(request, tmp_path, photo_views) -> tuple[Path, Path, np.ndarray]:
    """calib.npz (16 views) and eval.npz (8 other views) for the case under test."""
    case = request.node.callspec.params["case"]
    x = _images(case, photo_views)
    name = _input_name(FIELD / case.file)
    calib, evals = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, **{name: x[:16]})
    np.savez(evals, **{name: x[16:]})
    return calib, evals, x[16:]


def _taps_reading_data(node: onnx.NodeProto, x: tuple, w: tuple) -> int:
    """Kernel taps of a Conv that read the input for some output position (brute force):
    canonicalization cuts the others, which only ever multiply zero padding."""
    attrs = {a.name: list(a.ints) for a in node.attribute}
    rank = len(w) - 2
    strides = attrs.get("strides") or [1] * rank
    dilations = attrs.get("dilations") or [1] * rank
    pads = attrs.get("pads") or [0] * 2 * rank
    taps = 1
    for ax in range(rank):
        k, d, s, size, begin = w[2 + ax], dilations[ax], strides[ax], x[2 + ax], pads[ax]
        out = (size + begin + pads[rank + ax] - d * (k - 1) - 1) // s + 1
        used = [t for t in range(k) if any(0 <= y * s - begin + d * t < size
                                           for y in range(out))]
        taps *= used[-1] - used[0] + 1
    return taps


def _reference_macs(path: Path, x: np.ndarray) -> int:
    """Conv/Gemm/MatMul MACs from the tensor shapes onnxruntime produces (no npuc code)."""
    model = onnx.load(str(path))
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    probe = {n.output[0] for n in nodes} | {n.input[0] for n in nodes}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n)
                              for n in sorted(probe - known))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    shapes = dict(zip(names, (v.shape for v in sess.run(None, {sess.get_inputs()[0].name: x})),
                      strict=True))
    total = 0
    for n in nodes:
        out = int(np.prod(shapes[n.output[0]]))
        if n.op_type == "Conv":
            w = weights[n.input[1]]
            total += out * w[1] * _taps_reading_data(n, shapes[n.input[0]], w)
        else:
            total += out * shapes[n.input[0]][-1]
    return total


@pytest.mark.parametrize("case", _params("inspect"))
def test_inspect_macs_match_onnxruntime_shapes(case, feeds):
    path = FIELD / case.file
    code, out = _cli(["inspect", path])
    assert code == 0
    assert out["totals"]["macs"] == _reference_macs(path, feeds[2][:1])


@pytest.mark.parametrize("case", _params("prune"))
def test_prune_ratio_removes_macs(case, tmp_path):
    code, out = _cli(["prune", FIELD / case.file, "-o", tmp_path / "p.onnx", "--ratio", "0.3",
                      "--no-reconstruct"])
    assert code == 0
    macs = out["macs"]
    assert macs["after"] <= 0.85 * macs["before"]  # issue 16: >= 15 % of the MACs at 0.3
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    onnx.checker.check_model(pruned)


@pytest.mark.parametrize("case", _params("sparsify"))
def test_sparsify_zeroes_half_the_blocks(case, tmp_path):
    code, out = _cli(["sparsify", FIELD / case.file, "-o", tmp_path / "s.onnx", "--block", "4",
                      "--sparsity", "0.5", "--criterion", "l1", "--no-reconstruct"])
    assert code == 0
    assert out["zero_block_fraction"] == pytest.approx(0.5, abs=0.02)
    assert out["effective_macs"] < out["macs"]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _worst_cosine(float_path: Path, quant_path: Path, x: np.ndarray) -> float:
    sf = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    sq = ort.InferenceSession(str(quant_path), providers=["CPUExecutionProvider"])
    fi, qi = sf.get_inputs()[0].name, sq.get_inputs()[0].name
    outs = [(sf.run(None, {fi: x[i:i + 1]}), sq.run(None, {qi: x[i:i + 1]}))
            for i in range(len(x))]
    return min(_cosine(np.stack([f[k] for f, _ in outs]), np.stack([q[k] for _, q in outs]))
               for k in range(len(outs[0][0])))


@pytest.mark.parametrize("case", _params("quantize", slow=True))
def test_quantize_build_verify_bit_exact(case, feeds, tmp_path):
    calib, evals, x = feeds
    q = tmp_path / "q"
    code, _ = _cli(["quantize", FIELD / case.file, "-o", q, "--calib", calib])
    assert code == 0
    code, built = _cli(["build", q / "model.quant.onnx", "-o", q / "model.bin"])
    assert code == 0
    assert built["npu_nodes"] > 0
    code, verified = _cli(["verify", q / "model.quant.onnx", q / "model.bin", "--inputs", evals,
                           "--samples", "4"])
    assert code == 0
    assert verified["consistent"]
    assert sum(o["mismatched"] for o in verified["outputs"]) == 0
    assert _worst_cosine(FIELD / case.file, q / "model.quant.onnx", x) >= case.min_cosine
