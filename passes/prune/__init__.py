"""Channel pruning on ONNX graphs: dependency groups, criteria, rates, search, reconstruction.

model, report = prune_model(model, ratio=0.3, criterion="l1")
model, report = prune_model(model, target_macs=0.7, criterion="hrank", calib=feeds,
reconstruct=True)
"""

from passes.prune.apply import apply_keep, apply_with_layout, zero_removed
from passes.prune.groups import Analysis, Group, analyze, build_groups
from passes.prune.pipeline import ChannelPrune, PruneConfig, prune_model

__all__ = ["Analysis", "ChannelPrune", "Group", "PruneConfig", "analyze", "apply_keep",
           "apply_with_layout", "build_groups", "prune_model", "zero_removed"]
