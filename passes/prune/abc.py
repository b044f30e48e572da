"""ABCPruner-style search of per-group keep ratios with an artificial bee colony.

A food source is one keep level per prunable group, level l keeping l*10% of the channels
(l = 1..10). Employed bees perturb their source towards/away from another source in a few
dimensions, onlookers do the same for sources chosen by fitness, scouts replace sources that
failed to improve `limit` times. Fitness is the quality of the pruned (and, when asked,
reconstructed) candidate on held-out calibration data: top-1 accuracy when labels exist,
plus a small cosine-to-teacher term that breaks ties; candidates over the MACs budget score
below every feasible one. Candidates are evaluated in parallel on the executor's workers
(local processes or Ray actors, `compiler.core.executor`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from compiler.core.executor import ExecutorOptions, open_pool
from compiler.core.ir import Model
from compiler.core.progress import track
from passes.prune.costmodel import CostModel
from passes.prune.groups import Analysis
from passes.prune.rates import round_keep

log = logging.getLogger(__name__)

LEVELS = 10
_STATE: dict[str, Any] = {}


def level_counts(groups, gids: list[int], levels: np.ndarray, round_to: int) -> dict[int, int]:
    """Kept channels per group for keep levels 1..10 (x10%)."""
    return {gid: round_keep(groups[gid].channels,
                            max(1, int(np.ceil(groups[gid].channels * lv / LEVELS))), round_to)
            for gid, lv in zip(gids, levels.tolist(), strict=True)}


def abc_search(model: Model, analysis: Analysis, scores: dict, cost: CostModel, cfg,
               fit_feeds, held, executor: ExecutorOptions | None = None
               ) -> tuple[dict[int, int], dict]:
    """Search per-group kept counts under the MACs budget `cfg.target_macs`.

    Candidates are scored on the workers of `executor` (default: local processes;
    `cfg.workers` overrides its worker count). The result depends only on the seed.

    Returns:
        (kept counts per group, info: best levels, fitness history per cycle, evaluations).
    """
    start = time.perf_counter()
    gids = [g.id for g in analysis.groups if g.prunable]
    budget = float(cfg.target_macs) * cost.total_macs
    rng = np.random.default_rng(cfg.seed)
    held = held if held is not None else fit_feeds
    payload = _payload(model, scores, cfg, fit_feeds, held)
    colony = _Colony(analysis, gids, cost, budget, cfg, rng)
    with open_pool(executor, init=_init_worker, payload=payload, workers=cfg.workers) as pool:
        colony.evaluate_with = lambda cands: pool.map(_evaluate, cands)
        colony.run(int(cfg.abc_cycles), int(cfg.abc_sources), int(cfg.abc_limit))
        workers, kind = pool.workers, pool.kind
    best = colony.best_levels()
    info = {"algorithm": "abc", "cycles": cfg.abc_cycles, "sources": cfg.abc_sources,
            "limit": cfg.abc_limit, "workers": workers, "executor": kind, "budget_macs": budget,
            "best_levels": best.tolist(), "best_fitness": colony.best_fitness(),
            "history": colony.history, "evaluations": len(colony.cache),
            "time_s": round(time.perf_counter() - start, 2)}
    return level_counts(analysis.groups, gids, best, cfg.round_to), info


class _Colony:
    """Food sources, trials and the fitness cache; `evaluate_with` runs a batch."""

    def __init__(self, analysis: Analysis, gids: list[int], cost: CostModel, budget: float,
                 cfg, rng: np.random.Generator) -> None:
        self.groups, self.gids, self.cost, self.budget = analysis.groups, gids, cost, budget
        self.round_to, self.rng = cfg.round_to, rng
        self.cache: dict[tuple, float] = {}
        self.history: list[float] = []
        self.evaluate_with = None

    def macs(self, levels: np.ndarray) -> float:
        return self.cost.macs(level_counts(self.groups, self.gids, levels, self.round_to))

    def fitness(self, cands: list[np.ndarray]) -> np.ndarray:
        """Fitness of candidates (cached; over-budget ones are penalised, not evaluated)."""
        todo = []
        for c in cands:
            key = tuple(c.tolist())
            if key in self.cache:
                continue
            over = self.macs(c) / self.budget - 1.0
            if over > 1e-9:
                self.cache[key] = -1.0 - over
            else:
                todo.append(key)
        todo = list(dict.fromkeys(todo))
        counts = [level_counts(self.groups, self.gids, np.array(k), self.round_to) for k in todo]
        for key, value in zip(todo, self.evaluate_with(counts), strict=True):
            self.cache[key] = value
        return np.array([self.cache[tuple(c.tolist())] for c in cands])

    def uniform_level(self) -> int:
        """Largest uniform level within the budget."""
        for lv in range(LEVELS, 0, -1):
            if self.macs(np.full(len(self.gids), lv)) <= self.budget:
                return lv
        return 1

    def random_source(self, base: int) -> np.ndarray:
        return np.clip(base + self.rng.integers(-2, 3, len(self.gids)), 1, LEVELS)

    def mutate(self, foods: np.ndarray, i: int) -> np.ndarray:
        k = int(self.rng.choice([j for j in range(len(foods)) if j != i])) if len(foods) > 1 \
            else i
        new = foods[i].copy()
        dims = self.rng.choice(len(new), size=min(2, len(new)), replace=False)
        for j in dims:
            phi = self.rng.uniform(-1, 1)
            step = int(round(phi * (foods[i, j] - foods[k, j])))
            new[j] = foods[i, j] + (step if step else int(self.rng.choice([-1, 1])))
        return np.clip(new, 1, LEVELS)

    def run(self, cycles: int, n: int, limit: int) -> None:
        """The bee colony loop."""
        base = self.uniform_level()
        self.foods = np.stack([np.full(len(self.gids), base)]
                              + [self.random_source(base) for _ in range(n - 1)])
        self.fit = self.fitness(list(self.foods))
        trials = np.zeros(n, int)
        for cycle in track(range(cycles), "ABC search (cycles)"):
            self._phase(range(n), trials)  # employed bees
            weights = self.fit - self.fit.min() + 1e-6
            onlookers = self.rng.choice(n, size=n, p=weights / weights.sum())
            self._phase(onlookers, trials)
            scouts = np.flatnonzero(trials > limit)
            for i in scouts:  # scouts: new random sources, scored together (one round)
                self.foods[i] = self.random_source(base)
            if len(scouts):
                self.fit[scouts] = self.fitness([self.foods[i] for i in scouts])
                trials[scouts] = 0
            self.history.append(self.best_fitness())
            log.info("ABC cycle %d: best fitness %.4f", cycle + 1, self.history[-1])

    def _phase(self, indices, trials: np.ndarray) -> None:
        indices = list(indices)
        cands = [self.mutate(self.foods, i) for i in indices]
        values = self.fitness(cands)
        for i, cand, value in zip(indices, cands, values, strict=True):
            if value > self.fit[i]:
                self.foods[i], self.fit[i], trials[i] = cand, value, 0
            else:
                trials[i] += 1

    def best_levels(self) -> np.ndarray:
        key = max(self.cache, key=self.cache.get)
        return np.array(key)

    def best_fitness(self) -> float:
        return float(max(self.cache.values()))


def _payload(model: Model, scores: dict, cfg, fit_feeds, held) -> dict:
    from dataclasses import asdict

    from compiler.core.io import to_proto

    return {"model": to_proto(model).SerializeToString(), "scores": scores, "cfg": asdict(cfg),
            "fit": dict(fit_feeds.arrays), "held": dict(held.arrays),
            "labels": None if held.labels is None else np.asarray(held.labels)}


def _init_worker(payload: dict) -> None:
    """Per-worker state: the model, its groups and the teacher's outputs on held-out data."""
    import onnx

    import passes.recon
    from compiler.core.io import from_proto
    from passes.prune.groups import analyze

    passes.recon.ORT_THREADS = 1  # the workers already fill the cores
    model = from_proto(onnx.load_from_string(payload["model"]))
    _STATE.update(payload, model=model, analysis=analyze(model))
    _STATE["teacher_out"] = run_batched(model, payload["held"])


def run_batched(model: Model, feeds: dict, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Graph outputs over all samples, in batches the model accepts."""
    from passes.recon import iter_tensors

    names = [t.name for t in model.graph.outputs]
    parts = list(iter_tensors(model, names, feeds, batch_size))
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def _evaluate(counts: dict[int, int]) -> float:
    return evaluate_candidate(_STATE, counts)


def evaluate_candidate(state: dict, counts: dict[int, int]) -> float:
    """Prune (and reconstruct), then score on the held-out data."""
    from compiler.core.numerics import cosine
    from passes.prune.apply import apply_with_layout
    from passes.prune.criteria import select
    from passes.prune.reconstruct import affected_layers, reconstruct

    analysis, cfg = state["analysis"], state["cfg"]
    keep = {gid: select(state["scores"][gid], n) for gid, n in counts.items()
            if n < analysis.groups[gid].channels}
    pruned, layout = apply_with_layout(state["model"], keep, analysis=analysis)
    method = cfg["reconstruct"]
    if method not in (False, None, "", "none") and keep:
        reconstruct(pruned, state["model"], layout, affected_layers(analysis, keep),
                    state["fit"], method="lsq" if method is True else method,
                    lam=cfg["lam"], max_rows=cfg["max_rows"], seed=cfg["seed"])
    out = run_batched(pruned, state["held"])
    name = next(iter(out))
    cos = float(np.mean([cosine(a, b) for a, b in zip(out[name], state["teacher_out"][name],
                                                      strict=True)]))
    labels = state["labels"]
    if labels is not None and out[name].ndim == 2 and np.issubdtype(labels.dtype, np.integer):
        acc = float(np.mean(np.argmax(out[name], axis=1) == labels))
        return acc + 0.01 * cos
    return cos
