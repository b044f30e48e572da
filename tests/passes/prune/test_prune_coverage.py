"""Coverage: every group of the zoo models is pruned or reported unprunable with a reason;
no residual or concat group is blocked except by a graph boundary or a head reshape."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from compiler.core.io import load_model
from passes.canonicalize import canonicalize
from passes.prune import analyze, prune_model
from tests.passes.prune.test_prune_oracle import check_oracle, random_keep, zoo_canonical

# model -> (groups, prunable): the counts docs/pruning.md reports
EXPECTED = {"resnet50": (39, 37), "mobilenetv2": (27, 25), "vgg16": (17, 15),
            "ssd_resnet50": (55, 40)}
EXTRA = {"efficientnet_lite0": (26, 24), "ppocr_det": (38, 36), "ppocr_rec": (49, 23),
         "ppocr_cls": (29, 26)}
BOUNDARY = ("graph input", "graph output")
# PP-OCR rec moves channels to the last axis for its SVTR blocks: the MLP widths are pruned
# there, the model width is pinned by LayerNorm (ReduceMean over channels) and the attention
# heads (Reshape into heads, Softmax); everything else must be a graph boundary or a
# detection-head reshape.
SEQUENCE_OPS = ("ReduceMean", "MatMul", "Softmax", "Flatten")


def _check_coverage(model, expected, allowed=("Reshape",)):
    analysis = analyze(model)
    groups = analysis.groups
    assert (len(groups), sum(g.prunable for g in groups)) == expected
    for g in groups:
        assert g.prunable == (g.reason is None)
        if g.kind in ("residual", "concat") and not g.prunable:
            assert g.reason.startswith(BOUNDARY) or g.reason.split()[0] in allowed, g.reason
    # every prunable group really is pruned by a uniform ratio
    _, report = prune_model(model, ratio=0.5, reconstruct=False, round_to=1)
    for row in report["groups"]:
        if row["prunable"] and row["before"] > 1:
            assert row["after"] < row["before"], row
    return analysis


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_zoo_coverage(name):
    analysis = _check_coverage(zoo_canonical(name), EXPECTED[name])
    kinds = Counter(g.kind for g in analysis.groups if g.prunable)
    if name in ("resnet50", "mobilenetv2"):
        assert kinds["residual"] == {"resnet50": 4, "mobilenetv2": 5}[name]


@pytest.mark.zoo
@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXTRA))
def test_zoo_extra_coverage_and_oracle(name):
    registry = pytest.importorskip("models.registry")
    try:
        proto, sample = registry.get_model(name)
    except Exception as e:  # the zoo extra (weights packages) is optional
        pytest.skip(f"{name} unavailable: {e}")
    model = canonicalize(load_model(proto)).model
    allowed = ("Reshape", *SEQUENCE_OPS) if name == "ppocr_rec" else ("Reshape",)
    analysis = _check_coverage(model, EXTRA[name], allowed)
    keep = random_keep(analysis, 0.3, np.random.default_rng(0))
    # ppocr_det ends in a saturating sigmoid (outputs ~1e-7 after pruning): there the
    # probabilities are compared with an absolute tolerance
    check_oracle(model, keep, analysis, feeds=sample,
                 atol=1e-4 if name == "ppocr_det" else 0.0)



def test_a_tensor_read_inside_an_if_branch_is_not_pruned():
    """An If body reads `c1` by name (no node input): its channels are pinned, and the pruned
    model stays consistent (before the fix the If branches kept 16 channels, Gemm got 8)."""
    import onnx

    from compiler.core.io import to_proto
    from compiler.core.numerics import run, session
    from tests.hostile.models import BUILDERS
    from tests.hostile.mutations import if_subgraph

    proto = BUILDERS["res"]()
    if_subgraph(proto)
    model = load_model(proto)
    groups = {m: g for g in analyze(canonicalize(model).model).groups for m in g.members}
    assert not groups["expand.out"].prunable
    assert "If node 'branch'" in groups["expand.out"].reason
    pruned, report = prune_model(model, ratio=0.5, reconstruct=False)
    assert report["macs"]["after"] < report["macs"]["before"]  # the residual group still is
    onnx.shape_inference.infer_shapes(to_proto(pruned), strict_mode=True)  # raises on a clash
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = run(session(pruned), {"x": x})
    assert next(iter(y.values())).shape == (2, 10)
