"""What a sparsification is asked to do (`SparsifyOptions`) and which layers it covers (`Plan`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from compiler.core.errors import ConfigError
from passes.sparsify.criteria import CRITERIA
from passes.sparsify.layers import BLOCK_SIZES, Layer


@dataclass
class SparsifyOptions:
    """What to sparsify and how (mirrors `npuc sparsify`).

    Attributes:
        block: N, output channels per block (2, 4, 8, 16 or 32).
        sparsity: Fraction of blocks zeroed per layer (global: of the layers' MACs), in [0, 1).
        criterion: "l1" or "l2" block norm, "act" (block L1 x input-channel RMS on
            calibration data), "obs" (output error of removing the block, chosen during
            the re-fit), or "css" (CHEX-style whole filters).
        global_budget: One MACs-weighted budget across layers instead of per-layer sparsity.
        exclude: Node names or glob patterns never sparsified.
        include_first_last: Also sparsify the first conv(s) and last classifier(s).
        reorder: Permute output channels by filter L1 norm before forming blocks.
        reconstruct: Re-fit surviving weights on calibration data (needs `calib`).
        refit_dense: With `reconstruct`, also re-fit the dense layers downstream of a
            sparsified one (classifier, depthwise, excluded layers).
        ridge: Relative ridge strength of the reconstruction.
        rows: Regression rows sampled per layer in the reconstruction.
    """

    block: int = 4
    sparsity: float = 0.5
    criterion: str = "l1"
    global_budget: bool = False
    exclude: Sequence[str] = ()
    include_first_last: bool = False
    reorder: bool = False
    reconstruct: bool = False
    refit_dense: bool = True
    ridge: float = 1e-3
    rows: int = 8192

    def validate(self) -> None:
        """Raise `ConfigError` naming the bad option."""
        if self.block not in BLOCK_SIZES:
            raise ConfigError(f"--block {self.block}: N must be one of "
                              f"{', '.join(map(str, BLOCK_SIZES))}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(f"--sparsity {self.sparsity}: must be in [0, 1)")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"--criterion {self.criterion!r}: unknown criterion "
                              f"(choose from {', '.join(CRITERIA)})")
        if self.criterion == "obs" and not self.reconstruct:
            raise ConfigError("--criterion obs chooses blocks during the re-fit: "
                              "add --reconstruct")
        if self.criterion == "obs" and self.global_budget:
            raise ConfigError("--criterion obs selects per layer: --global is not supported")
        if self.ridge < 0 or self.rows < 1:
            raise ConfigError("ridge must be >= 0 and rows >= 1")


@dataclass
class Plan:
    """Which layers are sparsified and why the others are not."""

    layers: list[Layer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
