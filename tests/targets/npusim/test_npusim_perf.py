"""The analytical perf model: sanity of its predictions and of its inputs."""

from __future__ import annotations

import pytest

from compiler.core.cost import model_cost
from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from passes.canonicalize import canonicalize
from passes.quantize.api import quantize_model
from targets.npusim import build_binary, estimate_perf, load_arch
from targets.npusim.testing import op_zoo_model, random_inputs
from tests.conftest import conv_model


@pytest.fixture(scope="module")
def variants():
    """ResNet-50 (112 px) dense, 30%-MACs pruned (16-channel aligned), 1x4 50% sparse."""
    from models.zoo import ARCHITECTURES
    from passes.prune import prune_model
    from passes.sparsify import sparsify_model

    proto, _ = ARCHITECTURES["resnet50"](seed=0, batch=1, image_size=112)
    dense = canonicalize(load_model(proto, fix_batch=True)).model
    # 16 = the default MAC array's channel granularity (docs/perf-model.md)
    pruned = prune_model(dense, target_macs=0.7, round_to=16, reconstruct=False)[0]
    sparse = sparsify_model(dense, block=4, sparsity=0.5, criterion="l1", reconstruct=False)[0]
    calib = random_inputs(proto, 2, 0)
    out = {}
    for name, model in (("dense", dense), ("pruned", pruned), ("sparse", sparse)):
        out[name] = (model, build_binary(quantize_model(model, calib).quant_model).data)
    return out


@pytest.mark.slow
def test_pruning_30_percent_macs_cuts_latency_20_percent(variants):
    dense_model, dense = variants["dense"]
    pruned_model, pruned = variants["pruned"]
    assert model_cost(pruned_model).macs <= 0.71 * model_cost(dense_model).macs
    before, after = estimate_perf(dense).latency_ms, estimate_perf(pruned).latency_ms
    assert after <= 0.8 * before, (before, after)


@pytest.mark.slow
def test_1x4_half_sparse_lowers_latency_and_macs(variants):
    dense, sparse = estimate_perf(variants["dense"][1]), estimate_perf(variants["sparse"][1])
    assert sparse.latency_ms < 0.9 * dense.latency_ms
    assert sparse.totals["macs"] < 0.75 * dense.totals["macs"]
    blocks = [lay for lay in sparse.layers if lay["sparse_block"]]
    assert blocks and all(lay["sparse_block"] == 4 for lay in blocks)


@pytest.mark.slow
def test_two_cores_eight_threads_raise_fps(variants):
    data = variants["dense"][1]
    one, two = estimate_perf(data), estimate_perf(data, cores=2, threads=8)
    assert one.fps == pytest.approx(1000 / one.latency_ms, rel=0.01)
    # 2 cores share one DDR: ResNet-50 weights (25 MB/frame) make the gain sub-linear
    assert one.fps < two.fps <= 2 * one.fps


@pytest.fixture(scope="module")
def small_binary():
    proto = op_zoo_model()
    return build_binary(quantize_model(proto, random_inputs(proto, 4, 0)).quant_model).data


def test_layer_table_fields_and_units(small_binary):
    report = estimate_perf(small_binary)
    kinds = {lay["kind"]: lay for lay in report.layers}
    conv = next(lay for lay in report.layers if lay["name"] == "c1")
    assert conv["macs"] == 16 * 16 * 8 * 27 and 0 < conv["utilisation"] <= 1
    big = next(lay for lay in report.layers if lay["name"] == "big_kernel")
    assert big["unit"] == "CPU" and big["cycles"] == 0 and big["host_us"] > 0
    assert kinds["cpu_call"]["unit"] == "CPU" and kinds["cpu_call"]["host_us"] > 0
    assert kinds["reshape"]["cycles"] == 0
    assert all(lay["bound"] in ("compute", "memory") for lay in report.layers)
    overhead_ms = load_arch("default").frame_overhead_us / 1e3
    assert report.totals["host_ms"] > overhead_ms  # CPU partitions add host time
    assert set(report.to_dict()) >= {"latency_ms", "fps", "layers", "totals"}


def test_latency_breakdown_adds_up(small_binary):
    arch = load_arch("default")
    report = estimate_perf(small_binary, frames=10)
    t = report.totals
    npu_us = sum(lay["us"] for lay in report.layers if lay["unit"] == "NPU")
    cpu_us = sum(lay["us"] for lay in report.layers if lay["unit"] == "CPU")
    assert npu_us == pytest.approx(t["cycles"] / arch.clock_mhz, abs=0.01)
    assert npu_us / 1e3 == pytest.approx(t["npu_ms"], abs=1e-4)
    assert cpu_us / 1e3 == pytest.approx(t["host_compute_ms"], abs=1e-4) and cpu_us > 0
    assert t["partition_switches"] >= 1
    assert t["switch_ms"] == pytest.approx(t["partition_switches"] * 0.08)
    assert t["frame_overhead_ms"] == pytest.approx(0.04)
    first = estimate_perf(small_binary, frames=1).totals["weight_load_ms"]
    assert first > 0 and t["weight_load_ms"] == pytest.approx(first / 10, abs=1e-6)
    parts = ("npu_ms", "host_compute_ms", "switch_ms", "frame_overhead_ms", "weight_load_ms")
    assert sum(t[k] for k in parts) == pytest.approx(report.latency_ms, abs=5e-4)
    assert t["host_ms"] == pytest.approx(t["host_compute_ms"] + t["switch_ms"] + 0.04,
                                         abs=2e-4)
    assert t["fps_limit"] == "threads"  # one thread waits for each frame
    multi = estimate_perf(small_binary, cores=2, threads=8).totals["fps_limit"]
    assert multi in ("npu", "host")


def test_sparse_efficiency_grows_with_block():
    arch = load_arch("default")
    effs = [arch.sparse_efficiency[n] for n in (1, 2, 4, 8, 16, 32)]
    assert effs == sorted(effs) and effs[0] == 0.0


def test_slower_arch_predicts_higher_latency():
    proto = conv_model()
    data = build_binary(quantize_model(proto, random_inputs(proto, 2, 0)).quant_model).data
    fast, slow = estimate_perf(data, "default"), estimate_perf(data, "single-core")
    assert slow.latency_ms > fast.latency_ms


def test_frames_amortize_resident_weight_load():
    proto = conv_model()
    data = build_binary(quantize_model(proto, random_inputs(proto, 2, 0)).quant_model).data
    one, many = estimate_perf(data, frames=1), estimate_perf(data, frames=1000)
    assert one.totals["weights_resident"]
    assert many.latency_ms < one.latency_ms


@pytest.mark.parametrize("kwargs, message", [
    ({"cores": 3}, "--cores 3"), ({"threads": 0}, "--threads"), ({"frames": 0}, "--frames"),
    ({"arch": "nope"}, "unknown architecture preset")])
def test_bad_arguments_are_config_errors(small_binary, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        estimate_perf(small_binary, **kwargs)
