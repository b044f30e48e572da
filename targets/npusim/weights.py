"""Weight encodings: dense int8 and 1xN block-sparse (non-zero blocks + bitmap index).

A weight `W[Cout, Cin, *kernel]` is viewed as blocks of N consecutive output channels at one
input channel, covering the whole kernel (the 1xN pattern of docs/sparsity.md). The sparse
encoding stores a bitmap `[Cout/N, Cin]` (bit = block stored, `np.packbits` order, padded
with zero bytes to 16) followed by the stored blocks in row-major `(g, c)` order, each as
`W[g*N:(g+1)*N, c].ravel()`. See docs/binary-format.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.core.errors import TargetError

BLOCK_CHOICES = (32, 16, 8, 4, 2)


@dataclass(frozen=True)
class Encoded:
    """An encoded weight: the bytes and how to read them back."""

    data: bytes
    block: int  # 0 = dense
    nonzero_blocks: int = 0
    total_blocks: int = 0


def _blocks(w: np.ndarray, n: int) -> np.ndarray:
    """[G, Cin, N, K]: block (g, c) holds W[g*n:(g+1)*n, c] flattened over the kernel."""
    cout, cin = w.shape[:2]
    return w.reshape(cout // n, n, cin, -1).transpose(0, 2, 1, 3)


def _bitmap_bytes(groups: int, cin: int) -> int:
    raw = (groups * cin + 7) // 8
    return raw + (-raw % 16)


def sparse_size(w: np.ndarray, n: int) -> int | None:
    """Encoded size with block N, or None when N does not divide Cout."""
    if w.ndim < 2 or w.shape[0] % n:
        return None
    keep = np.any(_blocks(w, n) != 0, axis=(2, 3))
    per_block = n * int(np.prod(w.shape[2:], dtype=np.int64))
    return _bitmap_bytes(*keep.shape) + int(keep.sum()) * per_block


def choose_block(w: np.ndarray, hint: int | None = None) -> int:
    """The block size N giving the smallest encoding, or 0 when dense is smallest.

    Ties go to the larger N (cheaper index, higher skip efficiency); the sparsity metadata's
    block `hint` is tried too so a layer sparsified 1xN is encoded with its own N.
    """
    candidates = sorted(set(BLOCK_CHOICES) | ({hint} if hint and hint > 1 else set()),
                        reverse=True)
    best, best_size = 0, w.size
    for n in candidates:
        size = sparse_size(w, n)
        if size is not None and size < best_size:
            best, best_size = n, size
    return best


def encode(w: np.ndarray, block: int) -> Encoded:
    """Encode an int8 weight densely (block 0) or 1xN block-sparse."""
    w = np.ascontiguousarray(w, dtype=np.int8)
    if block == 0:
        return Encoded(w.tobytes(), 0)
    blocks = _blocks(w, block)
    keep = np.any(blocks != 0, axis=(2, 3))
    bitmap = np.packbits(keep.ravel()).tobytes()
    bitmap += bytes(_bitmap_bytes(*keep.shape) - len(bitmap))
    return Encoded(bitmap + blocks[keep].tobytes(), block, int(keep.sum()), keep.size)


def decode(data: bytes | memoryview, shape: tuple[int, ...], block: int,
           where: str) -> tuple[np.ndarray, int, int]:
    """Decode a weight blob, checking its length against the shape and the bitmap.

    Returns:
        (dense int8 array, stored blocks, total blocks).

    Raises:
        TargetError: Length, bitmap padding or block count inconsistent (names `where`).
    """
    count = int(np.prod(shape, dtype=np.int64))
    if block == 0:
        if len(data) != count:
            raise TargetError(f"binary: {where}: dense weight length {len(data)} != {count}")
        return np.frombuffer(data, np.int8).reshape(shape).copy(), 0, 0
    if len(shape) < 2 or shape[0] % block:
        raise TargetError(f"binary: {where}: block {block} does not divide shape {shape}")
    groups, cin, kernel = shape[0] // block, shape[1], int(np.prod(shape[2:], dtype=np.int64))
    head = _bitmap_bytes(groups, cin)
    if len(data) < head:
        raise TargetError(f"binary: {where}: sparse weight shorter than its bitmap ({head} B)")
    bits = np.unpackbits(np.frombuffer(data[:head], np.uint8))
    keep, tail = bits[:groups * cin].astype(bool), bits[groups * cin:]
    if tail.any():
        raise TargetError(f"binary: {where}: non-zero padding bits in the sparse bitmap")
    stored = int(keep.sum())
    if len(data) - head != stored * block * kernel:
        raise TargetError(f"binary: {where}: sparse weight holds {len(data) - head} bytes for "
                          f"{stored} blocks of {block * kernel}")
    blocks = np.zeros((groups * cin, block * kernel), np.int8)
    blocks[keep] = np.frombuffer(data[head:], np.int8).reshape(stored, block * kernel)
    dense = blocks.reshape(groups, cin, block, kernel).transpose(0, 2, 1, 3).reshape(shape)
    return np.ascontiguousarray(dense), stored, groups * cin
