"""Progress bars: shown on stderr by the long loops only when turned on."""

from __future__ import annotations

import pytest

from compiler.core.numerics import random_feeds
from compiler.core.progress import collect_timings, progress_output, timed
from passes.prune import prune_model
from passes.quantize.calibrate import collect_ranges
from passes.sparsify import sparsify_model
from tests.passes.prune.test_prune_recon import _images, small_resnet
from tests.passes.sparsify.test_sparsify_blocks import tiny_net


def _sparsify(model):
    sparsify_model(model, 4, 0.5, reconstruct=True, calib=random_feeds(model, seed=0, batch=8),
                   criterion="l1")


def _stem_output(model):
    return next(n for n in model.graph.nodes if n.name == "stem").outputs[0].name


@pytest.mark.parametrize("enabled", [True, False])
def test_calibration_and_reconstruction_report_progress(enabled, capsys):
    model = tiny_net(batch="N")
    with progress_output(enabled):
        collect_ranges(model, random_feeds(model, seed=0, batch=16), [_stem_output(model)],
                       "percentile", batch_size=4)
        _sparsify(model)
        prune_model(small_resnet(), ratio=0.3, reconstruct=True, calib={"x": _images(8, 0)},
                    round_to=1)
    err = capsys.readouterr().err
    for label in ("calibrate (percentile, batches)", "reconstruct:",
                  "reconstruct (layers)"):
        assert (label in err) is enabled, label


def test_abc_search_reports_cycles(capsys):
    with progress_output(True):
        prune_model(small_resnet(), search="abc", target_macs=0.7, calib={"x": _images(16, 0)},
                    abc_cycles=1, abc_sources=2, abc_limit=1, workers=1, seed=0,
                    reconstruct=False, round_to=1)
    assert "ABC search (cycles)" in capsys.readouterr().err


def test_timed_phases_accumulate_inside_collect_timings_only():
    with timed("outside"):  # no collector: nothing recorded, no error
        pass
    with collect_timings() as times:
        for _ in range(3):
            with timed("a"), timed("a.b"):
                sum(range(1000))
    assert set(times) == {"a", "a.b"} and times["a"] >= times["a.b"] > 0
    with collect_timings() as other:
        pass
    assert other == {}
