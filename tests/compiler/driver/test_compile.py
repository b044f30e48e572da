"""End-to-end `npuc compile` runs (fast configurations) and the report's content."""

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from PIL import Image

from compiler.cli import main
from compiler.core.errors import ConfigError, PassError
from compiler.driver.pipeline import compile_model
from tests.compiler.driver.chromium import dom_text, render, table_text


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from models.zoo import mobilenetv2

    folder = tmp_path_factory.mktemp("e2e")
    proto, _ = mobilenetv2(image_size=32)
    onnx.save(proto, folder / "m.onnx")
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    np.savez(folder / "calib.npz", images=images)
    return folder


@pytest.fixture(scope="module")
def compiled(small_model):
    # cheap re-fits: what is checked here is the pipeline and its outputs, not the
    # reconstruction (tests/passes/), which took 45 of the 50 s with the defaults
    config = {"calibration.data": str(small_model / "calib.npz"), "prune.enabled": True,
              "prune.ratio": 0.25, "prune.reconstruct": "lsq", "sparsify.enabled": True,
              "sparsify.block": 4, "sparsify.sparsity": 0.5, "sparsify.criterion": "l1",
              "sparsify.reconstruct": False, "target.frames": 50}
    return compile_model(str(small_model / "m.onnx"), config, small_model / "out")


@pytest.mark.slow  # whole compiles of a MobileNetV2 (the fast tier keeps the
# failure, config and sparsify-keys compiles)
def test_all_outputs_written_and_verified(compiled):
    out = compiled.out_dir
    for name in ("model.pruned.onnx", "model.sparse.onnx", "model.quant.onnx", "model.qdq.onnx",
                 "calibration.json", "model.bin", "report.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    # no eval.data: the eval stage still measures fidelity with float on the calibration data
    assert [s["status"] for s in report["stages"]] == ["ok"] * 9
    assert report["stages"][-1]["name"] == "eval"
    assert 0.5 < report["eval"]["int8"]["cosine"] <= 1.0
    assert report["verify"]["consistent"] is True
    assert sum(o["mismatched"] for o in report["verify"]["outputs"]) == 0
    summary = report["summary"]
    assert summary["MACs"]["after"] < summary["MACs"]["before"]
    assert summary["latency ms (1 core, 1 thread)"]["after"] < \
        summary["latency ms (1 core, 1 thread)"]["before"]
    json.loads((out / "calibration.json").read_text())


@pytest.mark.slow
def test_report_layers_carry_every_column(compiled):
    layers = compiled.report["layers"]
    assert layers and all(r["unit"] == "NPU" for r in layers)
    assert any(r["channels_after"] < r["channels_before"] for r in layers)
    assert any(r["sparsity"] and r["sparsity"] >= 0.4 for r in layers)
    assert all(r["cycles"] for r in layers)
    # random-weight MobileNetV2 at 32 px quantizes poorly (output cosine ~0.86 even
    # uncompressed); the column must still hold a real similarity for every layer
    assert all(0.5 < r["cosine"] <= 1.0 for r in layers)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables, self.cells, self._in_cell = [], 0, [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        self.tables += tag == "table"
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data.strip())


@pytest.mark.slow
def test_report_html_shows_plots_and_tables(compiled):
    page = _Page()
    page.feed((compiled.out_dir / "report.html").read_text())
    titles = [img["alt"] for img in page.images]
    assert titles == ["Channels kept per layer", "Per-layer cosine similarity vs float",
                      "Time per step (1 core, 1 thread)", "Where the latency goes"]
    for img in page.images:
        png = base64.b64decode(img["src"].split(",", 1)[1])
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        assert pixels.shape[0] > 100 and pixels.std() > 5  # a drawn plot, not a blank image
    # stages, summary, latency, partition map, per-step, per-layer (no CPU nodes table)
    assert page.tables == 6
    assert "MACs" in page.cells and "bit-exact" in page.cells
    assert compiled.report["layers"][0]["layer"] in page.cells
    steps = compiled.report["steps"]
    assert all(s["step"] in page.cells for s in steps)
    assert any(s["op"] == "add" for s in steps) and "µs before" in page.cells


@pytest.mark.slow
def test_run_is_deterministic(small_model, compiled):
    config = dict(compiled.report["config"])
    compile_model(None, config, small_model / "again")
    a = (compiled.out_dir / "model.bin").read_bytes()
    b = (small_model / "again" / "model.bin").read_bytes()
    assert a == b


def test_failure_keeps_earlier_outputs_and_names_the_stage(small_model, tmp_path):
    config = {"calibration.data": str(small_model / "calib.npz"), "prune.enabled": True,
              "prune.rates": [0.5, 0.5]}
    with pytest.raises(PassError, match="^stage prune failed: .*"):
        compile_model(str(small_model / "m.onnx"), config, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "failed"]
    assert not (tmp_path / "model.quant.onnx").exists()


def test_cli_compile_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("prune:\n  ratoi: 0.3\n")
    assert main(["compile", "-c", str(bad), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npuc: error: ") and "did you mean 'prune.ratio'" in err
    with pytest.raises(ConfigError):
        compile_model(None, {"sparsify.block": 3}, tmp_path / "o2")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(compiled, tmp_path):
    dom, pixels = render(compiled.out_dir / "report.html", tmp_path)
    assert dom.count("<table") == 6 and dom.count("<img") == 4
    assert pixels.shape[:2] == (2400, 1200)
    # the "after" bars of the channels plot are drawn in #3b6ea8: the plot was decoded and shown
    bar_blue = np.all(np.abs(pixels - np.array([59, 110, 168])) < 12, axis=-1)
    assert bar_blue.sum() > 2000
    steps, pmap = table_text(dom, "steps"), table_text(dom, "partition-map")
    assert all(s["step"] in steps for s in compiled.report["steps"])
    assert "NPU" in pmap and "Where the latency goes" in dom_text(dom)


def test_sparsify_and_report_keys_reach_their_stages(small_model, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"calibration: {{data: {small_model / 'calib.npz'}}}\n"
        "sparsify: {enabled: true, criterion: l1, reconstruct: false, global: true,\n"
        "           exclude: ['features.2.*'], block: 8, sparsity: 0.4}\n"
        "target: {frames: 20, verify_samples: 2}\nreport: {top_layers: 3}\n")
    assert main(["compile", str(small_model / "m.onnx"), "-c", str(config), "-o",
                 str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") > 3 and "slowest steps" in out
    slowest = out[out.index("slowest steps"):].splitlines()[2:6]
    assert len(slowest) == 4 and slowest[3] == ""  # top_layers: 3
    times = [float(line.split()[4]) for line in slowest[:3]]  # by time: CPU steps too
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert all(line.split()[2] in ("NPU", "CPU") for line in slowest[:3])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    sp = report["sparsify"]
    assert sp["global"] and sp["criterion"] == "l1" and sp["block"] == 8
    assert not sp["reconstruct"] and sp["refit_dense"] == {}
    for name in ("features.2.conv.0.0", "features.2.conv.2"):
        assert sp["skipped"][name] == "excluded by --exclude"
    assert "features.3.conv.2" in {row["node"] for row in sp["layers"]}


@pytest.mark.slow
def test_saved_calibration_table_replaces_calibration(small_model, tmp_path):
    base = {"calibration.data": str(small_model / "calib.npz"), "target.frames": 20,
            "target.verify_samples": 2}
    first = compile_model(str(small_model / "m.onnx"), base, tmp_path / "o1")
    other = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32) * 3
    np.savez(tmp_path / "other.npz", images=other)
    config = {**base, "calibration.data": str(tmp_path / "other.npz")}
    reused = compile_model(str(small_model / "m.onnx"),
                           {**config, "calibration.table": str(first.out_dir / "calibration.json")},
                           tmp_path / "o2")
    fresh = compile_model(str(small_model / "m.onnx"), config, tmp_path / "o3")
    binary = (first.out_dir / "model.bin").read_bytes()
    assert (reused.out_dir / "model.bin").read_bytes() == binary
    assert (fresh.out_dir / "model.bin").read_bytes() != binary


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: `get_next()` until None."""

    def __init__(self, name, images, batch):
        self.name = name
        self.batches = [images[i:i + batch] for i in range(0, len(images), batch)]

    def get_next(self):
        return {self.name: self.batches.pop(0)} if self.batches else None


def test_api_takes_a_calibration_reader_and_a_nested_config(tmp_path):
    import compiler
    from tests.conftest import conv_model

    onnx.save(conv_model(), tmp_path / "m.onnx")
    name = conv_model().graph.input[0].name
    images = np.random.default_rng(1).standard_normal((10, 3, 8, 8)).astype(np.float32)
    reader = _Reader(name, images, 4)
    result = compiler.compile(str(tmp_path / "m.onnx"), {"target": {"verify_samples": 3}},
                              tmp_path / "out", calibration=reader)
    assert result.state.calib.source == "<reader>" and len(result.state.calib) == 10
    assert result.state.verify.consistent and (tmp_path / "out" / "model.bin").is_file()
