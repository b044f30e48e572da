"""`model.bin`: serialize a lowered `Program`, and load one back with full validation.

`load_binary` runs three layers of checks before anything is used: the container (magic,
version, section table, alignment, CRC32s), the structural decode of each section (every
length and count bounded) and the semantic check of the program (references, shapes, value
ranges). Nothing in a binary is executed or unpickled; CPU partitions are ONNX graphs that
onnxruntime parses when the simulator first needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

from compiler.core.errors import TargetError
from targets.npusim import codec, container
from targets.npusim.check import check_program
from targets.npusim.isa import Program

MAX_BINARY = 1 << 32


def write_binary(program: Program, blocks: dict[int, int] | None = None) -> bytes:
    """Serialize `program`; `blocks` maps weight-blob index to its 1xN block (0/absent = dense)."""
    check_program(program)
    return container.pack(codec.encode(program, blocks or {}), codec.format_minor(program))


def load_binary(source: str | os.PathLike | bytes | bytearray | memoryview) -> Program:
    """Load and validate a binary from a path or bytes.

    Raises:
        TargetError: One line naming the file (for paths) and the first invalid field.
    """
    data, label = _read(source)
    try:
        return _decode(data)
    except TargetError as e:
        raise TargetError(f"{label}: {e}" if label else str(e)) from e.__cause__


def _decode(data: bytes) -> Program:
    program = codec.decode(container.unpack(data))
    check_program(program)
    return program


def _read(source: str | os.PathLike | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), ""
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_BINARY:
            raise TargetError(f"{path}: {size} bytes is larger than any npuc binary")
        return path.read_bytes(), str(path)
    except OSError as e:
        raise TargetError(f"cannot read binary {path}: {e.strerror or e}") from e
