"""A search in paper form: results/<search>/paper/, laid out as the checkout's paper/ folder.

  tables/mixsearch_proposal.tex (.csv)   per source: tokens after dedup, prior, largest weight under
                                         the cap, proposed weight and its bootstrap interval
  tables/mixsearch_proxies.tex (.csv)    every proxy's weights, target and held-out predictions, then
                                         the trained proposed and prior mixes: predicted vs actual
  tables/mixsearch_text.tex              one paragraph with the numbers (rank correlations, validation)
  figures/mixsearch_<figure>.pdf         the search's three figures, copied

Copy the folder's contents into paper/ (or \\input them from here) to put a search in the paper.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from pipelines.figures.tables import Table, latex_escape, to_latex
from pipelines.mixsearch.spec import MixSearchSpec

KIND_LABEL = {"lightgbm": "LightGBM", "linear": "linear"}
FIGURES = ("predicted_vs_actual", "target_vs_weights", "proposed_weights")


def _rho(v: float | None) -> str:
    return "undefined" if v is None else f"{v:+.2f}"


def proposal_table(state: dict, spec: MixSearchSpec) -> Table:
    S = list(state["sources"])
    prop = state["regression"]["proposal"]
    data = pd.DataFrame([{"source": s, "tokens": state["sources"][s]["available_tokens"],
                          "prior": state["sources"][s]["prior"], "largest_weight": state["sources"][s]["largest_weight"],
                          "proposed": prop["weights"][s], "low": prop["low"][s], "high": prop["high"][s]} for s in S])
    ci = int(prop["ci"] * 100)
    display = pd.DataFrame({
        "source": data["source"], "tokens after dedup": [f"{t:,}" for t in data["tokens"]],
        "prior": [f"{v:.3f}" for v in data["prior"]], "largest weight": [f"{v:.3f}" for v in data["largest_weight"]],
        "proposed": [f"{v:.3f}" for v in data["proposed"]],
        f"{ci}% interval": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(data["low"], data["high"])]})
    reg = state["regression"]
    caption = (f"Mixture search {state['search']}: proposed weights ({KIND_LABEL[reg['propose_with']]}, mean of the "
               f"{spec.regression.top_k} best of {reg['simulations']:,} simulated vectors) from "
               f"{len(state['proxies'])} proxies; interval over {prop['bootstrap']} bootstrap refits; largest weight: "
               f"the cap in epochs at {spec.target_tokens:,} tokens.")
    return Table("mixsearch_proposal", caption, "tab:mixsearch-proposal", display, data,
                 to_latex(display, caption, "tab:mixsearch-proposal"))


def proxies_table(state: dict, spec: MixSearchSpec) -> Table:
    S = list(state["sources"])
    reg = state["regression"]
    kinds = list(reg["models"])
    rows = []
    for i, p in enumerate(state["proxies"]):
        rows.append({"run": p["run"], **{s: p["weights"][s] for s in S}, "actual": p["target"],
                     **{f"heldout_{k}": reg["models"][k]["heldout_predictions"][i] for k in kinds}})
    for role, v in state.get("validation", {}).items():
        rows.append({"run": v["run"], **{s: v["weights"][s] for s in S}, "actual": v["actual"],
                     "predicted": v["predicted"]})
    data = pd.DataFrame(rows)
    n = len(state["proxies"])

    def num(col: str, fmt: str) -> list[str]:
        vals = data[col] if col in data else [None] * len(data)
        return ["" if x is None or pd.isna(x) else format(x, fmt) for x in vals]

    display = pd.DataFrame({"run": [r.removeprefix(f"{state['search']}-") for r in data["run"]],
                            **{s: num(s, ".3f") for s in S}, spec.target.label: num("actual", ".4f")})
    for k in kinds:  # a proxy's held-out prediction; a trained mix's prediction by the full fit
        col = [f"{x:.4f}" for x in data[f"heldout_{k}"][:n]] + [""] * (len(data) - n)
        if k == reg["propose_with"] and "predicted" in data:
            col = col[:n] + num("predicted", ".4f")[n:]
        display[f"{KIND_LABEL[k]} predicted"] = col
    caption = (f"Proxies of {state['search']}: weights, {spec.target.label} and the {reg['folds']}-fold held-out "
               f"prediction of each regressor; below the rule, the proposed and prior mixes trained, predicted by the "
               f"{KIND_LABEL[reg['propose_with']]} fit on all proxies.")
    latex = to_latex(display, caption, "tab:mixsearch-proxies", rules_after=[n - 1])
    return Table("mixsearch_proxies", caption, "tab:mixsearch-proxies", display, data, latex)


def paragraph(state: dict, spec: MixSearchSpec) -> str:
    reg, prop = state["regression"], state["regression"]["proposal"]
    S = list(state["sources"])
    parts = [f"{len(state['proxies'])} proxies of {state['proxy']['model']} trained on "
             f"{state['proxy']['tokens']:,} tokens each; held-out rank correlation "
             + ", ".join(f"{KIND_LABEL[k]} {_rho(m['spearman'])}" for k, m in reg["models"].items())
             + "; proposed " + ", ".join(f"{s} {prop['weights'][s]:.3f}" for s in S) + "."]
    for role, v in state.get("validation", {}).items():
        parts.append(f"The {role} mix, trained: predicted {v['predicted']:.4f}, actual {v['actual']:.4f} "
                     f"({spec.target.label}).")
    return latex_escape(" ".join(parts)) + "\n"


def write_paper(out: Path, state: dict, spec: MixSearchSpec, figures: dict[str, list[str]]) -> dict:
    paper = out / "paper"
    tables_dir, figs_dir = paper / "tables", paper / "figures"
    written = [str(p) for t in (proposal_table(state, spec), proxies_table(state, spec)) for p in t.write(tables_dir)]
    text = tables_dir / "mixsearch_text.tex"
    text.write_text(paragraph(state, spec))
    figs_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        for src in figures.get(name, []):
            if src.endswith(".pdf"):
                written.append(str(shutil.copyfile(src, figs_dir / f"mixsearch_{name}.pdf")))
    return {"dir": str(paper), "files": [*written, str(text)]}
