"""`prune_model`: options -> groups -> scores -> kept counts -> apply -> reconstruct -> report."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

from compiler.core.errors import ConfigError, DataError
from compiler.core.executor import MAX_WORKERS, ExecutorOptions
from compiler.core.feeds import Feeds, load_feeds
from compiler.core.ir import Model
from compiler.core.options import in_range, non_negative, option, positive
from compiler.core.pass_manager import Pass, PassResult
from passes.canonicalize import canonicalize
from passes.prune.apply import apply_with_layout
from passes.prune.channels import read_channels, record_channels
from passes.prune.costmodel import (
    CostModel,
    batch1_cost,
    counts_for_target,
    fill_to_goal,
    normalized,
)
from passes.prune.criteria import CRITERIA, score_groups, select
from passes.prune.groups import Analysis, analyze
from passes.prune.rates import keep_counts, rates_from_spec, uniform_rates
from passes.prune.reconstruct import DEFAULT_RECON, METHODS, affected_layers, reconstruct
from passes.prune.target import report_miss, target_outcome

log = logging.getLogger(__name__)

ROUND_TO = 8  # measured: docs/config.md, "Defaults chosen"

MAX_ABC = 1000  # ABC cycles, food sources and trial limit (each source is a pruned model)


@dataclass
class PruneOptions:
    """Options of `prune_model`: config keys `prune.*`, the flags of `npuc prune`.

    Each field is declared once with `option(...)` (default, help, key, flag, check); the
    config schema, the CLI flags and docs/config.md are generated from these declarations.
    """

    ratio: float | None = option(
        None, "uniform fraction of channels removed per group", types=(int, float),
        check=in_range(0, 1, hi_open=True), metavar="R")
    rates: Any = option(
        None, "per-group rates: list (group order of `npuc groups`), map {group: rate}, YAML "
        "file or HRankPlus compress_rate expression", types=(list, dict, str))
    target_macs: float | None = option(
        None, "prune globally until MACs fall to this fraction of the original",
        types=(int, float), check=in_range(0, 1, lo_open=True), metavar="F")
    criterion: str = option("l1", "channel importance (hrank needs calibration data)",
                            choices=CRITERIA)
    round_to: int = option(ROUND_TO, "keep channel counts a multiple of this", check=positive,
                           metavar="N")
    search: str | None = option(None, "search per-group rates (ABCPruner) under the "
                                "target_macs budget", types=(str,), choices=("abc",))
    reconstruct: bool | str = option(
        True, "re-fit the consumers of pruned channels on calibration data: true/block "
        "(act, then each block's convs trained jointly with Adam to the float block "
        "output), act (stream, then matched after the following ReLU/ReLU6), stream "
        "(ridge re-fit on every calibration position, residual-aware targets), lsq (ridge "
        "re-fit on sampled rows), bias (mean folding only) or false",
        types=(bool, str), choices=(True, False, "block", "act", "stream", "lsq", "bias"),
        const=True, metavar="block|act|stream|lsq|bias")
    seed: int = option(0, "seed of random choices", shared="seed", check=non_negative)
    calib_limit: int = option(256, "calibration samples used at most",
                              shared="calibration.limit")
    holdout: float = option(0.25, "ABC: fraction of the calibration data held out for the "
                            "fitness", check=in_range(0, 1, lo_open=True, hi_open=True))
    max_rate: float = option(0.9, "largest fraction removed from one group by target_macs "
                             "and the ABC search", check=in_range(0, 1, lo_open=True))
    lam: float = option(1e-3, "reconstruction: relative ridge strength", key="ridge",
                        flag="--ridge", check=non_negative)
    max_rows: int = option(4096, "reconstruction: sampled positions per layer", key="rows",
                           flag="--rows", check=positive)
    abc_cycles: int = option(5, "ABC: cycles T", check=positive, metavar="T")
    abc_sources: int = option(6, "ABC: food sources n", key="abc_food_sources",
                              check=positive, metavar="N")
    abc_limit: int = option(3, "ABC: trial limit M before a source is abandoned",
                            key="abc_trial_limit", check=positive, metavar="M")
    workers: int | None = option(None, "ABC workers (null: executor.workers, else all cores)",
                                 types=(int,), check=positive)
    strict: bool = option(False, "stop with an error when target_macs cannot be reached "
                          "(default: a warning)")

    def recon_method(self) -> str | None:
        """The reconstruction method, or None."""
        if self.reconstruct in (False, None, "", "none"):
            return None
        return DEFAULT_RECON if self.reconstruct is True else str(self.reconstruct)

    def validate(self) -> None:
        """Raise `ConfigError` naming the bad option (the checks across options)."""
        _validate(self)


PruneConfig = PruneOptions  # the former name


def make_config(config: PruneOptions | dict | None = None, **kwargs) -> PruneOptions:
    """A validated `PruneOptions` from a config object, a dict and/or keyword arguments."""
    base = asdict(config) if isinstance(config, PruneOptions) else dict(config or {})
    base.update({k: v for k, v in kwargs.items() if v is not None})
    names = {f.name for f in fields(PruneOptions)}
    unknown = sorted(set(base) - names)
    if unknown:
        raise ConfigError(f"prune: unknown option(s) {unknown} (known: {sorted(names)})")
    cfg = PruneOptions(**base)
    _validate(cfg)
    return cfg


def _validate(cfg: PruneOptions) -> None:
    modes = [m for m in ("ratio", "rates", "target_macs") if getattr(cfg, m) is not None]
    if cfg.search is None and len(modes) != 1:
        raise ConfigError("prune: give exactly one of --ratio, --rates, --target-macs "
                          f"(got {', '.join(modes) or 'none'})")
    if cfg.search not in (None, "abc"):
        raise ConfigError(f"--search: unknown {cfg.search!r} (only 'abc')")
    if cfg.search == "abc" and modes != ["target_macs"]:
        raise ConfigError("--search abc needs --target-macs (the MACs budget) and no other rate")
    if cfg.ratio is not None and not 0.0 <= float(cfg.ratio) < 1.0:
        raise ConfigError(f"--ratio: {cfg.ratio:g} is outside [0, 1)")
    if cfg.target_macs is not None and not 0.0 < float(cfg.target_macs) <= 1.0:
        raise ConfigError(f"--target-macs: {cfg.target_macs:g} is outside (0, 1]")
    if int(cfg.round_to) < 1:
        raise ConfigError(f"--round-to: {cfg.round_to} must be >= 1")
    if cfg.criterion not in CRITERIA:
        raise ConfigError(f"--criterion: unknown {cfg.criterion!r} "
                          f"(choose from {', '.join(CRITERIA)})")
    method = cfg.recon_method()
    if method is not None and method not in METHODS:
        raise ConfigError(f"--reconstruct: unknown method {method!r} ({', '.join(METHODS)})")
    for name in ("abc_cycles", "abc_sources", "abc_limit"):
        if not 1 <= int(getattr(cfg, name)) <= MAX_ABC:
            raise ConfigError(f"{name}: {getattr(cfg, name)} must be in [1, {MAX_ABC}]")
    if cfg.workers is not None and cfg.workers > MAX_WORKERS:
        raise ConfigError(f"--workers {cfg.workers}: at most {MAX_WORKERS} worker processes")


def needs_calib(cfg: PruneOptions) -> bool:
    """Whether these options need calibration data."""
    return cfg.criterion == "hrank" or cfg.recon_method() is not None or cfg.search == "abc"


def calib_missing(cfg: PruneOptions) -> str:
    """The one-line message when these options need calibration data and there is none."""
    if cfg.criterion == "hrank" or cfg.search:
        what = "--criterion hrank" if cfg.criterion == "hrank" else "--search abc"
        return f"prune: {what} needs calibration data: add --calib DATA"
    return ("prune: --reconstruct (on by default) needs calibration data: add --calib DATA, "
            "or opt out with --no-reconstruct")


def prune_model(model: Model, config: PruneOptions | dict | None = None, calib: Any = None,
                *, executor: ExecutorOptions | None = None, **kwargs) -> tuple[Model, dict]:
    """Prune channels of `model` post-training.

    Args:
        model: The IR model (not modified); it is canonicalized first.
        config: A `PruneOptions` or dict of its fields; keyword arguments override it.
        calib: Calibration data (any `compiler.core.feeds.load_feeds` source), needed by hrank,
            reconstruction and the ABC search.
        executor: Where the ABC search scores its candidates (default: local processes).
        **kwargs: `PruneOptions` fields (None values are ignored).

    Returns:
        (pruned model, report dict: per-group widths, MACs/params before and after, times).

    Raises:
        ConfigError: Invalid options or no prunable group. DataError: bad or missing data.
    """
    start = time.perf_counter()
    cfg = make_config(config, **kwargs)
    canonical = canonicalize(model).model
    feeds = _load_calib(calib, canonical, cfg)
    analysis = analyze(canonical)
    _require_prunable(analysis)
    t_groups = time.perf_counter() - start
    fit_feeds, held = _split(feeds, cfg) if feeds is not None else (None, None)
    scores = score_groups(analysis, cfg.criterion, calib=fit_feeds, seed=cfg.seed)
    cost = CostModel(analysis)
    search_info = None
    if cfg.search == "abc":
        from passes.prune.abc import abc_search

        counts, search_info = abc_search(canonical, analysis, scores, cost, cfg, fit_feeds, held,
                                         executor)
        counts = fill_to_goal(cost, analysis.groups, normalized(scores), counts,
                              float(cfg.target_macs) * cost.total_macs, cfg.round_to)
    else:
        counts = _counts(analysis, cfg, scores, cost)
    keep = {gid: select(scores[gid], n) for gid, n in counts.items()
            if n < analysis.groups[gid].channels}
    pruned, layout = apply_with_layout(canonical, keep, analysis=analysis)
    if keep:  # where each kept channel came from, for a later float-teacher re-fit
        record_channels(pruned, layout, read_channels(canonical))
    recon = None
    if cfg.recon_method() and keep:
        layers = affected_layers(analysis, keep)
        recon = reconstruct(pruned, canonical, layout, layers, fit_feeds,
                            method=cfg.recon_method(), lam=cfg.lam, max_rows=cfg.max_rows,
                            seed=cfg.seed)
    report = _report(analysis, cfg, counts, canonical, pruned, start, t_groups)
    report["reconstruction"], report["search"] = recon, search_info
    if cfg.target_macs is not None:
        report["target"] = target_outcome(cost, analysis.groups, float(cfg.target_macs),
                                          report["macs"]["ratio"], cfg.max_rate, cfg.round_to)
        report_miss(report["target"], cfg.strict)
    return pruned, report


def _load_calib(calib: Any, model: Model, cfg: PruneOptions) -> Feeds | None:
    if calib is None:
        if needs_calib(cfg):
            raise DataError(calib_missing(cfg))
        return None
    return load_feeds(calib, model, limit=cfg.calib_limit)


def _split(feeds: Feeds, cfg: PruneOptions) -> tuple[Feeds, Feeds | None]:
    if cfg.search != "abc" or len(feeds) < 4:
        return feeds, None
    fit, held = feeds.split(cfg.holdout)
    if feeds.labels is not None:
        held.labels = feeds.labels[len(fit):]
    return fit, held


def _require_prunable(analysis: Analysis) -> None:
    if any(g.prunable for g in analysis.groups):
        return
    reasons = Counter(g.reason for g in analysis.groups)
    top = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
    raise ConfigError(f"the model has no prunable channel group ({len(analysis.groups)} "
                      f"groups: {top})")


def _counts(analysis: Analysis, cfg: PruneOptions, scores: dict, cost: CostModel) -> dict:
    groups = analysis.groups
    if cfg.ratio is not None:
        return keep_counts(groups, uniform_rates(groups, cfg.ratio), cfg.round_to)
    if cfg.rates is not None:
        return keep_counts(groups, rates_from_spec(groups, cfg.rates), cfg.round_to)
    return counts_for_target(cost, groups, scores, float(cfg.target_macs), cfg.round_to,
                             cfg.max_rate)


def _report(analysis: Analysis, cfg: PruneOptions, counts: dict, before: Model, after: Model,
            start: float, t_groups: float) -> dict:
    cb, ca = batch1_cost(before), batch1_cost(after)
    rows = [{"id": g.id, "kind": g.kind, "members": g.members[:3], "n_members": len(g.members),
             "before": g.channels, "after": int(counts.get(g.id, g.channels)),
             "prunable": g.prunable, "reason": g.reason} for g in analysis.groups]
    return {
        "criterion": cfg.criterion,
        "mode": "abc" if cfg.search else next(m for m in ("ratio", "rates", "target_macs")
                                               if getattr(cfg, m) is not None),
        "config": {k: v for k, v in asdict(cfg).items() if k != "rates" or v is None
                   or isinstance(v, (str, list, dict))},
        "groups": rows,
        "macs": {"before": cb.macs, "after": ca.macs, "ratio": ca.macs / max(cb.macs, 1)},
        "params": {"before": cb.params, "after": ca.params,
                   "ratio": ca.params / max(cb.params, 1)},
        "time_s": {"groups": round(t_groups, 3), "total": round(time.perf_counter() - start, 3)},
    }


class ChannelPrune(Pass):
    """Pass wrapper around `prune_model` (changes the model's function)."""

    preserves_function = False

    def __init__(self, config: PruneOptions | dict | None = None, calib: Any = None,
                 executor: ExecutorOptions | None = None, **kwargs) -> None:
        self.config = make_config(config, **kwargs)
        self.calib = calib
        self.executor = executor

    def call(self, model: Model) -> PassResult:
        """Prune; `info` is the report."""
        pruned, report = prune_model(model, self.config, calib=self.calib,
                                     executor=self.executor)
        modified = any(r["after"] < r["before"] for r in report["groups"])
        return PassResult(pruned, modified, report)


def group_widths(report: dict) -> list[tuple[int, int]]:
    """(before, after) channel counts of the prunable groups, in order."""
    return [(r["before"], r["after"]) for r in report["groups"] if r["prunable"]]


__all__ = ["ChannelPrune", "PruneConfig", "PruneOptions", "calib_missing", "group_widths",
           "make_config", "needs_calib", "prune_model"]
