"""`obs` criterion: choose 1xN blocks by the output error their removal causes (OBS-style).

Magnitude says little about a block once BatchNorm is folded and activations differ in
scale per channel. Optimal Brain Surgeon (Hassibi & Stork 1993; in post-training form
OBC/SparseGPT, Frantar & Alistarh 2022) scores a group of weights S of one output row w by
the least-squares error left after removing them and letting the other weights of the row
compensate: `w_S^T ((H^-1)_SS)^-1 w_S`, with H the Gram matrix of the layer's inputs. A 1xN
block is N rows at the same K kernel positions of one input channel, so its score is the
sum of N such terms sharing one `K x K` matrix.

The scores are computed inside the sequential reconstruction (`reconstruct.py`): H comes
from the layer's inputs in the sparse model so far and w from the least-squares fit of each
block row to the float teacher's outputs on its kept columns, so a block is judged by what
the masked re-fit will actually lose.
"""

from __future__ import annotations

import numpy as np

DAMP = 0.01  # relative diagonal damping of H, as in OBC/SparseGPT


def gradual_obs_keep(x: np.ndarray, y: np.ndarray, block: int, cin: int, sparsity: float, *,
                     centre: bool = True, rounds: int = 4, max_dim: int = 1200) -> np.ndarray:
    """Block keep-mask `[Cout/N, Cin/G]` chosen in `rounds` steps of growing sparsity.

    One-shot scores assume every other block stays; after half the blocks are gone the
    survivors compensate differently. Each round re-fits every block row (N output
    channels sharing a mask) on its kept columns and scores the kept blocks with the
    inverse Gram matrix of those columns, then zeroes the lowest-scoring ones until the
    layer reaches `sparsity * round / rounds` (exactly `round(sparsity * blocks)` at the
    end). Layers with more than `max_dim` regressors use one round (the per-row inverses
    grow cubically).

    Args:
        x: Inputs `[G, P, D]` (D = cin * K).
        y: Teacher outputs `[G, P, Cout/G]`.
        block: N.
        cin: Input channels per group.
        sparsity: Fraction of the layer's blocks to zero.
        centre: Centre x and y (the layer has a bias).
        rounds: Steps of growing sparsity.
        max_dim: Largest D that gets more than one round.
    """
    groups, _, dim = x.shape
    rows = y.shape[2] // block
    keep = np.ones((groups, rows, cin), bool)
    stats = [_gram_cross(x[g], y[g], centre) for g in range(groups)]
    total = keep.size
    steps = rounds if dim <= max_dim else 1
    for r in range(1, steps + 1):
        target = int(np.floor(sparsity * r / steps * total + 0.5))
        scores = np.stack([_block_scores(gram, cross, keep[g], block, cin)
                           for g, (gram, cross) in enumerate(stats)])
        extra = target - int((~keep).sum())
        if extra > 0:
            order = np.argsort(np.where(keep, scores, np.inf).ravel(), kind="stable")
            keep.ravel()[order[:extra]] = False
    return keep.reshape(groups * rows, cin)


def _gram_cross(x: np.ndarray, y: np.ndarray, centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """Damped input Gram matrix `[D, D]` and input-output cross products `[D, Cout]`."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if centre:
        x64, y64 = x64 - x64.mean(axis=0), y64 - y64.mean(axis=0)
    gram = x64.T @ x64
    gram += DAMP * max(float(np.mean(np.diag(gram))), 1e-12) * np.eye(len(gram))
    return gram, x64.T @ y64


def _block_scores(gram: np.ndarray, cross: np.ndarray, keep: np.ndarray, block: int,
                  cin: int) -> np.ndarray:
    """`[rows, cin]` OBS scores of the kept blocks of one group (inf where already zero)."""
    k = len(gram) // cin
    scores = np.full(keep.shape, np.inf)
    # Block rows with the same kept channels share both inverses (all rows in round one).
    patterns, which = np.unique(keep, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        chans = np.flatnonzero(pattern)
        cols = (chans[:, None] * k + np.arange(k)).ravel()
        hinv = np.linalg.inv(gram[np.ix_(cols, cols)])
        idx = np.arange(len(cols)).reshape(len(chans), k)
        inv_blocks = np.linalg.inv(hinv[idx[:, :, None], idx[:, None, :]])
        for b in np.flatnonzero(which.ravel() == p):
            w = hinv @ cross[cols, b * block:(b + 1) * block]  # re-fit of the block row
            wk = w.reshape(len(chans), k, block)
            scores[b, chans] = np.sum(wk * np.matmul(inv_blocks, wk), axis=(1, 2))
    return scores
