"""Host placement of int8 units that would only add rounding (no MACs to offload).

After matching, two kinds of unit are moved back to the host (cpu units with a reason):

* **Concat before the host** — a Concat whose every consumer runs on the host, directly or
  through moves (Reshape, Transpose, ...; moved along). Dequantizing its inputs instead of
  its output keeps each input's own scale instead of forcing all onto the largest one (SSD
  class logits of six heads concatenated before a host Softmax). A Concat that is a graph
  output stays int8 (no host node to merge with).
* **Host-fed islands** — a connected group of units without MACs (moves, Concat, Resize,
  tables, MaxPool), at least one of them a table or MaxPool, whose inputs all come from host
  nodes and whose outputs all go to host nodes or graph outputs: quantizing there only rounds
  a float value (a Sigmoid after a host ConvTranspose with a range of ±150 got 8 table
  entries over its useful range; a LayerNorm's `Add(eps)→Sqrt` between host ReduceMean and
  Div; a Loop trip count computed by a Mul).

  Groups of moves alone stay int8, though float would be closer: the Split/Squeeze of
  SSDlite's softmax scores before its host Gathers would raise its worst-output cosine 0.70 ->
  0.76 (int8 scores tie in the top-k selection), but the Reshapes of the PP-OCRv4
  recogniser's attention probabilities between host nodes cost 2 of its 50 held-out lines
  of exact match (1.00 -> 0.96 with mse + bias correction; the accuracy test allows one).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_graphsurgeon as gs

from compiler.core.ir import is_const
from compiler.core.qops import Unit
from compiler.core.subgraphs import outer_inputs

DATA_MOVEMENT = frozenset({"move", "concat", "resize"})
NO_MACS = DATA_MOVEMENT | {"lut", "maxpool"}
BEFORE_HOST_REASON = "Concat (or a move after it) read only by host nodes: on the host each " \
                     "Concat input keeps its own scale"
ISLAND_REASON = "between host nodes and without MACs: int8 would only add rounding"


def place_on_host(units: list[Unit], graph: gs.Graph) -> list[Unit]:
    """`units` (topological) with the units described in the module docstring made cpu."""
    outputs = {t.name for t in graph.outputs}
    units = _before_host(units, outputs)
    return _host_islands(units, outputs)


def _consumers(units: list[Unit]) -> dict[str, list[int]]:
    readers: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        for t in u.inputs:
            if not is_const(t):
                readers.setdefault(t.name, []).append(i)
    return readers


def _to_cpu(unit: Unit, reason: str) -> list[Unit]:
    """One cpu unit per node of `unit` (its nodes are in topological order)."""
    cpu = []
    for node in unit.nodes:
        inputs = [t for t in node.inputs if t.name and not is_const(t)] + outer_inputs(node)
        cpu.append(Unit("cpu", [node], list({t.name: t for t in inputs}.values()),
                        [o for o in node.outputs if o.name], reason=reason))
    return cpu


def _before_host(units: list[Unit], outputs: set[str]) -> list[Unit]:
    """Concats read only by host units, directly or through moves (moved along)."""
    readers = _consumers(units)
    host = [u.kind == "cpu" for u in units]
    for i, u in enumerate(units):
        if u.kind == "concat":
            path = _moves_to_host(i, units, readers, outputs)
            for j in path or ():
                host[j] = True
    return _rebuild(units, host, BEFORE_HOST_REASON)


def _moves_to_host(i: int, units: list[Unit], readers: dict[str, list[int]],
                   outputs: set[str]) -> set[int] | None:
    """`i` and the moves after it when every path from `i` reaches host units (else None)."""
    path, todo = {i}, [i]
    while todo:
        u = units[todo.pop()]
        for t in u.outputs:
            reads = readers.get(t.name, [])
            if t.name in outputs or not reads:
                return None
            for j in reads:
                if units[j].kind == "move" and j not in path:
                    path.add(j)
                    todo.append(j)
                elif units[j].kind != "cpu" and j not in path:
                    return None
    return path


def _all_read_by(u: Unit, readers: dict[str, list[int]], outputs: set[str],
                 accept: Callable[[int], bool], ok_output: bool) -> bool:
    """Every output of `u` is read, only by accepted units (or is an accepted graph output)."""
    for t in u.outputs:
        reads = readers.get(t.name, [])
        if t.name in outputs and not ok_output:
            return False
        if not reads and t.name not in outputs:
            return False
        if not all(accept(j) for j in reads):
            return False
    return True


def _host_islands(units: list[Unit], outputs: set[str]) -> list[Unit]:
    """Connected groups of no-MAC units fed only by host units, read only by host/outputs."""
    made_by = {t.name: i for i, u in enumerate(units) for t in u.outputs}
    readers = _consumers(units)
    group = {i: i for i, u in enumerate(units) if u.kind in NO_MACS}
    for i in group:
        for t in units[i].inputs:
            j = made_by.get(t.name)
            if j in group:
                _union(group, i, j)
    members: dict[int, list[int]] = {}
    for i in group:
        members.setdefault(_find(group, i), []).append(i)
    host = [u.kind == "cpu" for u in units]
    for idx in members.values():
        inside = set(idx)
        external = [t for i in idx for t in units[i].inputs
                    if not is_const(t) and made_by.get(t.name) not in inside]
        fed = bool(external) and all(t.name in made_by and units[made_by[t.name]].kind == "cpu"
                                     for t in external)
        if all(units[i].kind in DATA_MOVEMENT for i in idx):
            continue  # pure data movement stays int8 (see module doc)
        read = all(_all_read_by(units[i], readers, outputs,
                                lambda j, s=inside: j in s or units[j].kind == "cpu", True)
                   for i in idx)
        if fed and read:
            for i in idx:
                host[i] = True
    return _rebuild(units, host, ISLAND_REASON)


def _find(parent: dict[int, int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: dict[int, int], a: int, b: int) -> None:
    parent[_find(parent, a)] = _find(parent, b)


def _rebuild(units: list[Unit], host: list[bool], reason: str) -> list[Unit]:
    out: list[Unit] = []
    for u, h in zip(units, host, strict=True):
        out += _to_cpu(u, reason) if h and u.kind != "cpu" else [u]
    return out
