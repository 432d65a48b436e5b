"""The item bootstrap, written once: every interval of the evaluate stage resamples items here.

  resample           the seeded draws: per group of items (in order), chunks of 100 resamples of
                     rng.integers, so an interval never depends on how the work is split
  resampled_means    (n_boot,) replicates of a mean, or of a macro average over groups (each group
                     resampled within itself)
  percentile_ci      the percentile interval of replicates
  bootstrap_ci       table.csv's interval of a benchmark's mean (MMLU: of the macro average over subjects)
  task_rng           CORE's generator per task: the same draws for every metric and model of a task
  item_weights       a benchmark score as a weighted mean of its items
  ItemBootstrap      the paired bootstrap of decisions.py: the same draws as bootstrap_ci, kept as a
                     (n_boot, n) matrix of resample counts, shared by every run scored on the items

Every model is resampled on the same item indices (the draws depend on the seed and the item counts only),
so the intervals of two models on the same items are paired.
"""

from __future__ import annotations

import zlib
from typing import Iterator, Sequence

import numpy as np

CHUNK = 100  # resamples drawn per call: bounds the (chunk, n) index matrix


def resample(sizes: Sequence[int], n_boot: int, rng: np.random.Generator,
             chunk: int = CHUNK) -> Iterator[tuple[int, int, np.ndarray]]:
    """The draws, group by group: (group, first resample, indices (rows, size) into the group)."""
    for g, m in enumerate(sizes):
        for i in range(0, n_boot, chunk):
            yield g, i, rng.integers(0, m, size=(min(chunk, n_boot - i), m))


def resampled_means(parts: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator,
                    chunk: int = CHUNK) -> np.ndarray:
    """(n_boot,) replicates of the mean over `parts` of each part's mean, each part (k,) resampled within itself."""
    stats = np.zeros(n_boot)
    for g, i, idx in resample([len(x) for x in parts], n_boot, rng, chunk):
        stats[i:i + len(idx)] += parts[g][idx].mean(axis=1) / len(parts)
    return stats


def percentile_ci(reps: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0, chunk: int = CHUNK) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (n,), or, with `groups` (n,), of the
    macro average (mean over groups of each group's mean; items resampled within their group)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    parts = [values] if groups is None else [values[groups == g] for g in np.unique(groups)]
    return percentile_ci(resampled_means(parts, n_boot, np.random.default_rng(seed), chunk), level)


def task_rng(seed: int, label: str) -> np.random.Generator:
    """CORE's draws for one task: seeded by the study seed and the task's label."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def item_weights(n: int, groups: Sequence | np.ndarray | None = None) -> np.ndarray:
    """Weights of the benchmark score as a weighted mean of its items: 1/n each, or (groups: MMLU's
    subjects) the macro average, 1 / (number of groups x items in the item's group)."""
    if groups is None:
        return np.full(n, 1.0 / n)
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


class ItemBootstrap:
    """`n_boot` seeded resamples of n items as a matrix (n_boot, n): row b holds, per item, how often
    resample b drew it times the item's weight, so the score of a value vector x in resample b is
    `matrix[b] @ x` (every statistic of decisions.py is a weighted mean of items). One instance per
    benchmark and form is shared by every run: all runs are resampled on the same items (paired).

    The draws are bootstrap_ci's (the same `resample`), so the two agree replicate for replicate."""

    def __init__(self, n: int, groups: Sequence | np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                 chunk: int = CHUNK):
        if n < 1:
            raise ValueError("no items to resample")
        self.n, self.n_boot = n, n_boot
        self.weights = item_weights(n, groups)
        self.matrix = np.zeros((n_boot, n))
        g = None if groups is None else np.asarray(groups)
        parts = [np.arange(n)] if g is None else [np.flatnonzero(g == x) for x in np.unique(g)]
        for k, i, idx in resample([len(pos) for pos in parts], n_boot, np.random.default_rng(seed), chunk):
            rows, m = idx.shape
            counts = np.bincount((idx + m * np.arange(rows)[:, None]).ravel(), minlength=rows * m)
            self.matrix[i:i + rows, parts[k]] += counts.reshape(rows, m) / (m * len(parts))

    def score(self, x: np.ndarray) -> float:
        return float(self.weights @ x)

    def replicates(self, x: np.ndarray) -> np.ndarray:
        return self.matrix @ x
