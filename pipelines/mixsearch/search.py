"""`study mixsearch SPEC`: RegMix-style mixture search from a swarm of proxy runs.

  1. census: the stages up to `mix` once, one mix of every source -> tokens per source after dedup and
     decontamination (the natural prior; the caps as largest weights)
  2. N weight vectors (sample.py: seeded Dirichlet around the prior, rejecting any that breaks a cap)
  3. N proxies, ordinary runs sharing every upstream stage (proxies.py); each one's target
  4. LightGBM and a linear baseline (regress.py): k-fold held-out rank correlation of each; the chosen
     one's optimum over `simulations` simulated vectors (the mean of the top_k); a bootstrap interval
  5. optionally the proposed mix and the prior mix trained and measured: predicted vs actual
  6. results/<search>/: search.json (the state), proxies.csv, figures/, report.md (report.py)

Resumable: results/<search>/search.json is rewritten atomically after every proxy; a killed search run
again continues with the proxies still missing (a proxy killed mid-training resumes from its last
checkpoint), and a rerun of a finished search starts no stage. One search process at a time
(results/<search>/.lock). The regression is refitted only when a target or the spec changed.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipelines.config import config_hash
from pipelines.errors import StudyError
from pipelines.files import Lock, write_json_atomic
from pipelines.mixsearch import regress
from pipelines.mixsearch.proxies import Runs, available_tokens, mix_entry, target_of
from pipelines.mixsearch.report import write_outputs
from pipelines.mixsearch.sample import epochs_at, natural_prior, round_to_grid, sample, upper_bounds
from pipelines.mixsearch.spec import MixSearchSpec, load_spec
from pipelines.runs.manifest import check_run_name

STATE = "search.json"


def _prior(spec: MixSearchSpec, available: dict[str, int]) -> np.ndarray:
    if spec.prior == "natural":
        return natural_prior(available, spec.sources)
    if spec.prior == "uniform":
        return np.full(len(spec.sources), 1.0 / len(spec.sources))
    p = np.array([spec.prior[s] for s in spec.sources], dtype=float)
    return p / p.sum()


def _weights(spec: MixSearchSpec, w: np.ndarray) -> dict[str, float]:
    return {s: round(float(x), 6) for s, x in zip(spec.sources, w)}


def _execute(runs: Runs, role: str, mix: dict, n: int) -> str:
    return runs.execute(role, mix, n)


def run_search(path: str | Path, extra: list[str] | tuple[str, ...] = (), jobs: int | None = None) -> dict:
    t0 = time.perf_counter()
    name, spec = load_spec(path, extra)
    check_run_name(f"{name}-census")
    runs = Runs(name, spec, list(extra))
    out = runs.results_dir / name
    if (out / "config.yaml").exists():
        raise StudyError(f"{out} is the folder of a run named {name!r}: name the spec file differently")
    with Lock(out / ".lock", f"mixsearch `{name}`"):
        return _search(name, spec, runs, out, jobs or spec.jobs, t0)


def _search(name: str, spec: MixSearchSpec, runs: Runs, out: Path, jobs: int, t0: float) -> dict:
    n = spec.proxies
    old = _read_state(out)
    state = {"search": name, "spec": spec.model_dump(mode="json", by_alias=True), "stages": runs.stages,
             "proxy": {"model": spec.proxy.model, "tokens": runs.proxy_tokens, "steps": runs.steps,
                       "mix_tokens": spec.mix_tokens}}
    prior, upper, avail = _census(spec, runs, n, state)
    W = _proxy_weights(spec, prior, upper, avail, runs.names(n), state)
    _write_state(out, state, t0)
    _train_proxies(spec, runs, W, jobs, out, state, t0)
    X, y = W, np.array([p["target"] for p in state["proxies"]])
    state["regression"] = _fitted(spec, state, old, X, y, prior, upper)
    _write_state(out, state, t0)
    state["validation"] = _validate(spec, runs, n, state["regression"], X, y, prior, avail)
    _write_state(out, state, t0)

    # 6. table, figures, report
    state["outputs"] = write_outputs(out, state, spec)
    _write_state(out, state, t0)
    print(f"[mixsearch] report -> {out / 'report.md'}; paper tables and figures -> {out / 'paper'}")
    _closing(state, spec)
    return state


def _census(spec: MixSearchSpec, runs: Runs, n: int, state: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1. the census run: tokens per source after dedup and decontamination -> (prior, largest weights,
    available tokens), each (S,); state["sources"] and state["prior_within_caps"]."""
    S, run = spec.sources, runs.names(n)["census"]
    print(f"[mixsearch] {state['search']}: census of {', '.join(S)} in run {run}")
    census_mix = mix_entry(dict.fromkeys(S, 1.0), spec.mix_tokens, "census")
    runs.execute("census", census_mix, n, runs.census_stages)
    available = available_tokens(runs.config("census", census_mix, n), run, S)
    prior = _prior(spec, available)
    upper = upper_bounds(S, spec.caps, available, spec.target_tokens)
    avail = np.array([available[s] for s in S], dtype=float)
    state["sources"] = {s: {"available_tokens": available[s], "prior": round(float(p), 6), "cap_epochs": spec.caps.get(s),
                            "largest_weight": round(float(u), 6),
                            "prior_epochs_at_target": round(float(e), 4)}
                        for s, p, u, e in zip(S, prior, upper, epochs_at(prior, avail, spec.target_tokens))}
    prior_ok = bool((prior <= upper + 1e-12).all())
    state["prior_within_caps"] = prior_ok
    if not prior_ok:
        print(f"[mixsearch] the prior {_weights(spec, prior)} breaks a cap (largest weights {_weights(spec, upper)}); "
              f"it is still trained as the reference")
    return prior, upper, avail


def _proxy_weights(spec: MixSearchSpec, prior: np.ndarray, upper: np.ndarray, avail: np.ndarray,
                   names: dict[str, str], state: dict) -> np.ndarray:
    """2. the proxies' weights (N, S): the first N of a seeded stream (more proxies keep the ones there are);
    state["proxies"], their targets still None."""
    W = sample(prior, upper, spec.proxies, spec.seed, temperature=spec.temperature, strength=spec.strength,
               minimum=spec.minimum)
    state["proxies"] = [{"run": names[f"p{i:02d}"], "weights": _weights(spec, w),
                         "epochs_at_target": _weights(spec, epochs_at(w, avail, spec.target_tokens)), "target": None}
                        for i, w in enumerate(W)]
    return W


def _train_proxies(spec: MixSearchSpec, runs: Runs, W: np.ndarray, jobs: int, out: Path, state: dict,
                   t0: float) -> None:
    """3. the proxies: each run executes only what is not done (`jobs` at a time); each one's target
    into state["proxies"], the state rewritten after each."""
    n, proxies = len(W), state["proxies"]
    mixes = [mix_entry(_weights(spec, w), spec.mix_tokens) for w in W]
    roles = [f"p{i:02d}" for i in range(n)]

    def record(i: int) -> None:
        cfg = runs.config(roles[i], mixes[i], n)
        value, detail = target_of(cfg, proxies[i]["run"], spec)
        proxies[i].update(target=value, detail=detail)
        _write_state(out, state, t0)
        print(f"[mixsearch] {proxies[i]['run']} {proxies[i]['weights']}: {spec.target.label} {value:.4f}")

    if jobs > 1 and n > 1:
        with ProcessPoolExecutor(jobs) as pool:
            futures = [pool.submit(_execute, runs, roles[i], mixes[i], n) for i in range(n)]
            for i, f in enumerate(futures):
                f.result()
                record(i)
    else:
        for i in range(n):
            runs.execute(roles[i], mixes[i], n)
            record(i)


def _fitted(spec: MixSearchSpec, state: dict, old: dict, X: np.ndarray, y: np.ndarray, prior: np.ndarray,
            upper: np.ndarray) -> dict:
    """4. regression, search, bootstrap: the earlier fit when the proxies' targets and the spec are unchanged."""
    spec_fit = {k: v for k, v in state["spec"].items() if k != "jobs"}  # how many at a time changes no target
    key = config_hash({"spec": spec_fit, "X": X.round(6).tolist(), "y": y.round(10).tolist(),
                       "upper": upper.round(8).tolist(), "prior": prior.round(8).tolist()})
    fitted = old.get("regression") if old.get("regression", {}).get("key") == key else None
    reg = fitted or _regression(spec, X, y, prior, upper, key)
    print(f"[mixsearch] held-out rank correlation ({spec.regression.folds}-fold Spearman): "
          + ", ".join(f"{k} {_fmt(reg['models'][k]['spearman'])}" for k in regress.KINDS))
    prop = reg["proposal"]
    print(f"[mixsearch] proposed ({reg['propose_with']}): "
          + ", ".join(f"{s} {prop['weights'][s]:.3f} [{prop['low'][s]:.3f}, {prop['high'][s]:.3f}]" for s in spec.sources))
    return reg


def _validate(spec: MixSearchSpec, runs: Runs, n: int, reg: dict, X: np.ndarray, y: np.ndarray, prior: np.ndarray,
              avail: np.ndarray) -> dict:
    """5. the proposed and the prior mix, trained: predicted vs actual (state["validation"])."""
    S, names, out = spec.sources, runs.names(n), {}
    model = None
    for role, on, w in (("proposed", spec.validate_runs.proposed, np.array([reg["proposal"]["weights"][s] for s in S])),
                        ("prior", spec.validate_runs.prior, prior)):
        if not on:
            continue
        w = round_to_grid(w[None, :], spec.minimum)[0]
        mix = mix_entry(_weights(spec, w), spec.mix_tokens)
        if model is None:
            model = regress.fit(reg["propose_with"], X, y, spec.seed, spec.regression.lightgbm)
        predicted = float(model.predict(w[None, :])[0])
        print(f"[mixsearch] {role} mix {mix['weights']}: predicted {predicted:.4f} (run {names[role]})")
        runs.execute(role, mix, n)
        actual, detail = target_of(runs.config(role, mix, n), names[role], spec)
        out[role] = {"run": names[role], "weights": _weights(spec, w), "predicted": predicted,
                     "actual": actual, "detail": detail,
                     "epochs_at_target": _weights(spec, epochs_at(w, avail, spec.target_tokens)),
                     "scale": "proxy" if not spec.validate_runs.set else "validate.set"}
        print(f"[mixsearch] {role}: predicted {predicted:.4f}, actual {actual:.4f}")
    return out


def _closing(state: dict, spec: MixSearchSpec) -> None:
    """The numbers a search ends with: the proposal, the regressors' skill, predicted vs actual."""
    reg, S = state["regression"], spec.sources
    print(f"[mixsearch] closing numbers of {state['search']} ({spec.target.label}):")
    print("  proposed " + ", ".join(f"{s} {reg['proposal']['weights'][s]:.3f}" for s in S)
          + f" ({reg['propose_with']}); held-out Spearman "
          + ", ".join(f"{k} {_fmt(m['spearman'])}" for k, m in reg["models"].items()))
    for role, v in state.get("validation", {}).items():
        print(f"  {role}: predicted {v['predicted']:.4f}, actual {v['actual']:.4f} "
              f"(actual - predicted {v['actual'] - v['predicted']:+.4f})")
    print(f"  wall time of this invocation: {state['wall_s']:,.0f} s")


def _regression(spec: MixSearchSpec, X: np.ndarray, y: np.ndarray, prior: np.ndarray, upper: np.ndarray,
                key: str) -> dict:
    r = spec.regression
    sign = 1.0 if spec.target.lower_is_better else -1.0
    models = {}
    for kind in regress.KINDS:
        h = regress.heldout(kind, X, y, r.folds, spec.seed, r.lightgbm)
        models[kind] = {"spearman": h["spearman"], "pearson": h["pearson"], "mae": h["mae"],
                        "heldout_predictions": h["predictions"].round(6).tolist()}
    sims = sample(prior, upper, r.simulations, spec.seed, temperature=spec.temperature, strength=spec.strength,
                  minimum=spec.minimum, unique=False, stream=1)
    proposals = {}
    for kind in regress.KINDS:
        model = regress.fit(kind, X, y, spec.seed, r.lightgbm)
        w, predicted = regress.propose(model, sims, sign, r.top_k)
        proposals[kind] = {"weights": _weights(spec, w), "predicted": predicted,
                           "predicted_prior": float(model.predict(prior[None, :])[0]),
                           "fitted": model.predict(X).round(6).tolist()}
    boot = regress.bootstrap(r.propose_with, X, y, sims, sign, r.top_k, r.bootstrap, spec.seed, r.lightgbm)
    lo, hi = regress.interval(boot, r.ci)
    chosen = proposals[r.propose_with]
    return {"key": key, "propose_with": r.propose_with, "folds": min(r.folds, len(y)), "models": models,
            "proposals": proposals, "simulations": len(sims),
            "proposal": {"weights": chosen["weights"], "predicted": chosen["predicted"],
                         "low": _weights(spec, lo), "high": _weights(spec, hi), "ci": r.ci, "bootstrap": len(boot),
                         "bootstrap_sd": _weights(spec, boot.std(axis=0))}}


def _fmt(v: float | None) -> str:
    return "undefined (constant predictions)" if v is None else f"{v:+.3f}"


def _read_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(out: Path, state: dict, t0: float) -> None:
    state["wall_s"] = round(time.perf_counter() - t0, 1)  # this invocation's
    write_json_atomic(out / STATE, state)
