"""RegMix-style mixture search: sampling with caps, the regression on a planted optimum (no training), a
real tiny search that is killed and resumed, and the spec's errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import StudyError
from pipelines.llmc.tokenizer import EOT, gpt2
from pipelines.mixsearch import proxies as proxies_mod
from pipelines.mixsearch import regress
from pipelines.mixsearch.proxies import Runs, val_tokens_and_bytes
from pipelines.mixsearch.sample import sample, upper_bounds
from pipelines.mixsearch.search import run_search
from pipelines.mixsearch.spec import load_spec
from pipelines.runs.manifest import Run
from pipelines.train.data import DataLoader

SOURCES = ["a", "b", "c"]


def test_sampling_respects_caps_and_seed():
    # c has 2,000 tokens and may be seen 4 times in 100,000: weight <= 0.08; a at most once: <= 0.5
    upper = upper_bounds(SOURCES, {"a": 1, "c": 4}, {"a": 50_000, "b": 30_000, "c": 2_000}, 100_000)
    assert upper.tolist() == pytest.approx([0.5, 1.0, 0.08])
    prior = np.array([0.7, 0.29, 0.01])
    W = sample(prior, upper, 64, seed=3, minimum=0.001)
    assert W.shape == (64, 3)
    assert (W <= upper + 1e-12).all() and np.allclose(W.sum(axis=1), 1.0)
    assert len({tuple(np.round(w, 6)) for w in W}) == 64  # distinct proxies
    assert (W[:, 2] > 0).any() and (W[:, 0] > 0.3).any()  # the caps bind, they do not empty a source
    assert np.array_equal(W, sample(prior, upper, 64, seed=3, minimum=0.001))  # seeded
    assert not np.array_equal(W, sample(prior, upper, 64, seed=4, minimum=0.001))
    assert np.array_equal(W[:16], sample(prior, upper, 16, seed=3, minimum=0.001))  # more proxies keep the first ones
    uncapped = sample(prior, np.ones(3), 256, seed=3, minimum=0.001)
    assert (uncapped[:, 0] > 0.5).any() and (uncapped[:, 2] > 0.08).any()  # without caps those vectors occur
    with pytest.raises(StudyError, match="caps leave no weight vector.*add up to 0.583 < 1"):
        upper_bounds(SOURCES, {"a": 1, "b": 0.01, "c": 4}, {"a": 50_000, "b": 30_000, "c": 2_000}, 100_000)


def _bowl(X: np.ndarray, best: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ((X - best) ** 2).sum(axis=1) + rng.normal(0, 0.002, len(X))


def test_the_regression_recovers_a_planted_optimum():
    rng = np.random.default_rng(0)
    best = np.array([0.2, 0.5, 0.3])
    prior, free = np.full(3, 1 / 3), np.ones(3)
    X = sample(prior, free, 96, seed=1, strength=(1.0, 10.0), minimum=0.01)
    y = _bowl(X, best, rng)
    params = {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 4, "min_child_samples": 2, "min_data_in_bin": 1}
    held = regress.heldout("lightgbm", X, y, 5, seed=0, params=params)
    assert held["spearman"] > 0.8
    sims = sample(prior, free, 20_000, seed=1, strength=(1.0, 10.0), minimum=0.01, unique=False, stream=1)
    model = regress.fit("lightgbm", X, y, 0, params)
    w, predicted = regress.propose(model, sims, 1.0, 50)
    assert np.abs(w - best).sum() < 0.15 and predicted < np.median(y)
    # a target to maximise (negated) gives the same proposal
    w_max, _ = regress.propose(regress.fit("lightgbm", X, -y, 0, params), sims, -1.0, 50)
    assert np.allclose(w, w_max)
    # a linear model cannot hold an optimum inside the simplex: it proposes an edge, far from the bowl's bottom
    w_lin, _ = regress.propose(regress.fit("linear", X, y, 0), sims, 1.0, 50)
    assert np.abs(w_lin - best).sum() > np.abs(w - best).sum()
    # the bootstrap interval holds the planted optimum
    lo, hi = regress.interval(regress.bootstrap("lightgbm", X, y, sims, 1.0, 50, 20, 0, params), 0.9)
    assert (lo - 0.05 <= best).all() and (best <= hi + 0.05).all()
    # with b capped at 0.4 (the bowl's bottom is at 0.5), the proposal stays within the cap
    capped = np.array([1.0, 0.4, 1.0])
    sims_c = sample(prior, capped, 20_000, seed=1, strength=(1.0, 10.0), minimum=0.01, unique=False, stream=1)
    w_c, _ = regress.propose(model, sims_c, 1.0, 50)
    assert w_c[1] <= 0.4 + 1e-9 and w_c[1] > 0.3


def _spec(tmp_path, web_sample, **over) -> str:
    spec = {
        "preset": "ci",
        "set": [f"results_dir={tmp_path / 'results'}", f"ingest.path={web_sample}", "mix.dedup.near=false",
                "mix.decontaminate.enabled=false", "train.hellaswag=false", "train.sample_every=0"],
        "sources": ["web", "web-edu"],
        "proxies": 3,
        "minimum": 0.01,
        "proxy": {"model": "d2c64", "tokens": 512, "set": ["train.val_every=2", "train.val_max_steps=1",
                                                          "train.checkpoint_every=2"]},
        "target_tokens": 20_000,
        "caps": {"web-edu": 100},
        "regression": {"folds": 3, "simulations": 500, "top_k": 10, "bootstrap": 3},
        "validate": {"proposed": False, "prior": True},
        **over,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return str(path)


def _executions(results, runs: list[str]) -> dict[str, str | None]:
    out = {}
    for r in runs:
        p = results / r / "train" / "manifest.json"
        out[r] = json.loads(p.read_text())["execution"] if p.exists() else None
    return out


def _check_bits_per_byte(path: str, results, state: dict):
    """The first proxy's bits per byte: the trainer's loss over the bytes of exactly the tokens it measured.
    Returns its config."""
    spec = load_spec(path)[1]
    runs = Runs("tiny", spec, [])
    cfg = runs.config("p00", proxies_mod.mix_entry(state["proxies"][0]["weights"], spec.mix_tokens), 3)
    tokens, nbytes = val_tokens_and_bytes(results / "tiny-p00", cfg)
    _, y = DataLoader(str(results / "tiny-p00" / "mix" / "val" / "heldout_val_*.bin"), cfg.train.batch_size,
                      cfg.train.seq_len, shuffle=False).next_batch()
    text = gpt2().decode_bytes([t for t in y.ravel().tolist() if t != EOT])
    assert (tokens, nbytes) == (y.size, len(text))
    d = state["proxies"][0]["detail"]
    assert d["bpb"] == pytest.approx(d["loss"] * tokens / (np.log(2) * nbytes))
    return cfg


def test_a_killed_search_resumes_with_the_missing_proxies_and_a_rerun_executes_nothing(tmp_path, web_sample,
                                                                                        monkeypatch):
    path = _spec(tmp_path, web_sample)
    results = tmp_path / "results"
    real = proxies_mod.run_stages
    started: list[str] = []

    def killed_in_the_third_proxy(cfg, run, stages, force=False):
        started.append(run)
        if run == "tiny-p02":  # as a kill in the middle of the third proxy: its mix done, its training not
            real(cfg, run, stages[: stages.index("mix") + 1], force)
            raise KeyboardInterrupt
        return real(cfg, run, stages, force)

    monkeypatch.setattr(proxies_mod, "run_stages", killed_in_the_third_proxy)
    with pytest.raises(KeyboardInterrupt):
        run_search(path)
    assert started == ["tiny-census", "tiny-p00", "tiny-p01", "tiny-p02"]
    state = json.loads((results / "tiny" / "search.json").read_text())
    assert [p["target"] is not None for p in state["proxies"]] == [True, True, False]
    before = _executions(results, ["tiny-p00", "tiny-p01"])
    mix_before = json.loads((results / "tiny-p02" / "mix" / "manifest.json").read_text())["execution"]
    assert _executions(results, ["tiny-p02"]) == {"tiny-p02": None}  # killed before training

    started.clear()
    monkeypatch.setattr(proxies_mod, "run_stages", lambda *a, **k: (started.append(a[1]), real(*a, **k))[1])
    state = run_search(path)
    assert started == ["tiny-p02", "tiny-prior"]  # only what was missing
    assert _executions(results, ["tiny-p00", "tiny-p01"]) == before  # nothing redone ...
    assert json.loads((results / "tiny-p02" / "mix" / "manifest.json").read_text())["execution"] == mix_before
    # ... no gaps, no duplicates: every proxy once, with its target, in the state and in proxies.csv
    assert [p["run"] for p in state["proxies"]] == ["tiny-p00", "tiny-p01", "tiny-p02"]
    table = pd.read_csv(results / "tiny" / "proxies.csv")
    assert table["run"].tolist() == ["tiny-p00", "tiny-p01", "tiny-p02", "tiny-prior"]
    assert table["target"].notna().all()
    # dedup, decontamination and tokens ran once, in the census: a proxy with every source reuses them
    for p in state["proxies"]:
        prepared = json.loads((results / p["run"] / "mix" / "manifest.json").read_text())["prepared"]
        if all(w > 0 for w in p["weights"].values()):
            assert prepared["from_run"] == "tiny-census", p
    # ingest and the classifier ran once, in the census; every proxy links them
    for r in ["tiny-p00", "tiny-p01", "tiny-p02", "tiny-prior"]:
        for stage in ("ingest", "classify", "filter"):
            assert (results / r / stage).is_symlink(), (r, stage)
        assert not (results / r / "mix").is_symlink() and not (results / r / "train").is_symlink()
    assert all(p["target"] > 0 for p in state["proxies"])
    ws = [p["weights"] for p in state["proxies"]]
    assert all(abs(sum(w.values()) - 1) < 1e-6 for w in ws) and len({json.dumps(w) for w in ws}) == 3
    reg = state["regression"]
    assert set(reg["models"]) == {"lightgbm", "linear"} and reg["proposal"]["bootstrap"] == 3
    assert state["validation"]["prior"]["actual"] > 0
    for f in ("proxies.csv", "report.md", "figures/predicted_vs_actual.png", "figures/target_vs_weights.pdf",
              "figures/proposed_weights.png"):
        assert (results / "tiny" / f).exists(), f
    report = (results / "tiny" / "report.md").read_text()
    assert "Held-out rank correlation" in report
    prior = state["validation"]["prior"]
    assert f"| {prior['predicted']:.4f} | {prior['actual']:.4f} |" in report  # predicted vs actual
    tex = (results / "tiny" / "paper" / "tables" / "mixsearch_proxies.tex").read_text()
    assert tex.count(r"\\") == 1 + 3 + 1 and r"\begin{tabular}" in tex  # header, 3 proxies, the prior
    assert f"{prior['actual']:.4f}" in tex
    for f in ("tables/mixsearch_proposal.tex", "tables/mixsearch_text.tex", "figures/mixsearch_proposed_weights.pdf"):
        assert (results / "tiny" / "paper" / f).stat().st_size > 0, f

    cfg = _check_bits_per_byte(path, results, state)

    # a finished search run again starts no stage and proposes the same weights
    started.clear()
    again = run_search(path)
    assert started == []
    assert again["regression"]["proposal"] == state["regression"]["proposal"]
    assert [p["target"] for p in again["proxies"]] == [p["target"] for p in state["proxies"]]
    assert Run(cfg, "tiny-p00").state("train").status == "done"


def test_jobs_trains_proxies_in_parallel_processes(tmp_path, web_sample):
    path = _spec(tmp_path, web_sample, proxies=3, validate={"proposed": False, "prior": False},
                 regression={"folds": 3, "simulations": 200, "top_k": 5, "bootstrap": 2})
    state = run_search(path, jobs=2)
    results = tmp_path / "results"
    targets = [p["target"] for p in state["proxies"]]
    assert len(targets) == 3 and all(t is not None and t > 0 for t in targets)
    assert len(set(targets)) > 1  # three mixes, three models
    runs = [p["run"] for p in state["proxies"]]
    before = _executions(results, runs)
    assert all(before.values())
    # a rerun with jobs finds everything done: same targets, no stage run again
    again = run_search(path, jobs=2)
    assert [p["target"] for p in again["proxies"]] == targets
    assert _executions(results, runs) == before


def test_spec_errors_are_clear(tmp_path, web_sample):
    def err(**over) -> str:
        with pytest.raises(StudyError) as e:
            load_spec(_spec(tmp_path, web_sample, **over))
        return str(e.value)

    assert "unknown key `proxys`" in err(proxys=4) and "keys of a mixsearch spec" in err(proxys=4)
    assert "caps names ['synthetic'], which are not among sources" in err(caps={"synthetic": 4})
    assert "sources ['synthetic'] are not in preset 'ci''s mix.sources (web, web-edu)" in err(
        sources=["web", "synthetic"], caps={})
    assert "regression.top_k 500 > regression.simulations 100" in err(
        regression={"simulations": 100, "top_k": 500})
    assert "`proxies` = 1" in err(proxies=1)
    assert "regression.folds 2 with 3 proxies leaves a fold fitted on fewer than 2" in err(
        regression={"folds": 2})  # 3 proxies in 2 folds: one fold is fitted on 1 proxy
    assert "prior: a positive share for every source" in err(prior={"web": 1.0})
    assert "proxy.set: --set train.modle=d2c64: unknown key `train.modle`" in err(proxy={"set": ["train.modle=d2c64"]})
    with pytest.raises(StudyError, match="unknown mixsearch spec 'nope'.*mixsearch-smoke"):
        load_spec("nope")
    with pytest.raises(StudyError, match="target_tokens"):
        p = tmp_path / "no-target.yaml"
        p.write_text("sources: [web, web-edu]\npreset: ci\n")
        load_spec(p)


def test_the_cpu_preset_resolves_to_runs_that_share_their_upstream_stages():
    name, spec = load_spec("mixsearch-smoke")
    runs = Runs(name, spec, [])
    assert spec.sources == ["web", "web-edu", "synthetic"] and spec.proxies == 16 and spec.prior == "natural"
    assert runs.stages[-2:] == ["mix", "train"] and "generate" in runs.stages and "filter" in runs.stages
    mix = proxies_mod.mix_entry({"web": 0.5, "web-edu": 0.3, "synthetic": 0.2}, spec.mix_tokens)
    cfg = runs.config("p03", mix, spec.proxies)
    assert cfg.train.model == "d2c64" and cfg.train.total_tokens == spec.proxy.tokens
    assert [m.name for m in cfg.mix.mixes] == ["mix"] and cfg.train.schedules == []
    assert "mixsearch-smoke-census" in cfg.share_with and "mixsearch-smoke-p03" not in cfg.share_with
    assert len(cfg.share_with) == spec.proxies + 2  # the census, the other proxies, the proposed and prior mixes
