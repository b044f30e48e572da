"""1xN block sparsification: zero blocks of N output channels x 1 input channel, shapes kept."""

from compiler.core.sparsity import (
    METADATA_KEY,
    LayerMask,
    check_masks,
    read_sparsity_metadata,
    zero_blocks,
)
from passes.sparsify.sparsify import BlockSparsify, SparsifyOptions, plan_layers, sparsify_model

__all__ = [
    "METADATA_KEY", "BlockSparsify", "LayerMask", "SparsifyOptions", "check_masks",
    "plan_layers", "read_sparsity_metadata", "sparsify_model", "zero_blocks",
]
