"""`--input-shape` on the commands that load a model, and `input.shape` in `npuc compile`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from tests.compiler.core.test_input_shape import expected_macs, symbolic_net


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "sym.onnx"
    onnx.save(symbolic_net(), path)
    return path


@pytest.fixture
def calib_path(tmp_path):
    path = tmp_path / "calib.npz"
    images = np.random.default_rng(0).standard_normal((8, 3, 12, 20)).astype(np.float32)
    np.savez(path, images=images)
    return path


def test_inspect_shows_bound_shapes_and_real_macs(model_path, capsys):
    code, out, err = _run(["inspect", model_path, "--input-shape", "x:1x3x12x20"], capsys)
    assert code == 0, err
    assert "inputs: x 1x3x12x20" in out and "?" not in out
    assert f"({expected_macs(12, 20):,})" in out
    code, out, _ = _run(["inspect", model_path, "--input-shape", "1x3x12x20", "--json"], capsys)
    data = json.loads(out)
    assert data["inputs"] == {"x": [1, 3, 12, 20]}
    assert data["totals"]["macs"] == expected_macs(12, 20) == 121120


def test_inspect_without_shape_names_the_symbolic_dim(model_path, capsys):
    code, out, err = _run(["inspect", model_path], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and not out
    assert len(lines) == 1 and lines[0].startswith("npuc: error: input 'x'"), err
    assert "symbolic dim 2 ('H'" in lines[0] and "--input-shape x:1x3xHxW" in lines[0]


@pytest.mark.parametrize("spec, expect", [
    ("y:1x3x8x8", "--input-shape y:1x3x8x8: "),
    ("x:1x3x8", "rank 4"),
    ("x:1x3x0x8", "every dim must be positive"),
    ("x:1x5x8x8", "dim 1 of input 'x' is fixed at 3"),
    ("x:1x3xHx8", "dims must be integers"),
])
def test_bad_specs_exit_2_with_one_line(model_path, tmp_path, spec, expect, capsys):
    for argv in (["inspect", model_path], ["groups", model_path],
                 ["prune", model_path, "-o", tmp_path / "p.onnx", "--ratio", "0.5",
                  "--criterion", "l1", "--no-reconstruct"]):
        code, _, err = _run([*argv, "--input-shape", spec], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert "--input-shape" in lines[0] and expect in lines[0], err
    assert not (tmp_path / "p.onnx").exists()


def test_groups_prune_and_sparsify_take_the_flag(model_path, tmp_path, capsys):
    shape = ["--input-shape", "x:1x3x12x20"]
    code, out, err = _run(["groups", model_path, *shape, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["prunable"] >= 1
    pruned = tmp_path / "p.onnx"
    code, out, err = _run(["prune", model_path, "-o", pruned, "--ratio", "0.5", "--criterion",
                           "l1", "--no-reconstruct", "--round-to", "1", *shape, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["macs"]["before"] == expected_macs(12, 20)
    sparse = tmp_path / "s.onnx"
    code, _, err = _run(["sparsify", model_path, "-o", sparse, "--criterion", "l1",
                         "--no-reconstruct", "--block", "4", *shape], capsys)
    assert code == 0, err
    assert _dims(sparse) == [1, 3, 12, 20]


def _dims(path):
    return [d.dim_param or d.dim_value
            for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]


def test_prune_and_sparsify_keep_an_unbound_dynamic_batch(tmp_path, capsys):
    path = tmp_path / "n.onnx"
    onnx.save(symbolic_net(("N", 3, 8, 8)), path)
    for argv in (["prune", "--ratio", "0.5", "--criterion", "l1", "--no-reconstruct"],
                 ["sparsify", "--criterion", "l1", "--no-reconstruct"]):
        out = tmp_path / f"{argv[0]}.onnx"
        code, _, err = _run([argv[0], path, "-o", out, *argv[1:]], capsys)
        assert code == 0, err
        assert _dims(out) == ["N", 3, 8, 8]
    code, out, err = _run(["inspect", path, "--json"], capsys)  # inspect binds the batch
    assert code == 0, err
    assert json.loads(out)["inputs"] == {"x": [1, 3, 8, 8]}


@pytest.mark.parametrize("spec", ["x:2x3x12x20", "x:1x3x12x20"])
def test_eval_takes_the_flag(model_path, calib_path, spec, capsys):
    argv = ["eval", model_path, "--data", calib_path, "--reference", model_path, "--json"]
    code, out, err = _run([*argv, "--input-shape", spec], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["samples"] == 8 and result["metrics"]["cosine"] == pytest.approx(1.0)
    code, _, err = _run([*argv, "--input-shape", "x:1x3x12"], capsys)
    assert code == 2 and "rank 4" in err


def test_quantize_and_compare_take_the_flag(model_path, calib_path, tmp_path, capsys):
    out_dir = tmp_path / "q"
    code, _, err = _run(["quantize", model_path, "-o", out_dir, "--calib", calib_path,
                         "--input-shape", "x:1x3x12x20"], capsys)
    assert code == 0, err
    code, out, err = _run(["compare", model_path, out_dir / "model.quant.onnx", "--calib",
                           calib_path, "--input-shape", "1x3x12x20", "--outputs-only",
                           "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["cosine"] > 0.9


def test_compile_with_input_shape_builds_and_verifies_bit_exact(model_path, calib_path,
                                                                tmp_path, capsys):
    before = model_path.read_bytes()
    config = tmp_path / "c.yaml"
    config.write_text(f"input:\n  shape: {{x: [1, 3, 12, 20]}}\ncalibration:\n"
                      f"  data: {calib_path}\ntarget:\n  frames: 20\n")
    code, out, err = _run(["compile", model_path, "-c", config, "-o", tmp_path / "out",
                           "--quiet", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["verify"]["consistent"] is True
    assert sum(o["mismatched"] for o in report["verify"]["outputs"]) == 0
    assert (tmp_path / "out" / "model.bin").stat().st_size > 0
    assert model_path.read_bytes() == before


def test_compile_without_shape_on_symbolic_hw(model_path, calib_path, tmp_path, capsys):
    """The .npz calibration file's [8, 3, 12, 20] gives H and W; image folders cannot."""
    code, _, err = _run(["compile", model_path, "--calib", calib_path, "-o", tmp_path / "out",
                         "--quiet"], capsys)
    assert code == 0, err
    quant = onnx.load(str(tmp_path / "out" / "model.quant.onnx"))
    assert [d.dim_value for d in quant.graph.input[0].type.tensor_type.shape.dim] == \
        [1, 3, 12, 20]
    folder = tmp_path / "photos"
    folder.mkdir()
    code, _, err = _run(["compile", model_path, "--calib", folder, "-o", tmp_path / "o1",
                         "--quiet"], capsys)
    assert code == 2
    assert "--input-shape x:1x3xHxW, each letter a size (config: input.shape)" in err
    code, _, err = _run(["compile", model_path, "--calib", calib_path, "-o", tmp_path / "o2",
                         "--quiet", "--input-shape", "x:1x3x12x20", "--set",
                         "quantize.enabled=false"], capsys)
    assert code == 0, err
