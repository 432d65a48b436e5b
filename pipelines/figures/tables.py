"""Paper tables: LaTeX (booktabs, a `table` float with caption and label, for \\input) plus CSV.

Each builder returns a Table: `display` (the formatted cells, what the LaTeX shows; notebooks show
it), `data` (the numbers, written as CSV) and `latex`. Cell text is escaped for LaTeX; ±, ≥, × and
dashes become their LaTeX forms. The paper needs \\usepackage{booktabs}.

  main_results        mix x benchmark: mean ± CI half-width (%), best mix per column in bold
  classifier_metrics  per classifier kind: MSE, accuracy, macro-F1, P/R/F1 at the threshold
  mix_composition     per mix: tokens, documents, and each source's tokens and epochs
  data_sources        per source: documents read, duplicates and contaminated documents removed, kept
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipelines.figures.plots import BENCHMARKS, _is_ref, final_rows, summary_rows

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
            "±": r"\ensuremath{\pm}", "≥": r"\ensuremath{\geq}", "≤": r"\ensuremath{\leq}",
            "×": r"\ensuremath{\times}", "–": "--", "—": "---", "…": r"\ldots{}"}
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


def _best(values: pd.DataFrame, eligible: Sequence[bool],
          lower_is_better: Sequence[bool] | None = None) -> pd.DataFrame:
    """True at the best eligible value of each column (ties: all of them); NaN never best."""
    best = pd.DataFrame(False, index=values.index, columns=values.columns)
    mask = pd.Series(list(eligible), index=values.index)
    for k, c in enumerate(values.columns):
        col = pd.to_numeric(values[c], errors="coerce")[mask]
        if col.notna().sum() == 0:
            continue
        low = lower_is_better[k] if lower_is_better is not None else False
        target = col.min() if low else col.max()
        best.loc[col.index[(col - target).abs() <= 1e-12], c] = True
    return best


# ---------------------------------------------------------------------------------------------
# the tables


def main_results(table: pd.DataFrame, metric: str = "acc_norm", form: str = "cloze", level: float = 0.95,
                 benchmarks: Sequence[str] = tuple(BENCHMARKS)) -> Table:
    """Mix x benchmark at each mix's last checkpoint: accuracy (%) ± half the CI width; the best mix
    per column in bold (reference models listed below a rule, never bold); Avg. = mean over benchmarks."""
    rows = final_rows(summary_rows(table, metric, form))
    rows = rows.assign(_ref=_is_ref(rows))
    present = [b for b in benchmarks if (rows["benchmark"] == b).any()]
    mixes = list(dict.fromkeys([*rows.loc[~rows["_ref"], "mix"], *rows.loc[rows["_ref"], "mix"]]))
    data, disp, means = [], [], []
    for m in mixes:
        rm = rows[rows["mix"] == m].set_index("benchmark")
        ref = bool(rm["_ref"].iloc[0])
        tokens = rm["tokens"].dropna().iloc[0] if rm["tokens"].notna().any() else None
        d = {"mix": m, "reference": ref, "step": rm["step"].dropna().iloc[0] if rm["step"].notna().any() else None,
             "tokens": tokens}
        c = {"Mix": m + (" (ref.)" if ref else ""), "Tokens": human(tokens)}
        mean = {}
        for b in present:
            if b in rm.index:
                v, lo, hi = (100 * float(rm.at[b, k]) for k in ("value", "ci_low", "ci_high"))
                d.update({b: v, f"{b}_ci_low": lo, f"{b}_ci_high": hi, f"{b}_n": int(rm.at[b, "n"])})
                c[BENCHMARKS.get(b, b)] = f"{v:.1f} ± {(hi - lo) / 2:.1f}"
                mean[b] = v
            else:
                d.update({b: None, f"{b}_ci_low": None, f"{b}_ci_high": None, f"{b}_n": None})
                c[BENCHMARKS.get(b, b)] = "—"
        avg = sum(mean.values()) / len(mean) if len(mean) == len(present) and present else None
        d["average"] = avg
        c["Avg."] = f"{avg:.1f}" if avg is not None else "—"
        data.append(d)
        disp.append(c)
        means.append({"Mix": None, "Tokens": None, **{BENCHMARKS.get(b, b): mean.get(b) for b in present},
                      "Avg.": avg})
    display = pd.DataFrame(disp, columns=["Mix", "Tokens", *(BENCHMARKS.get(b, b) for b in present), "Avg."])
    values = pd.DataFrame(means, columns=display.columns)
    eligible = [not d["reference"] for d in data]
    bold = _best(values, eligible) if sum(eligible) > 1 else None  # a best of one says nothing
    if bold is not None:
        bold[["Mix", "Tokens"]] = False
    n_mixes = sum(eligible)
    caption = (f"Accuracy (%, {metric}, {form} form; MMLU: macro average over subjects) of each mix's last "
               f"checkpoint on the evaluated items: mean ± half the width of the {level:.0%} bootstrap CI."
               + (" Bold: best mix per column." if bold is not None else "")
               + (" Reference models below the rule are not ranked." if n_mixes < len(data) else "")
               + " Random chance is 25%.")
    latex = to_latex(display, caption, "tab:main-results", bold, rules_after=[n_mixes - 1] if n_mixes else [])
    return Table("main_results", caption, "tab:main-results", display, pd.DataFrame(data), latex)


def classifier_metrics(metrics: Mapping) -> Table:
    """One row per classifier kind (classify/metrics.json, validation split); best per column in bold."""
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
    values = pd.DataFrame([{"Classifier": None, "Pages": None, "MSE": d["mse"], "Accuracy": d["accuracy"],
                            "Macro-F1": d["macro_f1"], f"P (≥{t})": d["precision"], f"R (≥{t})": d["recall"],
                            f"F1 (≥{t})": d["f1"]} for d in data], columns=display.columns)
    lower = [c == "MSE" for c in display.columns]
    bold = _best(values, [True] * len(data), lower) if len(data) > 1 else None
    caption = (f"Educational classifiers on held-out annotated pages: regression MSE, accuracy and macro-F1 of "
               f"the rounded score (0–5), and precision, recall and F1 of keeping a page (int_score ≥ {t})."
               + (" Bold: best per column." if bold is not None else ""))
    return Table("classifier_metrics", caption, "tab:classifier", display, pd.DataFrame(data),
                 to_latex(display, caption, "tab:classifier", bold))


def mix_composition(manifest: Mapping) -> Table:
    """Per mix (mix manifest): training tokens and documents, and per source its tokens and epochs (how
    often the source's surviving documents were repeated); the CSV also has each source's share."""
    sources = list(dict.fromkeys(s for m in manifest["mixes"] for s in m["per_source"]))
    data, disp = [], []
    for m in manifest["mixes"]:
        d = {"mix": m["name"], "budget_tokens": m.get("budget_tokens"), "tokens": m["tokens"],
             "documents": m["documents"]}
        c = {"Mix": m["name"], "Tokens": human(m["tokens"]), "Documents": f"{m['documents']:,}"}
        for s in sources:
            v = m["per_source"].get(s)
            if v is None:
                d.update({f"{s}_tokens": 0, f"{s}_share": 0.0, f"{s}_epochs": 0.0})
                c[s] = "—"
                continue
            share = v["tokens"] / m["tokens"] if m["tokens"] else 0.0
            d.update({f"{s}_tokens": v["tokens"], f"{s}_share": round(share, 4), f"{s}_epochs": v["epochs"]})
            # a streaming mix knows epochs only for a source it read to the end
            c[s] = f"{human(v['tokens'])} ({v['epochs']:.2f} ep.)" if v["epochs"] is not None else human(v["tokens"])
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
