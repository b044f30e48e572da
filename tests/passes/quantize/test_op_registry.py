"""Every int8 op is complete: match link, lowering, reference, emissions, target, cost, docs.

Walks `compiler.core.qops.OPS` (one entry per op kind, defined in one family module) and the
npusim tables; a new op that forgets any part fails here with the missing part named.
"""

import dataclasses

import numpy as np
import pytest

from compiler.core import qgraph as q
from compiler.core.qops import OPS, by_unit_kind, channel_tables
from compiler.core.qops.lut import QLut
from compiler.driver import opdocs
from passes.quantize.patterns import MATCHERS
from targets.npusim import isa
from targets.npusim.ops import COMPILERS
from targets.npusim.optable import support
from targets.npusim.shapes import SHAPE_RULES

# Ops the QGraph builder inserts itself (no float pattern of their own).
BUILDER_MADE = {"QQuantize", "QDequantize", "QCpuPartition"}
KINDS = list(OPS)


def test_op_kinds_are_the_serialized_kinds():
    assert set(q.OP_TYPES) == set(OPS)
    for kind, d in OPS.items():
        assert d.cls.__name__ == kind and issubclass(d.cls, q.QOp)
        assert dataclasses.is_dataclass(d.cls)


@pytest.mark.parametrize("kind", KINDS)
def test_op_has_match_link_and_lowering(kind):
    d = OPS[kind]
    if kind in BUILDER_MADE:
        assert not d.matchers and not d.unit_kinds and d.lower is None
        return
    assert d.matchers, f"{kind}: no matcher"
    assert d.unit_kinds and callable(d.lower), f"{kind}: no lowering"
    for op_type, matcher in d.matchers.items():
        assert MATCHERS.get(op_type) is matcher, f"{kind}: {op_type} not routed to its matcher"
    for unit_kind in d.unit_kinds:
        assert by_unit_kind(unit_kind) is d


@pytest.mark.parametrize("kind", KINDS)
def test_op_has_reference_emissions_and_work(kind):
    d = OPS[kind]
    assert callable(d.reference), f"{kind}: no numpy reference"
    assert callable(d.emit_int), f"{kind}: no integer ONNX emission"
    assert callable(d.work), f"{kind}: no work (cost)"
    names = {f.name for f in dataclasses.fields(d.cls)}
    if "weight" in names:  # float weights must become DQ of the int8 weights
        assert callable(d.emit_qdq), f"{kind}: weights but no QDQ hook"
    else:
        assert d.emit_qdq is None or callable(d.emit_qdq)


@pytest.mark.parametrize("kind", KINDS)
def test_op_has_docs_text(kind):
    d = OPS[kind]
    assert d.section.startswith("§") and d.section[1:].isdigit()
    assert d.summary.strip(), f"{kind}: no formula for the docs"
    assert d.patterns.strip() or kind in BUILDER_MADE, f"{kind}: no float patterns text"


@pytest.mark.parametrize("kind", KINDS)
def test_op_has_npusim_support(kind):
    rules = support(kind)
    assert rules is not None, f"{kind}: npusim neither runs it nor says why not"
    assert callable(rules.lower)
    assert rules.cpu_reason or rules.constraints, f"{kind}: no capability text"
    assert all(c.text.strip() for c in rules.constraints)


def test_every_instruction_has_kernel_shape_rule_and_cost():
    from targets.npusim.costs import WORK, vector_work

    for cls in isa.INSTRUCTIONS:
        assert cls in COMPILERS, f"{cls.__name__}: no simulator kernel"
        assert cls in SHAPE_RULES, f"{cls.__name__}: no load-time shape rule"
        assert callable(WORK.get(cls, vector_work)), f"{cls.__name__}: no cost"
        assert cls in isa.MNEMONIC and isa.BY_OPCODE[cls.OPCODE] is cls


@pytest.mark.parametrize("kind", KINDS)
def test_op_has_docs_rows(kind):
    texts = {path.name: text for path, text in opdocs.generated().items()}
    for name in ("quantization.md", "binary-format.md", "fixed-point.md"):
        assert f"| `{kind}` |" in texts[name], f"{kind}: no row in docs/{name}"


def test_generated_docs_are_up_to_date():
    assert opdocs.stale() == [], "run: python -m compiler.driver.opdocs"


def test_channel_tables_match_the_reference():
    rng = np.random.default_rng(0)
    op = QLut("lut", ("x",), ("y",), table=rng.integers(-128, 128, 256, dtype=np.int8))
    x = rng.integers(-128, 128, (2, 3, 4, 5), dtype=np.int8)
    tables = channel_tables(op, 3)
    looked_up = tables[np.arange(3).reshape(1, 3, 1, 1), x.astype(np.int64) + 128]
    np.testing.assert_array_equal(looked_up, OPS["QLut"].reference(op, [x], None)[0])
