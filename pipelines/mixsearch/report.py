"""What a search leaves in results/<search>/: proxies.csv, three figures (PDF + PNG), report.md and
paper/ (paper.py: the LaTeX tables and the figures, laid out as the checkout's paper/).

  predicted_vs_actual   each proxy's held-out prediction (k-fold, both regressors) against its actual
                        target; the proposed and prior mixes (predicted by the full fit) when trained
  target_vs_weights     the target against each source's weight, one panel per source
  proposed_weights      the proposed weights with their bootstrap interval, beside the prior and the
                        caps' largest weights

Every file is written under a temporary name and renamed, so none is ever seen half-written.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipelines.figures.plots import OKABE_ITO, STYLE
from pipelines.files import atomic_path, write_text_atomic
from pipelines.mixsearch.paper import write_paper
from pipelines.mixsearch.spec import MixSearchSpec

KIND_LABEL = {"lightgbm": "LightGBM", "linear": "linear"}


def save(fig: Figure, out: Path, name: str) -> list[str]:
    """out/<name>.pdf and .png, each written atomically (savefig picks the format from the suffix)."""
    paths = [out / f"{name}.{ext}" for ext in ("pdf", "png")]
    with matplotlib.rc_context(STYLE):
        for path in paths:
            with atomic_path(path, keep_suffix=True) as tmp:
                fig.savefig(tmp)
    return [str(p) for p in paths]


def proxies_table(state: dict) -> pd.DataFrame:
    S = list(state["sources"])
    reg = state.get("regression", {})
    rows = []
    for i, p in enumerate(state["proxies"]):
        row = {"run": p["run"], **{f"w_{s}": p["weights"][s] for s in S},
               **{f"epochs_at_target_{s}": p["epochs_at_target"][s] for s in S}, "target": p["target"]}
        for kind, m in reg.get("models", {}).items():
            row[f"heldout_{kind}"] = m["heldout_predictions"][i]
        rows.append(row)
    for role, v in state.get("validation", {}).items():
        rows.append({"run": v["run"], **{f"w_{s}": v["weights"][s] for s in S},
                     **{f"epochs_at_target_{s}": v["epochs_at_target"][s] for s in S}, "target": v["actual"],
                     f"predicted_{reg.get('propose_with')}": v["predicted"], "role": role})
    return pd.DataFrame(rows)


def predicted_vs_actual(state: dict, label: str) -> Figure:
    reg = state["regression"]
    y = np.array([p["target"] for p in state["proxies"]])
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    for k, (kind, m) in enumerate(reg["models"].items()):
        rho = "undefined" if m["spearman"] is None else f"{m['spearman']:+.2f}"
        ax.scatter(m["heldout_predictions"], y, s=22, color=OKABE_ITO[k], alpha=0.85,
                   label=f"proxies, {KIND_LABEL[kind]} held out (Spearman {rho})")
    pts = list(y) + [v for m in reg["models"].values() for v in m["heldout_predictions"]]
    for marker, (role, v) in zip(("*", "D"), state.get("validation", {}).items()):
        ax.scatter([v["predicted"]], [v["actual"]], marker=marker, s=110, color=OKABE_ITO[5 if role == "proposed" else 7],
                   zorder=3, label=f"{role} mix ({KIND_LABEL[reg['propose_with']]}, all proxies)")
        pts += [v["predicted"], v["actual"]]
    lo, hi = min(pts), max(pts)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#8C8C8C", lw=1, ls="--", label="predicted = actual")
    ax.set_xlabel(f"predicted {label}")
    ax.set_ylabel(f"actual {label}")
    ax.legend(fontsize=6.5, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def target_vs_weights(state: dict, label: str) -> Figure:
    S = list(state["sources"])
    y = [p["target"] for p in state["proxies"]]
    fig = Figure(figsize=(3.0 * len(S), 2.9))
    axes = np.atleast_1d(fig.subplots(1, len(S), sharey=True))
    for k, (ax, s) in enumerate(zip(axes, S)):
        ax.scatter([p["weights"][s] for p in state["proxies"]], y, s=20, color=OKABE_ITO[k % len(OKABE_ITO)],
                   label="proxies")
        for marker, (role, v) in zip(("*", "D"), state.get("validation", {}).items()):
            ax.scatter([v["weights"][s]], [v["actual"]], marker=marker, s=90, color="black", label=f"{role} (trained)")
        ax.axvline(state["sources"][s]["largest_weight"], color="#8C8C8C", ls=":", lw=1, label="cap")
        ax.set_xlabel(f"weight of {s}")
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[0].legend(fontsize=6.5)
    return fig


def proposed_weights(state: dict) -> Figure:
    S = list(state["sources"])
    prop = state["regression"]["proposal"]
    x = np.arange(len(S))
    w = np.array([prop["weights"][s] for s in S])
    err = np.array([[w[i] - prop["low"][s], prop["high"][s] - w[i]] for i, s in enumerate(S)]).T.clip(min=0)
    fig = Figure(figsize=(1.4 * len(S) + 2.0, 3.0))
    ax = fig.subplots()
    ax.bar(x - 0.2, [state["sources"][s]["prior"] for s in S], width=0.4, color=OKABE_ITO[4], label="prior")
    ax.bar(x + 0.2, w, width=0.4, yerr=err, capsize=4, color=OKABE_ITO[0],
           label=f"proposed ({int(prop['ci'] * 100)}% bootstrap interval)")
    ax.scatter(x, [state["sources"][s]["largest_weight"] for s in S], marker="_", s=400, color="black",
               label="largest weight under the cap")
    ax.set_xticks(x, S)
    ax.set_ylabel("weight (share of tokens)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def write_outputs(out: Path, state: dict, spec: MixSearchSpec) -> dict:
    label = spec.target.label
    table = out / "proxies.csv"
    with atomic_path(table, keep_suffix=True) as tmp:
        proxies_table(state).to_csv(tmp, index=False)
    figs = {}
    for name, fig in (("predicted_vs_actual", predicted_vs_actual(state, label)),
                      ("target_vs_weights", target_vs_weights(state, label)),
                      ("proposed_weights", proposed_weights(state))):
        figs[name] = save(fig, out / "figures", name)
    paper = write_paper(out, state, spec, figs)
    report = out / "report.md"
    write_text_atomic(report, markdown(state, spec))
    return {"table": str(table), "figures": figs, "report": str(report), "paper": paper}


def _r(v: float | None) -> str:
    return "undefined" if v is None else f"{v:+.3f}"


def markdown(state: dict, spec: MixSearchSpec) -> str:
    S = list(state["sources"])
    reg, prop = state["regression"], state["regression"]["proposal"]
    lines = [f"# Mixture search `{state['search']}`", "", *([spec.description, ""] if spec.description else []),
             f"Base preset `{spec.preset}`; {len(state['proxies'])} proxies of `{state['proxy']['model']}`, "
             f"{state['proxy']['tokens']:,} training tokens each ({state['proxy']['steps']} steps) on mixes of "
             f"{state['proxy']['mix_tokens']:,} tokens; target: **{spec.target.label}** "
             f"({'lower' if spec.target.lower_is_better else 'higher'} is better). Caps are epochs at the target "
             f"budget of {spec.target_tokens:,} tokens.", "",
             "| source | tokens after dedup | prior | cap (epochs) | largest weight | proposed | interval |",
             "|---|---|---|---|---|---|---|"]
    for s in S:
        src = state["sources"][s]
        cap = "-" if src["cap_epochs"] is None else f"{src['cap_epochs']:g}"
        lines.append(f"| {s} | {src['available_tokens']:,} | {src['prior']:.3f} | {cap} | {src['largest_weight']:.3f} | "
                     f"**{prop['weights'][s]:.3f}** | [{prop['low'][s]:.3f}, {prop['high'][s]:.3f}] |")
    lines += ["", f"Proposed by {KIND_LABEL[reg['propose_with']]}: the mean of the {spec.regression.top_k} best of "
              f"{reg['simulations']:,} simulated weight vectors (all within the caps); interval: "
              f"{int(prop['ci'] * 100)}% percentile over {prop['bootstrap']} regressors refitted on resampled proxies.",
              "", f"Held-out rank correlation ({reg['folds']}-fold, out-of-fold predictions of every proxy):", ""]
    for kind, m in reg["models"].items():
        lines.append(f"- {KIND_LABEL[kind]}: Spearman {_r(m['spearman'])}, Pearson {_r(m['pearson'])}, "
                     f"mean absolute error {m['mae']:.4f}")
    val = state.get("validation", {})
    if val:
        lines += ["", "## Validation: predicted vs actual", "",
                  f"Each mix trained once as its own run; predicted by {KIND_LABEL[reg['propose_with']]} fitted on "
                  f"all proxies ({spec.target.label}).", "",
                  "| trained mix | weights | predicted | actual | actual - predicted |", "|---|---|---|---|---|"]
        for role, v in val.items():
            w = ", ".join(f"{s} {v['weights'][s]:.3f}" for s in S)
            lines.append(f"| {role} (`{v['run']}`) | {w} | {v['predicted']:.4f} | {v['actual']:.4f} | "
                         f"{v['actual'] - v['predicted']:+.4f} |")
        if {"proposed", "prior"} <= set(val):
            gain = val["prior"]["actual"] - val["proposed"]["actual"]
            better = (gain > 0) == spec.target.lower_is_better and gain != 0
            ys = [p["target"] for p in state["proxies"]]
            lines += ["", f"Actual, proposed vs prior: {val['proposed']['actual']:.4f} vs {val['prior']['actual']:.4f} "
                      f"(the proposed mix's target is {'better' if better else 'not better'} by {abs(gain):.4f}; "
                      f"one run each, so no seed noise is estimated and this is not a tested difference; the "
                      f"proxies span {min(ys):.4f} to {max(ys):.4f})."]
        if spec.validate_runs.set:
            lines += ["", "These two ran with `validate.set`, not at the proxy scale: compare their actual values "
                      "with each other; the predictions are at the proxy scale."]
    lines += ["", "Files: `proxies.csv`, `figures/predicted_vs_actual`, `figures/target_vs_weights`, "
              "`figures/proposed_weights` (.pdf, .png), `search.json` (everything above); for the paper: "
              "`paper/tables/mixsearch_proposal.tex`, `paper/tables/mixsearch_proxies.tex`, "
              "`paper/tables/mixsearch_text.tex`, `paper/figures/mixsearch_*.pdf` (copy into paper/).",
              f"Wall time of the invocation that wrote this report: {state.get('wall_s', 0):,.0f} s.", ""]
    return "\n".join(lines)
