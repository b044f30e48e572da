"""`compiler.driver.evaluate` and `npuc eval` on a hand-made linear classifier."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import pytest

from compiler.cli import eval as eval_cmd
from compiler.core.builder import GraphBuilder
from compiler.core.errors import DataError, ModelLoadError
from compiler.driver.evaluate import evaluate, fidelity

# Class k's logit is the mean of image row k, so a bright row k means label k.
W = np.zeros((3, 16), np.float32)
for _k in range(3):
    W[_k, 4 * _k:4 * _k + 4] = 0.25


def _classifier(path, batch="N", scale=1.0, bias=(0.0, 0.0, 0.0)) -> str:
    gb = GraphBuilder("tiny")
    x = gb.input("input", [batch, 1, 4, 4])
    y = gb.gemm(gb.flatten(x), W * scale, np.array(bias, np.float32), name="logits")
    gb.output(y)
    onnx.save(gb.build(), str(path))
    return str(path)


def _images(labels) -> np.ndarray:
    x = np.zeros((len(labels), 1, 4, 4), np.float32)
    for i, k in enumerate(labels):
        x[i, 0, k] = 1.0 + i  # different magnitudes so outputs differ per sample
    return x


@pytest.fixture
def setup(tmp_path):
    truth = [0, 1, 2, 2, 1]
    images = _images([0, 1, 2, 0, 1])  # sample 3 looks like class 0 but is labelled 2
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=np.array(truth))
    return tmp_path, str(data)


def test_top1_accuracy(setup):
    tmp, data = setup
    result = evaluate(_classifier(tmp / "m.onnx"), data)
    assert result.samples == 5 and result.kind == "classification"
    assert result.metrics == {"top1": pytest.approx(0.8)}


@pytest.mark.parametrize("batch_dim,batch", [(1, 32), (2, 32), ("N", 2)])
def test_fixed_and_symbolic_batches_agree(setup, batch_dim, batch):
    tmp, data = setup
    result = evaluate(_classifier(tmp / "m.onnx", batch=batch_dim), data, batch=batch)
    assert result.metrics["top1"] == pytest.approx(0.8)


def test_reference_fidelity(setup):
    tmp, data = setup
    ref = _classifier(tmp / "ref.onnx")
    same = evaluate(_classifier(tmp / "m.onnx"), data, reference=ref).metrics
    assert same["agreement"] == 1.0
    assert same["cosine"] == pytest.approx(1.0)
    assert same["kl"] == pytest.approx(0.0, abs=1e-9)
    # Sample i's winning logit is 1 + i, so a class-2 bias of 1.5 flips sample 0 only.
    moved = evaluate(_classifier(tmp / "b.onnx", bias=(0, 0, 1.5)), data, reference=ref).metrics
    assert moved["agreement"] == pytest.approx(0.8)
    assert 0 < moved["kl"] and moved["cosine"] < 1.0


def test_fidelity_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    got = fidelity(a, b)
    p = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    q = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    kl = (p * np.log(p / q)).sum(1).mean()
    cos = ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean()
    assert got["kl"] == pytest.approx(kl) and got["cosine"] == pytest.approx(cos)
    assert got["agreement"] == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))


def test_decision_metrics_separate_near_ties_from_changed_decisions():
    # Sample 0: reference decisive (p(class 0) ~ 0.9), model flips it -> a changed decision.
    # Sample 1: reference near-tie between classes 1 and 2 (p < 0.5), model flips it.
    # Sample 2: decisive and kept.
    ref = np.log(np.array([[90, 2, 2, 2, 2, 2], [2, 40, 39, 9, 5, 5],
                           [2, 2, 2, 90, 2, 2]], np.float64))
    out = np.array([[2, 9, 1, 1, 1, 1], [0, 1, 9, 0, 0, 0], [5, 4, 3, 9, 2, 1]], np.float64)
    got = fidelity(out, ref)
    assert got["agreement"] == pytest.approx(1 / 3)
    assert got["decisive"] == pytest.approx(2 / 3)
    assert got["agreement_decisive"] == pytest.approx(1 / 2)
    # the reference's class is the model's 2nd, 2nd and 1st choice
    assert got["ref_top1_in_top5"] == pytest.approx(1.0)
    out[0] = [-5, 9, 1, 1, 1, 1]  # sample 0's reference class is now the model's 6th choice
    assert fidelity(out, ref)["ref_top1_in_top5"] == pytest.approx(2 / 3)


def test_decision_metrics_only_for_class_vectors():
    seq = np.random.default_rng(0).standard_normal((2, 4, 8))  # OCR-style [N, T, classes]
    assert set(fidelity(seq, seq)) == {"agreement", "cosine", "kl"}


def test_probabilities_are_not_softmaxed_twice():
    p = np.array([[0.7, 0.2, 0.1]])
    assert fidelity(p, p)["kl"] == pytest.approx(0.0, abs=1e-12)
    q = np.array([[0.1, 0.2, 0.7]])
    assert fidelity(q, p)["kl"] == pytest.approx(float((p * np.log(p / q)).sum()))


def test_wrong_image_shape_names_file_and_shapes(setup):
    tmp, _ = setup
    bad = tmp / "rgb.npz"
    np.savez(bad, images=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"rgb\.npz: samples have shape \[3, 4, 4\].*\[1, 4, 4\]"):
        evaluate(_classifier(tmp / "m.onnx"), str(bad))


def test_label_errors(setup):
    tmp, _ = setup
    model = _classifier(tmp / "m.onnx")
    np.savez(tmp / "count.npz", images=_images([0, 1]), labels=np.array([0]))
    with pytest.raises(DataError, match="1 labels for 2 images"):
        evaluate(model, str(tmp / "count.npz"))
    np.savez(tmp / "range.npz", images=_images([0, 1]), labels=np.array([0, 7]))
    with pytest.raises(DataError, match="labels go up to 7 but the model has only 3"):
        evaluate(model, str(tmp / "range.npz"))


def test_unknown_dataset_and_model(setup):
    tmp, data = setup
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        evaluate(_classifier(tmp / "m.onnx"), "cifar")
    with pytest.raises(ModelLoadError, match="absent.onnx: no such file"):
        evaluate(str(tmp / "absent.onnx"), data)
    (tmp / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="junk.onnx"):
        evaluate(str(tmp / "junk.onnx"), data)
    with pytest.raises(ModelLoadError, match="^nomodel: no such file, and not a bundled model"):
        evaluate("nomodel", data)


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="npuc")
    eval_cmd.register(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


def test_cli_json_and_table(setup, capsys):
    tmp, data = setup
    model = _classifier(tmp / "m.onnx")
    args = _cli(model, "--data", data, "--reference", model, "--json")
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["top1"] == pytest.approx(0.8) and out["samples"] == 5
    args = _cli(model, "--data", data, "--limit", "2")
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "top1" in table and "samples  2" in table


def test_ocr_exact_match_with_ppocr_rec():
    pytest.importorskip("rapidocr_onnxruntime", reason="zoo extra not installed")
    pytest.importorskip("PIL", reason="zoo extra not installed")
    result = evaluate("ppocr_rec", "text-lines", limit=8)
    assert result.kind == "ocr" and result.metrics["exact_match"] >= 0.75
