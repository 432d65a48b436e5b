"""The evaluate stage's tables: table.csv (every target x task x metric, with CIs; MMLU per subject; CORE per
task and its CORE row), summary.csv (the decision report's mixes at each model size, and the reference
models), the log's summary lines, and the notebook's wide table (summary_table).

  table.csv    one row per (target, benchmark, subject, form, metric): TABLE_COLUMNS
  summary.csv  one row per mix and model size (seeds averaged, evaluate.average_last checkpoints averaged) and
               per reference model, benchmark level (MMLU: macro average), with the CI over items and seeds
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipelines.config import EvaluateConfig
from pipelines.evaluate import core
from pipelines.evaluate.bootstrap import bootstrap_ci
from pipelines.evaluate.metrics import CHANCE_METRICS, METRICS, form_metrics
from pipelines.evaluate.targets import Target
from pipelines.evaluate.tasks import Task
from pipelines.files import atomic_path

TABLE_COLUMNS = ["mix", "step", "tokens", "benchmark", "subject", "form", "metric", "value", "ci_low", "ci_high",
                 "n", "random_baseline", "fewshot", "reference", "model", "seed", "scale", "label"]
# label: how a row is named when its name carries a caveat (the CORE row: "CORE v1 20/22" when tasks are missing)
SUMMARY_COLUMNS = ["mix", "scale", "step", "tokens", "benchmark", "subject", "form", "metric", "value", "ci_low",
                   "ci_high", "n", "random_baseline", "seeds", "seed_sd", "checkpoints", "higher_is_better",
                   "reference", "model", "label"]


# ---------------------------------------------------------------------------------------------
# table.csv


def metric_rows(records: list[dict], benchmark: str, form: str, n_boot: int, level: float, seed: int) -> list[dict]:
    """Rows (benchmark, subject, form, metric, value, ci_low, ci_high, n, random_baseline) of one task,
    for each metric the records have (item_record's: CLOZE_METRICS, or LETTER_METRICS in letter form).
    MMLU: one row per subject and metric, and the macro average over subjects (subject None). The random
    baseline is 1/choices for acc, acc_norm and prob_norm; bpb and margin have none (empty)."""
    metrics = [m for m in form_metrics(form) if records and m in records[0]]
    chance = np.array([1.0 / len(r["lls"]) for r in records])
    rows = []
    subjects = np.array([r["subject"] or "" for r in records])
    for metric in metrics:
        x = np.array([r[metric] for r in records], dtype=np.float64)
        baseline = chance if metric in CHANCE_METRICS else np.full(len(records), np.nan)
        if benchmark == "mmlu":
            per = {s: x[subjects == s] for s in sorted(set(subjects))}
            for s, xs in per.items():
                lo, hi = bootstrap_ci(xs, None, n_boot, level, seed)
                rows.append({"benchmark": benchmark, "subject": s, "form": form, "metric": metric,
                             "value": float(xs.mean()), "ci_low": lo, "ci_high": hi, "n": len(xs),
                             "random_baseline": _or_none(baseline[subjects == s].mean())})
            value = float(np.mean([xs.mean() for xs in per.values()]))
            lo, hi = bootstrap_ci(x, subjects, n_boot, level, seed)
            base = float(np.mean([baseline[subjects == s].mean() for s in per]))
        else:
            value = float(x.mean()) if len(x) else float("nan")
            lo, hi = bootstrap_ci(x, None, n_boot, level, seed)
            base = float(baseline.mean()) if len(x) else float("nan")
        rows.append({"benchmark": benchmark, "subject": None, "form": form, "metric": metric, "value": value,
                     "ci_low": lo, "ci_high": hi, "n": len(x), "random_baseline": _or_none(base)})
    return rows


def _or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def target_rows(t: Target, results: dict[str, list[dict]], tasks: list[Task], suite: "core.CoreSuite | None",
                cfg: EvaluateConfig, seed: int) -> list[dict]:
    """table.csv rows of one target: every benchmark's metrics, and CORE's per-task rows and its CORE row."""
    who = {"mix": t.mix, "step": t.step, "tokens": t.tokens, "reference": t.reference, "model": t.model,
           "seed": t.seed, "scale": t.scale}
    rows = [{**who, **row, "fewshot": cfg.num_fewshot, "label": None} for task in tasks
            for row in metric_rows(results[task.name], task.benchmark, task.form, cfg.bootstrap, cfg.ci, seed)]
    if suite is not None:
        core_results = {label: results[core.task_name(label)] for label in suite.labels}
        rows += [{**who, **row} for row in core.table_rows(core_results, suite.data.specs, suite.version,
                                                           cfg.bootstrap, cfg.ci, seed)]
    return rows


def write_csv(path: Path, rows: list[dict], columns: list[str] = TABLE_COLUMNS) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def read_table(path: str | Path):
    """table.csv (a results/<run>/evaluate folder or the file) as a pandas DataFrame."""
    import pandas as pd

    p = Path(path)
    return pd.read_csv(p / "table.csv" if p.is_dir() else p)


# ---------------------------------------------------------------------------------------------
# summary.csv, the log, the notebook


def summary_rows(report: dict | None, table: list[dict]) -> list[dict]:
    """summary.csv: the decision report's score of every mix at every model size (benchmark level: seeds
    and checkpoints averaged, CI over items and seeds) and the reference models' last checkpoints."""
    rows = []
    for r in (report or {}).get("results", []):
        for mix, v in r["mixes"].items():
            rows.append({"mix": mix, "scale": r["scale"], "step": v["steps"][-1], "tokens": v["tokens"],
                         "benchmark": r["benchmark"], "subject": None, "form": r["form"], "metric": r["metric"],
                         "value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"], "n": r["n_items"],
                         "random_baseline": r["random_baseline"], "seeds": len(v["seeds"]), "seed_sd": v["seed_sd"],
                         "checkpoints": len(v["steps"]), "higher_is_better": r["higher_is_better"],
                         "reference": False, "model": None})
    refs = [r for r in table if r["reference"] and r["subject"] is None]
    last = {}
    for r in refs:
        last[r["mix"]] = max(last.get(r["mix"], -1), r["step"] if r["step"] is not None else -1)
    for r in refs:
        if (r["step"] if r["step"] is not None else -1) == last[r["mix"]]:
            rows.append({**{k: r.get(k) for k in SUMMARY_COLUMNS}, "seeds": 1, "checkpoints": 1,
                         "higher_is_better": METRICS[r["metric"]]["higher_is_better"]})
    return rows


def format_summary(rows: list[dict]) -> str:
    """One line per (model, benchmark, form, metric): value [ci] (n, random)."""
    lines = []
    for r in rows:
        who = r["mix"] + (f"/{r['scale']}/s{r['seed']}" if r.get("seed") is not None else "")
        who += "" if r["step"] is None else f"@{r['step']}"
        base = r["random_baseline"]
        name = r.get("label") or r["benchmark"]
        lines.append(f"  {who:<24} {name:<14} {r['form']:<6} {r['metric']:<9} {r['value']:.3f} "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]  n={r['n']}"
                     + (f"  random={base:.2f}" if base is not None else ""))
    return "\n".join(lines)


def tokens_label(n) -> str:
    """Training tokens for a table: 30,720 / 491.5M / 2.0T; "-" when unknown."""
    if n is None or n != n:
        return "-"
    n = float(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{int(n):,}"


def summary_table(table, metrics: tuple[str, ...] | None = ("acc", "acc_norm", "bpb")):
    """Benchmark-level rows (MMLU: macro average) as one line per model and checkpoint (and model size and
    seed, when there are several), one column per benchmark / form / metric holding "value [ci_low,
    ci_high]": accuracy-like metrics in percent, bits per byte and margins as they are. `metrics`: the
    metrics shown (default: accuracy and bits per byte, a table a notebook shows whole; None: all)."""
    import pandas as pd

    t = pd.DataFrame(table)
    t = t[t["subject"].isna() & (t["metric"].isin(metrics) if metrics is not None else True)].copy()
    t["cell"] = [f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if METRICS.get(m, {}).get("percent")
                 else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
                 for m, v, lo, hi in zip(t["metric"], t["value"], t["ci_low"], t["ci_high"])]
    t["column"] = t["benchmark"] + " " + t["form"] + " " + t["metric"]
    t["step"] = [f"{int(v):,}" if pd.notna(v) else "-" for v in t["step"]]  # a reference model has none
    t["tokens"] = [tokens_label(v) for v in t["tokens"]]
    index = ["mix", "step", "tokens"]
    for col in ("scale", "seed"):  # several model sizes or seeds: one line per run
        if col in t and t[col].nunique() > 1:
            t[col] = t[col].map(lambda v: "" if pd.isna(v) else str(int(v)) if isinstance(v, float) else str(v))
            index.insert(1, col)
    return t.pivot_table(index=index, columns="column", values="cell", aggfunc="first",
                         dropna=False).dropna(how="all")
