"""The report's plots: integer layer axes, an honest cosine range, nothing clipped."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from compiler.driver import report_plots


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions draw (captured before they are encoded)."""
    drawn = []
    real = report_plots._png

    def capture(plt, fig):
        fig.tight_layout()
        fig.canvas.draw()
        fig.test_renderer = fig.canvas.get_renderer()  # closing the figure drops the canvas
        drawn.append(fig)
        return real(plt, fig)

    monkeypatch.setattr(report_plots, "_png", capture)
    return drawn


def _layers(n: int, cosine: float = 0.9999) -> list[dict]:
    return [{"layer": f"block{i}.conv", "channels_before": 32, "channels_after": 24,
             "cosine": cosine - 1e-5 * i} for i in range(n)]


def _steps(n: int) -> list[dict]:
    steps = [{"step": f"s{i}", "op": "conv", "unit": "NPU", "us": 1.0 + i % 3,
              "switch_us": 0.0, "us_before": 2.0 + i % 3} for i in range(n)]
    steps[n // 2] = {"step": "cpu_partition_0", "op": "cpu_call", "unit": "CPU", "us": 3.0,
                     "switch_us": 80.0, "us_before": 3.0}
    return steps


@pytest.mark.parametrize("values, floor", [([0.9999, 0.99995], 0.9), ([0.951], 0.9),
                                           ([0.86, 0.99], 0.8), ([0.3], 0.3)])
def test_cosine_floor_is_fixed_or_rounded_down(values, floor):
    assert report_plots.cosine_floor(values) == pytest.approx(floor)


def test_cosine_axis_is_not_zoomed_into_the_last_digits(figures):
    assert report_plots.cosine_plot(_layers(12))
    ax = figures[-1].axes[0]
    assert ax.get_ylim() == (pytest.approx(0.9), pytest.approx(1.0))


@pytest.mark.parametrize("n", [7, 80])
def test_layer_axes_have_integer_ticks_or_names(figures, n):
    report_plots.channels_plot(_layers(n))
    report_plots.steps_plot(_steps(n))
    for fig in figures:
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        if n <= report_plots.MAX_NAMED_TICKS:
            assert labels[:2] in (["block0.conv", "block1.conv"], ["s0", "s1"])
        else:  # indices: whole numbers only
            ticks = [t for t in ax.get_xticks() if -0.5 <= t <= n]
            assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)


def test_step_labels_do_not_overlap(figures):
    report_plots.steps_plot(_steps(30))
    fig = figures[-1]
    renderer = fig.test_renderer
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 30
    assert all(a.x1 <= b.x0 + 0.5 for a, b in zip(boxes, boxes[1:], strict=False))


def test_steps_plot_stacks_the_partition_switch(figures):
    png = report_plots.steps_plot(_steps(9))
    ax = figures[-1].axes[0]
    assert ax.get_ylim()[1] >= 83.0  # 3 µs of host work + the 80 µs switch on top
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["before compression", "NPU", "host (CPU)", "partition switch"]
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
    red = np.all(np.abs(pixels.astype(int) - [160, 16, 16]) < 12, axis=-1)
    assert red.sum() > 200


def test_breakdown_plot_before_on_top():
    lat = {"latency_ms": 0.1, "partition_switches": 0, "parts": [
        {"part": "NPU layers", "ms": 0.06, "share": 0.6},
        {"part": "per-frame driver overhead", "ms": 0.04, "share": 0.4}]}
    assert report_plots.breakdown_plot(None) is None
    assert report_plots.breakdown_plot({**lat, "before": lat})


def test_scatter_labels_of_equal_points_are_offset(figures):
    variants = [{"name": n, "macs": 4e7, "accuracy": 0.93} for n in ("compressed", "int8")]
    report_plots.scatter_plot(variants)
    fig = figures[-1]
    renderer = fig.test_renderer
    a, b = (t.get_window_extent(renderer) for t in fig.axes[0].texts)
    assert not a.overlaps(b)


def test_long_names_are_cut_in_the_middle_for_plots():
    """Tick labels of 20,000 characters took matplotlib 45 s per report."""
    name = "/model/backbone/stage3/block2/conv/Conv_output_0"
    cut = report_plots.short(name)
    assert len(cut) == report_plots.MAX_LABEL_CHARS == 40
    assert cut.startswith("/model/backbone/sta") and cut.endswith("2/conv/Conv_output_0")
    assert report_plots.short("conv1") == "conv1"
    assert len(report_plots.short("n" * 20000)) == 40
