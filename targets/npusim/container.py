"""The `model.bin` container: header, section table, aligned sections, CRC32 checksums.

This layer knows nothing about instructions or tensors; it only turns a list of
`(section type, payload)` into bytes and back, validating every offset, length, alignment
and checksum before a payload is handed out. The layout is specified in
docs/binary-format.md; the constants here are that specification.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from compiler.core.errors import TargetError

MAGIC = b"NPUB"
VERSION = (2, 3)  # newest written; 2.1 adds dtype code 7 (int16), 2.2 code 8 (float16),
# 2.3 blob kind 9 (int16 weights) and tables read by int16 (513 interpolated knots)
READS = (1, 2)  # major versions this reader accepts: 1.x files are 2.x files without
# run-time dimensions
HEADER = struct.Struct("<4sHHIIQQI24sI")  # 64 bytes, see docs/binary-format.md
ENTRY = struct.Struct("<IIQQII")  # 32 bytes per section
MAX_SECTIONS = 32
MAX_FILE = 1 << 32


class Section(enum.IntEnum):
    """Section types; each appears exactly once, in this order."""

    META = 1
    TENSORS = 2
    BLOBS = 3
    CODE = 4
    WEIGHTS = 5
    LUTS = 6
    CPU = 7


ALIGN = {Section.WEIGHTS: 64}  # every other section is 16-byte aligned


def alignment(kind: Section) -> int:
    """Required alignment of a section's offset."""
    return ALIGN.get(kind, 16)


def _pad(n: int, align: int) -> int:
    return -n % align


def pack(sections: dict[Section, bytes], minor: int = VERSION[1]) -> bytes:
    """Serialize payloads (one per `Section` member) into a container.

    `minor` is the version minor written (the oldest a reader needs: `codec.format_minor`).

    Raises:
        TargetError: A section is missing or the file would exceed 4 GiB.
    """
    missing = [s.name for s in Section if s not in sections]
    if missing:
        raise TargetError(f"binary: cannot write, missing sections {missing}")
    offset = HEADER.size + ENTRY.size * len(Section)
    entries, body = [], bytearray()
    for kind in Section:
        payload = sections[kind]
        gap = _pad(offset, alignment(kind))
        body += bytes(gap)
        offset += gap
        entries.append(ENTRY.pack(kind, alignment(kind), offset, len(payload),
                                  zlib.crc32(payload), 0))
        body += payload
        offset += len(payload)
    body += bytes(_pad(offset, 16))
    size = offset + _pad(offset, 16)
    if size > MAX_FILE:
        raise TargetError(f"binary: {size} bytes exceeds the 4 GiB format limit")
    table = b"".join(entries)
    head = HEADER.pack(MAGIC, VERSION[0], minor, HEADER.size, len(Section), HEADER.size, size, 0,
                       bytes(24), 0)
    crc = zlib.crc32(head[:-4] + table)
    return head[:-4] + struct.pack("<I", crc) + table + bytes(body)


@dataclass(frozen=True)
class Header:
    """The decoded fixed header."""

    version: tuple[int, int]
    section_count: int
    table_offset: int
    file_size: int


def unpack(data: bytes) -> dict[Section, memoryview]:
    """Validate a container and return each section's payload.

    Every check happens before the value it protects is used: magic, version, header size,
    file size, header CRC (covering the section table), then for each section its type,
    alignment, bounds, order, zero padding and CRC.

    Raises:
        TargetError: One line naming the first field that is wrong.
    """
    view = memoryview(data)
    header = _header(view)
    table_end = header.table_offset + ENTRY.size * header.section_count
    crc = zlib.crc32(bytes(view[:HEADER.size - 4]) + bytes(view[header.table_offset:table_end]))
    stored = struct.unpack_from("<I", view, HEADER.size - 4)[0]
    if crc != stored:
        raise TargetError(f"binary: header checksum mismatch (stored {stored:#010x}, "
                          f"computed {crc:#010x})")
    sections: dict[Section, memoryview] = {}
    cursor = table_end
    for i in range(header.section_count):
        kind, start, length = _entry(view, header, i, cursor)
        _check_zero(view[cursor:start], f"padding before section {kind.name}")
        sections[kind] = view[start:start + length]
        cursor = start + length
    _check_zero(view[cursor:], "padding after the last section")
    if len(view) - cursor >= 16:
        raise TargetError(f"binary: {len(view) - cursor} trailing bytes after the last section")
    return sections


def _header(view: memoryview) -> Header:
    if len(view) < HEADER.size:
        raise TargetError(f"binary: file too short ({len(view)} bytes) for the "
                          f"{HEADER.size}-byte header")
    magic, major, minor, hsize, count, table, size, flags, reserved, _ = \
        HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        # An ONNX file starts with field 1 (ir_version) as a varint: tag byte 0x08.
        hint = ("; it looks like an ONNX model: build it first with `npuc build MODEL -o "
                "model.bin`" if bytes(magic[:1]) == b"\x08" else "")
        raise TargetError(f"binary: bad magic {bytes(magic)!r} (expected {MAGIC!r}); "
                          f"not an npuc binary{hint}")
    if major not in READS:
        raise TargetError(f"binary: unsupported format version {major}.{minor} "
                          f"(this npuc reads {' and '.join(f'{v}.x' for v in READS)})")
    checks = [("header_size", hsize == HEADER.size, hsize),
              ("file_size", size == len(view), f"{size}, actual {len(view)}"),
              ("section_count", count == len(Section), count),
              ("table_offset", table == HEADER.size, table),
              ("flags", flags == 0, flags), ("reserved", reserved == bytes(24), "non-zero")]
    for field, ok, value in checks:
        if not ok:
            raise TargetError(f"binary: header field {field} is invalid ({value})")
    return Header((major, minor), count, table, size)


def _entry(view: memoryview, header: Header, i: int, cursor: int) -> tuple[Section, int, int]:
    kind_id, align, start, length, crc, reserved = \
        ENTRY.unpack_from(view, header.table_offset + i * ENTRY.size)
    expected = list(Section)[i]
    where = f"section table entry {i}"
    if kind_id != expected:
        raise TargetError(f"binary: {where}: type {kind_id}, expected {expected.value} "
                          f"({expected.name})")
    if align != alignment(expected) or reserved != 0:
        raise TargetError(f"binary: {where} ({expected.name}): bad alignment field {align} "
                          f"or reserved field {reserved}")
    if start % align or start < cursor or start - cursor >= align:
        raise TargetError(f"binary: {where} ({expected.name}): offset {start} is misaligned "
                          f"or out of order")
    if length > len(view) - start:
        raise TargetError(f"binary: {where} ({expected.name}): length {length} at offset "
                          f"{start} runs past the end of the file ({len(view)} bytes)")
    actual = zlib.crc32(view[start:start + length])
    if actual != crc:
        raise TargetError(f"binary: section {expected.name}: checksum mismatch "
                          f"(stored {crc:#010x}, computed {actual:#010x})")
    return expected, start, length


def _check_zero(view: memoryview, what: str) -> None:
    if any(view):
        raise TargetError(f"binary: non-zero bytes in {what}")


class Reader:
    """A bounds-checked little-endian cursor over one section's payload."""

    def __init__(self, data: memoryview | bytes, where: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.where = where

    def take(self, n: int, field: str) -> memoryview:
        """The next `n` bytes, or a TargetError naming `field` when they are not there."""
        if n < 0 or n > len(self.data) - self.pos:
            raise TargetError(f"binary: {self.where}: truncated reading {field} "
                              f"({n} bytes at offset {self.pos} of {len(self.data)})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, field: str) -> tuple:
        """Unpack a struct format (little-endian) at the cursor."""
        st = struct.Struct("<" + fmt)
        return st.unpack(self.take(st.size, field))

    def u(self, fmt: str, field: str, limit: int | None = None) -> int:
        """One unsigned integer (`B`, `H`, `I`, `Q`), optionally bounded by `limit`."""
        value = self.unpack(fmt, field)[0]
        if limit is not None and value > limit:
            raise TargetError(f"binary: {self.where}: {field} = {value} exceeds {limit}")
        return value

    def text(self, field: str, limit: int = 4096) -> str:
        """A u16-length-prefixed UTF-8 string."""
        n = self.u("H", f"{field} length", limit)
        raw = self.take(n, field)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise TargetError(f"binary: {self.where}: {field} is not valid UTF-8") from e

    def align(self, n: int, field: str) -> None:
        """Skip zero padding up to a multiple of `n`."""
        _check_zero(self.take(_pad(self.pos, n), field), f"{self.where}: {field}")

    def done(self) -> None:
        """Fail when bytes are left over (a length field disagreed with the content)."""
        if self.pos != len(self.data):
            raise TargetError(f"binary: {self.where}: {len(self.data) - self.pos} unexpected "
                              f"trailing bytes at offset {self.pos}")
