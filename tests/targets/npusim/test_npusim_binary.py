"""npusim binary format: round trip, sparse weights, and a fuzzed loader that never crashes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.core.errors import NpucError, TargetError
from passes.quantize.api import quantize_model
from targets.npusim import Simulator, build_binary, estimate_perf, load_binary
from targets.npusim import weights as W
from targets.npusim.container import ENTRY, HEADER, Section
from targets.npusim.testing import op_zoo_model, random_inputs
from tests.conftest import conv_model


@pytest.fixture(scope="module")
def small():
    """A small quantized model, its binary, feeds and reference simulator outputs."""
    proto = conv_model()
    quant = quantize_model(proto, random_inputs(proto, 8, 0)).quant_model
    data = build_binary(quant).data
    feeds = random_inputs(proto, 2, 1)
    return quant, data, feeds, Simulator(data).run(feeds)


def test_round_trip_is_stable(small):
    _, data, _, _ = small
    program = load_binary(data)
    from targets.npusim.binary import write_binary

    assert write_binary(program, {i: b.block for i, b in enumerate(program.blobs)
                                  if b.block}) == data
    assert data[:4] == b"NPUB"
    assert len(data) % 16 == 0


def test_sections_are_aligned(small):
    _, data, _, _ = small
    for i in range(len(Section)):
        kind, align, offset, length, crc, _ = ENTRY.unpack_from(data, HEADER.size + i * 32)
        assert offset % align == 0
        assert zlib.crc32(data[offset:offset + length]) == crc


@pytest.mark.parametrize("block", [2, 4, 8, 16, 32])
def test_sparse_weight_encoding_round_trips(block):
    rng = np.random.default_rng(block)
    w = rng.integers(-127, 128, (64, 24, 3, 3)).astype(np.int8)
    keep = rng.random((64 // block, 24)) < 0.4
    w *= np.repeat(keep, block, axis=0)[:, :, None, None].astype(np.int8)
    enc = W.encode(w, block)
    dense, stored, total = W.decode(enc.data, w.shape, block, "test")
    np.testing.assert_array_equal(dense, w)
    assert (stored, total) == (int(keep.sum()), keep.size)
    assert len(enc.data) < w.size  # 60% zero blocks: smaller than dense


def test_choose_block_prefers_the_pattern_of_the_mask():
    rng = np.random.default_rng(0)
    w = rng.integers(1, 127, (64, 32, 3, 3)).astype(np.int8)
    keep = rng.random((16, 32)) < 0.5  # 1x4 blocks, half zero
    w *= np.repeat(keep, 4, axis=0)[:, :, None, None].astype(np.int8)
    assert W.choose_block(w) == 4
    assert W.choose_block(rng.integers(1, 127, (64, 32, 3, 3)).astype(np.int8)) == 0


def _reseal(data: bytearray) -> bytes:
    """Recompute every CRC so a mutation reaches the structural checks."""
    for i in range(len(Section)):
        base = HEADER.size + i * ENTRY.size
        kind, align, offset, length, _, res = ENTRY.unpack_from(data, base)
        if offset + length <= len(data):
            crc = zlib.crc32(bytes(data[offset:offset + length]))
            ENTRY.pack_into(data, base, kind, align, offset, length, crc, res)
    table_end = HEADER.size + ENTRY.size * len(Section)
    crc = zlib.crc32(bytes(data[:HEADER.size - 4]) + bytes(data[HEADER.size:table_end]))
    struct.pack_into("<I", data, HEADER.size - 4, crc)
    return bytes(data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: b"XXXX" + d[4:], "bad magic"),
    (lambda d: d[:4] + struct.pack("<H", 9) + d[6:], "unsupported format version"),
    (lambda d: d[:100], "file_size"),
    (lambda d: d[:-16], "file_size"),
    (lambda d: d[:-20] + bytes([d[-20] ^ 1]) + d[-19:], "checksum"),
    (lambda d: d[:70] + bytes([d[70] ^ 0x40]) + d[71:], "checksum"),
    (lambda d: b"", "too short"),
])
def test_corrupt_binaries_fail_with_one_line(small, mutate, message):
    _, data, _, _ = small
    with pytest.raises(TargetError, match=message) as err:
        load_binary(mutate(data))
    assert "\n" not in str(err.value)


def test_resealed_bad_length_is_caught_structurally(small):
    _, data, _, _ = small
    buf = bytearray(data)
    _, _, offset, _, _, _ = ENTRY.unpack_from(buf, HEADER.size + (Section.CODE - 1) * 32)
    struct.pack_into("<I", buf, offset, 10_000)  # instruction count far beyond the section
    with pytest.raises(TargetError, match="section CODE"):
        load_binary(_reseal(buf))


def _check_mutant(data: bytes, small) -> None:
    quant, _, feeds, expected = small
    try:
        sim = Simulator(data)
    except TargetError as e:
        assert "\n" not in str(e)
        return
    report = estimate_perf(sim.program)
    assert np.isfinite(report.latency_ms) and report.latency_ms > 0
    try:
        out = sim.run(feeds)
    except NpucError:
        return
    assert set(out) == set(expected)
    for name, value in out.items():
        assert value.shape == expected[name].shape


@settings(max_examples=1200, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_fuzzed_binaries_never_crash(small, data):
    """Bit flips, truncation, byte overwrites and insertions, with and without resealed CRCs:
    each mutant is rejected with a one-line TargetError, or loads and runs to outputs of the
    right shapes (a resealed weight flip legitimately changes values)."""
    original = small[1]
    buf = bytearray(original)
    kind = data.draw(st.sampled_from(["flip", "truncate", "overwrite", "insert"]))
    pos = data.draw(st.integers(0, len(buf) - 1))
    if kind == "flip":
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del buf[pos:]
    elif kind == "overwrite":
        value = data.draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        buf[pos:pos + 4] = bytes([value]) * len(buf[pos:pos + 4])
    else:
        buf[pos:pos] = bytes(data.draw(st.integers(1, 32)))
    mutant = _reseal(buf) if data.draw(st.booleans()) and len(buf) >= 64 + 32 * 7 else bytes(buf)
    if mutant == original:
        assert Simulator(mutant).run(small[2]).keys() == small[3].keys()
        return
    _check_mutant(mutant, small)


def test_unresealed_mutations_are_all_rejected(small):
    """Without resealing, every single-bit flip anywhere is caught (CRCs cover every byte)."""
    _, data, _, _ = small
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(data), 300, replace=False):
        buf = bytearray(data)
        buf[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(TargetError):
            load_binary(bytes(buf))


def test_op_zoo_binary_round_trips_every_instruction():
    proto = op_zoo_model()
    quant = quantize_model(proto, random_inputs(proto, 4, 0)).quant_model
    result = build_binary(quant)
    program = load_binary(result.data)
    assert [type(i) for i in program.code] == [type(i) for i in result.instructions]
    assert program.code == result.instructions
