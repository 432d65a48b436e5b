"""Paper figures: one function each, one style, a colour-blind-safe palette (Okabe-Ito), PDF + PNG.

Every function takes plain tables (pandas DataFrames or the dicts of a stage's manifest), returns a
matplotlib Figure and writes nothing; `save()` writes it. pipelines/figures/figures.py reads a run's stages
and calls these; a notebook can call them on its own tables.

  benchmark_comparison     evaluate/summary.csv (or table.csv): one panel per benchmark, one bar per mix (and
                           model size), 95% CI over items and seeds, random line
  benchmarks_vs_tokens     evaluate/table.csv over checkpoints: score against training tokens per mix
  decision_matrix          evaluate/decisions.json: per metric, the paired difference of every two mixes, CI
  signal_noise             evaluate/decisions.json: signal-to-noise per metric, decision accuracy across scales
  training_curves          train/<mix>/main.log (trainlog.read_log): validation loss (and llm.c HellaSwag)
  classifier_confusion     classify/metrics.json: confusion matrix per classifier kind
  classifier_f1            classify/metrics.json: per-class F1 per kind, binary F1 at the threshold
  score_histograms         filter manifest `histograms`: classifier scores before / after filtering
  mix_composition          mix.composition_table: training tokens per source per mix
  synthetic_audience_style generate manifest counts.per_cell: documents per audience and style
  length_distributions     document lengths (paper.document_lengths): real versus synthetic
  decontamination_removals mix.removals_table: documents removed per source and reason

Over 400 lines as one thing: the figure functions share one style and palette.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter

# Figures are built without pyplot: no global state, no window, and a notebook shows a returned
# figure exactly once (its inline backend renders Figure objects).

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
REFERENCE_COLOR = "#8C8C8C"  # reference models (not trained by the study): neutral grey, hatched
STYLE = {"figure.dpi": 150, "savefig.bbox": "tight", "font.size": 9, "axes.spines.top": False,
         "axes.spines.right": False, "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
         "axes.titlesize": 9, "legend.fontsize": 8, "pdf.fonttype": 42, "ps.fonttype": 42}

BENCHMARKS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag", "mmlu": "MMLU"}
AUDIENCE_ORDER = ["young_children", "middle_school", "high_school", "college_students", "researchers"]


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write `name`.pdf (vector) and `name`.png; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    with matplotlib.rc_context(STYLE):  # savefig.bbox etc. are read when saving
        for p in paths:
            fig.savefig(p)
    return paths


def mix_colors(names: Sequence[str], colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """A colour per name (mix or source): `colors` where given (pass the same mapping to every figure so
    they agree), else the palette in the given order."""
    out = dict(colors or {})
    for n in dict.fromkeys(names):
        if n not in out:
            used = set(out.values())
            out[n] = next((c for c in OKABE_ITO if c not in used), OKABE_ITO[len(out) % len(OKABE_ITO)])
    return out


def _tokens_axis(ax, unit: str = "tokens") -> None:
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(f"training {unit} (GPT-2)" if unit == "tokens" else f"training {unit}")


Boundaries = Sequence[float] | Mapping[str, Sequence[float]]  # x positions, or {schedule: x positions}


def _boundaries(ax, boundaries: Boundaries, colors: Mapping[str, str] | None = None):
    """Vertical dash-dot lines where a staged schedule switches data, per schedule in its colour;
    returns the first line (the legend's handle), None when there is none."""
    per_run = boundaries.items() if isinstance(boundaries, Mapping) else [(None, boundaries)]
    first = None
    for name, xs in per_run:
        for b in xs:
            color = (colors or {}).get(name, "#666666")
            line = ax.axvline(b, color=color, ls="-.", lw=0.9, label="stage boundary" if first is None else None)
            first = first or line
    return first


def _pretty(name: str) -> str:
    return str(name).replace("_", " ")


# ---------------------------------------------------------------------------------------------
# evaluation


def summary_rows(table, metric: str = "acc_norm", form: str = "cloze"):
    """Benchmark-level rows (MMLU: the macro average) of one metric and form; a benchmark without
    `metric` falls back to `acc`. Columns as evaluate.TABLE_COLUMNS, values unchanged."""
    import pandas as pd

    t = table[table["subject"].isna() & (table["form"] == form)]
    parts = []
    for b in t["benchmark"].drop_duplicates():
        tb = t[t["benchmark"] == b]
        parts.append(tb[tb["metric"] == (metric if (tb["metric"] == metric).any() else "acc")])
    return pd.concat(parts, ignore_index=True) if parts else t.iloc[0:0]


def series(rows):
    """rows with a `_label` column: the mix, and its model size when the trained runs have several
    (`web · d2c64`), and `_scale_rank` (0: the largest size; for shading)."""
    rows = rows.copy()
    ref = _is_ref(rows)
    scales = rows["scale"] if "scale" in rows else None
    sizes = [] if scales is None else list(dict.fromkeys(scales[~ref].dropna().astype(str)))
    if len(sizes) > 1:
        order = sorted(sizes, key=_scale_size)
        rank = {s: len(order) - 1 - i for i, s in enumerate(order)}
        rows["_label"] = [m if r or pd_isna(s) else f"{m} · {s}" for m, s, r in zip(rows["mix"], scales, ref)]
        rows["_scale_rank"] = [0 if r or pd_isna(s) else rank[str(s)] for s, r in zip(scales, ref)]
    else:
        rows["_label"] = rows["mix"]
        rows["_scale_rank"] = 0
    return rows



def _benchmark_panels(n: int) -> tuple[Figure, np.ndarray]:
    """One panel per benchmark shown (at least one), side by side with a shared y axis."""
    fig = Figure(figsize=(2.3 * max(n, 1) + 0.4, 3.0), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(1, max(n, 1), sharey=True))


def pd_isna(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _scale_size(name: str) -> tuple:
    """d<L>c<C> / d<L>: sort key by layers x channels (unknown names last, in their order)."""
    import re

    m = re.fullmatch(r"d(\d+)(?:c(\d+))?", str(name))
    if not m:
        return (1, 0)
    layers, channels = int(m.group(1)), int(m.group(2) or 64 * int(m.group(1)))
    return (0, layers * channels * channels)


def collapse_seeds(rows):
    """One row per series, step, benchmark, form and metric: runs that differ only by seed averaged
    (value and CI bounds), with `_lo`/`_hi` the smallest and largest seed's value (the seed spread)."""
    rows = series(rows)
    keys = ["_label", "step", "benchmark", "form", "metric"]
    rows["_step_key"] = rows["step"].fillna(-1)
    g = rows.groupby([k if k != "step" else "_step_key" for k in keys], sort=False, dropna=False)
    first = g.first().reset_index()
    means = g[["value", "ci_low", "ci_high"]].mean().reset_index(drop=True)
    for c in ("value", "ci_low", "ci_high"):
        first[c] = means[c].to_numpy()
    first["_lo"] = g["value"].min().to_numpy()
    first["_hi"] = g["value"].max().to_numpy()
    first["_seeds"] = g["value"].size().to_numpy()
    return first.drop(columns="_step_key")


def final_rows(rows):
    """Each mix's (and model size's) last checkpoint (largest step); reference models (no step) as they are."""
    rows = series(rows)
    rows["_step"] = rows["step"].fillna(-1)
    last = rows.groupby("_label")["_step"].transform("max")
    return rows[rows["_step"] == last].drop(columns="_step")


def _is_ref(rows) -> "np.ndarray":
    if "reference" not in rows:
        return np.zeros(len(rows), dtype=bool)
    return rows["reference"].astype(str).str.lower().isin(["true", "1"]).to_numpy()


def benchmark_comparison(table, metric: str = "acc_norm", form: str = "cloze",
                         benchmarks: Sequence[str] = tuple(BENCHMARKS), colors: Mapping[str, str] | None = None,
                         title: str | None = None):
    """One panel per benchmark, one bar per mix (its last checkpoint; with several model sizes, one per
    mix and size, the smaller ones lighter) with its CI as error bars, and the random baseline as a dashed
    line. Reference models are grey and hatched, after the mixes. `table`: evaluate's summary.csv (seeds
    and checkpoints averaged, CI over items and seeds) or table.csv (seeds averaged here)."""
    rows = collapse_seeds(final_rows(summary_rows(table, metric, form)))
    rows = rows.assign(_ref=_is_ref(rows))
    order = list(dict.fromkeys([*rows.loc[~rows["_ref"], "_label"], *rows.loc[rows["_ref"], "_label"]]))
    colors = mix_colors(list(dict.fromkeys(rows.loc[~rows["_ref"], "mix"])), colors)
    present = [b for b in benchmarks if (rows["benchmark"] == b).any()]
    with matplotlib.rc_context(STYLE):
        fig, axes = _benchmark_panels(len(present))
        handles = {}
        for ax, b in zip(axes, present):
            rb = rows[rows["benchmark"] == b].set_index("_label")
            for x, m in enumerate(order):
                if m not in rb.index:
                    continue
                r = rb.loc[m]
                v, lo, hi = 100 * r["value"], 100 * r["ci_low"], 100 * r["ci_high"]
                ref = bool(r["_ref"])
                bar = ax.bar(x, v, width=0.75, color=REFERENCE_COLOR if ref else colors[r["mix"]],
                             alpha=1.0 if ref else 1.0 / (1 + 0.8 * r["_scale_rank"]),
                             hatch="//" if ref else None, edgecolor="white" if ref else None, linewidth=0,
                             yerr=[[max(v - lo, 0)], [max(hi - v, 0)]], capsize=3,
                             error_kw={"elinewidth": 0.9, "ecolor": "#333333"})
                handles.setdefault(m + (" (reference)" if ref else ""), bar)
            base = 100 * rb["random_baseline"].mean()
            if np.isfinite(base):
                handles["random baseline"] = ax.axhline(base, color="#000000", ls="--", lw=0.9)
            n = int(rb["n"].max()) if len(rb) else 0
            ax.set_title(f"{BENCHMARKS.get(b, b)} (n={n:,})")
            ax.set_xticks([])
            ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        _finish_benchmark_panels(fig, axes, handles, rows, metric, form, present,
                                 title or "Benchmarks after training: mean and 95% bootstrap CI")
    return fig


def benchmarks_vs_tokens(table, boundaries: Boundaries = (), metric: str = "acc_norm", form: str = "cloze",
                         benchmarks: Sequence[str] = tuple(BENCHMARKS), colors: Mapping[str, str] | None = None,
                         title: str | None = None):
    """Score against training tokens, one line per mix (and model size) over its evaluated checkpoints
    (CI as a band; with several seeds the line is their mean and the band their range); reference models
    as horizontal lines; random baseline dotted; optional stage boundaries (tokens)."""
    rows = collapse_seeds(summary_rows(table, metric, form))
    rows = rows.assign(_ref=_is_ref(rows))
    trained = rows[~rows["_ref"]]
    use_tokens = len(trained) > 0 and trained["tokens"].notna().all()
    xcol = "tokens" if use_tokens else "step"
    colors = mix_colors(list(dict.fromkeys(trained["mix"])), colors)
    present = [b for b in benchmarks if (rows["benchmark"] == b).any()]
    with matplotlib.rc_context(STYLE):
        fig, axes = _benchmark_panels(len(present))
        handles = {}
        for ax, b in zip(axes, present):
            rb = rows[rows["benchmark"] == b]
            for m, g in rb[~rb["_ref"]].groupby("_label", sort=False):
                g = g.sort_values(xcol)
                color = colors[g["mix"].iloc[0]]
                x = g[xcol].to_numpy(dtype=float)
                v = 100 * g["value"].to_numpy(dtype=float)
                seeds = g["_seeds"].max() > 1
                lo = 100 * g["_lo" if seeds else "ci_low"].to_numpy(dtype=float)
                hi = 100 * g["_hi" if seeds else "ci_high"].to_numpy(dtype=float)
                line, = ax.plot(x, v, marker="o", ms=3.5, lw=1.3, color=color, ls="-" if g["_scale_rank"].iloc[0] == 0 else "--")
                if len(g) > 1:
                    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
                else:  # one checkpoint: its CI (or seed range) as an error bar
                    ax.errorbar(x, v, yerr=[np.maximum(v - lo, 0), np.maximum(hi - v, 0)], fmt="none", capsize=2.5,
                                elinewidth=0.9, color=color)
                handles.setdefault(m, line)
            for i, (m, g) in enumerate(rb[rb["_ref"]].groupby("mix", sort=False)):
                line = ax.axhline(100 * g["value"].iloc[-1], color=REFERENCE_COLOR, ls=("-." if i % 2 else "--"),
                                  lw=1.0)
                handles.setdefault(f"{m} (reference)", line)
            base = 100 * rb["random_baseline"].mean()
            if np.isfinite(base):
                handles["random baseline"] = ax.axhline(base, color="#000000", ls=":", lw=0.9)
            line = _boundaries(ax, boundaries, colors)
            if line is not None:
                handles["stage boundary"] = line
            ax.set_title(BENCHMARKS.get(b, b))
            ax.set_xlim(left=0)
            if use_tokens:
                _tokens_axis(ax)
            else:
                ax.set_xlabel("training step")
            ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        _finish_benchmark_panels(fig, axes, handles, rows, metric, form, present,
                                 title or "Benchmark score over training (evaluated checkpoints; 95% bootstrap CI)")
    return fig


def _fmt(value: float, percent: bool, signed: bool = True, digits: int = 3) -> str:
    """A metric value for a figure or table: accuracy-like metrics in percentage points (1 decimal), the
    others with `digits` decimals."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if percent:
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def decision_results(decisions: Mapping, scale: str | None = None) -> list[dict]:
    """The results of one scale (default: the largest) of a decisions.json, by signal-to-noise (highest
    first, unknown last)."""
    scales = decisions.get("scales") or []
    scale = scale if scale is not None else (scales[-1] if scales else None)
    rs = [r for r in decisions.get("results", []) if r["scale"] == scale]
    return sorted(rs, key=lambda r: -r["snr"] if r.get("snr") is not None else np.inf)


def decision_matrix(decisions: Mapping, scale: str | None = None, title: str | None = None):
    """One panel per metric (benchmark, form, metric; highest signal-to-noise first) at one scale (default:
    the largest): cell (row, column) = row mix minus column mix, signed so that positive means the row mix
    is better (bpb: lower), with its 95% CI below; colour: the difference over half the CI's width (beyond
    +-1 the CI excludes 0); bold text: a detected difference. decisions: evaluate/decisions.json."""
    results = decision_results(decisions, scale)
    mixes = list(decisions.get("mixes") or [])
    n = max(len(results), 1)
    cols = min(5, n)
    rows_ = int(np.ceil(n / cols))
    size = 0.55 * max(len(mixes), 2)
    metrics = decisions.get("metrics") or {}
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(cols * (size + 0.9) + 0.8, rows_ * (size + 0.75) + 0.7), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows_, cols, squeeze=False).ravel())
        im = None
        for ax, r in zip(axes, results):
            sign = 1.0 if r["higher_is_better"] else -1.0
            percent = bool(metrics.get(r["metric"], {}).get("percent"))
            k = len(mixes)
            z = np.full((k, k), np.nan)
            text = [["" for _ in range(k)] for _ in range(k)]
            bold = np.zeros((k, k), dtype=bool)
            for p in r["pairs"]:
                i, j = mixes.index(p["a"]), mixes.index(p["b"])
                half = max((p["ci_high"] - p["ci_low"]) / 2, 1e-12)
                for (a, b, s) in ((i, j, sign), (j, i, -sign)):
                    d, lo, hi = s * p["diff"], s * p["ci_low"], s * p["ci_high"]
                    lo, hi = min(lo, hi), max(lo, hi)
                    z[a, b] = np.clip(d / half, -2, 2)
                    text[a][b] = f"{_fmt(d, percent, digits=2)}\n[{_fmt(lo, percent, digits=2)}, {_fmt(hi, percent, digits=2)}]"
                    bold[a, b] = p["verdict"] != "no detectable difference"
            im = ax.imshow(z, cmap="PuOr", vmin=-2, vmax=2)
            ax.set_xlabel("column mix", fontsize=6)
            for a in range(k):
                for b in range(k):
                    if text[a][b]:
                        ax.text(b, a, text[a][b], ha="center", va="center", fontsize=4.6,
                                fontweight="bold" if bold[a, b] else "normal",
                                color="white" if abs(z[a, b]) > 1.4 else "#222222")
            ax.set_xticks(range(k), mixes, fontsize=6, rotation=30, ha="right")
            ax.set_yticks(range(k), mixes, fontsize=6)
            snr = f"SNR {r['snr']:.1f}" if r.get("snr") is not None else "SNR n/a"
            unit = " (pt)" if percent else ""
            ax.set_title(f"{_pretty(r['label'])}{unit}\n{snr}", fontsize=7)
            for sp in ax.spines.values():
                sp.set_visible(False)
        for ax in axes[max(len(results), 1):]:
            fig.delaxes(ax)
        for ax in axes[:max(len(results), 1):cols]:
            ax.set_ylabel("row mix")
        if not results:
            axes[0].text(0.5, 0.5, "no decision results", ha="center", va="center", transform=axes[0].transAxes)
            axes[0].set_title("decisions")
        if im is not None:
            fig.colorbar(im, ax=list(axes[:len(results)]), shrink=0.6,
                         label="difference / CI half-width (|x| > 1: detected)")
        sc = scale if scale is not None else (decisions.get("scales") or ["?"])[-1]
        seeds = sorted({len(v) for v in (decisions.get("seeds") or {}).get(sc, {}).values()})
        fig.suptitle(title or f"Paired differences, row mix minus column mix (positive: row better), model {sc}, "
                              f"{'/'.join(map(str, seeds))} seed(s) per mix; 95% CI over items and seeds")
    return fig


def signal_noise(decisions: Mapping, title: str | None = None):
    """Left: signal-to-noise of every metric (spread of the mix means over the seed-to-seed sd), one bar per
    model size, metrics by the largest size's SNR; a filled marker where the metric separates at least one
    pair of mixes. Right: decision accuracy of each smaller size against the largest (share of mix pairs
    in the same order; 0.5: a coin) with its 95% CI, when the study has two sizes or more."""
    scales = list(decisions.get("scales") or [])
    order = decision_results(decisions)
    labels = [r["label"] for r in order]
    keys = [r["key"] for r in order]
    by = {(r["scale"], r["key"]): r for r in decisions.get("results", [])}
    acc = decisions.get("decision_accuracy") or []
    colors = mix_colors(scales[::-1])
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.8, 1.2 + 0.2 * max(len(keys), 4)), layout="constrained")
        left, right = fig.subplots(1, 2, sharey=True)
        y = np.arange(len(keys))
        h = 0.8 / max(len(scales), 1)
        for i, sc in enumerate(scales[::-1]):
            vals = np.array([by.get((sc, k), {}).get("snr") or np.nan for k in keys], dtype=float)
            pos = y + (i - (len(scales) - 1) / 2) * h
            left.barh(pos, vals, height=h, color=colors[sc], label=f"model {sc}")
            dec = np.array([bool(by.get((sc, k), {}).get("decisive")) for k in keys])
            if dec.any():
                left.plot(vals[dec], pos[dec], "k*", ms=4, label="separates a pair" if i == 0 else None)
        left.set_yticks(y, [_pretty(x) for x in labels], fontsize=6)
        left.set_ylabel("metric (benchmark, form, metric), by signal-to-noise")
        left.invert_yaxis()
        left.set_xlabel("SNR: spread of mix means / seed sd")
        left.set_title("signal-to-noise per metric")
        left.legend(frameon=False, fontsize=7, loc="lower right")
        if acc:
            for i, sm in enumerate(s for s in scales[:-1]):
                rows = {a["key"]: a for a in acc if a["small"] == sm}
                v = np.array([rows.get(k, {}).get("value") if rows.get(k, {}).get("value") is not None else np.nan
                              for k in keys], dtype=float)
                lo = np.array([rows.get(k, {}).get("ci_low") if rows.get(k, {}).get("ci_low") is not None else np.nan
                               for k in keys], dtype=float)
                hi = np.array([rows.get(k, {}).get("ci_high") if rows.get(k, {}).get("ci_high") is not None else np.nan
                               for k in keys], dtype=float)
                pos = y + (i - (len(scales) - 2) / 2) * 0.25
                right.errorbar(v, pos, xerr=[np.maximum(v - lo, 0), np.maximum(hi - v, 0)], fmt="o", ms=3.5,
                               capsize=2, color=colors[sm], label=f"{sm} vs {scales[-1]}")
            right.axvline(0.5, color="#000000", ls=":", lw=0.9, label="coin flip")
            right.set_xlim(-0.05, 1.05)
            right.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncols=2)
        else:
            right.text(0.5, 0.5, "one model size:\nno decision accuracy", ha="center", va="center",
                       transform=right.transAxes)
        right.set_xlabel("share of mix pairs ordered as at the largest size")
        right.set_title("decision accuracy across model sizes")
        fig.suptitle(title or "Which metrics can decide at this scale?")
    return fig


def _finish_benchmark_panels(fig, axes, handles: dict, rows, metric: str, form: str, present: list, title: str):
    """The shared end of the per-benchmark figures: empty-panel note, y label, legend below, title."""
    if len(present) == 0:
        axes[0].text(0.5, 0.5, "no benchmark rows", ha="center", va="center", transform=axes[0].transAxes)
    axes[0].set_ylabel(f"accuracy ({metric if metric in set(rows['metric']) else 'acc'}, {form})")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", frameon=False,
               ncols=min(len(handles), 4))
    fig.suptitle(title)


def training_curves(logs: Mapping[str, "object"], boundaries: Boundaries = (),
                    colors: Mapping[str, str] | None = None, title: str | None = None):
    """Validation loss (markers) and train loss (thin) against training tokens, one colour per mix;
    a second panel with llm.c's in-training HellaSwag accuracy when the logs have it.
    logs: {mix: trainlog.read_log(...)} (columns step, tokens, train_loss, val_loss, hellaswag, ...)."""
    logs = {m: df for m, df in logs.items() if len(df)}
    colors = mix_colors(list(logs), colors)
    use_tokens = bool(logs) and all(df["tokens"].notna().all() for df in logs.values())
    xcol = "tokens" if use_tokens else "step"
    has_hs = any(df["hellaswag"].notna().any() for df in logs.values())
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5 if has_hs else 4.2, 3.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, 2 if has_hs else 1))
        ax = axes[0]
        for m, df in logs.items():
            x = df[xcol].to_numpy(dtype=float)
            tr = df["train_loss"].notna().to_numpy()
            ax.plot(x[tr], df["train_loss"][tr], lw=0.7, alpha=0.45, color=colors[m])
            va = df["val_loss"].notna().to_numpy()
            ax.plot(x[va], df["val_loss"][va], "o-", ms=3.5, lw=1.4, color=colors[m], label=m)
        ax.set_ylabel("loss (nats per token)")
        ax.set_title("validation loss (markers), train loss (thin)")
        if has_hs:
            hs = axes[1]
            top = 30.0
            for m, df in logs.items():
                ok = df["hellaswag"].notna().to_numpy()
                if ok.any():
                    y = 100 * df["hellaswag"][ok].to_numpy(dtype=float)
                    hs.plot(df[xcol].to_numpy(dtype=float)[ok], y, "o-", ms=3.5, lw=1.4, color=colors[m])
                    top = max(top, float(y.max()) + 5)
            hs.axhline(25, color="#000000", ls=":", lw=0.9, label="random (25%)")
            hs.set_ylim(0, top)
            hs.set_ylabel("HellaSwag accuracy (llm.c -h 1)")
            hs.yaxis.set_major_formatter(PercentFormatter(decimals=0))
            hs.set_title("HellaSwag during training")
        for a in axes:
            a.set_xlim(left=0)
            _boundaries(a, boundaries, colors)
            if use_tokens:
                _tokens_axis(a)
            else:
                a.set_xlabel("training step")
        if not logs:
            ax.text(0.5, 0.5, "no training logs", ha="center", va="center", transform=ax.transAxes)
        handles, labels = ax.get_legend_handles_labels()
        if has_hs:
            h2, l2 = axes[1].get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        legend = dict(zip(labels, handles))  # one entry per label (a boundary is on both panels)
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside right upper", frameon=False)
        fig.suptitle(title or "Training curves")
    return fig


# ---------------------------------------------------------------------------------------------
# the educational classifier


def _kinds(metrics: Mapping) -> dict:
    kinds = metrics.get("kinds") or {}
    if not kinds:
        raise ValueError("classifier metrics have no `kinds` (classify/metrics.json)")
    return kinds


def classifier_confusion(metrics: Mapping, title: str | None = None, label: str = "labels"):
    """Confusion matrix of the rounded score per classifier kind (rows: the label, named by `label`: what
    the labels are, e.g. "LLM annotation" or "sample labels: edu_score"; columns: prediction); cells hold
    counts, shaded by the share of their row (recall)."""
    kinds = _kinds(metrics)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.3 * len(kinds) + 0.6, 3.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(kinds)))
        im = None
        for ax, (kind, m) in zip(axes, kinds.items()):
            cm = np.asarray(m["confusion_matrix"]["matrix"], dtype=float)
            labels = m["confusion_matrix"]["labels"]
            share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
            for i in range(cm.shape[0]):
                for j in range(cm.shape[1]):
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.55 else "#222222")
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("predicted int_score")
            ax.set_ylabel(f"label ({label})")
            ax.set_title(f"{kind}\naccuracy {m['accuracy']:.2f}, macro-F1 {m['macro_f1']:.2f}, n={m['n']:,}")
            for s in ax.spines.values():
                s.set_visible(False)
        fig.colorbar(im, ax=list(axes), shrink=0.85, label="share of the label's pages (recall)")
        fig.suptitle(title or "Educational classifier on held-out pages")
    return fig


def classifier_f1(metrics: Mapping, title: str | None = None):
    """Per-class F1 (classes 0..5), one bar per classifier kind; dashed: binary F1 at the threshold."""
    kinds = _kinds(metrics)
    classes = list(next(iter(kinds.values()))["per_class"])
    colors = mix_colors(list(kinds))
    width = 0.8 / len(kinds)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.2, 3.4), layout="constrained")
        ax = fig.subplots()
        for k, (kind, m) in enumerate(kinds.items()):
            f1 = [m["per_class"][c]["f1"] for c in classes]
            x = np.arange(len(classes)) + (k - (len(kinds) - 1) / 2) * width
            ax.bar(x, f1, width=width, color=colors[kind], label=f"{kind} (per class)")
            b = m.get("binary") or {}
            if "f1" in b:
                ax.axhline(b["f1"], color=colors[kind], ls="--", lw=1.0,
                           label=f"{kind}: binary F1 at int_score ≥ {b['threshold']} = {b['f1']:.2f}")
        support = [next(iter(kinds.values()))["per_class"][c]["support"] for c in classes]
        ax.set_xticks(range(len(classes)), [f"{c}\nn={s:,}" for c, s in zip(classes, support)], fontsize=8)
        ax.set_xlabel("educational score class (n: held-out pages with that label)")
        ax.set_ylabel("F1 (held-out pages)")
        ax.set_ylim(0, 1.05)
        fig.legend(*ax.get_legend_handles_labels(), frameon=False, loc="outside lower center", ncols=2)
        ax.set_title(title or "Educational classifier: F1 per class")
    return fig


def score_histograms(histograms: Mapping, threshold: int = 3, title: str | None = None):
    """Classifier scores of the pages before filtering and of the pages kept (filter manifest
    `histograms`): the continuous score in 0.25 bins, and the rounded int_score counts."""
    before, after = histograms["before"], histograms["after"]
    edges = np.asarray(before["score_bins"]["edges"], dtype=float)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 3.0), layout="constrained")
        a, b = fig.subplots(1, 2)
        for h, label, color in ((before, "all scored pages", OKABE_ITO[0]), (after, "kept", OKABE_ITO[1])):
            counts = np.asarray(h["score_bins"]["counts"], dtype=float)
            a.stairs(counts, edges, fill=True, alpha=0.55 if h is before else 0.8, color=color,
                     label=f"{label} (n={h['documents']:,})")
        a.axvline(threshold - 0.5, color="#000000", ls="--", lw=0.9, label=f"keep: int_score ≥ {threshold}")
        a.set_xlabel("classifier score (0–5)")
        a.set_ylabel("pages")
        a.set_title("score distribution")
        a.legend(frameon=True, framealpha=0.9, edgecolor="none", loc="upper right")
        ks = sorted(before["int_score"], key=int)
        x = np.arange(len(ks))
        nb = np.array([before["int_score"][k] for k in ks], dtype=float)
        na = np.array([after["int_score"].get(k, 0) for k in ks], dtype=float)
        b.bar(x - 0.2, nb, width=0.4, color=OKABE_ITO[0], alpha=0.8, label="before")
        b.bar(x + 0.2, na, width=0.4, color=OKABE_ITO[1], label="after")
        b.set_xticks(x, ks)
        b.set_xlabel("int_score (rounded, clipped)")
        b.set_ylabel("pages")
        rate = after["documents"] / before["documents"] if before["documents"] else float("nan")
        b.set_title(f"int_score: {rate:.0%} of pages kept")
        b.legend(frameon=True, framealpha=0.9, edgecolor="none", loc="upper right")
        fig.suptitle(title or "Classifier scores before and after filtering")
    return fig


# ---------------------------------------------------------------------------------------------
# data


def mix_composition(table, colors: Mapping[str, str] | None = None, title: str = "Mix composition"):
    """Stacked bars of training tokens per source, one bar per mix (table: mix.composition_table)."""
    with matplotlib.rc_context(STYLE):
        pivot = table.pivot_table(index="mix", columns="source", values="tokens", aggfunc="sum", fill_value=0)
        pivot = pivot.loc[list(dict.fromkeys(table["mix"]))]  # config order
        pivot = pivot[list(dict.fromkeys(table["source"]))]
        fig = Figure(figsize=(1.2 + 0.9 * len(pivot), 3.0))
        ax = fig.subplots()
        bottom = None
        colors = mix_colors(list(pivot.columns), colors)
        for source in pivot.columns:
            vals = pivot[source]
            ax.bar(pivot.index, vals, bottom=bottom, label=source, color=colors[source])
            bottom = vals if bottom is None else bottom + vals
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_ylabel("training tokens (GPT-2)")
        ax.set_xlabel("mix")
        ax.set_title(title)
        ax.legend(title="source", frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.tick_params(axis="x", labelrotation=20)
    return fig


def synthetic_audience_style(per_cell: Mapping[str, int], title: str | None = None):
    """Synthetic documents kept per audience (x) and style (bars): the generate manifest's
    counts.per_cell, keys "audience/style"."""
    cells = {tuple(k.split("/", 1)): int(v) for k, v in per_cell.items()}
    found = {a for a, _ in cells}
    audiences = [a for a in AUDIENCE_ORDER if a in found] + sorted(found - set(AUDIENCE_ORDER))
    styles = sorted({s for _, s in cells})
    width = 0.8 / max(len(styles), 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.4, 3.0), layout="constrained")
        ax = fig.subplots()
        for k, s in enumerate(styles):
            x = np.arange(len(audiences)) + (k - (len(styles) - 1) / 2) * width
            ax.bar(x, [cells.get((a, s), 0) for a in audiences], width=width, label=_pretty(s),
                   color=OKABE_ITO[k % len(OKABE_ITO)])
        ax.set_xticks(range(len(audiences)), [textwrap.fill(_pretty(a), 12) for a in audiences])
        ax.set_xlabel("audience")
        ax.set_ylabel("synthetic documents kept")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(title="style", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title or f"Synthetic documents by audience and style (n={sum(cells.values()):,})")
    return fig


def length_distributions(lengths, unit: str = "GPT-2 tokens", colors: Mapping[str, str] | None = None,
                         title: str | None = None):
    """Histogram (log-spaced bins, share of each source's documents) of document lengths per source,
    with each source's median dashed. lengths: DataFrame with columns source, length."""
    sources = list(dict.fromkeys(lengths["source"]))
    colors = mix_colors(sources, colors)
    values = lengths["length"].to_numpy(dtype=float)
    lo, hi = max(values.min(), 1.0) if len(values) else 1.0, max(values.max(), 2.0) if len(values) else 10.0
    bins = np.geomspace(lo, hi * 1.0001, 30)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.6, 3.0), layout="constrained")
        ax = fig.subplots()
        for s in sources:
            x = np.clip(lengths.loc[lengths["source"] == s, "length"].to_numpy(dtype=float), lo, None)
            counts, _ = np.histogram(x, bins=bins)
            color = colors[s]
            med = float(np.median(x))
            ax.stairs(counts / max(len(x), 1), bins, color=color, lw=1.6,
                      label=f"{s} (n={len(x):,}, median {med:,.0f})")
            ax.axvline(med, color=color, ls="--", lw=0.9)
        ax.set_xscale("log")
        ax.set_xlabel(f"document length ({unit}, log scale)")
        ax.set_ylabel("share of the source's documents")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.legend(title="source (dashed: median)", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title or "Document lengths: real versus synthetic")
    return fig


def decontamination_removals(removals, title: str | None = None):
    """Documents removed per source (table: mix.removals_table) as a share of the source's documents read,
    count at the bar's end: duplicates (exact, near) on the left, contamination per benchmark on the
    right (its own scale: contamination is usually far rarer than duplication)."""
    contam = [c for c in removals.columns if c.startswith("contaminated_")]
    groups = [("duplicates", {"exact_duplicate": "exact", "near_duplicate": "near (MinHash)"}),
              ("benchmark contamination", {c: BENCHMARKS.get(c[13:], c[13:]) for c in contam})]
    srcs = list(removals["source"])
    n_in = np.maximum(removals["documents_in"].to_numpy(dtype=float), 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, max(2.6, 1.2 + 0.45 * len(srcs))), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for g, (ax, (what, cols)) in enumerate(zip(axes, groups)):
            left = np.zeros(len(srcs))
            for i, (col, label) in enumerate(cols.items()):
                share = removals[col].to_numpy(dtype=float) / n_in
                ax.barh(srcs, share, left=left, height=0.6, label=label, color=OKABE_ITO[(2 * g + i) % len(OKABE_ITO)])
                left += share
            total = removals[list(cols)].sum(axis=1).to_numpy() if cols else np.zeros(len(srcs))
            for y, (t, n, x) in enumerate(zip(total, removals["documents_in"], left)):
                ax.text(x, y, f" {int(t):,} of {int(n):,}", va="center", fontsize=7)
            ax.set_xlim(0, max(float(left.max()) * 1.45 if len(left) else 0.0, 0.01))
            ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
            ax.set_xlabel("share of the source's documents")
            ax.set_title(f"{what} removed")
            if cols:
                ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=2)
        axes[0].invert_yaxis()
        axes[0].set_ylabel("source")
        fig.suptitle(title or "Documents removed before mixing, per source")
    return fig


# ---------------------------------------------------------------------------------------------
# DCLM CORE (evaluate/core.py): table rows benchmark `core`; the CORE row has subject None, metric `core`
# (summary.csv: `centered` for trained mixes) and a label that says how many tasks it covers


def core_name(table) -> str:
    """The CORE score's name in this table: its label ("CORE v1 20/22" when tasks are missing), else CORE."""
    if "label" in table:
        labels = table.loc[(table["benchmark"] == "core") & table["label"].notna(), "label"]
        if len(labels):
            return str(labels.iloc[0])
    return "CORE"


def core_rows(table):
    """The CORE rows (one per model and checkpoint), metric `core`, benchmark = the CORE name."""
    t = table[(table["benchmark"] == "core") & table["subject"].isna() & table["metric"].isin(["core", "centered"])]
    return t.assign(benchmark=core_name(table), metric="core")


def with_core(rows, table):
    """Benchmark-level rows plus the CORE rows, when the table has any (the paper's main table)."""
    import pandas as pd

    extra = core_rows(table) if "benchmark" in table else table.iloc[0:0]
    return pd.concat([rows, extra], ignore_index=True) if len(extra) else rows


def core_columns(rows) -> list[str]:
    return [b for b in dict.fromkeys(rows["benchmark"]) if str(b).startswith("CORE")]


def core_vs_tokens(table, colors: Mapping[str, str] | None = None, title: str | None = None):
    """CORE against training tokens, one line per mix (and model size / seed run), its CI shaded; reference
    models with known tokens as points, the others as dotted horizontal lines. The y label is the CORE name."""
    rows = series(core_rows(table))
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    cmap = mix_colors(list(dict.fromkeys(rows["mix"])), colors)
    ref = _is_ref(rows)
    for label, g in rows[~ref].groupby("_label", sort=False):
        g = g.sort_values("tokens")
        c = cmap.get(g["mix"].iloc[0])
        ax.plot(g["tokens"], g["value"], marker="o", ms=3, color=c, label=label)
        ax.fill_between(g["tokens"].astype(float), g["ci_low"].astype(float), g["ci_high"].astype(float),
                        color=c, alpha=0.15, lw=0)
    for label, g in rows[ref].groupby("_label", sort=False):
        c = cmap.get(g["mix"].iloc[0])
        if g["tokens"].notna().any():
            ax.errorbar(g["tokens"], g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]],
                        fmt="s", color=c, label=f"{label} (ref.)")
        else:
            ax.axhline(float(g["value"].iloc[-1]), ls=":", color=c, label=f"{label} (ref.)")
    ax.axhline(0.0, color="grey", lw=0.8)
    if rows["tokens"].notna().any():
        ax.set_xscale("log")
        _tokens_axis(ax)
    ax.set_ylabel(f"{core_name(table)} (centered acc.)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "DCLM CORE during training")
    return fig


def core_per_task(table, colors: Mapping[str, str] | None = None, title: str | None = None):
    """Centered accuracy per CORE task of each mix's (and reference's) last checkpoint: grouped horizontal
    bars with CIs; 0 is chance."""
    t = table[(table["benchmark"] == "core") & table["subject"].notna() & (table["metric"] == "centered")]
    rows = series(final_rows(t)) if len(t) else t.assign(_label=[])
    tasks = list(dict.fromkeys(rows["subject"]))
    labels = list(dict.fromkeys(rows["_label"]))
    fig = Figure(figsize=(5.5, 0.28 * max(len(tasks), 1) * max(1, len(labels) / 2) + 1.0), layout="constrained")
    ax = fig.subplots()
    cmap = mix_colors(list(dict.fromkeys(rows["mix"])), colors)
    h = 0.8 / max(len(labels), 1)
    y = np.arange(len(tasks))
    for k, label in enumerate(labels):
        g = rows[rows["_label"] == label].set_index("subject").reindex(tasks)
        ax.barh(y + k * h, g["value"], height=h, color=cmap.get(g["mix"].dropna().iloc[0]) if g["mix"].notna().any()
                else None, xerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]], error_kw={"lw": 0.6},
                label=label)
    ax.set_yticks(y + h * (len(labels) - 1) / 2, tasks, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("centered accuracy (0 = random)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or f"{core_name(table)}: centered accuracy per task")
    return fig
