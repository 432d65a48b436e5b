"""Decisions from small runs (pipelines/evaluate/decisions.py): each statistic against a hand-computed
example, the calibration of the paired test on many synthetic null pairs (the same mix, different seeds),
a planted difference that must be found, and the whole report on synthetic runs. Every random draw is
seeded: the tests are deterministic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipelines.evaluate.bootstrap import ItemBootstrap, bootstrap_ci, item_weights
from pipelines.evaluate.decisions import (
    SeedNoise,
    decide,
    decision_accuracy,
    mean_ci,
    order_agreement,
    p_value,
    paired_difference,
    seed_noise,
    signal_to_noise,
    verdict,
)
from pipelines.evaluate.findings import BETTER, SAME, WORSE, findings

# ---------------------------------------------------------------------------------------------
# each statistic by hand


def test_item_weights_are_the_mean_or_the_macro_average():
    assert item_weights(4).tolist() == [0.25] * 4
    # MMLU: subject a has 2 items, b has 4: each subject weighs 1/2, split over its items
    w = item_weights(6, ["a", "b", "a", "b", "b", "b"])
    assert w.tolist() == [0.25, 0.125, 0.25, 0.125, 0.125, 0.125]
    x = np.array([1, 0, 1, 0, 0, 1.0])  # a: 2/2 right, b: 1/4 right -> macro (1 + 1/4) / 2
    assert w @ x == pytest.approx(0.625)


@pytest.mark.parametrize("groups", [None, np.repeat(["anatomy", "virology", "law"], [5, 12, 40])])
def test_item_bootstrap_draws_the_items_evaluate_draws(groups):
    """The same seed gives table.csv's interval: with one seed a mix's CI is exactly the table's."""
    rng = np.random.default_rng(3)
    x = (rng.random(57) < 0.4).astype(float)
    boot = ItemBootstrap(57, groups, n_boot=300, seed=11)
    lo, hi = bootstrap_ci(x, groups, n_boot=300, seed=11)
    value, lo2, hi2 = mean_ci(x, boot, SeedNoise(), 0.95)
    assert (lo2, hi2) == pytest.approx((lo, hi), abs=1e-12)
    assert value == pytest.approx(x.mean() if groups is None else np.mean([x[groups == g].mean() for g in
                                                                            np.unique(groups)]))
    # every row resamples each group to its own size
    counts = boot.matrix / boot.weights
    assert np.allclose(counts.sum(axis=1), 57)


def test_p_value_counts_both_tails_with_the_plus_one_correction():
    reps = np.array([-1.0, 1.0, 2.0, 3.0])  # P(d <= 0) = (1 + 1) / 5, P(d >= 0) = (1 + 3) / 5
    assert p_value(reps) == pytest.approx(2 * 2 / 5)
    assert p_value(np.full(999, 0.5)) == pytest.approx(2 / 1000)  # never 0: at least 1 / (B + 1) per tail
    assert p_value(np.zeros(10)) == 1.0  # capped
    assert verdict(0.1, 0.01) == BETTER and verdict(0.1, 0.01, higher_is_better=False) == WORSE
    assert verdict(-0.1, 0.01) == WORSE and verdict(0.1, 0.05) == SAME and verdict(0.1, 0.2) == SAME


def test_paired_difference_by_hand():
    boot = ItemBootstrap(4, None, n_boot=199, seed=0)
    a = np.array([[1, 1, 1, 1.0]])
    b = np.array([[0, 0, 0, 0.0]])
    d = paired_difference(a, b, boot)  # every item differs by 1: every resample too
    assert (d["diff"], d["ci_low"], d["ci_high"]) == (1.0, 1.0, 1.0)
    assert d["p_value"] == pytest.approx(2 / 200) and d["verdict"] == BETTER
    assert paired_difference(a, b, boot, higher_is_better=False)["verdict"] == WORSE  # e.g. bits per byte
    same = paired_difference(a, a, boot)
    assert same["diff"] == 0 and same["p_value"] == 1.0 and same["verdict"] == SAME
    # paired: an item every model finds hard (or easy) adds nothing; the difference is on items 3 and 4
    a = np.array([[1, 0, 1, 0.0]])
    b = np.array([[1, 0, 0, 1.0]])
    d = paired_difference(a, b, ItemBootstrap(4, None, 999, seed=1))
    assert d["diff"] == 0.0 and d["ci_low"] < 0 < d["ci_high"] and d["verdict"] == SAME


def test_seed_noise_by_hand():
    w = np.array([0.5, 0.5])
    a = np.array([[1, 0], [0, 0.0]])  # seed scores 0.5, 0: variance 0.125; item variances 0.5, 0
    b = np.array([[1, 1], [1, 1], [0, 1.0]])  # seed scores 1, 1, 0.5: variance 1/12; item variances 1/3, 0
    n = seed_noise([a, b, np.array([[0.3, 0.7]])], w)  # a mix with one seed adds nothing
    assert n.df == 1 + 2
    assert n.var == pytest.approx((1 * 0.125 + 2 / 12) / 3)
    assert n.item_var == pytest.approx((1 * 0.25 * 0.5 + 2 * 0.25 / 3) / 3)
    assert n.shift_sd == pytest.approx(0.0)  # all of it is per-item noise
    shifted = seed_noise([np.array([[0.2, 0.2], [0.6, 0.6]])], w)  # a seed better on every item at once
    assert (shifted.var, shifted.item_var, shifted.df) == pytest.approx((0.08, 0.04, 1))
    assert shifted.shift_sd == pytest.approx(math.sqrt(0.04))
    assert seed_noise([np.array([[1.0, 0.0]])], w) == SeedNoise()  # one seed: unknown


def test_mean_ci_with_seeds_is_a_t_interval_when_the_seeds_dominate():
    """Items agree perfectly inside a seed (no item noise): the interval is the seed mean's t-interval."""
    scores = np.array([0.30, 0.34, 0.38])
    x = np.repeat(scores[:, None], 50, axis=1)  # 3 seeds x 50 items, each seed a constant
    noise = seed_noise([x], item_weights(50))
    assert noise.df == 2 and noise.var == pytest.approx(0.0016)
    assert noise.item_var == pytest.approx(0.0016 / 50)  # each item moves with the seed too: sum_i w_i^2 v_i
    value, lo, hi = mean_ci(x, ItemBootstrap(50, None, 20000, seed=2), noise, 0.95, np.random.default_rng(5))
    half = 4.303 * math.sqrt(0.0016 / 3)  # t(2) 97.5% quantile x the standard error of the mean of 3 seeds
    assert value == pytest.approx(0.34)
    assert (lo, hi) == pytest.approx((0.34 - half, 0.34 + half), rel=0.06)


def test_signal_to_noise_by_hand():
    sn = signal_to_noise({"web": 0.30, "edu": 0.32, "syn": 0.36}, 0.02)
    assert sn["signal"] == pytest.approx(0.06) and sn["snr"] == pytest.approx(3.0)
    assert math.isnan(signal_to_noise({"web": 0.3}, 0.02)["snr"])  # one mix: no spread
    assert math.isnan(signal_to_noise({"a": 0.3, "b": 0.4}, float("nan"))["snr"])  # unknown noise


def test_order_agreement_by_hand():
    large = {"a": 3.0, "b": 1.0, "c": 2.0}  # a > c > b
    assert order_agreement({"a": 3, "b": 2, "c": 1}, large) == pytest.approx(2 / 3)  # (a,b), (a,c) right; (b,c) wrong
    assert order_agreement({"a": 3, "b": 1, "c": 2}, large) == 1.0
    assert order_agreement({"a": 1, "b": 1, "c": 2}, large) == pytest.approx((0.5 + 0 + 1) / 3)  # a tie counts 1/2
    assert order_agreement({"a": 1, "b": 2}, {"a": 5, "b": 5}) != order_agreement({"a": 1, "b": 2}, {"a": 5, "b": 6})
    assert math.isnan(order_agreement({"a": 1, "b": 2}, {"a": 5, "b": 5}))  # the only pair is tied at the target
    reps = order_agreement({"a": np.array([3, 1]), "b": np.array([1, 3])}, {"a": np.array([2, 2]), "b": np.array([1, 1])})
    assert reps.tolist() == [1.0, 0.0]  # per replicate


def test_decision_accuracy_with_its_interval():
    rng = np.random.default_rng(4)
    n = 300
    base = rng.normal(0, 1, n)
    large = {m: (base + shift + rng.normal(0, 0.05, n))[None] for m, shift in (("a", 0.0), ("b", 0.3), ("c", 0.6))}
    boot = ItemBootstrap(n, None, 500, seed=1)
    same = decision_accuracy(large, large, boot)  # a scale against itself, no seed noise: every replicate agrees
    assert (same["value"], same["ci_low"], same["ci_high"], same["pairs"]) == (1.0, 1.0, 1.0, 3)
    small = {"a": large["c"], "b": large["b"], "c": large["a"]}  # the order reversed
    flipped = decision_accuracy(small, large, boot)
    assert flipped["value"] == 0.0 and flipped["ci_high"] == 0.0
    noisy = {m: (base + rng.normal(0, 1.5, n))[None] for m in "abc"}  # no signal at the small scale
    d = decision_accuracy(noisy, large, boot)
    assert d["ci_low"] <= d["value"] <= d["ci_high"] and d["ci_high"] - d["ci_low"] >= 1 / 3


# ---------------------------------------------------------------------------------------------
# calibration: null pairs and a planted difference


def _runs(rng, kind: str, items, seeds: int, shift_sd: float, delta: float = 0.0) -> np.ndarray:
    """(seeds, items) of one mix: per seed a shift common to every item plus per-item noise.
    binary: accuracy, item i right with probability p_i + shift (+ delta); continuous: bits per byte."""
    out = []
    for _ in range(seeds):
        u = rng.normal(0, shift_sd)
        if kind == "binary":
            out.append((rng.random(len(items)) < np.clip(items + u + delta, 0, 1)).astype(float))
        else:
            out.append(items + u + delta + rng.normal(0, 0.05, len(items)))
    return np.stack(out)


def _detection_rate(kind: str, pairs: int, shift_sd: float, seed: int, delta: float = 0.0, use_seeds: bool = True):
    """Share of pairs called a difference: mix a (3 seeds) against mix b (3 seeds) of the same items; a
    third mix of 3 seeds shares in the pooled seed noise, as at one scale of a study."""
    rng = np.random.default_rng(seed)
    n = 200
    boot = ItemBootstrap(n, None, 1000, seed=7)
    hits = 0
    for k in range(pairs):
        items = rng.beta(2, 5, n) if kind == "binary" else rng.normal(3.0, 0.5, n)
        a = _runs(rng, kind, items, 3, shift_sd, delta)
        b = _runs(rng, kind, items, 3, shift_sd)
        other = _runs(rng, kind, items, 3, shift_sd)
        noise = seed_noise([a, b, other], boot.weights) if use_seeds else SeedNoise()
        d = paired_difference(a, b, boot, noise, 0.95, kind == "binary", np.random.default_rng([seed, k]))
        hits += d["verdict"] != SAME
    return hits / pairs


@pytest.mark.parametrize("kind,shift_sd", [("binary", 0.03), ("continuous", 0.05)])
def test_null_pairs_are_called_different_5_percent_of_the_time(kind, shift_sd):
    """The same mix trained with different seeds: a calibrated 95% test calls ~5% of such pairs different.
    Seed shifts here are as large as the item noise (binary) or dominate it (continuous), the cases an
    item-only bootstrap gets wrong."""
    pairs = 1000
    rate = _detection_rate(kind, pairs, shift_sd, seed=1)
    tolerance = 3 * math.sqrt(0.05 * 0.95 / pairs)  # binomial sd of the rate, three times
    assert abs(rate - 0.05) <= tolerance, rate


def test_null_calibration_has_teeth():
    """The same null pairs, tested as if the seed did not matter (items only): far too many 'differences'."""
    assert _detection_rate("continuous", 300, 0.05, seed=2, use_seeds=False) > 0.3


@pytest.mark.parametrize("kind,delta,higher", [("binary", 0.15, BETTER), ("continuous", -0.25, BETTER)])
def test_a_planted_difference_is_found(kind, delta, higher):
    """Mix a is better by a planted amount (accuracy +15 points; bits per byte -0.25, lower is better):
    the test finds it in almost every study, and says `better` for a."""
    assert _detection_rate(kind, 200, 0.03 if kind == "binary" else 0.05, seed=3, delta=delta) >= 0.9
    rng = np.random.default_rng(9)
    items = rng.beta(2, 5, 200) if kind == "binary" else rng.normal(3.0, 0.5, 200)
    a, b = (_runs(rng, kind, items, 3, 0.03, d) for d in (delta, 0.0))
    boot = ItemBootstrap(200, None, 1000, seed=7)
    d = paired_difference(a, b, boot, seed_noise([a, b], boot.weights), 0.95, kind == "binary")
    assert d["verdict"] == higher and d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert (d["ci_low"] > 0) if kind == "binary" else (d["ci_high"] < 0)


# ---------------------------------------------------------------------------------------------
# the report


def _study(rng, seeds=3, checkpoints=2):
    """Runs of 3 mixes x 2 scales x `seeds` seeds on 2 tasks: `syn` is worse in bits per byte at both
    scales (and the small scale orders the mixes as the large one); `web` and `edu` are the same mix."""
    n = 120
    items = {"arc_easy_cloze": rng.normal(3.0, 0.4, n), "mmlu_cloze": rng.normal(3.5, 0.4, n)}
    p = {t: rng.beta(2, 5, n) for t in items}
    runs = []
    for scale, gain in (("d2c64", 0.0), ("d4c128", 0.3)):
        for mix, bad in (("web", 0.0), ("edu", 0.0), ("syn", 0.4)):
            for s in range(seeds):
                u = rng.normal(0, 0.02)
                values = {}
                for t in items:
                    bpb = np.stack([items[t] - gain + bad + u + rng.normal(0, 0.05, n) for _ in range(checkpoints)])
                    acc = np.stack([(rng.random(n) < p[t]).astype(float) for _ in range(checkpoints)])
                    values[t] = {"bpb": bpb, "acc": acc}
                runs.append({"mix": mix, "scale": scale, "seed": [42, 1, 2][s], "steps": [10, 20][-checkpoints:],
                             "tokens": 20480, "values": values})
    groups = np.array(["anatomy", "law"] * (n // 2))
    tasks = {"arc_easy_cloze": {"benchmark": "arc_easy", "form": "cloze", "groups": None,
                                "random_baseline": {"acc": 0.25}},
             "mmlu_cloze": {"benchmark": "mmlu", "form": "cloze", "groups": groups, "random_baseline": {"acc": 0.25}}}
    return runs, tasks


def test_the_report_decides_what_there_is_to_decide():
    runs, tasks = _study(np.random.default_rng(0))
    report = decide(runs, tasks, ["d2c64", "d4c128"], 0.95, 500, seed=1, average_last=2)
    json.dumps(report)  # decisions.json: plain JSON
    by = {(r["scale"], r["key"]): r for r in report["results"]}
    assert len(report["results"]) == 2 * 2 * 2
    bpb = by[("d4c128", "arc_easy/cloze/bpb")]
    verdicts = {(p["a"], p["b"]): p["verdict"] for p in bpb["pairs"]}
    assert verdicts[("web", "syn")] == BETTER and verdicts[("edu", "syn")] == BETTER  # syn: more bits per byte
    assert verdicts[("web", "edu")] == SAME
    assert bpb["best"]["runner_up"] in ("web", "edu") and not bpb["best"]["significant"]  # web ~ edu: nothing bold
    assert bpb["mixes"]["syn"]["seeds"] == [42, 1, 2] and len(bpb["mixes"]["syn"]["per_seed"]) == 3
    assert bpb["seed_noise"] and bpb["noise"]["kind"] == "seeds" and bpb["noise"]["df"] == 6
    assert bpb["snr"] > by[("d4c128", "arc_easy/cloze/acc")]["snr"]  # the continuous metric has the signal
    # acc: no mix differs at all (same item probabilities): nothing decided, whatever the SNR
    acc = by[("d4c128", "arc_easy/cloze/acc")]
    assert not acc["decisive"] and not acc["best"]["significant"]
    # decision accuracy: bpb orders syn last at both scales (web vs edu is a coin flip)
    da = {a["key"]: a for a in report["decision_accuracy"]}
    assert set(da) == {"arc_easy/cloze/acc", "arc_easy/cloze/bpb", "mmlu/cloze/acc", "mmlu/cloze/bpb"}
    assert da["arc_easy/cloze/bpb"]["value"] >= 2 / 3 and da["arc_easy/cloze/bpb"]["pairs"] == 3
    assert report["snr_ranking"]["d4c128"][0]["key"].endswith("bpb")
    # the same-mix seed pairs are the null check: rarely called different
    assert report["null_check"]["comparisons"] == 3 * 3 * 2 * 2 * 2
    assert report["null_check"]["rate"] < 0.15
    text = " ".join(report["findings"])
    assert "web vs edu: no detectable difference" in text and "syn" in text and "Decision accuracy" in text


def test_the_report_with_one_seed_says_its_intervals_cover_items_only():
    runs, tasks = _study(np.random.default_rng(1), seeds=1, checkpoints=2)
    report = decide(runs, tasks, ["d2c64", "d4c128"], 0.95, 300, seed=1, average_last=2)
    r = report["results"][0]
    assert not r["seed_noise"] and r["noise"]["kind"] == "checkpoints"  # Signal and Noise's checkpoint noise
    assert report["null_check"]["comparisons"] == 0
    assert "cover the items only" in " ".join(report["findings"])
    base = decide(runs, tasks, ["d2c64", "d4c128"], 0.95, 300, seed=1, average_last=2, baseline="web")
    assert {(p["a"], p["b"]) for p in base["results"][0]["pairs"]} == {("edu", "web"), ("syn", "web")}


def test_findings_name_the_surest_decision_accuracy_first_not_the_highest_point():
    # an agreement of 1.00 whose CI is [0, 1] says nothing; one of 0.90 with CI [0.80, 1.00] does
    acc = [{"key": "arc_easy acc", "small": "d2", "large": "d4", "value": 1.0, "ci_low": 0.0, "ci_high": 1.0,
            "pairs": 3},
           {"key": "arc_easy bpb", "small": "d2", "large": "d4", "value": 0.9, "ci_low": 0.8, "ci_high": 1.0,
            "pairs": 3}]
    report = {"settings": {"level": 0.95, "average_last": 1}, "scales": ["d2", "d4"], "results": [],
              "seeds": {}, "snr_ranking": {}, "decision_accuracy": acc,
              "null_check": {"comparisons": 0, "detected": 0, "rate": 0.0}}
    line = next(x for x in findings(report) if x.startswith("Decision accuracy"))
    surest = line.split("surest (highest CI low end): ")[1]
    assert surest.startswith("arc_easy bpb 0.90 [0.80, 1.00]"), line
