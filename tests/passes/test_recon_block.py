"""Block-wise gradient reconstruction: numpy conv/ReLU backward, block discovery, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.core.io import load_model
from passes.canonicalize import canonicalize
from passes.recon import iter_tensors
from passes.recon_block import (
    BlockNet,
    BlockOptions,
    Conv,
    clamp_backward,
    find_blocks,
    reconstruct_blocks,
    teacher_tensors,
    train_block,
)
from tests.passes.sparsify.test_sparsify_blocks import tiny_net

TRAINED = Path(__file__).resolve().parents[2] / "models" / "trained"


def _conv(kind: str, rng: np.random.Generator) -> Conv:
    f64 = np.float64
    if kind == "3x3":
        return Conv(rng.normal(size=(5, 3, 3, 3)).astype(f64), rng.normal(size=5), (1, 1),
                    (1, 1), (1, 1, 1, 1))
    if kind == "3x3/2 dilated":
        return Conv(rng.normal(size=(5, 3, 3, 3)).astype(f64), rng.normal(size=5), (2, 2),
                    (2, 2), (2, 1, 2, 0))
    if kind == "1x1":
        return Conv(rng.normal(size=(5, 3, 1, 1)).astype(f64), rng.normal(size=5))
    return Conv(rng.normal(size=(3, 1, 3, 3)).astype(f64), rng.normal(size=3), (2, 2), (1, 1),
                (1, 1, 1, 1), depthwise=True)


@pytest.mark.parametrize("kind", ["3x3", "3x3/2 dilated", "1x1", "depthwise"])
def test_conv_backward_matches_finite_differences(kind):
    rng = np.random.default_rng(0)
    conv = _conv(kind, rng)
    x = rng.normal(size=(2, 7, 6, 3))
    y, saved = conv.forward(x)
    g = rng.normal(size=y.shape)
    dx, dw, db = conv.backward(g, saved)

    def loss() -> float:
        return float((conv.forward(x)[0] * g).sum())

    eps = 1e-6
    for arr, grad in ((conv.w, dw), (conv.b, db), (x, dx)):
        for idx in [tuple(rng.integers(0, n) for n in arr.shape) for _ in range(6)]:
            arr[idx] += eps
            up = loss()
            arr[idx] -= 2 * eps
            down = loss()
            arr[idx] += eps
            assert grad[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-8)


def test_conv_forward_matches_onnxruntime():
    from compiler.core.builder import GraphBuilder, he_normal
    from compiler.core.numerics import run

    b = GraphBuilder("c", 0)
    x = b.input("x", [2, 4, 9, 9])
    w = he_normal(b.rng, (6, 4, 3, 3))
    bias = b.rng.standard_normal(6)
    b.output(b.conv(x, w, bias, stride=2, name="c"))
    model = load_model(b.build())
    feed = np.random.default_rng(1).standard_normal((2, 4, 9, 9)).astype(np.float32)
    ref = next(iter(run(model, {"x": feed}).values()))
    conv = Conv.of(model.graph.nodes[0], (9, 9))
    got = conv.forward(feed.transpose(0, 2, 3, 1))[0].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_clamp_backward_passes_only_the_open_interval():
    x = np.array([-1.0, 0.0, 0.5, 6.0, 7.0])
    np.testing.assert_array_equal(clamp_backward(np.ones(5), x, 0.0, 6.0), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(clamp_backward(np.full(5, 2.0), x, 0.0, np.inf),
                                  [0, 0, 2, 2, 2])


def test_block_net_matches_onnxruntime_and_finite_differences():
    """tiny_net's residual block (stem, a, ReLU, b, Add, ReLU) in numpy, value and gradient."""
    model = tiny_net(batch="N")
    block = find_blocks(model, 3)[0]
    assert [c.name for c in block.convs] == ["stem", "a", "b"]
    feed = {"x": np.random.default_rng(2).standard_normal((3, 3, 12, 12)).astype(np.float32)}
    ref = next(iter_tensors(model, [block.output], feed, 8))[block.output]
    net = BlockNet(block, (12, 12))
    x = feed["x"].transpose(0, 2, 3, 1).astype(np.float64)
    out, saved = net.forward(x, keep=True)
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), ref, rtol=1e-4, atol=1e-4)
    g = np.random.default_rng(3).standard_normal(out.shape)
    grads = net.backward(g, saved)
    assert set(grads) == {"stem", "a", "b"}
    for conv in net.convs.values():
        conv.w, conv.b = conv.w.astype(np.float64), conv.b.astype(np.float64)
    eps = 1e-6
    for name, idx in [("stem", (3, 1, 0, 2)), ("a", (7, 5, 1, 1)), ("b", (0, 15, 2, 0))]:
        w = net.convs[name].w
        w[idx] += eps
        up = float((net.forward(x)[0] * g).sum())
        w[idx] -= 2 * eps
        down = float((net.forward(x)[0] * g).sum())
        w[idx] += eps
        assert grads[name][0][idx] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-6)


def test_blocks_of_the_committed_models():
    resnet = canonicalize(load_model(TRAINED / "fmnist_resnet.onnx")).model
    blocks = find_blocks(resnet, max_convs=3)
    assert [b.output for b in blocks] == ["relu1.out"] + [
        f"layers.{i}.{j}.relu2.out" for i in range(3) for j in range(2)]
    assert [c.name for c in blocks[2].convs] == ["layers.0.1.conv1", "layers.0.1.conv2"]
    # The default (MAX_CONVS = 9) joins whole residual blocks up to 9 convs.
    assert [len(b.convs) for b in find_blocks(resnet)] == [9, 7]
    assert find_blocks(resnet)[0].output == "layers.1.0.relu2.out"
    mbv2 = canonicalize(load_model(TRAINED / "fmnist_mobilenetv2.onnx")).model
    blocks = find_blocks(mbv2, max_convs=3)
    assert len(blocks) == 12
    assert [c.name for c in blocks[2].convs] == ["blocks.2.expand", "blocks.2.dw",
                                                 "blocks.2.project"]
    assert blocks[2].output == "blocks.2.add.out"
    assert [len(b.convs) for b in find_blocks(mbv2)] == [9, 9, 9, 7]


def _tiny_block(seed: int, perturb: float = 0.0):
    """The tiny net's first block, 40 random NHWC inputs and its outputs as targets.

    With `perturb`, the targets come from a teacher whose conv weights are scaled by
    1 + perturb * N(0, 1), so training has something to recover.
    """
    block = find_blocks(tiny_net(batch="N"), 3)[0]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 12, 12, 3)).astype(np.float32)
    teacher = BlockNet(block, (12, 12))
    for conv in teacher.convs.values():
        conv.w *= (1 + perturb * rng.standard_normal(conv.w.shape)).astype(np.float32)
    return block, rng, x, teacher.forward(x)[0]


def test_masked_weights_stay_zero_and_training_lowers_the_error():
    """Random teacher perturbation of a block; masked entries stay exactly zero."""
    block, rng, x, y = _tiny_block(4, perturb=0.3)
    mask = rng.random((16, 16, 1, 1)) > 0.5
    net = BlockNet(block, (12, 12), masks={"a": np.broadcast_to(mask, (16, 16, 3, 3))})
    info = train_block(net, x, y, BlockOptions(steps=150, batch=8))
    assert info["kept"]
    assert info["error_after"] < 0.5 * info["error_before"]
    assert not net.convs["a"].w[~np.broadcast_to(mask, (16, 16, 3, 3))].any()


def test_a_block_that_never_improves_stops_at_half_its_schedule():
    """Training samples already matched (no gradient), held-out ones not: no gain, ever."""
    from passes.recon_block import HOLDOUT

    block, _, x, y = _tiny_block(5)
    y[np.arange(40) % HOLDOUT == HOLDOUT - 1] += 1.0
    net = BlockNet(block, (12, 12))
    weights = {k: w.copy() for k, (w, _) in net.params().items()}
    info = train_block(net, x, y, BlockOptions(steps=200, batch=8, eval_every=25))
    assert not info["kept"] and info["steps_run"] == 100
    assert all(np.array_equal(w, weights[k]) for k, (w, _) in net.params().items())


def test_a_block_that_already_matches_its_teacher_is_not_trained():
    block, _, x, y = _tiny_block(5)
    info = train_block(BlockNet(block, (12, 12)), x, y, BlockOptions(steps=200, batch=8))
    assert info == {"error_before": 0.0, "error_after": 0.0, "kept": False, "steps_run": 0}


def test_an_improving_block_runs_its_whole_schedule():
    block, _, x, y = _tiny_block(6, perturb=0.3)
    info = train_block(BlockNet(block, (12, 12)), x, y, BlockOptions(steps=120, batch=8))
    assert info["kept"] and info["steps_run"] == 120


def test_block_reconstruction_beats_closed_form_refit_on_the_committed_resnet():
    """ResNet pruned to 50 % MACs with the closed-form `act` re-fit, then one block trained.

    The block output error against the float model is measured on calibration images the
    training did not see.
    """
    from compiler.driver.data import load_data
    from passes.prune import prune_model

    model = load_model(TRAINED / "fmnist_resnet.onnx")
    calib = load_data("fmnist-calib", model)
    feeds = {k: v[:96] for k, v in calib.arrays.items()}
    other = {k: v[192:256] for k, v in calib.arrays.items()}
    pruned, _ = prune_model(model, target_macs=0.5, calib=feeds, reconstruct="act")
    from passes.prune.channels import read_channels

    channels = read_channels(pruned)
    float_model = canonicalize(model).model
    out = "layers.1.1.relu2.out"

    def targets(tensor, limit=None, data=feeds):
        value = teacher_tensors(float_model, [tensor], data, limit=limit)[tensor]
        return value if tensor not in channels else value[:, channels[tensor]]

    def block_error(m) -> float:
        got = teacher_tensors(m, [out], other)[out]
        ref = targets(out, data=other)
        return float(np.sum((got - ref) ** 2) / np.sum(ref ** 2))

    before = block_error(pruned)
    report = reconstruct_blocks(pruned, targets, feeds, only={"layers.1.1.conv2"},
                                options=BlockOptions(steps=100, max_convs=3))
    (row,) = report["blocks"]
    assert row["output"] == out and row["kept"]
    after = block_error(pruned)
    assert after < 0.93 * before  # measured 0.0504 -> 0.0442 (100 steps, 96 images)


def test_block_too_large_for_the_memory_cap_is_skipped():
    model = tiny_net(batch="N")
    feeds = {"x": np.random.default_rng(5).standard_normal((80, 3, 12, 12)).astype(np.float32)}
    before = {n.name: np.asarray(n.inputs[1].values).copy() for n in find_blocks(model, 3)[0].convs}

    def targets(tensor, limit):
        return teacher_tensors(model, [tensor], feeds, limit=limit)[tensor] * 1.1

    report = reconstruct_blocks(model, targets, feeds,
                                options=BlockOptions(steps=5, max_mb=0.01, max_convs=3))
    assert all("over 0.01 MB for 64 samples" in b["skipped"] for b in report["blocks"])
    for n in find_blocks(model, 3)[0].convs:
        np.testing.assert_array_equal(n.inputs[1].values, before[n.name])


def test_a_calibration_set_smaller_than_min_samples_trains_when_it_fits():
    from passes.recon_block import MIN_SAMPLES

    model = tiny_net(batch="N")
    feeds = {"x": np.random.default_rng(5).standard_normal((10, 3, 12, 12)).astype(np.float32)}
    out = find_blocks(model, 3)[0].output
    per_sample = 4 * int(np.prod(model.graph.tensors()[out].shape[1:]))

    def targets(tensor, limit):
        return teacher_tensors(model, [tensor], feeds, limit=limit)[tensor] * 1.1

    cap = 12 * per_sample / 2**20  # all 10 fit, MIN_SAMPLES do not
    assert 12 < MIN_SAMPLES
    report = reconstruct_blocks(model, targets, feeds,
                                options=BlockOptions(steps=5, max_mb=cap, max_convs=3))
    assert report["blocks"][0]["samples"] == 10 and "error_after" in report["blocks"][0]
    report = reconstruct_blocks(model, targets, feeds,
                                options=BlockOptions(steps=5, max_mb=cap / 2, max_convs=3))
    assert report["blocks"][0]["skipped"] == f"block output over {cap / 2} MB for 10 samples"


def test_a_block_trains_on_the_leading_samples_that_fit_the_memory_cap():
    """More calibration samples than fit `max_mb`: the block trains on the first ones, and
    neither the teacher nor the student tensor is gathered for the others."""
    from passes.recon_block import MIN_SAMPLES

    model = tiny_net(batch="N")
    feeds = {"x": np.random.default_rng(5).standard_normal((300, 3, 12, 12)).astype(np.float32)}
    out = find_blocks(model, 3)[0].output
    per_sample = 4 * int(np.prod(model.graph.tensors()[out].shape[1:]))
    asked = []

    def targets(tensor, limit):
        asked.append(limit)
        return teacher_tensors(model, [tensor], feeds, limit=limit)[tensor] * 1.1

    fit = 100
    report = reconstruct_blocks(model, targets, feeds, batch_size=64, options=BlockOptions(
        steps=5, max_mb=(fit + 0.5) * per_sample / 2**20, max_convs=3))
    assert asked[0] == fit and report["blocks"][0]["samples"] == fit > MIN_SAMPLES
    assert "error_after" in report["blocks"][0]
    got = teacher_tensors(model, [out], feeds, batch_size=64, limit=fit)[out]
    assert got.shape[0] == fit  # a limit inside a batch cuts that batch
    full = teacher_tensors(model, [out], feeds, batch_size=64)[out]
    np.testing.assert_array_equal(got, full[:fit])


def test_training_compute_is_capped_in_macs():
    """A block's steps shrink to fit `max_tmacs`; below MIN_STEPS it is not trained."""
    from passes.recon_block import MIN_STEPS

    model = tiny_net(batch="N")
    feeds = {"x": np.random.default_rng(5).standard_normal((10, 3, 12, 12)).astype(np.float32)}
    block = find_blocks(model, 3)[0]
    macs = BlockNet(block, (12, 12)).macs
    # stem 3x3 3->16, then a and b 3x3 16->16, all on 12x12 (padded)
    assert [c.name for c in block.convs] == ["stem", "a", "b"]
    assert macs == 12 * 12 * 16 * 27 + 2 * 12 * 12 * 16 * 144
    per_step = 3 * 8 * macs  # batch 8 of the 10 samples (2 are held out)

    def targets(tensor, limit):
        return teacher_tensors(model, [tensor], feeds, limit=limit)[tensor] * 1.1

    budget = 150 * per_step / 1e12
    report = reconstruct_blocks(model, targets, feeds,
                                options=BlockOptions(steps=400, batch=8, max_tmacs=budget,
                                                     max_convs=3))
    assert report["blocks"][0]["steps"] == 150
    report = reconstruct_blocks(model, targets, feeds, options=BlockOptions(
        steps=400, batch=8, max_tmacs=(MIN_STEPS - 1) * per_step / 1e12, max_convs=3))
    assert "exceed" in report["blocks"][0]["skipped"]


def test_all_blocks_together_share_one_compute_budget():
    """Each block gets at most an equal share of what the blocks before it left."""
    model = tiny_net(batch="N")
    feeds = {"x": np.random.default_rng(5).standard_normal((10, 3, 12, 12)).astype(np.float32)}
    first = find_blocks(model, 3)[0]
    per_step = 3 * 8 * BlockNet(first, (12, 12)).macs

    def targets(tensor, limit):
        return teacher_tensors(model, [tensor], feeds, limit=limit)[tensor] * 1.1

    total = 2 * 150 * per_step / 1e12
    rows = reconstruct_blocks(model, targets, feeds, options=BlockOptions(
        steps=400, batch=8, max_convs=3, max_total_tmacs=total))["blocks"]
    assert len(rows) == 2 and rows[0]["steps"] == 150 == rows[0]["steps_run"]
    assert rows[0]["tmacs"] == pytest.approx(total / 2, abs=1e-6)
    # the second block may spend what the first left, not more
    assert 0 < rows[1]["tmacs"] <= total - rows[0]["tmacs"] + 1e-6
    uncapped = reconstruct_blocks(model, targets, feeds, options=BlockOptions(
        steps=400, batch=8, max_convs=3))["blocks"]
    assert uncapped[0]["steps_run"] == 400 and "steps" not in uncapped[0]


def test_training_step_memory_is_capped_by_smaller_batches():
    """Large feature maps train on mini-batches that fit `max_step_mb`; below MIN_BATCH: not."""
    from passes.recon_block import MIN_BATCH, _nbytes

    model = tiny_net(batch="N")
    feeds = {"x": np.random.default_rng(5).standard_normal((40, 3, 12, 12)).astype(np.float32)}
    block = find_blocks(model, 3)[0]
    out, saved = BlockNet(block, (12, 12)).forward(np.zeros((1, 12, 12, 3), np.float32),
                                                   keep=True)
    sample = 2 * (_nbytes(saved) + out.nbytes)
    # the im2col rows of the three 3x3 convs alone (float32)
    assert sample >= 2 * 4 * 144 * (27 + 2 * 144)

    def targets(tensor, limit):
        return teacher_tensors(model, [tensor], feeds, limit=limit)[tensor] * 1.1

    def run(samples: float) -> dict:
        opts = BlockOptions(steps=100, batch=16, max_convs=3, max_step_mb=samples * sample / 2**20)
        return reconstruct_blocks(model, targets, feeds, options=opts)["blocks"][0]

    assert "batch" not in run(16.5)
    row = run(6.5)
    assert row["batch"] == 6 and row["error_after"] < row["error_before"]
    cap = (MIN_BATCH - 0.5) * sample / 2**20
    skipped = run(MIN_BATCH - 0.5)["skipped"]
    assert skipped == f"a training step over {cap:g} MB for {MIN_BATCH} samples"


def test_a_long_activation_chain_does_not_make_one_huge_block():
    """3,000 ReLUs after a conv (a hostile graph): blocks stop at MAX_NODES nodes, so a
    sparsify of it trains in seconds instead of 70 s of ReLU backward passes."""
    from passes.recon_block import MAX_NODES
    from tests.hostile.models import BUILDERS
    from tests.hostile.mutations import deep_chain

    proto = BUILDERS["conv"]()
    deep_chain(proto)
    blocks = find_blocks(canonicalize(load_model(proto)).model)
    assert blocks and max(len(b.nodes) for b in blocks) <= MAX_NODES == 24
    assert all(b.convs for b in blocks)
