"""Function-preserving canonicalization run before every compression pass."""

from __future__ import annotations

from compiler.core.ir import Model
from compiler.core.pass_manager import Pass, PassManager, PassResult
from passes.canonicalize.batchnorm import FoldBatchNorm, bn_affine, fold_batchnorm
from passes.canonicalize.constants import FoldConstants, fold_constants
from passes.canonicalize.custom_shapes import ProbeCustomShapes, probe_custom_shapes
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
    "remove_dead_nodes", "sum_to_add",
]


def canonical_passes() -> list:
    """The canonicalization passes, in the order they run."""
    return [FoldConstants(), ProbeCustomShapes(), DropIdentities(), SumToAdd(), FoldBatchNorm(),
            RemoveDeadNodes()]


def canonicalize(model: Model, *, verify_each: bool = False, check_function=None) -> PassResult:
    """Run canonicalization to a fixed point on a copy of `model`."""
    manager = PassManager(canonical_passes(), verify_each=verify_each,
                          check_function=check_function, fixed_point=True)
    return manager(model)


class Canonicalize(Pass):
    """Canonicalization (to a fixed point) as one pass of a larger `PassManager` list."""

    def call(self, model: Model) -> PassResult:
        """Canonicalize `model` (returns a new model)."""
        return canonicalize(model)
