"""Paper tables: LaTeX (booktabs, a `table` float with caption and label, for \\input) plus CSV.

Each builder returns a Table: `display` (the formatted cells, what the LaTeX shows; notebooks show
it), `data` (the numbers, written as CSV) and `latex`. Cell text is escaped for LaTeX; ±, ≥, × and
dashes become their LaTeX forms. The paper needs \\usepackage{booktabs}.

  main_results        mix x benchmark: mean ± CI half-width (%); bold only where a mix is significantly
                      better than the runner-up (decisions.json; without it, where their CIs do not overlap)
  metric_scores       metric x mix: every metric (continuous ones too) ± CI half-width, from decisions.json
  decisions           metric x pair of mixes: paired difference [95% CI], detected ones in bold
  signal_noise        per metric: signal, noise, SNR per model size, pairs decided, decision accuracy
  classifier_metrics  per classifier kind: MSE, accuracy, macro-F1, P/R/F1 at the threshold (no bold: no CIs)
  mix_composition     per mix: tokens, documents, and each source's tokens and epochs
  data_sources        per source: documents read, duplicates and contaminated documents removed, kept

results_paragraph (LaTeX text, not a table) turns decisions.json's findings into the paper's Results
paragraph; setup_paragraphs states the Setup from the run's facts (which labels, which models, how many
tokens; pipelines/runs/report.py), report_latex is the run report for the appendix.

A little over 400 lines as one thing: every LaTeX table shares the escaping and the bolding rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipelines.figures.plots import (
    BENCHMARKS,
    _fmt,
    _is_ref,
    collapse_seeds,
    core_columns,
    decision_results,
    final_rows,
    pd_isna,
    summary_rows,
    with_core,
)
from pipelines.runs.report import Report
from pipelines.runs.results import StageResult, as_result

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
            "±": r"\ensuremath{\pm}", "≥": r"\ensuremath{\geq}", "≤": r"\ensuremath{\leq}",
            "×": r"\ensuremath{\times}", "–": "--", "—": "---", "…": r"\ldots{}",
            "−": r"\ensuremath{-}", "↓": r"\ensuremath{\downarrow}", "·": r"\ensuremath{\cdot}"}
_SPECIAL_RE = re.compile("|".join(re.escape(k) for k in _SPECIAL))


def latex_escape(text) -> str:
    """Plain text -> LaTeX text: every special character of LaTeX escaped (one pass)."""
    return _SPECIAL_RE.sub(lambda m: _SPECIAL[m.group(0)], str(text))


@dataclass
class Table:
    name: str  # file stem: <name>.tex, <name>.csv
    caption: str
    label: str  # \label, e.g. tab:main-results
    display: pd.DataFrame  # formatted cells
    data: pd.DataFrame  # numbers
    latex: str

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tex, csv = out / f"{self.name}.tex", out / f"{self.name}.csv"
        tex.write_text(self.latex)
        self.data.to_csv(csv, index=False)
        return [tex, csv]


def to_latex(display: pd.DataFrame, caption: str, label: str, bold: pd.DataFrame | None = None,
             align: str | None = None, rules_after: Sequence[int] = ()) -> str:
    """A booktabs table float. bold: same shape as display, True where the cell is bold;
    rules_after: row positions followed by a \\midrule."""
    align = align or "l" + "r" * (display.shape[1] - 1)
    lines = [r"\begin{table}[tbp]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in display.columns) + r" \\", r"\midrule"]
    for i in range(len(display)):
        cells = []
        for j in range(display.shape[1]):
            cell = latex_escape(display.iat[i, j])
            if bold is not None and bool(bold.iat[i, j]):
                cell = rf"\textbf{{{cell}}}"
            cells.append(cell)
        lines.append(" & ".join(cells) + r" \\")
        if i in rules_after and i != len(display) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def human(n) -> str:
    """1234 -> 1.2k, 3.4e6 -> 3.4M, 2e12 -> 2.0T; None/NaN -> —."""
    if n is None or pd.isna(n):
        return "—"
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


# ---------------------------------------------------------------------------------------------
# the tables


def _significant_best(decisions: Mapping | None, scale, benchmark: str, form: str, metric: str) -> str | None:
    """The mix that decisions.json finds significantly better than the runner-up for this metric at this
    scale, else None (nothing to bold)."""
    for r in (decisions or {}).get("results", []):
        if (str(r["scale"]) == str(scale) or len(decisions.get("scales", [])) == 1) and (
                r["benchmark"], r["form"], r["metric"]) == (benchmark, form, metric):
            best = r.get("best") or {}
            return best.get("mix") if best.get("significant") else None
    return None


def _ci_separated_best(rows: pd.DataFrame) -> dict[tuple, str]:
    """{(scale, benchmark): label of the top non-reference row} where its CI lies wholly above the
    runner-up's (the rule without a paired test: no decisions.json)."""
    out = {}
    mine = rows[~rows["_ref"]]
    scales = mine["scale"] if "scale" in mine else pd.Series(None, index=mine.index)
    for (sc, b), g in mine.groupby([scales.map(lambda v: "" if pd_isna(v) else str(v)), "benchmark"]):
        if len(g) < 2:
            continue
        top, second = g.sort_values("value", ascending=False).iloc[:2].to_dict("records")
        if top["ci_low"] > second["ci_high"]:
            out[(sc, b)] = top["_label"]
    return out


def main_results(table: pd.DataFrame, metric: str = "acc_norm", form: str = "cloze", level: float = 0.95,
                 benchmarks: Sequence[str] = tuple(BENCHMARKS), decisions: Mapping | None = None) -> Table:
    """Mix (and model size) x benchmark at the last checkpoint: score (%) ± half the CI width (evaluate's
    summary.csv: seeds and checkpoints averaged, CI over items and seeds; or table.csv). A mix is bold only
    where decisions.json finds it significantly better than the runner-up (paired test, `level`), never
    otherwise (without decisions.json: only where its CI lies wholly above the runner-up's); reference models
    are listed below a rule, never bold; Avg. = mean over benchmarks (not tested, never bold)."""
    rows = collapse_seeds(final_rows(with_core(summary_rows(table, metric, form), table)))  # + DCLM CORE
    rows = rows.assign(_ref=_is_ref(rows))
    separated = {} if decisions else _ci_separated_best(rows)
    present = [b for b in benchmarks if (rows["benchmark"] == b).any()] + core_columns(rows)
    labels = list(dict.fromkeys([*rows.loc[~rows["_ref"], "_label"], *rows.loc[rows["_ref"], "_label"]]))
    data, disp, bold_rows = [], [], []
    for label in labels:
        rm = rows[rows["_label"] == label].set_index("benchmark")
        ref = bool(rm["_ref"].iloc[0])
        mix = rm["mix"].iloc[0]
        scale = rm["scale"].iloc[0] if "scale" in rm else None
        tokens = rm["tokens"].dropna().iloc[0] if rm["tokens"].notna().any() else None
        summary = "seeds" in rm and rm["seeds"].notna().any()  # summary.csv: CIs over items and seeds
        seeds = int(rm["seeds"].max()) if summary else int(rm["_seeds"].max())
        d = {"mix": mix, "scale": None if pd_isna(scale) else scale, "reference": ref, "seeds": seeds,
             "step": rm["step"].dropna().iloc[0] if rm["step"].notna().any() else None, "tokens": tokens}
        c = {"Mix": label + (" (ref.)" if ref else ""), "Tokens": human(tokens)}
        mean, bold = {}, {"Mix": False, "Tokens": False, "Avg.": False}
        for b in present:
            col = BENCHMARKS.get(b, b)
            bold[col] = False
            if b in rm.index:
                m_used = rm.at[b, "metric"]
                v, lo, hi = (100 * float(rm.at[b, k]) for k in ("value", "ci_low", "ci_high"))
                d.update({b: v, f"{b}_ci_low": lo, f"{b}_ci_high": hi, f"{b}_n": int(rm.at[b, "n"])})
                c[col] = f"{v:.1f} ± {(hi - lo) / 2:.1f}"
                if b not in core_columns(rows):  # Avg. is over the benchmarks, CORE is a column of its own
                    mean[b] = v
                bold[col] = not ref and (_significant_best(decisions, scale, b, form, m_used) == mix if decisions
                                         else separated.get(("" if pd_isna(scale) else str(scale), b)) == label)
                d[f"{b}_significantly_best"] = bold[col]
            else:
                d.update({b: None, f"{b}_ci_low": None, f"{b}_ci_high": None, f"{b}_n": None})
                c[col] = "—"
        avg = sum(mean.values()) / len(mean) if len(mean) == len(present) - len(core_columns(rows)) and mean else None
        d["average"] = avg
        c["Avg."] = f"{avg:.1f}" if avg is not None else "—"
        data.append(d)
        disp.append(c)
        bold_rows.append(bold)
    display = pd.DataFrame(disp, columns=["Mix", "Tokens", *(BENCHMARKS.get(b, b) for b in present), "Avg."])
    bold = pd.DataFrame(bold_rows, columns=display.columns).fillna(False).astype(bool)
    n_mixes = sum(not d["reference"] for d in data)
    seeds = sorted({d["seeds"] for d in data if d["seeds"] and not d["reference"]})
    several = bool(seeds) and seeds != [1]
    from_summary = "seeds" in rows and rows["seeds"].notna().any()
    caption = (f"Accuracy (%, {metric}, {form} form; MMLU: macro average over subjects) of each mix's last "
               f"checkpoint on the evaluated items"
               + (f", mean over {'/'.join(map(str, seeds))} training seeds" if several else "")
               + f": mean ± half the width of the {level:.0%} bootstrap CI"
               + ((" (over items and seeds)" if from_summary else " (each seed's CI over items, averaged)")
                  if several else " (over items)") + ". "
               + (("Bold: a mix significantly better than the runner-up (the paired test of the decision table); "
                   "elsewhere no mix is." if decisions else
                   "Bold: a mix whose CI lies wholly above the runner-up's (no paired test was run); elsewhere the "
                   "CIs overlap and no mix is bold.") if bold.to_numpy().any() else
                  "No mix is bold: none is significantly better than the runner-up on any benchmark."
                  if decisions else "No mix is bold: on every benchmark the top mix's CI overlaps the runner-up's.")
               + (" Reference models below the rule are not ranked." if n_mixes < len(data) else "")
               + " Random chance is 25%."
               + (f" {core_columns(rows)[0]}: DCLM's mean centered accuracy over its tasks (0 = chance), not in Avg."
                  if core_columns(rows) else ""))
    latex = to_latex(display, caption, "tab:main-results", bold, rules_after=[n_mixes - 1] if n_mixes else [])
    return Table("main_results", caption, "tab:main-results", display, pd.DataFrame(data), latex)


def _pair_name(p: Mapping) -> str:
    return f"{p['a']} − {p['b']}"


def decisions_table(decisions: Mapping, scale: str | None = None) -> Table:
    """The decision table at one model size (default: the largest): one row per metric (highest
    signal-to-noise first), one column per pair of mixes holding the paired difference (first minus
    second; accuracy-like metrics in percentage points) and its 95% CI; bold where the difference is
    detected. The CSV has every scale, pair and metric: difference, CI, p-value, verdict."""
    results = decision_results(decisions, scale)
    sc = results[0]["scale"] if results else scale
    metrics = decisions.get("metrics") or {}
    pairs = list(dict.fromkeys(_pair_name(p) for r in results for p in r["pairs"]))
    disp, bold = [], []
    for r in results:
        percent = bool(metrics.get(r["metric"], {}).get("percent"))
        c = {"Metric": r["label"] + (" (pt)" if percent else "") + ("" if r["higher_is_better"] else " ↓"),
             "SNR": f"{r['snr']:.1f}" if r.get("snr") is not None else "—"}
        b = {"Metric": False, "SNR": False}
        for p in r["pairs"]:
            name = _pair_name(p)
            c[name] = f"{_fmt(p['diff'], percent)} [{_fmt(p['ci_low'], percent)}, {_fmt(p['ci_high'], percent)}]"
            b[name] = p["verdict"] != "no detectable difference"
        disp.append(c)
        bold.append(b)
    display = pd.DataFrame(disp, columns=["Metric", "SNR", *pairs]).fillna("—")
    boldf = pd.DataFrame(bold, columns=display.columns).fillna(False).astype(bool)
    data = pd.DataFrame([{"scale": r["scale"], "benchmark": r["benchmark"], "form": r["form"], "metric": r["metric"],
                          "a": p["a"], "b": p["b"], "diff": p["diff"], "ci_low": p["ci_low"], "ci_high": p["ci_high"],
                          "p_value": p["p_value"], "verdict": p["verdict"], "higher_is_better": r["higher_is_better"],
                          "snr": r.get("snr"), "seed_noise": r.get("seed_noise")}
                         for r in decisions.get("results", []) for p in r["pairs"]])
    seeds = sorted({len(v) for v in (decisions.get("seeds") or {}).get(sc, {}).values()})
    level = (decisions.get("settings") or {}).get("level", 0.95)
    avg = (decisions.get("settings") or {}).get("average_last", 1)
    caption = (f"Paired differences between mixes (model {sc}, {'/'.join(map(str, seeds))} seed(s) per mix"
               + (f", last {avg} checkpoints averaged" if avg > 1 else "")
               + f"): first mix minus second, with the {level:.0%} CI over the same resampled items and the seeds "
               f"(pt: percentage points; ↓: lower is better). Bold: a detected difference (p < {1 - level:.2f}); "
               f"every other cell is no detectable difference. Rows by signal-to-noise (SNR).")
    return Table("decisions", caption, "tab:decisions", display, data,
                 to_latex(display, caption, "tab:decisions", boldf, align="l" + "r" * (display.shape[1] - 1)))


def metric_scores(decisions: Mapping, scale: str | None = None) -> Table:
    """Every mix's score on every metric at one model size (default: the largest), from decisions.json:
    mean over seeds ± half its 95% CI (over items and seeds), accuracy-like metrics in %, rows by
    signal-to-noise; bold where the mix is significantly better than the runner-up."""
    results = decision_results(decisions, scale)
    sc = results[0]["scale"] if results else scale
    metrics = decisions.get("metrics") or {}
    mixes = list(decisions.get("mixes") or [])
    disp, bold, data = [], [], []
    for r in results:
        percent = bool(metrics.get(r["metric"], {}).get("percent"))
        c = {"Metric": r["label"] + (" (%)" if percent else "") + ("" if r["higher_is_better"] else " ↓")}
        b = {"Metric": False}
        best = r.get("best") or {}
        for m in mixes:
            v = r["mixes"].get(m)
            if v is None:
                c[m], b[m] = "—", False
                continue
            c[m] = f"{_fmt(v['value'], percent, False)} ± {_fmt((v['ci_high'] - v['ci_low']) / 2, percent, False)}"
            b[m] = bool(best.get("significant")) and best.get("mix") == m
            data.append({"scale": r["scale"], "benchmark": r["benchmark"], "form": r["form"], "metric": r["metric"],
                         "mix": m, "value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"],
                         "seed_sd": v.get("seed_sd"), "seeds": len(v.get("seeds") or []),
                         "significantly_best": b[m]})
        disp.append(c)
        bold.append(b)
    display = pd.DataFrame(disp, columns=["Metric", *mixes])
    boldf = pd.DataFrame(bold, columns=display.columns).fillna(False).astype(bool)
    seeds = sorted({len(v) for v in (decisions.get("seeds") or {}).get(sc, {}).values()})
    caption = (f"Every metric of every mix (model {sc}, mean over {'/'.join(map(str, seeds))} seed(s)) ± half the "
               f"95% CI over items and seeds; accuracy-like metrics in %, ↓: lower is better (bits per byte). Bold: "
               f"significantly better than the runner-up; no bold in a row: no mix is. Rows by signal-to-noise.")
    return Table("metric_scores", caption, "tab:metric-scores", display, pd.DataFrame(data),
                 to_latex(display, caption, "tab:metric-scores", boldf))


def signal_noise_table(decisions: Mapping) -> Table:
    """Per metric (by the largest model size's signal-to-noise): signal (spread of the mix means), noise
    (seed-to-seed sd) and SNR at each size, pairs of mixes decided at the largest, and the decision accuracy
    of each smaller size against the largest with its 95% CI."""
    scales = list(decisions.get("scales") or [])
    results = decision_results(decisions)
    by = {(r["scale"], r["key"]): r for r in decisions.get("results", [])}
    acc = {(a["small"], a["key"]): a for a in decisions.get("decision_accuracy") or []}
    metrics = decisions.get("metrics") or {}
    disp, data = [], []
    for r in results:
        percent = bool(metrics.get(r["metric"], {}).get("percent"))
        c = {"Metric": r["label"] + (" (pt)" if percent else "")}
        d = {"key": r["key"], "label": r["label"]}
        for sc in scales:
            x = by.get((sc, r["key"]), {})
            noise = (x.get("noise") or {}).get("sd")
            c[f"Signal {sc}"] = _fmt(x.get("signal"), percent, False)
            c[f"Noise {sc}"] = _fmt(noise, percent, False)
            c[f"SNR {sc}"] = f"{x['snr']:.1f}" if x.get("snr") is not None else "—"
            d.update({f"signal_{sc}": x.get("signal"), f"noise_{sc}": noise, f"snr_{sc}": x.get("snr"),
                      f"noise_kind_{sc}": (x.get("noise") or {}).get("kind"),
                      f"pairs_decided_{sc}": sum(p["verdict"] != "no detectable difference" for p in x.get("pairs", []))})
        decided = d["pairs_decided_" + str(r["scale"])]
        c["Decided"] = f"{decided}/{len(r['pairs'])}"
        for sm in scales[:-1]:
            a = acc.get((sm, r["key"]))
            c[f"Dec. acc. {sm}"] = (f"{a['value']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}]"
                                    if a and a.get("value") is not None and a.get("ci_low") is not None else "—")
            d.update({f"decision_accuracy_{sm}": (a or {}).get("value"), f"decision_accuracy_{sm}_ci_low":
                      (a or {}).get("ci_low"), f"decision_accuracy_{sm}_ci_high": (a or {}).get("ci_high")})
        disp.append(c)
        data.append(d)
    display = pd.DataFrame(disp)
    large = scales[-1] if scales else "?"
    caption = ("Signal and noise per metric: signal = largest minus smallest mix mean, noise = seed-to-seed sd of "
               "one run's score (with one seed: over its last checkpoints), SNR = signal / noise; Decided: pairs of "
               f"mixes with a detected difference at {large}"
               + ("; Dec. acc.: share of mix pairs a smaller model orders as the largest does, with its 95% CI "
                  "(DataDecide's decision accuracy; 0.5 is a coin flip)." if len(scales) > 1 else "."))
    return Table("signal_noise", caption, "tab:signal-noise", display, pd.DataFrame(data),
                 to_latex(display, caption, "tab:signal-noise"))


def results_paragraph(decisions: Mapping) -> str:
    """The paper's Results paragraph: decisions.json's findings (plain sentences) as LaTeX text."""
    lines = [latex_escape(f) for f in decisions.get("findings") or []]
    if not lines:
        return ""
    return ("% generated by `study figures` from evaluate/decisions.json: do not edit\n"
            + "\n\n".join(lines) + "\n")


def classifier_metrics(metrics: Mapping, labels: str = "") -> Table:
    """One row per classifier kind (classify/metrics.json, validation split). Nothing is bold: the metrics
    carry no CIs, so no kind is shown to be better."""
    kinds = metrics.get("kinds") or {}
    if not kinds:
        raise ValueError("classifier metrics have no `kinds` (classify/metrics.json)")
    t = metrics.get("threshold", next(iter(kinds.values()))["binary"]["threshold"])
    data, disp = [], []
    for kind, m in kinds.items():
        b = m["binary"]
        data.append({"kind": kind, "n": m["n"], "mse": m["mse"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                     "precision": b["precision"], "recall": b["recall"], "f1": b["f1"],
                     "f1_keep_everything": b.get("f1_keep_everything"), "threshold": b["threshold"]})
        disp.append({"Classifier": kind, "Pages": f"{m['n']:,}", "MSE": f"{m['mse']:.3f}",
                     "Accuracy": f"{m['accuracy']:.3f}", "Macro-F1": f"{m['macro_f1']:.3f}",
                     f"P (≥{t})": f"{b['precision']:.3f}", f"R (≥{t})": f"{b['recall']:.3f}",
                     f"F1 (≥{t})": f"{b['f1']:.3f}"})
    display = pd.DataFrame(disp)
    caption = (f"Educational classifiers on held-out labelled pages{' (' + labels + ')' if labels else ''}: "
               f"regression MSE, accuracy and macro-F1 of the rounded score (0–5), and precision, recall and F1 of "
               f"keeping a page (int_score ≥ {t}). No bold: these numbers carry no confidence intervals.")
    return Table("classifier_metrics", caption, "tab:classifier", display, pd.DataFrame(data),
                 to_latex(display, caption, "tab:classifier"))


def mix_composition(mix: StageResult | Mapping) -> Table:
    """Per mix (the mix result, or its manifest): training tokens and documents, and per source its tokens
    and epochs (how often the source's surviving documents were repeated); the CSV also has each source's
    share."""
    mixes = as_result("mix", mix).mixes
    sources = list(dict.fromkeys(s for m in mixes for s in m.per_source))
    data, disp = [], []
    for m in mixes:
        d = {"mix": m.name, "budget_tokens": m.budget_tokens, "tokens": m.tokens, "documents": m.documents}
        c = {"Mix": m.name, "Tokens": human(m.tokens), "Documents": f"{m.documents:,}"}
        for s in sources:
            v = m.per_source.get(s)
            if v is None:
                d.update({f"{s}_tokens": 0, f"{s}_share": 0.0, f"{s}_epochs": 0.0})
                c[s] = "—"
                continue
            share = v.tokens / m.tokens if m.tokens else 0.0
            d.update({f"{s}_tokens": v.tokens, f"{s}_share": round(share, 4), f"{s}_epochs": v.epochs})
            # a streaming mix knows epochs only for a source it read to the end
            c[s] = f"{human(v.tokens)} ({v.epochs:.2f} ep.)" if v.epochs is not None else human(v.tokens)
        data.append(d)
        disp.append(c)
    display = pd.DataFrame(disp, columns=["Mix", "Tokens", "Documents", *sources])
    caption = ("Mixes: GPT-2 training tokens and documents, and per source its tokens and epochs (ep.: how "
               "many times the source's deduplicated, decontaminated documents are used).")
    return Table("mix_composition", caption, "tab:mixes", display, pd.DataFrame(data),
                 to_latex(display, caption, "tab:mixes"))


def data_sources(removals: pd.DataFrame) -> Table:
    """Per source (mix.removals_table): documents read, exact and near duplicates, contaminated
    documents (all benchmarks), documents and tokens kept."""
    contam = [c for c in removals.columns if c.startswith("contaminated_")]
    disp = []
    for _, r in removals.iterrows():
        disp.append({"Source": r["source"], "Read": f"{int(r['documents_in']):,}",
                     "Exact dup.": f"{int(r['exact_duplicate']):,}", "Near dup.": f"{int(r['near_duplicate']):,}",
                     "Contaminated": f"{int(sum(r[c] for c in contam)):,}", "Kept": f"{int(r['documents_kept']):,}",
                     "Tokens kept": human(r["tokens_kept"])})
    display = pd.DataFrame(disp, columns=["Source", "Read", "Exact dup.", "Near dup.", "Contaminated", "Kept",
                                          "Tokens kept"])
    names = ", ".join(BENCHMARKS.get(c[13:], c[13:]) for c in contam) or "no benchmark"
    caption = (f"Sources of the mixes: documents read, removed as exact or near (MinHash) duplicates or as "
               f"contaminated by n-gram overlap with {names}, and kept.")
    return Table("data_sources", caption, "tab:sources", display, removals.reset_index(drop=True),
                 to_latex(display, caption, "tab:sources"))


# ---------------------------------------------------------------------------------------------
# text from the run's facts (pipelines/runs/report.py)


def _names(xs) -> str:
    xs = [str(x) for x in xs]
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1] if xs else "?"


def setup_paragraphs(rep: Report) -> str:
    """The paper's Setup paragraphs on data, labels and generator, stated from the run (LaTeX text): which
    pages, which labels trained the classifier (this run's LLM annotations, or labels already in the data),
    which model wrote the synthetic text, and what the models trained on against the mixes' budgets."""
    info, out = rep.info, ["% generated by `study figures` from the run's manifests (study report): do not edit"]
    if p := info.get("pages"):
        out.append(r"\paragraph{Real web text.} " + latex_escape(
            f"{p['documents']:,} pages from {p['from']}, split into {p['train']:,} training pages and {p['val']:,} "
            f"held-out validation pages that no mix trains on; the validation loss of every mix is measured on these "
            f"same real pages."))
    if c := info.get("classifier"):
        lab, ann = rep.labels, info.get("annotation") or {}
        if lab.get("used") == "annotate":
            chars = ann.get("extract_chars")
            who = (f"An instruct LLM ({_names(ann.get('annotators', []))}) rates the educational value of the first "
                   f"{'~' + format(chars, ',') + ' ' if chars else ''}characters of a page on FineWeb-Edu's additive "
                   f"5-point scale")
            if ann.get("parse_failure_rate") is not None:
                who += (f" ({ann['parse_failure_rate']:.0%} of its answers did not parse"
                        + (f"; labels from the {ann['label_from']}" if ann.get("label_from") else
                           " and carry no label") + ")")
            labels = who + "; these annotations are the classifier's labels."
        else:
            labels = f"The classifier is trained on {lab.get('text', 'labels of the run')}."
            if ann.get("annotators"):
                labels += (f" The run's own annotator ({_names(ann['annotators'])}) scored "
                           f"{ann.get('pages', 0):,} pages; its labels did not train the classifier.")
        kinds = c.get("kinds") or []
        head = ("a regression head on a frozen sentence embedding" if "embedding" in kinds else "")
        if "hashed" in kinds:
            head += (" and, as a baseline, one on " if head else "a regression head on ") + "hashed n-gram TF-IDF features"
        verb = "are" if len(kinds) > 1 else "is"
        out.append(r"\paragraph{Classifier-filtered web text.} " + latex_escape(
            f"{labels} {head[0].upper() + head[1:] if head else 'A classifier'} {verb} trained on these labels "
            f"({c.get('train', 0):,} pages, {c.get('validation', 0):,} held out); its rounded, clipped score "
            f"(int_score) keeps a page when it is at least {c.get('threshold', 3)}.")
            + r" Table~\ref{tab:classifier} and Figures~\ref{fig:classifier-confusion}--\ref{fig:score-histograms} "
              r"report the classifier on held-out pages and the scores before and after filtering.")
    if g := info.get("generator"):
        out.append(r"\paragraph{Synthetic text.} " + latex_escape(
            f"Cosmopedia-style prompts pair a web extract with an audience and a style; {_names(g['models'])} "
            f"({g.get('backend')} backend) writes one document per prompt ({g.get('documents', 0):,} documents, "
            f"{g.get('tokens', 0):,} tokens kept), boilerplate openers are stripped and outputs that are too short "
            f"are dropped") + r" (Figure~\ref{fig:audience-style}).")
    t, mixes = info.get("train"), info.get("mixes") or {}
    if t and t.get("tokens") and mixes:
        budgets = sorted({m["budget"] for m in mixes.values()})
        text = (f"Each model trains on {' / '.join(f'{x:,}' for x in t['tokens'])} tokens of its mix, whose budget "
                f"is {' / '.join(f'{b:,}' for b in budgets)} tokens")
        share = min(t["tokens"]) / max(budgets) if budgets and max(budgets) else 1
        text += (f": the mix tables describe more data than any model saw ({share:.0%} of it)." if share < 1 else ".")
        rep_flags = [f for f in rep.flags if f.kind == "repeated_source"]
        if rep_flags:
            top = max(rep_flags, key=lambda f: f.value)
            text += (f" {len(rep_flags)} source(s) are repeated within their mix, up to {top.value:.1f} times "
                     f"({top.message.split(' is repeated')[0].replace('source ', '')}).")
        out.append(r"\paragraph{This run.} " + latex_escape(text.replace("`", "")))
    return "\n\n".join(out) + "\n" if len(out) > 1 else ""


def report_latex(rep: Report) -> str:
    """The run report as an appendix section: the facts as a two-column table, the flags as a list."""
    rows = "\n".join(rf"{latex_escape(what)} & {latex_escape(text.replace('`', ''))} \\" for what, text in rep.facts)
    flags = ("\\begin{itemize}\n" + "\n".join(rf"\item \textit{{{latex_escape(f.title)}}}: "
                                              + latex_escape(f.message.replace("`", "")) for f in rep.flags)
             + "\n\\end{itemize}" if rep.flags else "None of the checks found anything to flag.")
    return ("% generated by `study figures` (study report): do not edit\n"
            rf"\section{{Run report: {latex_escape(rep.run)}}}" + "\n\\label{sec:report}\n"
            r"What the run is, from its manifests:" + "\n\n"
            r"{\small\begin{tabular}{@{}p{0.22\linewidth}p{0.74\linewidth}@{}}" + "\n\\toprule\n" + rows
            + "\n\\bottomrule\n\\end{tabular}}\n\n"
            + rf"\paragraph{{Flags ({len(rep.flags)}).}} What a reader must know before reading the results, each "
              r"with its number." + "\n" + flags + "\n")
