"""Per-instruction work: MACs, MAC-array cycles or vector elements, and bytes touched.

The perf model (`perf.py`) turns this work into time for a given architecture and number of
active cores. Array mapping follows the usual output-stationary picture (compare SCALE-Sim
and Arm Vela): per cycle a core multiplies `pixels` output positions x `in_channels` x
`out_channels`, so partial tiles waste lanes (`ceil` below); 1xN-sparse weights skip zero
blocks with the architecture's efficiency for that N.

The MAC array and the vector unit have `arch.lane_bits`-bit activation lanes (8 in the
presets). On 8-bit lanes, A16W8 layers (int16 activations, §16 of docs/fixed-point.md) run
as two passes over the array, one per activation byte (the high byte signed, the low byte
unsigned, recombined as 256·hi + lo in the accumulator), so their array cycles double
(`passes`); a vector instruction that touches an int16 tensor uses two lanes per element.
int16 tensors are 2 bytes per element in every byte count (DDR traffic, SRAM fit, arena
allocation: `isa.Tensor.nbytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

import numpy as np

from targets.npusim import isa
from targets.npusim.arch import Arch


@dataclass(frozen=True)
class Work:
    """What one instruction does, independent of timing."""

    macs: int = 0  # multiply-accumulates actually performed (zero blocks skipped)
    array_cycles: float = 0.0  # MAC-array cycles (0 for non-MAC instructions)
    vector_elements: int = 0  # elements through the vector unit
    weight_bytes: int = 0  # constant bytes read (encoded size)
    in_bytes: int = 0
    out_bytes: int = 0
    sparse_block: int = 0
    zero_fraction: float = 0.0


def _bytes(p: isa.Program, ids: list[int]) -> int:
    return sum(p.tensors[i].nbytes for i in ids)


def _shape(p: isa.Program, i: int) -> tuple[int, ...]:
    return p.tensors[i].shape


def elements(t: isa.Tensor) -> int:
    """Element count; a run-time dimension counts as 1, so host tensors give a lower bound."""
    return prod(1 if d == isa.RUNTIME_DIM else d for d in t.shape)


def _per_lane(bits: int, arch: Arch) -> int:
    return max(1, ceil(bits / arch.lane_bits))


def passes(p: isa.Program, ins: isa.Instr, arch: Arch) -> int:
    """MAC-array passes of a Conv / FullyConnected over its activation and weight bits.

    1 for int8/uint8 inputs and int8 weights; on 8-bit lanes, 2 for int16 inputs (A16W8:
    the high and low byte), 2 for int16 weights (W16, §17: two weight digits) and 4 for
    both (A16W16: every byte of the input against every digit of the weights).
    """
    weight = p.blobs[ins.weights].array
    wbits = 8 * (weight.dtype.itemsize if weight is not None else 1)
    return _per_lane(8 * np.dtype(p.tensors[ins.ifm].dtype).itemsize, arch) * \
        _per_lane(wbits, arch)


def lanes(p: isa.Program, ins: isa.Instr, arch: Arch) -> int:
    """Vector lanes per element: 2 on 8-bit lanes when an int16 tensor is touched."""
    quantized = [p.tensors[t].dtype for t in ins.reads() + ins.writes()
                 if p.tensors[t].dtype in ("int8", "uint8", "int16")]
    return _per_lane(max((8 * np.dtype(d).itemsize for d in quantized), default=8), arch)


def _const_bytes(p: isa.Program, ins: isa.Instr) -> int:
    return sum(_blob_bytes(p.blobs[b]) for b in ins.refs(ins.BLOBS)
               if p.blobs[b].array is not None or p.blobs[b].raw)


def _blob_bytes(blob: isa.Blob) -> int:
    """Stored size; before the program is written: the array's or the raw bytes' size."""
    if blob.stored_bytes:
        return blob.stored_bytes
    return blob.array.nbytes if blob.array is not None else len(blob.raw)


def _sparsity(p: isa.Program, ins: isa.Instr, arch: Arch) -> tuple[int, float, float]:
    """(block N, zero-block fraction, fraction of array cycles skipped)."""
    blob = p.blobs[ins.weights]
    if not blob.block or not blob.total_blocks:
        return 0, 0.0, 0.0
    zero = 1.0 - blob.nonzero_blocks / blob.total_blocks
    return blob.block, zero, zero * arch.sparse_efficiency.get(blob.block, 0.0)


def dense_macs(p: isa.Program, ins: isa.Instr) -> int:
    """MACs of a Conv / FullyConnected with every weight counted (0 for other kinds)."""
    if isinstance(ins, isa.Conv):
        n, _, oh, ow = _shape(p, ins.ofm)
        return n * oh * ow * prod(p.blobs[ins.weights].array.shape)
    if isinstance(ins, isa.FullyConnected):
        return prod(_shape(p, ins.ifm)[:-1]) * prod(p.blobs[ins.weights].array.shape)
    return 0


def conv_work(p: isa.Program, ins: isa.Conv, arch: Arch) -> Work:
    """Dense/grouped conv on the MAC array; depthwise on its own datapath."""
    w = p.blobs[ins.weights].array
    n, _, oh, ow = _shape(p, ins.ofm)
    cout, cin_g, kh, kw = w.shape
    positions = n * oh * ow
    macs = dense_macs(p, ins)
    block, zero, skip = _sparsity(p, ins, arch)
    px, ic, oc = arch.mac_array
    if isinstance(ins, isa.DepthwiseConv):
        cycles = ceil(macs / arch.depthwise_macs_per_cycle)
    else:
        cycles = ins.group * ceil(positions / px) * ceil(cin_g / ic) * \
            ceil(cout // ins.group / oc) * kh * kw
    cycles *= passes(p, ins, arch)
    return Work(round(macs * (1 - zero)), cycles * (1 - skip), 0, _const_bytes(p, ins),
                _bytes(p, ins.reads()), _bytes(p, ins.writes()), block, zero)


def fc_work(p: isa.Program, ins: isa.FullyConnected, arch: Arch) -> Work:
    """x[M, K] · Wᵀ: rows map to pixel lanes."""
    nout, k = p.blobs[ins.weights].array.shape
    rows = prod(_shape(p, ins.ifm)[:-1])
    block, zero, skip = _sparsity(p, ins, arch)
    px, ic, oc = arch.mac_array
    cycles = ceil(rows / px) * ceil(k / ic) * ceil(nout / oc) * passes(p, ins, arch)
    return Work(round(dense_macs(p, ins) * (1 - zero)), cycles * (1 - skip), 0,
                _const_bytes(p, ins), _bytes(p, ins.reads()), _bytes(p, ins.writes()),
                block, zero)


def vector_work(p: isa.Program, ins: isa.Instr, arch: Arch) -> Work:
    """Element-wise, pooling, LUT and data movement: elements through the vector unit."""
    out = sum(prod(_shape(p, i)) for i in ins.writes())
    elements = out
    if isinstance(ins, (isa.AvgPool, isa.MaxPool)):
        elements = out * prod(ins.kernel)
    elif isinstance(ins, (isa.GlobalAvgPool, isa.Concat, isa.Add, isa.Mul)):
        elements = max(out, sum(prod(_shape(p, i)) for i in ins.reads()))
    return Work(0, 0.0, elements * lanes(p, ins, arch), _const_bytes(p, ins),
                _bytes(p, ins.reads()), _bytes(p, ins.writes()))


def free_work(p: isa.Program, ins: isa.Instr, arch: Arch) -> Work:
    """A reshape only rewrites the tensor descriptor."""
    return Work(in_bytes=_bytes(p, ins.reads()), out_bytes=_bytes(p, ins.writes()))


def cpu_work(p: isa.Program, ins: isa.CpuCall, arch: Arch) -> Work:
    """A float partition: bytes in and out; its compute is estimated in `perf`."""
    return Work(0, 0.0, sum(elements(p.tensors[i]) for i in ins.reads() + ins.writes()),
                _const_bytes(p, ins), _bytes(p, ins.reads()), _bytes(p, ins.writes()))


WORK = {isa.Conv: conv_work, isa.DepthwiseConv: conv_work, isa.FullyConnected: fc_work,
        isa.Reshape: free_work, isa.CpuCall: cpu_work}


def work(p: isa.Program, ins: isa.Instr, arch: Arch) -> Work:
    """The work of one instruction."""
    return WORK.get(type(ins), vector_work)(p, ins, arch)
