"""What a sparsification is asked to do (`SparsifyOptions`) and which layers it covers (`Plan`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from compiler.core.errors import ConfigError
from compiler.core.options import in_range, non_negative, option, positive
from passes.sparsify.criteria import CRITERIA
from passes.sparsify.layers import BLOCK_SIZES, Layer


@dataclass
class SparsifyOptions:
    """What to sparsify and how: config keys `sparsify.*`, the flags of `npuc sparsify`.

    Each field is declared once with `option(...)`; the config schema, the CLI flags and
    docs/config.md are generated from these declarations. `criterion` "obs" and
    `reconstruct` (the defaults) need calibration data.
    """

    block: int = option(4, "N, output channels per block", choices=BLOCK_SIZES, metavar="N")
    sparsity: float = option(
        0.5, "fraction of blocks zeroed per layer (global: of the eligible layers' MACs)",
        check=in_range(0, 1, hi_open=True), metavar="S")
    criterion: str = option(
        "obs", "l1 or l2 block norm; act: block L1 x input-channel RMS on calibration data; "
        "obs: output error of removing the block, chosen during the re-fit (needs "
        "reconstruct); css: CHEX-style whole filters", choices=CRITERIA)
    global_budget: bool = option(False, "one MACs-weighted budget across layers instead of "
                                 "per-layer sparsity", key="global", flag="--global")
    exclude: Sequence[str] = option((), "node names or glob patterns kept dense", item=str,
                                    list_sep=",", metavar="NAMES")
    include_first_last: bool = option(False, "also sparsify the first conv and the last "
                                      "classifier")
    reorder: bool = option(False, "permute output channels by filter L1 norm before forming "
                           "blocks")
    reconstruct: bool = option(True, "re-fit surviving weights by masked least squares to the "
                               "float model's layer outputs on calibration data")
    refit_dense: bool = option(True, "with reconstruct: also re-fit the dense layers after "
                               "sparsified ones (classifier, depthwise)")
    refit_activation: bool = option(True, "with reconstruct: match each layer's output "
                                    "after the ReLU/ReLU6 that follows it (activation-aware "
                                    "re-fit), not the pre-activation output")
    refit_block: bool = option(True, "with reconstruct: then train the convs of each block "
                               "(residual / inverted-residual / conv-ReLU-conv) jointly with "
                               "Adam so the block output after its activation matches the "
                               "teacher's; 1xN masks stay fixed")
    teacher: str | None = option(
        None, "reconstruction: the float model the re-fit matches (default: the input model); "
        "give the unpruned model when sparsifying a pruned one, so the pruning error is "
        "compensated too (npuc compile does this itself)", types=(str,), metavar="MODEL")
    ridge: float = option(1e-3, "reconstruction: relative ridge strength", check=non_negative)
    rows: int = option(8192, "reconstruction: regression rows sampled per layer",
                       check=positive, metavar="R")

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
                              "add --reconstruct or pick another criterion")
        if self.criterion == "obs" and self.global_budget:
            raise ConfigError("--criterion obs selects per layer: --global is not supported")
        if self.ridge < 0 or self.rows < 1:
            raise ConfigError("ridge must be >= 0 and rows >= 1")


@dataclass
class Plan:
    """Which layers are sparsified and why the others are not."""

    layers: list[Layer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
