"""Per-group pruning sensitivity: the output error of pruning one dependency group alone.

For each prunable dependency group (ids as `npuc groups` shows them), the canonical model
with only that group pruned at `ratio` (channels chosen by `criterion`, as `npuc prune`
chooses them) is run over the data and compared with the float model: the same metrics as
quantization sensitivity (`passes.quantize.fidelity`: worst-output cosine, arg-max agreement,
labelled accuracy), ranked worst-first. At ratio 0 nothing is removed and every group
scores cosine 1.0 exactly (pruning keeps the float function of the kept channels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from compiler.core.errors import ConfigError
from compiler.core.feeds import load_feeds
from compiler.core.ir import Model
from compiler.core.numerics import run, session
from compiler.core.progress import track
from passes.canonicalize import canonicalize
from passes.prune.apply import apply_keep
from passes.prune.costmodel import batch1_cost
from passes.prune.criteria import score_groups, select
from passes.prune.groups import Analysis, Group, analyze
from passes.prune.rates import check_rate, keep_count
from passes.quantize.fidelity import (
    Metrics,
    Reference,
    SensitivityReport,
    rank_key,
    resolve_rank,
)
from passes.quantize.options import SensitivityOptions

DEFAULT_RATIO = SensitivityOptions.ratio  # declared once, with the flag


@dataclass
class GroupSensitivity:
    """What pruning one dependency group costs.

    Attributes:
        id: Group id (`npuc groups`).
        kind: Group kind (plain, residual, concat, ...).
        channels: Channels of the group; `kept` after pruning it at the ratio.
        members: Its members ("<node>.out", "<node>.in", ...).
        macs_removed: Batch-1 MACs removed by pruning it alone.
        metrics: Output cosine / agreement / accuracy with only this group pruned.
    """

    id: int
    kind: str
    channels: int
    kept: int
    members: list[str]
    macs_removed: int
    metrics: Metrics

    @property
    def index(self) -> int:
        """Position in network order (the group id)."""
        return self.id

    @property
    def name(self) -> str:
        """Display name: the group id and its first member."""
        return f"group {self.id} ({self.members[0] if self.members else '-'})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metrics flattened)."""
        d = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        return {**d, "name": self.name, "index": self.index, **self.metrics.to_dict()}


def prune_sensitivity(model: Model, feeds: Any, *, ratio: float = DEFAULT_RATIO,
                      criterion: str = "l1", rank_by: str = "auto", batch_size: int = 8,
                      round_to: int = 1) -> SensitivityReport:
    """Rank the prunable dependency groups by the output error of pruning each alone.

    Args:
        model: The float IR model (not modified; canonicalized first, as `prune_model` does).
        feeds: Evaluation data (anything `load_feeds` reads; integer labels add accuracy;
            also the data of a data-driven `criterion` such as hrank).
        ratio: Fraction of each group's channels removed, in [0, 1).
        criterion: Channel importance criterion (`passes.prune.criteria.CRITERIA`).
        rank_by: "auto" (accuracy with labels, else cosine), "cosine", "agreement",
            "accuracy".
        batch_size: Samples per onnxruntime run (models with a symbolic batch).
        round_to: Round kept channel counts to a multiple of this.

    Returns:
        The report: `GroupSensitivity` rows worst first; `baseline` prunes every group.

    Raises:
        ConfigError: Bad ratio/criterion, or no prunable group.
        DataError: Data that does not fit the model.
    """
    ratio = check_rate(ratio, "--ratio")
    start = time.perf_counter()
    canonical = canonicalize(model).model
    data = load_feeds(feeds, canonical)
    analysis = analyze(canonical)
    groups = [g for g in analysis.groups if g.prunable]
    if not groups:
        raise ConfigError(f"the model has no prunable channel group ({len(analysis.groups)} "
                          "groups; `npuc groups MODEL` shows why)")
    scores = score_groups(analysis, criterion, calib=data)
    ref = Reference(canonical, data, batch_size)
    by = resolve_rank(rank_by, ref.labels is not None)
    macs = batch1_cost(canonical).macs
    keep = {g.id: select(scores[g.id], keep_count(g.channels, ratio, round_to)) for g in groups}
    rows = [_group_row(canonical, analysis, g, keep[g.id], ref, macs)
            for g in track(groups, "sensitivity (groups)", len(groups))]
    rows.sort(key=lambda r: rank_key(by)(r.metrics))
    baseline = _score(apply_keep(canonical, keep, analysis=analysis), ref)
    info = {"ratio": ratio, "criterion": criterion, "round_to": round_to,
            "groups": len(analysis.groups), "prunable": len(groups),
            "time_s": {"total": round(time.perf_counter() - start, 3)}}
    return SensitivityReport(rows, "prune", by, ref.samples, baseline,
                             ref.float_metrics.accuracy, info)


def _score(model: Model, ref: Reference) -> Metrics:
    sess = session(model)
    return ref.score(lambda feed: run(sess, feed))


def _group_row(model: Model, analysis: Analysis, group: Group, keep: Any, ref: Reference,
               macs: int) -> GroupSensitivity:
    pruned = apply_keep(model, {group.id: keep}, analysis=analysis)
    return GroupSensitivity(group.id, group.kind, group.channels, len(keep),
                            list(group.members), macs - batch1_cost(pruned).macs,
                            _score(pruned, ref))
