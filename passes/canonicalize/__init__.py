"""Function-preserving canonicalization run before every compression pass."""

from __future__ import annotations

from compiler.core.ir import Model
from compiler.core.pass_manager import Pass, PassManager, PassResult
from passes.canonicalize.batchnorm import FoldBatchNorm, bn_affine, fold_batchnorm
from passes.canonicalize.constants import FoldConstants, fold_constants
from passes.canonicalize.custom_shapes import ProbeCustomShapes, probe_custom_shapes
from passes.canonicalize.padding_taps import TrimPaddingTaps, trim_padding_taps
from passes.canonicalize.simplify import (
    DropIdentities,
    RemoveDeadNodes,
    SumToAdd,
    drop_identities,
    remove_dead_nodes,
    sum_to_add,
)

__all__ = [
    "Canonicalize", "DropIdentities", "FoldBatchNorm", "FoldConstants", "ProbeCustomShapes",
    "RemoveDeadNodes", "SumToAdd", "bn_affine", "canonicalize", "canonical_passes",
    "drop_identities", "fold_batchnorm", "fold_constants", "probe_custom_shapes",
    "remove_dead_nodes", "sum_to_add", "TrimPaddingTaps", "trim_padding_taps",
]


def canonical_passes() -> list:
    """The canonicalization passes, in the order they run."""
    return [FoldConstants(), ProbeCustomShapes(), DropIdentities(), SumToAdd(), FoldBatchNorm(),
            TrimPaddingTaps(), RemoveDeadNodes()]


def canonicalize(model: Model, *, verify_each: bool = False, check_function=None,
                 in_place: bool = False) -> PassResult:
    """Run canonicalization to a fixed point.

    Args:
        model: The model.
        verify_each: Health-check the graph after each pass.
        check_function: `(before, after)` check after each pass (see `PassManager`).
        in_place: Rewrite `model` itself instead of a copy. The copy shares the weight
            arrays, but weights that folding replaces (BatchNorm into Conv) then exist twice
            until the caller drops the original; a caller that keeps no use for the
            original (inspect, groups) passes True.
    """
    manager = PassManager(canonical_passes(), verify_each=verify_each,
                          check_function=check_function, fixed_point=True,
                          copy_input=not in_place)
    return manager(model)


class Canonicalize(Pass):
    """Canonicalization (to a fixed point) as one pass of a larger `PassManager` list."""

    def call(self, model: Model) -> PassResult:
        """Canonicalize `model` in place (the enclosing manager owns it)."""
        return canonicalize(model, in_place=True)
