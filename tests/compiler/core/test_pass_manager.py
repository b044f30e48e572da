import numpy as np
import onnx_graphsurgeon as gs
import pytest

from compiler.core.errors import GraphError, PassError
from compiler.core.health import check_graph
from compiler.core.io import load_model
from compiler.core.numerics import function_checker
from compiler.core.pass_manager import Pass, PassManager, PassObserver, PassResult
from passes.canonicalize import FoldBatchNorm


class BreakEdge(Pass):
    """Makes the Relu read a tensor nobody produces."""

    def call(self, model):
        relu = next(n for n in model.nodes if n.op == "Relu")
        relu.inputs = [gs.Variable("ghost", dtype=np.float32)]
        return PassResult(model, True)


class ScaleWeights(Pass):
    """Claims to preserve function but doubles the conv weights."""

    def call(self, model):
        conv = next(n for n in model.nodes if n.op == "Conv")
        conv.inputs[1] = gs.Constant("w2", conv.inputs[1].values * 2)
        return PassResult(model, True)


class Noop(Pass):
    def call(self, model):
        return PassResult(model, False, {"seen": len(model.nodes)})


def test_manager_runs_in_order_and_leaves_input_alone(tiny_model):
    model = load_model(tiny_model)
    ops_before = [n.op for n in model.nodes]
    result = PassManager([FoldBatchNorm(), Noop()], verify_each=True)(model)
    assert result.modified
    assert [n.op for n in model.nodes] == ops_before
    assert "BatchNormalization" not in [n.op for n in result.model.nodes]
    assert result.info["Noop"] == {"seen": 5}


def test_verify_each_reports_pass_and_history(tiny_model):
    manager = PassManager([Noop(), BreakEdge()], verify_each=True)
    with pytest.raises(PassError) as info:
        manager(load_model(tiny_model))
    message = str(info.value)
    assert message.startswith("error in pass BreakEdge after passes ['Noop']")
    assert "ghost" in message
    assert isinstance(info.value.__cause__, GraphError)


def test_function_check_catches_a_pass_that_changes_outputs(tiny_model):
    manager = PassManager([ScaleWeights()], check_function=function_checker())
    with pytest.raises(PassError, match="changed by"):
        manager(load_model(tiny_model))


def test_function_check_accepts_function_preserving_pass(tiny_model):
    manager = PassManager([FoldBatchNorm()], verify_each=True, check_function=function_checker())
    assert manager(load_model(tiny_model)).modified


def test_health_check_detects_unsorted_graph(tiny_model):
    model = load_model(tiny_model)
    model.graph.nodes.reverse()
    with pytest.raises(GraphError, match="before it is produced"):
        check_graph(model, onnx_checks=False)


def test_health_check_detects_duplicate_producer(tiny_model):
    model = load_model(tiny_model)
    relu = next(n for n in model.nodes if n.op == "Relu")
    model.graph.nodes.append(gs.Node("Relu", "dup", inputs=list(relu.inputs),
                                     outputs=list(relu.outputs)))
    with pytest.raises(GraphError, match="produced twice"):
        check_graph(model, onnx_checks=False)


def test_fixed_point_repeats_until_stable(tiny_model):
    calls = []

    class Counter(Pass):
        def call(self, model):
            calls.append(1)
            return PassResult(model, len(calls) < 3)

    PassManager([Counter()], fixed_point=True)(load_model(tiny_model))
    assert len(calls) == 3


class Recorder(PassObserver):
    def __init__(self):
        self.events = []

    def started(self, p):
        self.events.append(("started", p.name))

    def finished(self, p, result, seconds):
        self.events.append(("finished", p.name, result.modified))

    def failed(self, p, error, seconds):
        self.events.append(("failed", p.name, type(error).__name__))


def test_observer_sees_each_pass_and_the_failure(tiny_model):
    seen = Recorder()
    with pytest.raises(PassError, match="error in pass BreakEdge after passes"):
        PassManager([FoldBatchNorm(), Noop(), BreakEdge()], verify_each=True,
                    observer=seen)(load_model(tiny_model))
    assert seen.events == [("started", "FoldBatchNorm"), ("finished", "FoldBatchNorm", True),
                           ("started", "Noop"), ("finished", "Noop", False),
                           ("started", "BreakEdge"), ("failed", "BreakEdge", "GraphError")]


def test_copy_input_false_hands_the_model_over(tiny_model):
    model = load_model(tiny_model)
    result = PassManager([FoldBatchNorm()], copy_input=False)(model)
    assert result.model is model
    assert "BatchNormalization" not in [n.op for n in model.nodes]
