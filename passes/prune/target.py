"""Whether a MACs budget (`target_macs`) was reached, and why not.

The budget search (`costmodel.counts_for_target`, or the ABC search followed by
`costmodel.fill_to_goal`) lands at most one rounding step of one group under the budget. It
can only land above it when the budget is out of reach: every prunable group is at its
`max_rate` floor and the rest of the MACs sit in layers no prunable group touches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from compiler.core.errors import ConfigError
from passes.prune.costmodel import CostModel
from passes.prune.groups import Group
from passes.prune.rates import round_keep

log = logging.getLogger(__name__)


def floor_counts(groups: Sequence[Group], max_rate: float, round_to: int) -> dict[int, int]:
    """The most pruned state `target_macs` may reach: each prunable group at its floor."""
    return {g.id: round_keep(g.channels, max(1, int(np.ceil(g.channels * (1 - max_rate)))),
                             round_to) for g in groups if g.prunable}


def target_outcome(cost: CostModel, groups: Sequence[Group], target: float, reached: float,
                   max_rate: float, round_to: int) -> dict:
    """The report's `target` entry: asked, reached, and the reason for a miss (or None).

    Args:
        cost: The unpruned model's cost model.
        groups: All groups.
        target: The asked fraction of the original MACs.
        reached: The fraction the pruned model has.
        max_rate: Largest fraction removed from one group.
        round_to: Channel rounding.
    """
    floor = cost.macs(floor_counts(groups, max_rate, round_to)) / max(cost.total_macs, 1.0)
    reason = None
    if reached > target + 1e-9:
        fixed = cost.fixed_macs / max(cost.total_macs, 1.0)
        reason = (f"target_macs {target:g} is out of reach: with every prunable group at the "
                  f"max_rate {max_rate:g} floor {floor:.1%} of the MACs remain ({fixed:.1%} "
                  "in layers no prunable group touches); raise --max-rate or lower the target")
    return {"macs_ratio": target, "reached": reached, "floor": floor, "missed": reason}


def report_miss(outcome: dict, strict: bool) -> None:
    """Warn about a missed target, or raise under `strict`."""
    if outcome["missed"] is None:
        return
    message = f"prune: reached {outcome['reached']:.1%} of the MACs; {outcome['missed']}"
    if strict:
        raise ConfigError(message)
    log.warning("%s", message)
