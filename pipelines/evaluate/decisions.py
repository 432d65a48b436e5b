"""From numbers to decisions: which mix is better, by how much, and can this scale tell at all?

The evaluate stage scores every trained run (mix x model size x seed, at its last evaluated
checkpoints) on the same items, so one metric of one benchmark is, per mix, a matrix of seeds x items.
This module turns those matrices into decisions (numpy only; evaluate.py assembles the matrices and
writes decisions.json and summary.csv). The per-item metrics and their direction are metrics.METRICS: acc,
acc_norm (argmax of the answer log-likelihoods, raw / per character), and the continuous ones of
DataDecide: bpb (bits per byte of the correct answer; lower is better), prob_norm (probability of the
correct answer normalised over the choices), margin (log-likelihood of the correct answer minus that of
the best wrong one, nats). The item bootstrap is bootstrap.py's (item_weights: a benchmark score is the
mean over items, MMLU's the macro average over subjects; ItemBootstrap: one seeded set of resampled items,
shared by every run); the report in words is findings.py's.

  seed_noise           how far a score moves with the training seed (pooled over the mixes of a scale)
  mean_ci              a mix's score (mean over seeds) with its CI over items and seeds
  paired_difference    a - b: the difference, its CI, a two-sided p-value and a verdict
  signal_to_noise      the spread of the mix means over the seed-to-seed (or checkpoint) sd
  decision_accuracy    DataDecide: share of mix pairs ordered at a smaller scale as at the largest
  decide               all of the above for a set of runs: the content of evaluate/decisions.json

Where the uncertainty comes from, and how each interval holds both parts:

  items  a benchmark is a sample of questions. Items are resampled with replacement (within subject for
         MMLU), and every run is resampled on the same items (paired), so an item that is hard for every
         model adds nothing to a difference. ItemBootstrap draws the resamples exactly as
         bootstrap_ci does, so with one seed a mix's interval equals table.csv's.
  seeds  a training run is one draw of initialisation and data order. Three seeds cannot usefully be
         resampled (a bootstrap over 3 values understates their spread by a third and has no tails), so
         the seed part is a variance component: the within-mix variance of the per-seed scores, pooled
         over the mixes of a scale (ANOVA's, df = sum over mixes of seeds - 1; seed_noise). Each
         replicate adds sqrt(var (1/k_a + 1/k_b)) times a Student-t draw with those df (a two-sample
         t-test's allowance for a variance estimated from few runs), and the item resamples are shrunk
         to the part of their spread that this seed variance does not already hold (the per-item noise
         of a seed is in both), so nothing is counted twice (_replicates: a Satterthwaite split of the
         two-level design, items known to many degrees of freedom, seeds to few).

With one seed per mix the seed part cannot be estimated: intervals and verdicts cover items only, and
decisions.json says so (`seed_noise: false`). The p-value is two-sided from the replicates of the
difference, p = 2 min(P*(d <= 0), P*(d >= 0)) with the +1 correction ((1 + count) / (B + 1)); the verdict
is `better` / `worse` (for the first mix, in the metric's direction) when p < 1 - level, else `no
detectable difference`. tests/test_decisions.py checks the rate of detections on many synthetic null
pairs (same mix, different seeds) against 5%, and that a planted difference is found.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from pipelines.evaluate.bootstrap import ItemBootstrap
from pipelines.evaluate.findings import BETTER, SAME, WORSE, findings
from pipelines.evaluate.metrics import METRICS

BENCHMARK_LABELS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag",
                    "mmlu": "MMLU", "core": "CORE"}


# ---------------------------------------------------------------------------------------------
# seeds


def _as_runs(x) -> np.ndarray:
    """(seeds, items): one row per seed."""
    return np.atleast_2d(np.asarray(x, dtype=np.float64))


def seed_scores(x, weights: np.ndarray) -> np.ndarray:
    """The benchmark score of each seed of a (seeds, items) matrix."""
    return _as_runs(x) @ weights


class SeedNoise(NamedTuple):
    """How a score moves with the training seed, pooled over the mixes of one scale that have >= 2 seeds.

    var       pooled within-mix variance of the per-seed scores (df degrees of freedom): the seed-to-seed
              noise of one run's score, item noise of that run included
    item_var  the part of `var` that is per-item noise, sum_i w_i^2 v_i (v_i: the pooled seed variance of
              item i alone); the item resamples of seed-averaged values already carry it (divided by k)
    df        sum over mixes of (seeds - 1); 0 when no mix has two seeds (the seed noise is unknown)"""

    var: float = 0.0
    item_var: float = 0.0
    df: int = 0

    @property
    def shift_sd(self) -> float | None:
        """sd of the seed shift, the part of the seed noise common to every item (None: unknown)."""
        return math.sqrt(max(self.var - self.item_var, 0.0)) if self.df else None


def seed_noise(runs: Sequence, weights: np.ndarray) -> SeedNoise:
    """SeedNoise of a scale from its mixes' (seeds, items) matrices (mixes with one seed add nothing)."""
    num, item, df = 0.0, 0.0, 0
    for x in runs:
        x = _as_runs(x)
        k = x.shape[0]
        if k < 2:
            continue
        num += (k - 1) * float((x @ weights).var(ddof=1))
        item += (k - 1) * float((weights ** 2) @ x.var(axis=0, ddof=1))
        df += k - 1
    return SeedNoise(num / df, item / df, df) if df else SeedNoise()


def _replicates(y: np.ndarray, boot: ItemBootstrap, noise: SeedNoise, inv_k: float,
                rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the weighted item mean of y, a seed-averaged vector (a mix's values, or
    the difference of two mixes'), inv_k = sum over the runs averaged of 1/k (1/k, or 1/k_a + 1/k_b).

    Without seed noise: the item resamples. With it: the seed-to-seed variance var * inv_k enters as
    sqrt(var * inv_k) x Student-t(df) (a variance estimated from few runs), and the item resamples are
    shrunk around the estimate to the part of their spread that is not that same seed noise (the
    item-sampling variance of the mixes' true per-item scores: their variance minus item_var * inv_k),
    so nothing is counted twice. This is the Satterthwaite split of a two-level design: the item part is
    known precisely (many items), the seed part to df degrees of freedom."""
    est = boot.score(y)
    reps = boot.replicates(y)
    if not noise.df:
        return reps
    spread = float(reps.var())
    keep = max(spread - noise.item_var * inv_k, 0.0)
    scale = math.sqrt(keep / spread) if spread > 0 else 0.0
    return est + scale * (reps - est) + math.sqrt(noise.var * inv_k) * rng.standard_t(noise.df, size=len(reps))


# ---------------------------------------------------------------------------------------------
# one mix, two mixes


def _quantiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of replicates (items and seeds). Its upper quantile is written (1 + level) / 2,
    as before bootstrap.py: for levels below ~1e-6 it can differ from percentile_ci's 1 - (1 - level) / 2
    in the last bit."""
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_ci(x, boot: ItemBootstrap, noise: SeedNoise = SeedNoise(), level: float = 0.95,
            rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """(score, ci_low, ci_high) of a mix: the weighted item mean of its seed-averaged values, with the
    interval over items and seeds (one seed and no seed noise known: items only, as table.csv)."""
    x = _as_runs(x)
    y = x.mean(axis=0)
    reps = _replicates(y, boot, noise, 1 / x.shape[0], rng or np.random.default_rng(0))
    return (boot.score(y), *_quantiles(reps, level))


def p_value(reps: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from the replicates of a difference:
    2 min(P(d <= 0), P(d >= 0)), each counted as (1 + count) / (B + 1), at most 1."""
    b = len(reps)
    below = (1 + int((reps <= 0).sum())) / (b + 1)
    above = (1 + int((reps >= 0).sum())) / (b + 1)
    return min(1.0, 2 * min(below, above))


def verdict(diff: float, p: float, level: float = 0.95, higher_is_better: bool = True) -> str:
    """`better` / `worse` for the first of the two mixes when p < 1 - level, in the metric's direction."""
    if not p < round(1 - level, 12) or diff == 0:  # 1 - 0.95 is 0.05000000000000004 in floats
        return SAME
    return BETTER if (diff > 0) == higher_is_better else WORSE


def paired_difference(xa, xb, boot: ItemBootstrap, noise: SeedNoise = SeedNoise(), level: float = 0.95,
                      higher_is_better: bool = True, rng: np.random.Generator | None = None) -> dict:
    """score(a) - score(b) for two mixes on the same items ((seeds, items) matrices, any number of seeds
    each): the difference, its percentile CI over the paired item resamples and the seeds, the two-sided
    p-value and the verdict for a."""
    xa, xb = _as_runs(xa), _as_runs(xb)
    d = xa.mean(axis=0) - xb.mean(axis=0)  # per item, each mix's seeds averaged
    reps = _replicates(d, boot, noise, 1 / xa.shape[0] + 1 / xb.shape[0], rng or np.random.default_rng(0))
    diff = boot.score(d)
    lo, hi = _quantiles(reps, level)
    p = p_value(reps)
    return {"diff": diff, "ci_low": lo, "ci_high": hi, "p_value": p,
            "verdict": verdict(diff, p, level, higher_is_better)}


# ---------------------------------------------------------------------------------------------
# signal, noise, scales


def signal_to_noise(means: Mapping[str, float], noise_sd: float) -> dict:
    """Signal and Noise (Heineman et al., 2025): signal = the dispersion of the mix means (largest minus
    smallest), noise = the sd of one run's score from seed to seed (or over its last checkpoints);
    SNR = signal / noise. nan where undefined (fewer than 2 mixes, unknown noise)."""
    vals = [float(v) for v in means.values() if np.isfinite(v)]
    signal = max(vals) - min(vals) if len(vals) >= 2 else float("nan")
    noise = float(noise_sd) if noise_sd is not None and np.isfinite(noise_sd) else float("nan")
    snr = signal / noise if np.isfinite(signal) and np.isfinite(noise) and noise > 0 else float("nan")
    return {"signal": signal, "noise": noise, "snr": snr}


def order_agreement(small: Mapping[str, np.ndarray | float], large: Mapping[str, np.ndarray | float]):
    """DataDecide's decision accuracy: over the pairs of mixes present at both scales, the share ordered at
    the small scale as at the large one (a tie at the small scale counts 1/2; a pair tied at the large
    scale is left out). Values may be arrays (one per bootstrap replicate): returns an array then."""
    mixes = [m for m in large if m in small]
    scores, weights = [], []
    for a, b in itertools.combinations(mixes, 2):
        target = np.sign(np.asarray(large[a]) - np.asarray(large[b]))
        got = np.sign(np.asarray(small[a]) - np.asarray(small[b]))
        scores.append(np.where(got == target, 1.0, np.where(got == 0, 0.5, 0.0)))
        weights.append(target != 0)
    if not scores:
        return float("nan")
    s, w = np.array(scores, dtype=float), np.array(weights, dtype=float)
    total = w.sum(axis=0)
    out = np.where(total > 0, (s * w).sum(axis=0) / np.maximum(total, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def decision_accuracy(small: Mapping[str, np.ndarray], large: Mapping[str, np.ndarray], boot: ItemBootstrap,
                      noise_small: SeedNoise = SeedNoise(), noise_large: SeedNoise = SeedNoise(), level: float = 0.95,
                      rng: np.random.Generator | None = None) -> dict:
    """Decision accuracy of a smaller scale against the largest ({mix: (seeds, items)} at each, on the
    same items) with a bootstrap CI: each replicate resamples the items (the same at both scales) and
    draws every mix's seed noise at both scales, then compares the orders."""
    rng = rng or np.random.default_rng(0)
    mixes = [m for m in large if m in small]

    def point_and_reps(runs, noise):
        point, reps = {}, {}
        for m in mixes:
            x = _as_runs(runs[m])
            y = x.mean(axis=0)
            point[m] = boot.score(y)
            reps[m] = _replicates(y, boot, noise, 1 / x.shape[0], rng)
        return point, reps

    ps, rs = point_and_reps(small, noise_small)
    pl, rl = point_and_reps(large, noise_large)
    value = order_agreement(ps, pl)
    reps = order_agreement(rs, rl) if len(mixes) >= 2 else float("nan")
    if isinstance(reps, float) or not np.isfinite(value):
        return {"value": value, "ci_low": float("nan"), "ci_high": float("nan"), "pairs": 0}
    lo, hi = _quantiles(reps[np.isfinite(reps)], level)
    return {"value": value, "ci_low": lo, "ci_high": hi, "pairs": len(mixes) * (len(mixes) - 1) // 2}


# ---------------------------------------------------------------------------------------------
# the report


def task_label(benchmark: str, form: str) -> str:
    name = BENCHMARK_LABELS.get(benchmark, benchmark)
    return f"{name} ({form})" if benchmark == "mmlu" else name


def metric_key(benchmark: str, form: str, metric: str) -> str:
    return f"{benchmark}/{form}/{metric}"


def _rng(seed: int, *parts) -> np.random.Generator:
    """A generator per (what, scale, task, metric): results do not depend on the order of the loops."""
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _pairs(mixes: list[str], baseline: str | None) -> list[tuple[str, str]]:
    if baseline is not None and baseline in mixes:
        return [(m, baseline) for m in mixes if m != baseline]
    return list(itertools.combinations(mixes, 2))


def _finite(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _noise(x: Mapping[str, np.ndarray], ckpt: Mapping[str, list], seeds: SeedNoise) -> dict:
    """The noise of a score for Signal and Noise: the seed-to-seed sd (pooled within mixes); with one
    seed per mix, the sd over each run's last evaluated checkpoints (pooled); else unknown."""
    if seeds.df:
        return {"kind": "seeds", "sd": math.sqrt(seeds.var), "df": seeds.df}
    per_run = [np.asarray(c) for cs in ckpt.values() for c in cs if len(c) >= 2]
    df = sum(len(c) - 1 for c in per_run)
    if not df:
        return {"kind": None, "sd": None, "df": 0}
    return {"kind": "checkpoints", "sd": math.sqrt(sum((len(c) - 1) * float(c.var(ddof=1)) for c in per_run) / df),
            "df": df}


def _metric_result(scale: str, key: str, metric: str, x: dict[str, np.ndarray], ckpt: dict[str, list],
                   meta: dict[str, dict], boot: ItemBootstrap, level: float, seed: int,
                   baseline: str | None) -> tuple[dict, SeedNoise, list[dict]]:
    """One (scale, benchmark, form, metric): every mix's score, the pairs, the best mix, signal and noise;
    also the seed noise and the same-mix seed comparisons (the null check)."""
    hib = METRICS[metric]["higher_is_better"]
    w = boot.weights
    seeds = seed_noise(list(x.values()), w)
    mixes = {}
    for m, xm in x.items():
        v, lo, hi = mean_ci(xm, boot, seeds, level, _rng(seed, "mean", scale, key, m))
        per_seed = seed_scores(xm, w)
        mixes[m] = {"value": v, "ci_low": lo, "ci_high": hi,
                    "seed_sd": _finite(per_seed.std(ddof=1)) if len(per_seed) > 1 else None,
                    "per_seed": per_seed.tolist(), **meta[m]}
    pairs = {}
    for a, b in _pairs(list(x), baseline):
        pairs[(a, b)] = {"a": a, "b": b, **paired_difference(x[a], x[b], boot, seeds, level, hib,
                                                             _rng(seed, "pair", scale, key, a, b))}
    best = None
    ranked = sorted(x, key=lambda m: mixes[m]["value"], reverse=hib)
    if len(ranked) >= 2:  # the best mix against the runner-up (the same comparison as in `pairs`, when there)
        first, second = ranked[:2]
        top = pairs.get((first, second)) or pairs.get((second, first)) or paired_difference(
            x[first], x[second], boot, seeds, level, hib, _rng(seed, "pair", scale, key, first, second))
        best = {"mix": first, "runner_up": second, "p_value": top["p_value"],
                "diff": mixes[first]["value"] - mixes[second]["value"], "significant": verdict(1.0, top["p_value"], level) == BETTER}
    nulls = []
    for m, xm in x.items():
        # the same mix, two of its seeds: `no detectable difference` 95% of the time when the test is calibrated.
        # The seed noise is estimated without this mix: seeds that set the noise would check themselves (two
        # of three seeds are never more than ~1.4 of their own pooled sd apart: such a check cannot fail)
        held_out = seed_noise([v for k, v in x.items() if k != m], w)
        if xm.shape[0] < 2 or not held_out.df:
            continue
        for i, j in itertools.combinations(range(xm.shape[0]), 2):
            nulls.append(paired_difference(xm[i], xm[j], boot, held_out, level, hib,
                                           _rng(seed, "null", scale, key, m, i, j)))
    noise = _noise(x, ckpt, seeds)
    sn = signal_to_noise({m: v["value"] for m, v in mixes.items()}, noise["sd"] if noise["sd"] is not None else math.nan)
    pair_list = list(pairs.values())
    return ({"scale": scale, "key": key, "metric": metric, "higher_is_better": hib, "n_items": boot.n,
             "seed_noise": seeds.df > 0, "seed_shift_sd": _finite(seeds.shift_sd), "noise": noise,
             "signal": _finite(sn["signal"]), "snr": _finite(sn["snr"]), "mixes": mixes, "pairs": pair_list,
             "decisive": any(p["verdict"] != SAME for p in pair_list), "best": best}, seeds, nulls)


def decide(runs: list[dict], tasks: Mapping[str, dict], scales: list[str], level: float = 0.95,
           n_boot: int = 1000, seed: int = 0, average_last: int = 1, baseline: str | None = None) -> dict:
    """The decision report (evaluate/decisions.json) of trained runs on the same tasks.

    runs: one per (mix, scale, seed): {"mix", "scale", "seed", "steps": [the averaged checkpoints],
      "tokens": tokens at the last, "values": {task: {metric: (checkpoints, items) array}}};
    tasks: {task: {"benchmark", "form", "groups": subjects or None, "random_baseline": {metric: value}}};
    scales: the scales (model sizes) present, smallest to largest.
    A run's item values are first averaged over its checkpoints (evaluate.average_last)."""
    mixes = list(dict.fromkeys(r["mix"] for r in runs))
    results, nulls, kept = [], [], {}
    runs_at = {s: {m: [r for r in runs if r["scale"] == s and r["mix"] == m] for m in mixes} for s in scales}
    boots: dict[str, ItemBootstrap] = {}  # per task: the same items, so the same resamples, at every scale
    for scale in scales:
        here = {m: rs for m, rs in runs_at[scale].items() if rs}
        for task, info in tasks.items():
            metrics = [m for m in METRICS if here and all(m in r["values"].get(task, {})
                                                          for rs in here.values() for r in rs)]
            if not metrics:
                continue
            n = np.asarray(next(iter(here.values()))[0]["values"][task][metrics[0]]).shape[-1]
            boot = boots.get(task) or boots.setdefault(task, ItemBootstrap(n, info.get("groups"), n_boot, seed))
            meta = {m: {"seeds": [r["seed"] for r in rs], "steps": rs[0]["steps"], "tokens": rs[0].get("tokens")}
                    for m, rs in here.items()}
            for metric in metrics:
                key = metric_key(info["benchmark"], info["form"], metric)
                values = {m: [np.atleast_2d(np.asarray(r["values"][task][metric], float)) for r in rs]
                          for m, rs in here.items()}  # per run: (checkpoints, items)
                x = {m: np.stack([v.mean(axis=0) for v in vs]) for m, vs in values.items()}  # (seeds, items)
                ckpt = {m: [v @ boot.weights for v in vs] for m, vs in values.items()}
                res, seeds, null = _metric_result(scale, key, metric, x, ckpt, meta, boot, level, seed, baseline)
                res.update(benchmark=info["benchmark"], form=info["form"],
                           label=f"{task_label(info['benchmark'], info['form'])} {metric}",
                           random_baseline=_finite((info.get("random_baseline") or {}).get(metric)))
                results.append(res)
                nulls += null
                kept[(scale, key)] = {"x": x, "seeds": seeds, "boot": boot}

    accuracy = []
    for small in scales[:-1]:
        large = scales[-1]
        for (s, key), a in kept.items():
            if s == small and (large, key) in kept:
                b = kept[(large, key)]
                da = decision_accuracy(a["x"], b["x"], b["boot"], a["seeds"], b["seeds"], level,
                                       _rng(seed, "accuracy", small, key))
                accuracy.append({"key": key, "small": small, "large": large, "value": _finite(da["value"]),
                                 "ci_low": _finite(da["ci_low"]), "ci_high": _finite(da["ci_high"]),
                                 "pairs": da["pairs"]})
    by_snr = sorted(results, key=lambda r: -r["snr"] if r["snr"] is not None else math.inf)
    detected = sum(d["verdict"] != SAME for d in nulls)
    report = {
        "settings": {"level": level, "bootstrap": n_boot, "seed": seed, "average_last": average_last,
                     "baseline": baseline if baseline in mixes else None,
                     "pairs": "each mix against the baseline" if baseline in mixes else "every pair of mixes"},
        "mixes": mixes,
        "scales": scales,
        "seeds": {s: {m: [r["seed"] for r in rs] for m, rs in runs_at[s].items() if rs} for s in scales},
        "metrics": METRICS,
        "results": results,
        "snr_ranking": {s: [{"key": r["key"], "label": r["label"], "snr": r["snr"], "decisive": r["decisive"]}
                            for r in by_snr if r["scale"] == s] for s in scales},
        "decision_accuracy": accuracy,
        "null_check": {"comparisons": len(nulls), "detected": detected,
                       "rate": detected / len(nulls) if nulls else None},
    }
    report["findings"] = findings(report)
    return report
