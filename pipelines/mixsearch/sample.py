"""Weight vectors: RegMix's seeded Dirichlet sampling around a prior, with repetition caps.

A cap is the most epochs a source may see when the proposed mix is trained at the target budget:
weight_i x target_tokens <= cap_i x available_tokens_i, so weight_i <= upper_i = cap_i x available_i /
target_tokens. A vector above any upper bound is rejected (RegMix's MAXIMUM_USAGE bound, in epochs of the
target budget, as data mixing laws' repetition control asks).

One draw (RegMix's synthesize_mixture.py): a concentration s among 15 values log-spaced over
`strength`, then Dirichlet(prior^temperature x s) (a small s puts most weight on one source, a large one
stays near the prior); weights under `minimum` become 0 and the rest are rounded to multiples of it.
Vectors are drawn in fixed batches and kept in draw order, so N proxies are the first N of N + 1: a
search that grows keeps the proxies it has.
"""

from __future__ import annotations

import numpy as np

from pipelines.errors import StudyError

BATCH = 4096
MAX_DRAWS = 2_000_000


def natural_prior(available: dict[str, int], sources: list[str]) -> np.ndarray:
    tokens = np.array([available[s] for s in sources], dtype=float)
    if (tokens <= 0).any():
        empty = [s for s, t in zip(sources, tokens) if t <= 0]
        raise StudyError(f"sources {empty} have no tokens after dedup and decontamination: no natural prior")
    return tokens / tokens.sum()


def upper_bounds(sources: list[str], caps: dict[str, float], available: dict[str, int], target_tokens: int) -> np.ndarray:
    """Each source's largest weight under its cap (1 without one)."""
    ub = np.array([min(1.0, caps[s] * available[s] / target_tokens) if s in caps else 1.0 for s in sources])
    if ub.sum() < 1.0 - 1e-9:
        detail = ", ".join(f"{s} <= {u:.4f}" for s, u in zip(sources, ub))
        raise StudyError(f"the caps leave no weight vector: the largest weights ({detail}) add up to {ub.sum():.3f} "
                         f"< 1 at target_tokens={target_tokens:,}; raise the caps or lower target_tokens")
    return ub


def round_to_grid(w: np.ndarray, minimum: float) -> np.ndarray:
    """(n, S) rows on the simplex -> weights under `minimum` set to 0, the rest rounded to multiples of
    it, renormalised (rows whose every weight fell under it are NaN)."""
    w = np.where(w < minimum, 0.0, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w / w.sum(axis=1, keepdims=True)
        w = np.round(w / minimum) * minimum
        return w / w.sum(axis=1, keepdims=True)


def draw(rng: np.random.Generator, prior: np.ndarray, n: int, temperature: float,
         strength: tuple[float, float], minimum: float) -> np.ndarray:
    """n raw draws (before the caps), (n, S), rows on the simplex or NaN."""
    base = prior ** temperature
    base = base / base.sum()
    levels = np.logspace(np.log10(strength[0]), np.log10(strength[1]), 15)
    s = rng.choice(levels, size=n)
    g = rng.gamma(base[None, :] * s[:, None])  # Dirichlet by normalised gammas (tiny alphas may underflow to 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = g / g.sum(axis=1, keepdims=True)
    return round_to_grid(w, minimum)


def sample(prior: np.ndarray, upper: np.ndarray, n: int, seed: int, *, temperature: float = 0.5,
           strength: tuple[float, float] = (0.1, 5.0), minimum: float = 0.001, unique: bool = True,
           stream: int = 0) -> np.ndarray:
    """The first n vectors (draw order) within the caps, distinct when `unique` (proxies), (n, S)."""
    rng = np.random.default_rng([seed, stream])
    kept: list[np.ndarray] = []
    seen: set[bytes] = set()
    drawn = 0
    while len(kept) < n:
        if drawn >= MAX_DRAWS:
            raise StudyError(f"only {len(kept)} of {n} weight vectors within the caps after {drawn:,} draws: the caps "
                             f"(largest weights {np.round(upper, 4).tolist()}) leave too little room around the "
                             f"prior; raise the caps, the strength range or lower target_tokens")
        w = draw(rng, prior, BATCH, temperature, strength, minimum)
        drawn += BATCH
        ok = np.isfinite(w).all(axis=1) & (w <= upper[None, :] + 1e-12).all(axis=1)
        if not unique:
            kept += list(w[ok][: n - len(kept)])
            continue
        for row in w[ok]:
            key = np.round(row / minimum).astype(np.int64).tobytes()
            if key in seen:
                continue
            seen.add(key)
            kept.append(row)
            if len(kept) == n:
                break
    return np.array(kept)


def epochs_at(weights: np.ndarray, available: np.ndarray, tokens: int) -> np.ndarray:
    """Epochs of each source when a mix of these weights is trained on `tokens` tokens."""
    return weights * tokens / available
