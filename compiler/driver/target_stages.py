"""The stages after the model passes: build, verify, perf (the target) and eval."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from compiler.core.errors import DataError, MismatchError
from compiler.core.executor import ExecutorOptions, open_pool
from compiler.driver.config import step_options
from compiler.driver.context import CompileState, PerfPair
from compiler.driver.stages import Step, eval_source, preprocess, quantize_pass

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from compiler.core.feeds import Feeds


def target_steps(state: CompileState) -> list[tuple[str, Step]]:
    """(stage name, step) for the stages after the model passes."""
    c, chosen = state.config, []
    if c["quantize.enabled"]:
        chosen.append(("build", build))
        if c["target.verify"]:
            chosen.append(("verify", verify))
        chosen.append(("perf", perf))
    if eval_source(state) or c["quantize.enabled"] or c["prune.enabled"] \
            or c["sparsify.enabled"]:  # fidelity always: without eval data, on calibration
        chosen.append(("eval", evaluate))
    return chosen


def build(state: CompileState) -> str:
    """Lower model.quant.onnx to the accelerator binary model.bin."""
    from targets.npusim import build_binary

    built = build_binary(state.quant.quant_model, state.config["target.arch"],
                         options={"seed": state.config["seed"],
                                  "preprocess": preprocess(state.config).record()})
    state.files["binary"] = state.out_dir / "model.bin"
    built.write(state.files["binary"])
    state.build = built
    npu = sum(p["unit"] == "NPU" for p in built.placement)
    return (f"{npu}/{len(built.placement)} nodes on the NPU, {built.cpu_partitions} CPU "
            f"partitions, {built.macs.percent} of the MACs on the NPU")


def verify(state: CompileState) -> str:
    """Bit-exact check of model.bin against model.quant.onnx on calibration samples."""
    from targets.npusim import verify as run_verify

    feeds = _verify_feeds(state).take(state.config["target.verify_samples"])
    report = run_verify(state.quant.quant_model, state.files["binary"], feeds.arrays)
    state.verify = report
    mismatched = sum(o["mismatched"] for o in report.outputs)
    if not report.consistent:
        raise MismatchError(f"model.bin differs from model.quant.onnx in {mismatched} elements")
    elements = sum(o["elements"] for o in report.outputs)
    return f"0 of {elements:,} output elements differ ({report.samples} samples)"


def _verify_feeds(state: CompileState) -> Feeds:
    """target.verify_data when given (same preprocessing), else the calibration data."""
    from compiler.driver.data import load_data

    source = state.config["target.verify_data"]
    if source is None:
        return state.calib
    return load_data(source, state.original, limit=state.config["target.verify_samples"],
                     preprocess=preprocess(state.config))


def perf(state: CompileState) -> str:
    """Cycle-model latency (1 core, 1 thread) and FPS (cores x threads)."""
    c = state.config
    state.perf = _perf_pair(state.files["binary"], c)
    # the budget loop's raised layers are a change from the all-int8 baseline too
    compressed = c["prune.enabled"] or c["sparsify.enabled"] or bool(
        state.budget and state.budget["raised"])
    state.perf_baseline = _baseline_perf(state) if compressed else state.perf
    return (f"{state.perf.single.latency_ms:.3f} ms (1 core, 1 thread), "
            f"{state.perf.multi.fps:.0f} FPS ({c['target.cores']} cores, "
            f"{c['target.threads']} threads)")


def _perf_pair(binary: Any, c: dict[str, Any]) -> PerfPair:
    from targets.npusim import estimate_perf

    return PerfPair(
        single=estimate_perf(binary, c["target.arch"], cores=1, threads=1,
                             frames=c["target.frames"]),
        multi=estimate_perf(binary, c["target.arch"], cores=c["target.cores"],
                            threads=c["target.threads"], frames=c["target.frames"]))


def _baseline_perf(state: CompileState) -> PerfPair:
    """Latency/FPS of the uncompressed model, quantized and built the same way."""
    from targets.npusim import build_binary

    base = quantize_pass(state, saved_table=False)(state.original).info["result"]
    built = build_binary(base.quant_model, state.config["target.arch"])
    return _perf_pair(built.data, state.config)


def evaluate(state: CompileState) -> str:
    """Accuracy of the float original, the compressed float model and the int8 model.

    The compressed and int8 variants are also scored against the float model's outputs
    (agreement, cosine), labels or not. Without pruning or sparsity the compressed model is
    the float one and is not run again. The int8 figures come from the built binary in the
    simulator when there is one (what ships; `verify` has checked it bit-exact against
    model.quant.onnx), else from model.quant.onnx in onnxruntime.
    """
    from compiler.core.feeds import input_specs
    from compiler.core.io import to_proto
    from compiler.driver.evaluate import eval_dataset, run_onnx, score

    c = state.config
    source, batch = eval_source(state), c["eval.batch_size"]
    executor = step_options(c, "executor")
    executor = executor if executor.requested() else None
    if source is None and state.calib is None:
        return "skipped: no eval.data and no calibration data to measure fidelity on"
    if len(state.original.graph.inputs) != 1:  # samples feed one image input
        return (f"skipped: eval feeds one input, the model has "
                f"{len(state.original.graph.inputs)}")
    shape = next(iter(input_specs(state.original).values()))[0]
    data = eval_dataset(source, shape, c["eval.limit"], preprocess(c)) if source else \
        _calibration_set(state)
    outputs = {"float": run_onnx(to_proto(state.original), "float model", data, batch,
                                 executor)}
    # the budget loop's raised layers are a change from the all-int8 baseline too
    compressed = c["prune.enabled"] or c["sparsify.enabled"] or bool(
        state.budget and state.budget["raised"])
    outputs["compressed"] = run_onnx(to_proto(state.model), "compressed model", data, batch,
                                     executor) if compressed else outputs["float"]
    if state.quant is not None:
        try:
            outputs["int8"] = _int8_outputs(state, data, batch, executor)
        except DataError as e:  # run-time-shaped outputs that cannot be stacked
            log.warning("eval: int8 outputs not scored (%s)", e)
    state.eval = {name: score(out, data, None if name == "float" else outputs["float"])
                  for name, out in outputs.items()}
    key = next(iter(state.eval["float"]), None)
    last = state.eval[next(reversed(state.eval))]
    agree = f"; agreement with float {last['agreement']:.4f}" if "agreement" in last else ""
    if key is None:
        return f"no labels in {source}{agree}"
    return ", ".join(f"{name} {s[key]:.4f}" for name, s in state.eval.items()) + agree


def _calibration_set(state: CompileState) -> Any:
    """The calibration data as an unlabelled eval set (fidelity only; it was also fitted on)."""
    from models.datasets import Dataset

    first = next(iter(state.calib.arrays.values()))
    return Dataset(first, None, "calibration data (no eval.data given)", "unlabelled")


def _int8_outputs(state: CompileState, data: Any, batch: int,
                  executor: ExecutorOptions | None = None) -> Any:
    """The int8 model's first output: the binary in the simulator, else onnxruntime.

    With an executor the binary's bytes and the samples are shipped to its workers once
    and each simulates whole batches, exactly as here.
    """
    import numpy as np

    from compiler.core.io import to_proto
    from compiler.core.progress import track
    from compiler.driver.evaluate import run_onnx, shard_spans

    quant = state.quant.quant_model
    if state.build is None:
        return run_onnx(to_proto(quant), "model.quant.onnx", data, batch, executor)
    payload = {"binary": state.build.data, "input": quant.graph.inputs[0].name,
               "output": quant.graph.outputs[0].name, "inputs": data.inputs, "batch": batch}
    if executor is not None and len(data):
        with open_pool(executor, init=_init_sim_worker, payload=payload) as pool:
            spans = shard_spans(len(data), batch, 4 * pool.workers)
            return np.concatenate(pool.map(_simulate_span, spans))
    _init_sim_worker(payload)  # the bytes just written, not a second read
    try:
        starts = range(0, len(data), batch)
        return np.concatenate([_simulate_span((i, i + batch))
                               for i in track(starts, "eval model.bin", len(starts))])
    finally:
        _SIM.clear()


_SIM: dict[str, Any] = {}


def _init_sim_worker(payload: dict[str, Any]) -> None:
    from targets.npusim import Simulator

    _SIM.update(payload, sim=Simulator(payload["binary"]))


def _simulate_span(span: tuple[int, int]) -> Any:
    import numpy as np

    (start, stop), s = span, _SIM
    return np.concatenate([_simulate_chunk(s["sim"], s["input"],
                                           s["inputs"][i:min(stop, i + s["batch"])])[s["output"]]
                           for i in range(start, stop, s["batch"])])


def _simulate_chunk(sim: Any, name: str, x: Any) -> dict[str, Any]:
    """Outputs for the samples `x`, zero-padded to whole frames of a fixed batch and trimmed."""
    import numpy as np

    n, pad = len(x), -len(x) % sim.frame_batch
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    return {k: v[:n] for k, v in sim.run({name: x}).items()}
