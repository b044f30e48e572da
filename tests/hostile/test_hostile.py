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


# -- numeric option values (hypothesis) ----------------------------------------------------------

NUMERIC_FLAGS = [("prune", "--ratio"), ("prune", "--ridge"), ("sparsify", "--sparsity"),
                 ("quantize", "--percentile"), ("quantize", "--calib-limit"),
                 ("compile", "--prune-ratio"), ("perf", "--frames"), ("run", "--samples")]
_BASE_ARGV = {"prune": (["prune", "m.onnx", "-o", "out.onnx", "--calib", "calib.npy"],
                        ("out.onnx",), "check_onnx"),
              "sparsify": (["sparsify", "m.onnx", "-o", "out.onnx", "--calib", "calib.npy",
                            "--include-first-last"], ("out.onnx",), "check_onnx"),
              "quantize": (["quantize", "m.onnx", "-o", "q", "--calib", "calib.npy",
                            "--calibrator", "percentile"], ("q",), "check_quant_dir"),
              "compile": (["compile", "m.onnx", "-o", "out", "--quiet", "--calib", "calib.npy"],
                          ("out",), "check_compile_dir"),
              "perf": (["perf", "m.bin"], (), None),
              "run": (["run", "m.bin", "-o", "out.npz"], ("out.npz",), "check_npz")}


def numbers() -> st.SearchStrategy:
    """Any float (nan, inf, subnormal, huge) or integer, as the text a user might type."""
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.integers(-(2 ** 70), 2 ** 70).map(str),
                     st.sampled_from(["1e-320", "-0.0", "0x10", "1_000", " 0.5", "½"]))


def _numeric_case(cmd: str, flag: str, value: str) -> Case:
    argv, outputs, check = _BASE_ARGV[cmd]
    files = {"m.onnx": cases.copy("models/res.onnx"), "calib.npy": cases.copy("calib.npy"),
             "m.bin": cases.copy("bin/conv.bin")}
    label = hashlib.sha1(value.encode()).hexdigest()[:10]
    return cases._case(f"cli-numbers/{cmd}{flag}/{label}", "cli-numbers",
                       [*argv, f"{flag}={value}"], files, outputs=outputs, check=check,
                       fast=False)


@pytest.mark.slow
@pytest.mark.parametrize("cmd,flag", NUMERIC_FLAGS)
@settings(max_examples=10, **SETTINGS)
@given(value=numbers())
def test_numeric_options(cmd, flag, value, server, artefacts, work):
    _judge(_numeric_case(cmd, flag, value), server, artefacts, work)
