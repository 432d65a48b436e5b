"""From proxies to a proposal: regress the target on the weights, search simulated vectors, bootstrap.

  fit             LightGBM (RegMix's regressor: gradient-boosted trees on the weight vector) or a linear
                  model (the baseline: least squares on the weights with an intercept)
  heldout         k-fold out-of-fold predictions and their Spearman rank correlation with the actual
                  targets (every proxy predicted once, by a model that never saw it)
  propose         predict every simulated vector, average the top_k best (RegMix); the vectors all lie
                  within the caps, so their mean does too (the caps are upper bounds: a convex set)
  bootstrap       refit on proxies resampled with replacement, propose again: percentile intervals of
                  each source's proposed weight

Targets are minimised: a metric where higher is better is passed negated (`sign`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

KINDS = ("lightgbm", "linear")


def fit(kind: str, X: np.ndarray, y: np.ndarray, seed: int, params: dict[str, Any] | None = None):
    """A fitted regressor with .predict(X)."""
    if kind == "linear":
        from sklearn.linear_model import LinearRegression

        return LinearRegression().fit(X, y)
    import lightgbm as lgb

    # one thread and deterministic: the same proxies give the same proposal on any machine
    model = lgb.LGBMRegressor(**{**(params or {}), "random_state": seed, "n_jobs": 1, "deterministic": True,
                                 "force_row_wise": True, "verbosity": -1})
    return model.fit(X, y)


def folds_of(n: int, k: int, seed: int) -> list[np.ndarray]:
    """k (at most n) seeded folds of range(n), sizes differing by at most one."""
    perm = np.random.default_rng([seed, 3]).permutation(n)
    return [perm[i::min(k, n)] for i in range(min(k, n))]


def heldout(kind: str, X: np.ndarray, y: np.ndarray, k: int, seed: int, params: dict | None = None) -> dict:
    """Out-of-fold predictions (each proxy by a model fitted without its fold) and their rank correlation."""
    oof = np.empty(len(y))
    for test in folds_of(len(y), k, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        oof[test] = fit(kind, X[train], y[train], seed, params).predict(X[test])
    return {"predictions": oof, "spearman": spearman(oof, y), "pearson": _pearson(oof, y),
            "mae": float(np.mean(np.abs(oof - y)))}


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation, None when either side is constant (a tree that never split predicts one value)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    return None if np.ptp(a) == 0 or np.ptp(b) == 0 else float(np.corrcoef(a, b)[0, 1])


def propose(model, sims: np.ndarray, sign: float, top_k: int) -> tuple[np.ndarray, float]:
    """(mean of the top_k simulated vectors by predicted target, the model's prediction at that mean)."""
    pred = sign * model.predict(sims)
    best = np.argsort(pred, kind="stable")[:top_k]
    w = sims[best].mean(axis=0)
    return w, float(model.predict(w[None, :])[0])


def bootstrap(kind: str, X: np.ndarray, y: np.ndarray, sims: np.ndarray, sign: float, top_k: int, n: int,
              seed: int, params: dict | None = None) -> np.ndarray:
    """(n, S) proposals of regressors refitted on proxies resampled with replacement."""
    rng = np.random.default_rng([seed, 4])
    out = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        out.append(propose(fit(kind, X[idx], y[idx], seed, params), sims, sign, top_k)[0])
    return np.array(out)


def interval(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    lo = (1 - ci) / 2
    return np.quantile(samples, lo, axis=0), np.quantile(samples, 1 - lo, axis=0)
