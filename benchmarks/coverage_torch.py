"""Field-corpus graphs from PyTorch: torchvision / timm / Ultralytics, both torch exporters.

Runs in the corpus venv only (torch is never an npuc dependency). Weights are random (no
downloads); BatchNorm running statistics are re-estimated on real photos before export
(train mode, cumulative average), so activation ranges look like a trained network's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from coverage_photos import CALIB, IMAGENET, UNIT, load_photos, preprocess

logger = logging.getLogger("coverage")
warnings.filterwarnings("ignore")


def _photos(corpus: Path, spec: dict, n: int = 32) -> torch.Tensor:
    images = load_photos(corpus)[CALIB][:n]
    return torch.from_numpy(preprocess(images, spec))


def recalibrate_bn(module: torch.nn.Module, batches: list[torch.Tensor], call=None) -> None:
    """Replace BN running stats with their cumulative average over `batches` (train mode)."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    with torch.no_grad():
        for b in batches:
            (call or module)(b)
    module.eval()


def build_once(entry: dict, path: Path, build, *args) -> dict:
    """Run `build(*args)` unless `path` exists; a failure is recorded in the entry, not raised."""
    if not path.exists():
        try:
            build(*args)
        except Exception as e:  # noqa: BLE001 - one graph failing must not lose the others
            logger.exception("generating %s failed", entry["name"])
            entry["generate_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return entry


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def export_legacy(model, x, path: Path, opset: int, dynamic: bool, *, inp: str = "input",
                  outputs: tuple[str, ...] = ("logits",), fold: bool = True,
                  dyn_axes: dict | None = None) -> None:
    """The TorchScript exporter (``dynamo=False``) as most deployed files were written.

    At opsets <= 9 initializers are also graph inputs, as torch wrote them before 1.7 (and the
    exporter picks IR v3 for opsets 7-8).
    """
    axes = dyn_axes
    if dynamic and axes is None:
        axes = {inp: {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    _quiet(torch.onnx.export, model, (x,), str(path), dynamo=False, opset_version=opset,
           input_names=[inp], output_names=list(outputs), dynamic_axes=axes,
           do_constant_folding=fold, keep_initializers_as_inputs=opset <= 9)


def export_dynamo(model, x, path: Path, dynamic: bool, opset: int | None = None) -> None:
    """The torch.export-based exporter (its default opset, external data as it writes it)."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    kwargs = {"opset_version": opset} if opset else {}
    _quiet(torch.onnx.export, model, (x,), str(path), dynamo=True, dynamic_shapes=shapes,
           input_names=["input"], output_names=["logits"], **kwargs)


def _classifier(arch: str):
    import timm
    import torchvision

    torch.manual_seed(0)
    if arch.startswith("timm:"):
        return timm.create_model(arch[5:], pretrained=False)
    if arch.startswith("seg:"):  # torchvision segmentation: the "out" map of the dict
        kwargs = {"aux_loss": False} if "lraspp" not in arch else {}
        return _Segmenter(torchvision.models.get_model(arch[4:], weights=None,
                                                       weights_backbone=None, **kwargs))
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    return torchvision.models.get_model(arch, weights=None, **kwargs)


class _Segmenter(torch.nn.Module):
    """torchvision segmentation model returning its "out" logits map, not a dict."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _imagenet(size: int = 224) -> dict:
    return {"shape": [1, 3, size, size], "layout": "NCHW", "resize": "crop", **IMAGENET}


# (name, architecture, exporter, opset, dynamic batch, input size)
CLASSIFIERS = [
    ("tv_resnet18_op11", "resnet18", "legacy", 11, False, 224),
    ("tv_resnet50_op13_dyn", "resnet50", "legacy", 13, True, 224),
    ("tv_mobilenet_v2_op11_dyn", "mobilenet_v2", "legacy", 11, True, 224),
    ("tv_mobilenet_v3_small_op13", "mobilenet_v3_small", "legacy", 13, False, 224),
    ("tv_mobilenet_v3_large_op17_dyn", "mobilenet_v3_large", "legacy", 17, True, 224),
    ("tv_efficientnet_b0_op13", "efficientnet_b0", "legacy", 13, False, 224),
    ("tv_shufflenet_v2_x1_0_op11", "shufflenet_v2_x1_0", "legacy", 11, False, 224),
    ("tv_shufflenet_v2_x1_0_op17_dyn", "shufflenet_v2_x1_0", "legacy", 17, True, 224),
    ("tv_squeezenet1_1_op11", "squeezenet1_1", "legacy", 11, False, 224),
    ("tv_densenet121_op13", "densenet121", "legacy", 13, False, 224),
    ("tv_regnet_y_400mf_op17", "regnet_y_400mf", "legacy", 17, False, 224),
    ("tv_mnasnet1_0_op13_dyn", "mnasnet1_0", "legacy", 13, True, 224),
    ("tv_googlenet_op11", "googlenet", "legacy", 11, False, 224),
    ("timm_ghostnet_100_op13", "timm:ghostnet_100", "legacy", 13, False, 224),
    ("timm_rexnet_100_op17_dyn", "timm:rexnet_100", "legacy", 17, True, 224),
    ("timm_hrnet_w18_small_op13", "timm:hrnet_w18_small", "legacy", 13, False, 224),
    ("timm_cs3darknet_focus_s_op13", "timm:cs3darknet_focus_s", "legacy", 13, False, 256),
    ("timm_tf_efficientnet_b0_op11", "timm:tf_efficientnet_b0", "legacy", 11, False, 224),
    ("timm_mixnet_s_op13", "timm:mixnet_s", "legacy", 13, False, 224),
    ("timm_lcnet_050_op17", "timm:lcnet_050", "legacy", 17, False, 224),
    ("timm_resnest14d_op13", "timm:resnest14d", "legacy", 13, False, 224),
    ("timm_ese_vovnet19b_dw_op13", "timm:ese_vovnet19b_dw", "legacy", 13, False, 224),
    ("tv_resnet18_op9_initinputs", "resnet18", "legacy", 9, False, 224),
    ("tv_mobilenet_v2_op8_irv3_dyn", "mobilenet_v2", "legacy", 8, True, 224),
    ("tv_squeezenet1_1_op7_irv3", "squeezenet1_1", "legacy", 7, False, 224),
    ("tv_shufflenet_v2_x1_0_op9_initinputs", "shufflenet_v2_x1_0", "legacy", 9, False, 224),
    ("dynamo_resnet18", "resnet18", "dynamo", None, False, 224),
    ("dynamo_mobilenet_v2_dyn", "mobilenet_v2", "dynamo", None, True, 224),
    ("dynamo_mobilenet_v3_small", "mobilenet_v3_small", "dynamo", None, False, 224),
    ("dynamo_efficientnet_b0_op18", "efficientnet_b0", "dynamo", 18, False, 224),
    ("dynamo_shufflenet_v2_x1_0", "shufflenet_v2_x1_0", "dynamo", None, False, 224),
    ("dynamo_timm_ghostnet_100_dyn", "timm:ghostnet_100", "dynamo", None, True, 224),
    # segmentation (session 13): dilated backbones, ASPP / LR-ASPP heads, bilinear Resize
    ("tv_deeplabv3_mobilenet_v3_large_op17_dyn", "seg:deeplabv3_mobilenet_v3_large", "legacy",
     17, True, 256),
    ("tv_lraspp_mobilenet_v3_large_op13", "seg:lraspp_mobilenet_v3_large", "legacy", 13, False,
     256),
    ("tv_fcn_resnet50_op11", "seg:fcn_resnet50", "legacy", 11, False, 224),
    # conv/attention hybrids and re-parameterized nets: LayerNorm, GELU, attention MatMuls
    ("timm_convnext_atto_op17", "timm:convnext_atto", "legacy", 17, False, 224),
    ("timm_mobilevit_xxs_op17", "timm:mobilevit_xxs", "legacy", 17, False, 256),
    ("timm_efficientvit_b0_op17", "timm:efficientvit_b0", "legacy", 17, False, 224),
    ("timm_repvgg_a0_op13", "timm:repvgg_a0", "legacy", 13, False, 224),
    ("dynamo_timm_convnext_atto_op21", "timm:convnext_atto", "dynamo", 21, False, 224),
]


def classifier_entries(corpus: Path) -> list[dict]:
    """Export every `CLASSIFIERS` row that is not on disk yet; return manifest entries."""
    entries = []
    for name, arch, exporter, opset, dynamic, size in CLASSIFIERS:
        path = corpus / f"{name}.onnx"
        spec = _imagenet(size)
        entry = {"name": name, "file": path.name, "input": spec,
                 "origin": "timm" if arch.startswith("timm:") else "torchvision",
                 "exporter": f"torch.onnx {exporter} (torch {torch.__version__})"}
        entries.append(build_once(entry, path, _export_classifier,
                                  corpus, path, arch, spec, exporter, opset, dynamic))
    return entries


def _export_classifier(corpus, path, arch, spec, exporter, opset, dynamic) -> None:
    model = _classifier(arch)
    recalibrate_bn(model, list(_photos(corpus, spec).split(8)))
    # torch.export specializes a dim of size 1, so a dynamic batch needs an example of 2
    x = torch.from_numpy(preprocess(load_photos(corpus)[:2 if dynamic else 1], spec))
    if exporter == "legacy":
        export_legacy(model, x, path, opset, dynamic)
    else:
        export_dynamo(model, x, path, dynamic, opset)


class _Detector(torch.nn.Module):
    """torchvision detector on a batched tensor, returning (boxes, scores, labels) of image 0."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(list(x.unbind(0)))[0]
        return out["boxes"], out["scores"], out["labels"]


DETECTORS = [
    ("tv_ssdlite320_mobilenet_v3_large_op11", "ssdlite320_mobilenet_v3_large", 320, {}),
    ("tv_fasterrcnn_mobilenet_v3_large_320_fpn_op11", "fasterrcnn_mobilenet_v3_large_320_fpn",
     320, {}),
    ("tv_retinanet_resnet50_fpn_320_op11", "retinanet_resnet50_fpn", 320,
     {"min_size": 320, "max_size": 320}),
]


def detector_entries(corpus: Path) -> list[dict]:
    """torchvision detectors exported with their pre/post-processing (NMS, TopK, Loop/If)."""
    entries = []
    for name, arch, size, kwargs in DETECTORS:
        path = corpus / f"{name}.onnx"
        spec = {"shape": [1, 3, size, size], "layout": "NCHW", "resize": "stretch", **UNIT}
        entry = {"name": name, "file": path.name, "input": spec, "origin": "torchvision",
                 "exporter": f"torch.onnx legacy (torch {torch.__version__})"}
        entries.append(build_once(entry, path, _export_detector,
                                  corpus, path, arch, spec, kwargs))
    return entries


def _export_detector(corpus, path, arch, spec, kwargs) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, **kwargs)
    batches = list(_photos(corpus, spec, 16).split(4))
    recalibrate_bn(model.backbone, [model.transform(list(b))[0].tensors for b in batches])
    model.eval()
    x = torch.from_numpy(preprocess(load_photos(corpus)[:1], spec))
    export_legacy(_Detector(model), x, path, 11, False, inp="images",
                  outputs=("boxes", "scores", "labels"))


ULTRALYTICS = [
    ("ultralytics_yolov8n_640_op17", "yolov8n.yaml", 640, False),
    ("ultralytics_yolo11n_320_op17_dyn", "yolo11n.yaml", 320, True),
]


def ultralytics_entries(corpus: Path) -> list[dict]:
    """Ultralytics detectors built from their YAML (no weights) through Ultralytics' exporter."""
    from ultralytics import __version__

    entries = []
    for name, cfg, size, dynamic in ULTRALYTICS:
        path = corpus / f"{name}.onnx"
        spec = {"shape": [1, 3, size, size], "layout": "NCHW", "resize": "stretch", **UNIT}
        entry = {"name": name, "file": path.name, "input": spec, "origin": "ultralytics",
                 "exporter": f"ultralytics {__version__} export(format=onnx)"}
        entries.append(build_once(entry, path, _export_yolo,
                                  corpus, path, cfg, spec, size, dynamic))
    return entries


def _export_yolo(corpus, path, cfg, spec, size, dynamic) -> None:
    import shutil
    import tempfile

    from ultralytics import YOLO

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        yolo = YOLO(cfg)
        recalibrate_bn(yolo.model, list(_photos(corpus, spec, 16).split(4)))
        out = yolo.export(format="onnx", simplify=False, imgsz=size, opset=17,
                          dynamic=dynamic, verbose=False)
        shutil.move(out, path)


def paddle_style_source(corpus: Path) -> Path:
    """MobileNetV3-Large with BatchNorm left unfused (as Paddle and older exporters write)."""
    path = corpus / "_src_mobilenet_v3_large_bn.onnx"
    if not path.exists():
        spec = _imagenet()
        model = _classifier("mobilenet_v3_large")
        recalibrate_bn(model, list(_photos(corpus, spec).split(8)))
        x = torch.from_numpy(preprocess(load_photos(corpus)[:1], spec))
        export_legacy(model, x, path, 13, True, inp="x", outputs=("save_infer_model/scale_0",),
                      fold=False)
    return path


def generate(corpus: Path) -> list[dict]:
    """All torch-built entries (files written into `corpus` unless already there)."""
    return classifier_entries(corpus) + detector_entries(corpus) + ultralytics_entries(corpus)


# ------------------------------------------------------------------ test-suite subset (small)
def _tiny_models() -> dict:
    import torchvision
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    torch.manual_seed(0)
    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return {
        "mobilenet_v2": torchvision.models.MobileNetV2(
            num_classes=10, width_mult=0.25,
            inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 2, 2]]),
        "shufflenet_v2": torchvision.models.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128],
                                                         num_classes=10),
        "mobilenet_v3_small": MobileNetV3(setting, last // 4, num_classes=10),
    }


def _tiny_yolo(out: Path, corpus: Path) -> None:
    import shutil
    import tempfile

    import ultralytics.cfg
    import yaml
    from ultralytics import YOLO

    src = Path(ultralytics.cfg.__file__).parent / "models" / "v8" / "yolov8.yaml"
    cfg = yaml.safe_load(src.read_text())
    cfg.pop("scales")
    cfg.update(nc=4, depth_multiple=0.33, width_multiple=0.0625)
    spec = {"shape": [1, 3, 128, 128], "layout": "NCHW", "resize": "stretch", **UNIT}
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        Path("yolov8-tiny.yaml").write_text(yaml.safe_dump(cfg))
        yolo = YOLO("yolov8-tiny.yaml")
        recalibrate_bn(yolo.model, list(_photos(corpus, spec, 16).split(4)))
        f = yolo.export(format="onnx", simplify=False, imgsz=128, opset=17, verbose=False)
        shutil.move(f, out / "ultralytics_yolov8_tiny_128_op17.onnx")


def field_test_graphs(out: Path, corpus: Path) -> None:
    """Small real-exporter graphs for tests/data/field (random weights, reduced width/size)."""
    spec = _imagenet(64)
    x = torch.from_numpy(preprocess(load_photos(corpus)[:1], spec))
    models = _tiny_models()
    for model in models.values():
        recalibrate_bn(model, list(_photos(corpus, spec, 32).split(8)))
    export_legacy(models["mobilenet_v2"], x, out / "legacy_mobilenet_v2_w025_op11_dyn.onnx",
                  11, True)
    export_legacy(models["shufflenet_v2"], x, out / "legacy_shufflenet_v2_tiny_op11.onnx", 11,
                  False)
    export_legacy(models["shufflenet_v2"], x, out / "legacy_shufflenet_v2_tiny_op8_irv3.onnx", 8,
                  False)
    path = out / "dynamo_mobilenet_v3_small_w025_op18.onnx"
    _quiet(torch.onnx.export, models["mobilenet_v3_small"], (x,), str(path), dynamo=True,
           opset_version=18, input_names=["input"], output_names=["logits"],
           external_data=False)
    _tiny_yolo(out, corpus)
