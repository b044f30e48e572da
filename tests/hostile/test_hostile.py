"""The hostile-input suite (issue #17): every case exits 0 with a good output, or 2 with one
`npuc: error:` line; no traceback, no cap exceeded, inputs byte-identical, nothing written
outside the outputs. Cases with `fast` run in every test run; the rest are marked slow.
The byte-level mutants are drawn by hypothesis (derandomized: the same mutants every run).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.hostile import cases
from tests.hostile.binaries import fix_checksums
from tests.hostile.harness import Case, describe, run_case

ALL = cases.all_cases()
FAST = [c for c in ALL if c.fast]
SLOW = [c for c in ALL if not c.fast]


def _judge(case: Case, server, artefacts, work) -> None:
    outcome = run_case(server, case, work, artefacts)
    assert not outcome.problems, describe(case, outcome)


@pytest.mark.parametrize("case", FAST, ids=lambda c: c.id)
def test_fast(case, server, artefacts, work):
    _judge(case, server, artefacts, work)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=lambda c: c.id)
def test_full(case, server, artefacts, work):
    _judge(case, server, artefacts, work)


# -- byte-level mutants (hypothesis) -----------------------------------------------------------

def byte_mutations() -> st.SearchStrategy:
    """Truncation, byte flips, insertions and 0xff runs (huge varints) at relative positions."""
    pos = st.floats(0, 1, exclude_max=True)
    return st.one_of(
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("flip"), st.lists(st.tuples(pos, st.integers(0, 255)), min_size=1,
                                            max_size=6)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("ff"), pos, st.integers(1, 10)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)))


def mutate(data: bytes, mutation: tuple) -> bytes:
    """Apply one drawn mutation."""
    kind, *args = mutation
    n = len(data)
    if kind == "truncate":
        return data[:int(args[0] * n)]
    if kind == "flip":
        raw = bytearray(data)
        for p, b in args[0]:
            raw[int(p * n)] = b
        return bytes(raw)
    at = int(args[0] * n)
    if kind == "insert":
        return data[:at] + args[1] + data[at:]
    if kind == "ff":
        return data[:at] + b"\xff" * args[1] + data[at + args[1]:]
    return data[:at] + data[at + args[1]:]


def _label(mutation: tuple) -> str:
    return f"{mutation[0]}-{hashlib.sha1(repr(mutation).encode()).hexdigest()[:10]}"


SOURCES = {"model": "models/{base}.onnx", "quant": "quant/{base}/model.quant.onnx",
           "binary": "bin/{base}.bin"}
SETTINGS = {"derandomize": True, "database": None, "deadline": None,
            "phases": [Phase.explicit, Phase.generate],
            "suppress_health_check": list(HealthCheck)}


def _byte_case(family, cmd, base, mutation, fix, artefacts) -> Case:
    data = mutate(artefacts.read(SOURCES[family].format(base=base)), mutation)
    if fix:
        data = fix_checksums(data)
    label = _label(mutation) + ("-crc" if fix else "")
    return cases.bytes_case(family, cmd, f"{base}-{label}", data, base)


BYTE_TARGETS = ([("model", c, "res") for c in cases.FLOAT_CMDS]
                + [("quant", c, "conv") for c in cases.QUANT_CMDS]
                + [("binary", c, b) for c in cases.BIN_CMDS for b in ("conv", "cpu")])
FAST_BYTE_TARGETS = [("model", "quantize", "res"), ("model", "inspect", "res"),
                     ("quant", "build", "conv"), ("binary", "run", "cpu")]
EXAMPLES = 16


@pytest.mark.slow
@pytest.mark.parametrize("family,cmd,base", BYTE_TARGETS)
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(mutation=byte_mutations(), fix=st.booleans())
def test_bytes(family, cmd, base, mutation, fix, server, artefacts, work):
    _judge(_byte_case(family, cmd, base, mutation, fix and family == "binary", artefacts),
           server, artefacts, work)


@pytest.mark.parametrize("family,cmd,base", FAST_BYTE_TARGETS)
@settings(max_examples=4, **SETTINGS)
@given(mutation=byte_mutations(), fix=st.booleans())
def test_bytes_fast(family, cmd, base, mutation, fix, server, artefacts, work):
    _judge(_byte_case(family, cmd, base, mutation, fix and family == "binary", artefacts),
           server, artefacts, work)
