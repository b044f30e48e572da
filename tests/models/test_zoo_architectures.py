"""models/zoo architectures: topology numbers, validity, numerics; SSD post-processing."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from compiler.core.errors import ConfigError, DataError, GraphError
from models.zoo import ARCHITECTURES, mobilenetv2, resnet50, ssd_resnet50, vgg16
from models.zoo.eager import EagerBuilder
from models.zoo.ssd_postprocess import decode, default_boxes, detect, feature_sizes, nms
from models.zoo.stats import count_macs, count_params


def session(model: onnx.ModelProto, all_outputs: bool = False) -> ort.InferenceSession:
    if all_outputs:  # expose every intermediate tensor to measure activation ranges
        model = onnx.ModelProto.FromString(model.SerializeToString())
        known = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_empty_tensor_value_info(o)
                                  for n in model.graph.node for o in n.output if o not in known)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def other_input(sample: dict[str, np.ndarray], seed: int = 123) -> dict[str, np.ndarray]:
    x = sample["input"]
    return {"input": np.random.default_rng(seed).standard_normal(x.shape, dtype=np.float32)}


def exercise(model: onnx.ModelProto, sample: dict[str, np.ndarray],
             shapes: list[tuple[int, ...]], n_other: int = 3, bounded: bool = True,
             ) -> list[list[np.ndarray]]:
    """Check the model, run it on `sample` and `n_other` fresh inputs, return graph outputs.

    Outputs must have `shapes`, be finite and differ between inputs; with `bounded`, every
    intermediate tensor's std must stay in [0.1, 10] on an input unseen by calibration.
    """
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.opset_import[0].version == 17
    sess = session(model, all_outputs=bounded)
    feeds = [sample] + [other_input(sample, seed) for seed in range(n_other)]
    runs = [sess.run(None, feed) for feed in feeds]
    finals = [run[:len(model.graph.output)] for run in runs]
    assert [o.shape for o in finals[0]] == shapes
    for a, b in zip(finals[0], finals[1], strict=True):
        assert np.isfinite(a).all() and np.isfinite(b).all() and a.std() > 1e-3
        assert not np.allclose(a, b, rtol=0.0, atol=1e-3 * a.std())
    if bounded:
        names = [o.name for o in sess.get_outputs()]
        stds = {n: float(v.std()) for n, v in zip(names, runs[1], strict=True)}
        assert not {n: s for n, s in stds.items() if not 0.1 <= s <= 10.0}
    return finals


def classes(finals: list[list[np.ndarray]]) -> set[int]:
    """Predicted class of each fresh input (the sample itself is excluded)."""
    return {int(c) for f in finals[1:] for c in f[0].argmax(axis=-1)}


def test_eager_values_match_the_built_model():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    b = EagerBuilder("tiny", calib={"input": x})
    y = b.relu6(b.conv(b.input("input", ["N", 3, 8, 8]), np.ones((4, 3, 3, 3), np.float32)))
    out = b.add(b.reshape(y, [0, -1]), b.reshape(y, [0, -1]))  # repeated input
    expected = b.activation(out)
    b.output(out)
    model = b.build()
    np.testing.assert_allclose(session(model).run(None, {"input": x})[0], expected, atol=1e-5)
    assert count_params(model) == 4 * 3 * 9 and count_macs(model) == 4 * 64 * 27
    with pytest.raises(GraphError):
        b.activation("nope")


def test_registry():
    assert ARCHITECTURES == {"resnet50": resnet50, "mobilenetv2": mobilenetv2,
                             "vgg16": vgg16, "ssd_resnet50": ssd_resnet50}


@pytest.mark.slow
def test_resnet50_full_size():
    model, sample = resnet50()
    assert sample["input"].shape == (1, 3, 224, 224)
    assert count_params(model) == 25_557_032  # torchvision resnet50
    assert count_macs(model) == pytest.approx(4.09e9, rel=0.01)
    finals = exercise(model, sample, [(1, 1000)], n_other=2, bounded=False)
    assert len(classes(finals)) > 1


def test_resnet50_small_is_bounded_and_dynamic_batch():
    model, sample = resnet50(batch="N", image_size=64, num_classes=10)
    assert sample["input"].shape == (1, 3, 64, 64)
    assert count_params(model) == 25_557_032 - 990 * 2049  # only the classifier shrinks
    batch3 = {"input": np.concatenate([sample["input"]] * 3)}
    assert len(classes(exercise(model, batch3, [(3, 10)], n_other=1))) > 1


@pytest.mark.parametrize(("name", "params", "gmacs"), [("resnet18", 11_689_512, 1.81),
                                                     ("resnet101", 44_549_160, 7.80)])
def test_resnet_depth_variants_match_torchvision_counts(name, params, gmacs):
    from models.zoo import RESNETS

    model, sample = RESNETS[name](image_size=64, num_classes=10)
    # torchvision's counts at 1000 classes; the classifier has 990 fewer rows here
    width = 512 if name == "resnet18" else 2048
    assert count_params(model) == params - 990 * (width + 1)
    assert count_macs(model) == pytest.approx(gmacs * 1e9 * (64 / 224) ** 2, rel=0.02)
    exercise(model, sample, [(1, 10)], n_other=1)  # runs, finite, bounded activations


def test_builders_are_seeded():
    first, s1 = mobilenetv2(image_size=32, width=0.35)
    second, s2 = mobilenetv2(image_size=32, width=0.35)
    other, s3 = mobilenetv2(seed=1, image_size=32, width=0.35)
    assert first.SerializeToString() == second.SerializeToString()
    np.testing.assert_array_equal(s1["input"], s2["input"])
    assert first.graph.initializer[0] != other.graph.initializer[0]
    assert not np.array_equal(s1["input"], s3["input"])


def test_mobilenetv2_full_size():
    model, sample = mobilenetv2()
    assert count_params(model) == 3_504_872  # torchvision mobilenet_v2
    assert count_macs(model) == pytest.approx(300.8e6, rel=0.01)
    assert sum(n.op_type == "Clip" for n in model.graph.node) == 35
    assert sum(n.op_type == "Add" for n in model.graph.node) == 10
    assert len(classes(exercise(model, sample, [(1, 1000)]))) > 1


def test_mobilenetv2_width():
    model, sample = mobilenetv2(batch=2, image_size=64, num_classes=5, width=0.5)
    exercise(model, sample, [(2, 5)], n_other=1, bounded=False)
    with pytest.raises(ConfigError):
        mobilenetv2(width=0)


def test_vgg16_small_image():
    model, sample = vgg16(image_size=64)
    # torchvision's 138,357,544 minus the first FC's shrinkage from 7x7 to 2x2 inputs.
    assert count_params(model) == 138_357_544 - 512 * (49 - 4) * 4096
    assert len(classes(exercise(model, sample, [(1, 1000)]))) > 1


def test_vgg16_bn_option():
    model, sample = vgg16(image_size=32, num_classes=10, bn=True)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 13
    exercise(model, sample, [(1, 10)], n_other=1)
    with pytest.raises(ConfigError):
        vgg16(image_size=16)


@pytest.mark.slow
def test_vgg16_full_size_counts():
    model, _ = vgg16()
    assert count_params(model) == 138_357_544  # torchvision vgg16
    assert count_macs(model) == pytest.approx(15.47e9, rel=0.01)


@pytest.mark.slow
def test_ssd_resnet50():
    model, sample = ssd_resnet50()
    anchors = default_boxes(300)
    assert anchors.shape == (8732, 4)
    assert [o.name for o in model.graph.output] == ["boxes", "scores"]
    boxes, scores = exercise(model, sample, [(1, 8732, 4), (1, 8732, 81)], n_other=1)[0]
    ltrb, probs, labels = detect(boxes[0], scores[0], anchors, score_thr=0.02, max_det=50)
    assert len(ltrb) == len(probs) == len(labels) <= 50
    assert (labels >= 1).all() and (np.diff(probs) <= 0).all()


def nvidia_dboxes300() -> np.ndarray:
    """NVIDIA DeepLearningExamples `DefaultBoxes` for `dboxes300_coco`, transcribed."""
    fig, feats, steps = 300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    scales, ratios = [21, 45, 99, 153, 207, 261, 315], [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    out = []
    for idx, sfeat in enumerate(feats):
        fk = fig / steps[idx]
        sk1, sk2 = scales[idx] / fig, scales[idx + 1] / fig
        sizes = [(sk1, sk1), (math.sqrt(sk1 * sk2), math.sqrt(sk1 * sk2))]
        for alpha in ratios[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            sizes += [(w, h), (h, w)]
        for w, h in sizes:
            for i, j in itertools.product(range(sfeat), repeat=2):
                out.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return np.clip(np.array(out), 0, 1)


def test_default_boxes_match_nvidia():
    assert feature_sizes(300) == [38, 19, 10, 5, 3, 1]
    np.testing.assert_allclose(default_boxes(300), nvidia_dboxes300(), atol=1e-6)
    assert len(default_boxes(512)) == sum(
        f * f * a for f, a in zip(feature_sizes(512), (4, 6, 6, 6, 4, 4), strict=True))
    with pytest.raises(ConfigError):
        ssd_resnet50(image_size=200)


def test_decode_zero_offsets_gives_anchor_corners():
    anchors = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.1, 0.1]], np.float32)
    np.testing.assert_allclose(decode(np.zeros((2, 4)), anchors),
                               [[0.4, 0.3, 0.6, 0.7], [0.05, 0.15, 0.15, 0.25]], atol=1e-6)
    shifted = decode(np.array([[10.0, 0.0, 0.0, 0.0]]), anchors[:1])  # 10 * 0.1 * w
    np.testing.assert_allclose(shifted, [[0.6, 0.3, 0.8, 0.7]], atol=1e-6)


def test_nms_hand_made_boxes():
    boxes = np.array([[0, 0, 10, 10],     # kept (best)
                      [1, 1, 11, 11],     # IoU 81/119 = 0.68 with box 0 -> dropped
                      [20, 20, 30, 30],   # disjoint -> kept
                      [0, 0, 10, 5],      # IoU 0.5 with box 0: not > 0.5 -> kept
                      [21, 21, 31, 31]],  # overlaps box 2 but box 2 scores lower
                     np.float32)
    scores = np.array([0.9, 0.8, 0.3, 0.5, 0.6], np.float32)
    assert nms(boxes, scores, iou=0.5).tolist() == [0, 4, 3]
    assert nms(boxes, scores, iou=0.7).tolist() == [0, 1, 4, 3, 2]  # 0.68 < 0.7
    assert nms(boxes[:0], scores[:0]).tolist() == []


def test_detect_keeps_one_box_per_object():
    anchors = np.array([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]],
                       np.float32)
    logits = np.full((3, 4), -5.0, np.float32)
    logits[0, 2], logits[1, 2], logits[2, 3] = 5.0, 4.0, 5.0
    ltrb, probs, labels = detect(np.zeros((3, 4), np.float32), logits, anchors, score_thr=0.3)
    assert labels.tolist() == [2, 3]
    np.testing.assert_allclose(ltrb[0], [0.2, 0.2, 0.4, 0.4], atol=1e-6)
    assert (probs > 0.9).all()
    with pytest.raises(DataError):
        detect(np.zeros((1, 3, 4)), logits, anchors)
