"""Every zoo architecture and onnx light-zoo graph sparsifies and runs with unchanged shapes."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.io import load_model
from compiler.core.ir import static_shape
from compiler.core.numerics import random_feeds, run, session
from passes.canonicalize import canonicalize
from passes.sparsify import check_masks, read_sparsity_metadata, sparsify_model
from tests.conftest import LIGHT_MODELS, light_path

HEAVY = {"vgg19", "zfnet512", "bvlc_alexnet"}  # >= 60M parameters: a few seconds each


def _check(model, sparse, report, block, sparsity, feeds=None):
    check_masks(sparse)
    masks = read_sparsity_metadata(sparse)
    assert masks and len(masks) == len(report["layers"])
    for m in masks.values():
        assert (~m.mask).sum() == int(np.floor(sparsity * m.mask.size + 0.5))
    sess = session(sparse)
    feeds = feeds or random_feeds(sess, seed=0)
    out = run(sess, feeds)
    want = {t.name: static_shape(t) for t in model.graph.outputs}
    for name, value in out.items():
        assert want[name] is None or value.shape == want[name], name
        assert np.isfinite(value).all()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY
                                  else n for n in LIGHT_MODELS])
def test_light_zoo_sparsifies_and_runs(name):
    model = canonicalize(load_model(light_path(name))).model
    sparse, report = sparsify_model(model, 4, 0.5, criterion="l1", reconstruct=False)
    _check(model, sparse, report, 4, 0.5)
    assert report["effective_macs"] < report["macs"]


@pytest.mark.parametrize("arch, kwargs", [
    ("resnet50", {"image_size": 64}), ("mobilenetv2", {"image_size": 64}),
    ("vgg16", {"image_size": 64}), pytest.param("ssd_resnet50", {}, marks=pytest.mark.slow),
])
def test_zoo_architectures_sparsify_and_run(arch, kwargs):
    from models.zoo import ARCHITECTURES

    proto, sample = ARCHITECTURES[arch](**kwargs)
    model = canonicalize(load_model(proto)).model
    sparse, report = sparsify_model(model, 8, 0.3, criterion="l1", reconstruct=False)
    _check(model, sparse, report, 8, 0.3, sample)
    assert report["zero_block_fraction"] == pytest.approx(0.3, abs=0.01)
