"""The item bootstrap (pipelines/evaluate/bootstrap.py): intervals that cover a known mean, resampling
within groups, paired draws that cancel what two models share, seeded determinism that does not depend on
how the draws are chunked, degenerate inputs, and pinned values that keep table.csv's intervals byte for
byte (computed with the three copies of the bootstrap that bootstrap.py replaced)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.evaluate.bootstrap import (
    ItemBootstrap,
    bootstrap_ci,
    percentile_ci,
    resampled_means,
    task_rng,
)

Y = np.linspace(-1, 2, 13) ** 2  # 13 distinct values
G = np.array(list("aaabbbbcccccc"))  # groups of 3, 4 and 6 items


def test_the_interval_covers_a_known_mean_about_as_often_as_its_level():
    rng = np.random.default_rng(0)
    p, hits, trials = 0.3, 0, 300
    for k in range(trials):
        x = (rng.random(150) < p).astype(float)
        lo, hi = bootstrap_ci(x, n_boot=400, seed=k)
        hits += lo <= p <= hi
    # binomial sd at 95% over 300 trials is ~1.3 points; the percentile bootstrap undercovers slightly
    assert 0.89 <= hits / trials <= 0.99


def test_a_wider_level_gives_a_wider_interval_around_the_mean():
    x = (np.random.default_rng(1).random(300) < 0.6).astype(float)
    lo90, hi90 = bootstrap_ci(x, level=0.90, seed=3)
    lo99, hi99 = bootstrap_ci(x, level=0.99, seed=3)
    assert lo99 < lo90 < x.mean() < hi90 < hi99


def test_groups_are_resampled_within_themselves():
    """A macro average of groups that are each constant never moves: every resample keeps each group's
    size. Pooled resampling of the same items would move it (the groups' shares would vary)."""
    x = np.concatenate([np.ones(5), np.zeros(50)])
    g = np.array(["a"] * 5 + ["b"] * 50)
    assert bootstrap_ci(x, g, n_boot=300, seed=2) == (0.5, 0.5)
    pooled = resampled_means([x], 300, np.random.default_rng(2))
    assert pooled.std() > 0.01 and abs(pooled.mean() - x.mean()) < 0.02  # the item mean, ~0.09, not 0.5
    boot = ItemBootstrap(len(x), g, n_boot=300, seed=2)
    assert np.allclose(boot.replicates(x), 0.5)
    counts = boot.matrix / boot.weights  # how often each item is drawn, per resample
    assert np.allclose(counts[:, :5].sum(axis=1), 5) and np.allclose(counts[:, 5:].sum(axis=1), 50)


def test_paired_draws_cancel_what_two_models_share():
    """Two models that differ on 3 of 400 items: on the same resamples (paired) their difference barely
    moves; resampled independently it moves as much as either score does."""
    rng = np.random.default_rng(4)
    a = (rng.random(400) < 0.5).astype(float)
    b = a.copy()
    b[:3] = 1 - b[:3]
    boot = ItemBootstrap(400, None, n_boot=500, seed=9)
    paired = boot.replicates(a) - boot.replicates(b)
    unpaired = boot.replicates(a) - ItemBootstrap(400, None, n_boot=500, seed=10).replicates(b)
    assert paired.std() < 0.2 * unpaired.std()
    untouched = boot.matrix[:, :3].sum(axis=1) == 0  # resamples that draw none of the 3 items (~e^-3 of them)
    assert untouched.sum() > 5 and np.allclose(paired[untouched], 0.0)
    # bootstrap_ci draws the same resamples: with one seed a model's interval is the paired bootstrap's
    for groups in (None, np.array(["x", "y"] * 200)):
        boot = ItemBootstrap(400, groups, n_boot=500, seed=9)
        assert percentile_ci(boot.replicates(a), 0.95) == pytest.approx(bootstrap_ci(a, groups, 500, 0.95, 9),
                                                                         abs=1e-12)


def test_draws_depend_on_the_seed_only_not_on_the_chunking():
    x = np.random.default_rng(5).random(97)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    assert bootstrap_ci(x, seed=7, chunk=1) == bootstrap_ci(x, seed=7, chunk=33) == bootstrap_ci(x, seed=7, chunk=5000)
    reps = [resampled_means([Y[G == k] for k in "abc"], 250, task_rng(1, "copa"), chunk=c) for c in (1, 100, 250)]
    assert reps[0].tobytes() == reps[1].tobytes() == reps[2].tobytes()
    assert ItemBootstrap(13, G, 250, 3, chunk=7).matrix.tobytes() == ItemBootstrap(13, G, 250, 3).matrix.tobytes()
    # CORE: one generator per task label, the same for every model and metric of the task
    first = resampled_means([Y], 50, task_rng(1, "copa"))
    assert first.tobytes() == resampled_means([Y], 50, task_rng(1, "copa")).tobytes()
    assert first.tobytes() != resampled_means([Y], 50, task_rng(1, "piqa")).tobytes()


def test_degenerate_inputs():
    lo, hi = bootstrap_ci(np.array([]))
    assert math.isnan(lo) and math.isnan(hi)
    assert bootstrap_ci(np.array([0.25])) == (0.25, 0.25)  # one item: every resample is that item
    assert bootstrap_ci(np.full(40, 0.7), n_boot=10) == pytest.approx((0.7, 0.7))  # fewer resamples than a chunk
    assert resampled_means([np.array([2.0])], 3, np.random.default_rng(0)).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="no items"):
        ItemBootstrap(0)
    boot = ItemBootstrap(1, n_boot=20)
    assert boot.matrix.tolist() == [[1.0]] * 20 and boot.score(np.array([3.0])) == 3.0


def test_pinned_values_of_the_three_former_copies():
    """Values from the code bootstrap.py replaced (evaluate.bootstrap_ci, core.resampled_accuracy, core's
    continuous-metric CIs): the same RNG, the same draws in the same order, the same float operations."""
    assert bootstrap_ci(Y, None, 1000, 0.95, 1337) == (0.5096153846153846, 1.8269230769230769)
    assert bootstrap_ci(Y, G, 1000, 0.95, 1337) == (0.5972222222222222, 1.269140625)
    assert percentile_ci(resampled_means([Y], 1000, task_rng(1337, "piqa")), 0.95) == (0.552644230769231,
                                                                                         1.8606971153846152)
    reps = resampled_means([Y[G == k] for k in "abc"], 300, task_rng(5, "jeopardy"))
    assert reps[:3].tolist() == [0.986111111111111, 0.9322916666666666, 0.6944444444444445]
    assert float(reps.sum()) == 280.88194444444446
