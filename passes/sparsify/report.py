"""The report of a sparsification: per-layer zero blocks and effective MACs, skip reasons."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler.core.ir import Model
from compiler.core.sparsity import LayerMask
from passes.sparsify.layers import node_macs
from passes.sparsify.options import Plan, SparsifyOptions


def build_report(model: Model, plan: Plan, masks: Mapping[str, LayerMask],
                 opts: SparsifyOptions, reorder: Mapping[str, str],
                 recon: Mapping[str, dict]) -> dict[str, Any]:
    """JSON-ready report.

    `effective_macs` counts the MACs left when every zero block is skipped: a layer's MACs
    times its fraction of kept blocks (a block covers the same MACs as any other block of the
    layer), plus the MACs of every layer left dense.
    """
    rows = [_layer_row(layer, masks[layer.name], reorder.get(layer.name),
                       recon.get(layer.name)) for layer in plan.layers]
    total_macs = sum(node_macs(model).values())
    saved = sum(r["macs"] - r["effective_macs"] for r in rows)
    blocks = sum(r["blocks"] for r in rows)
    zero = sum(r["zero_blocks"] for r in rows)
    return {
        "block": opts.block, "sparsity": opts.sparsity, "criterion": opts.criterion,
        "global": opts.global_budget, "reorder": opts.reorder, "reconstruct": opts.reconstruct,
        "layers": rows, "skipped": dict(plan.skipped),
        "blocks": blocks, "zero_blocks": zero,
        "zero_block_fraction": zero / blocks if blocks else 0.0,
        "reordered": sum(1 for r in rows if r["reorder"] == "reordered"),
        "macs": total_macs, "effective_macs": total_macs - saved,
    }


def _layer_row(layer, mask: LayerMask, reorder: str | None, recon: dict | None) -> dict:
    n_blocks, n_zero = int(mask.mask.size), int((~mask.mask).sum())
    kept = 1.0 - n_zero / n_blocks if n_blocks else 1.0
    return {"node": layer.name, "op": layer.node.op, "weight": layer.weight.name,
            "cout": layer.cout, "cin": layer.cin, "block": mask.block, "blocks": n_blocks,
            "zero_blocks": n_zero, "sparsity": n_zero / n_blocks if n_blocks else 0.0,
            "macs": layer.macs, "effective_macs": int(round(layer.macs * kept)),
            "reorder": reorder or "", "recon": recon or {}}
