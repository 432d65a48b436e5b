"""Figures, tables and the `figures` stage, from small tables in the real shapes of each stage's
outputs (evaluate's tidy table, llm.c main.log, classifier.evaluate, the filter's histograms, the
mix and generate manifests). Offline and TeX-free."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pipelines.classify import metrics as classify_metrics
from pipelines.errors import StudyError
from pipelines.evaluate.decisions import decide
from pipelines.evaluate.tables import TABLE_COLUMNS
from pipelines.figures import figures as paper
from pipelines.figures import plots as F
from pipelines.figures import tables as T
from pipelines.runs.manifest import Run
from pipelines.runs.readers import composition_table, removals_table
from pipelines.runs.trainlog import read_log

MIXES = ["web", "synthetic", "web85-syn15", "web-edu", "edu85-syn15"]
BENCH = ["arc_easy", "arc_challenge", "hellaswag", "mmlu"]


# ---------------------------------------------------------------------------------------------
# real-shaped inputs


def eval_table(steps=(20, 40, 60), tokens_per_step=2048, best="web-edu") -> pd.DataFrame:
    """evaluate's table.csv rows: per mix and checkpoint, per benchmark/form/metric; MMLU per subject
    and macro average; a reference model without a step. `best` wins every benchmark."""
    rng = np.random.default_rng(0)
    rows = []

    def add(mix, step, tokens, ref, bump):
        for b in BENCH:
            forms = ["cloze", "letter"] if b == "mmlu" else ["cloze"]
            for form in forms:
                for metric in (["acc"] if form == "letter" else ["acc", "acc_norm"]):
                    v = 0.25 + bump + rng.uniform(0, 0.03)
                    base = {"mix": mix, "step": step, "tokens": tokens, "benchmark": b, "form": form,
                            "metric": metric, "n": 200, "random_baseline": 0.25, "fewshot": 0, "reference": ref,
                            "model": f"{mix}/model.bin"}
                    if b == "mmlu":
                        for s in ("anatomy", "astronomy"):
                            rows.append({**base, "subject": s, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1,
                                         "n": 100})
                    rows.append({**base, "subject": None, "value": v, "ci_low": v - 0.04, "ci_high": v + 0.05})

    for i, mix in enumerate(MIXES):
        for k, step in enumerate(steps):
            add(mix, step, step * tokens_per_step, False, 0.01 * k + (0.2 if mix == best else 0.02 * i))
    add("SmolLM2-135M-Instruct", None, 2_000_000_000_000, True, 0.4)
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return df


def decisions_report(seeds: int = 3) -> dict:
    """evaluate/decisions.json of a study of 3 mixes x 2 model sizes x `seeds` seeds (the real decide() on
    synthetic per-item values): `synthetic` has clearly more bits per byte than `web` and `web-edu`, which
    are the same mix; accuracy differs nowhere."""
    rng = np.random.default_rng(5)
    n = 100
    hard = {b: rng.normal(3.0, 0.4, n) for b in ("arc_easy", "mmlu")}
    runs = []
    for scale, gain in (("d2c64", 0.0), ("d4c128", 0.3)):
        for mix, worse in (("web", 0.0), ("web-edu", 0.0), ("synthetic", 0.5)):
            for s in range(seeds):
                u = rng.normal(0, 0.02)
                values = {f"{b}_cloze": {"bpb": (hard[b] - gain + worse + u + rng.normal(0, 0.05, n))[None],
                                         "acc": (rng.random(n) < 0.3).astype(float)[None]} for b in hard}
                runs.append({"mix": mix, "scale": scale, "seed": [42, 1, 2][s], "steps": [60], "tokens": 60 * 2048,
                             "values": values})
    tasks = {f"{b}_cloze": {"benchmark": b, "form": "cloze", "groups": np.array(["anatomy", "law"] * 50) if b == "mmlu"
                            else None, "random_baseline": {"acc": 0.25}} for b in hard}
    return json.loads(json.dumps(decide(runs, tasks, ["d2c64", "d4c128"], 0.95, 400, seed=1)))


def write_eval_csv(path, df):
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)  # what pandas reads back is what figures see (NaN subject, bool reference)
    return pd.read_csv(path)


def main_log(path, steps=60, val_every=20, hs=True, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for s in range(steps + 1):
        loss = 10.8 * np.exp(-s / 40) + 3 + rng.uniform(0, 0.2)
        if s % val_every == 0:
            lines.append(f"s:{s} tel:{loss + 0.3:.4f}")
            if hs:
                lines.append(f"s:{s} eval:{0.25 + s / 1000:.4f}")
        if s < steps:
            lines.append(f"s:{s} trl:{loss:.4f} lr:0.003000 norm:1.2")
    path.mkdir(parents=True, exist_ok=True)
    (path / "main.log").write_text("\n".join(lines) + "\n")
    return path


def classifier_metrics(kinds=("embedding", "hashed")) -> dict:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, size=120).astype(float)
    out = {}
    for i, k in enumerate(kinds):
        pred = np.clip(y + rng.normal(0, 0.6 + 0.4 * i, size=len(y)), 0, 5)
        out[k] = classify_metrics.classifier_metrics(y, pred, 3)
    return {"threshold": 3, "kinds": out}


def filter_histograms() -> dict:
    from pipelines.filter.filter import SCORE_BINS, _merge_hist

    rng = np.random.default_rng(2)
    scores = np.clip(rng.gamma(2.0, 0.7, size=400), 0, 5)

    def part(xs):
        k = np.clip(np.floor(xs + 0.5), 0, 5).astype(int)
        bins = np.clip(np.searchsorted(SCORE_BINS, xs, side="right") - 1, 0, len(SCORE_BINS) - 2)
        return {"documents": len(xs), "int_score": np.bincount(k, minlength=6).tolist(),
                "bins": np.bincount(bins, minlength=len(SCORE_BINS) - 1).tolist(),
                "per_source": {"web": len(xs)}, "score_sum": float(xs.sum())}

    return _merge_hist([{"before": part(scores), "after": part(scores[np.floor(scores + 0.5) >= 3])}])


def mix_manifest() -> dict:
    sources = {"web": (900_000, 1200), "synthetic": (120_000, 300), "web-edu": (80_000, 90)}
    weights = {"web": {"web": 1.0}, "synthetic": {"synthetic": 1.0}, "web85-syn15": {"web": 0.85, "synthetic": 0.15},
               "web-edu": {"web-edu": 1.0}, "edu85-syn15": {"web-edu": 0.85, "synthetic": 0.15}}
    mixes = []
    for name, w in weights.items():
        per = {}
        for s, x in w.items():
            tok = int(300_000 * x)
            per[s] = {"weight": x, "target_tokens": tok, "tokens": tok, "documents": tok // 700,
                      "unique_documents": min(tok // 700, sources[s][1]), "available_documents": sources[s][1],
                      "available_tokens": sources[s][0], "epochs": round(tok / sources[s][0], 4)}
        mixes.append({"name": name, "budget_tokens": 300_000, "tokens": sum(v["tokens"] for v in per.values()),
                      "documents": sum(v["documents"] for v in per.values()), "per_source": per})
    bench = ["arc_easy", "arc_challenge", "hellaswag", "mmlu"]
    src = {"web": {"stage": "ingest", "documents_in": 1300, "exact_duplicate": 40, "near_duplicate": 25,
                   "contaminated": {"mmlu": 3, "hellaswag": 1}, "documents_kept": 1231, "tokens_kept": 900_000},
           "synthetic": {"stage": "generate", "documents_in": 310, "exact_duplicate": 0, "near_duplicate": 9,
                         "contaminated": {"arc_easy": 1}, "documents_kept": 300, "tokens_kept": 120_000},
           "web-edu": {"stage": "filter", "documents_in": 95, "exact_duplicate": 2, "near_duplicate": 3,
                       "contaminated": {}, "documents_kept": 90, "tokens_kept": 80_000}}
    return {"mixes": mixes, "sources": src,
            "decontamination": {"ngram": 13, "benchmarks": bench,
                                "per_source": {k: v["contaminated"] for k, v in src.items()}}}


PER_CELL = {"young_children/story": 5, "young_children/textbook_narrative": 4, "middle_school/blog_post": 6,
            "high_school/wikihow": 3, "college_students/textbook_academic": 7, "researchers/textbook_academic": 2}


def lengths() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame([{"source": s, "length": int(x)} for s, mu in (("web", 6.3), ("synthetic", 5.8))
                         for x in rng.lognormal(mu, 0.8, size=200)])


@pytest.fixture
def logs(tmp_path):
    return {m: read_log(main_log(tmp_path / m, seed=i), tokens_per_step_=2048) for i, m in enumerate(MIXES[:3])}


# ---------------------------------------------------------------------------------------------
# figures


def _figures(tmp_path, logs):
    table = write_eval_csv(tmp_path / "table.csv", eval_table())
    mix = mix_manifest()
    return {
        "benchmark_comparison": lambda: F.benchmark_comparison(table),
        "benchmarks_vs_tokens": lambda: F.benchmarks_vs_tokens(table, boundaries=[40_000, 80_000]),
        "training_curves": lambda: F.training_curves(logs, boundaries=[60_000]),
        "classifier_confusion": lambda: F.classifier_confusion(classifier_metrics()),
        "classifier_f1": lambda: F.classifier_f1(classifier_metrics()),
        "score_histograms": lambda: F.score_histograms(filter_histograms(), 3),
        "mix_composition": lambda: F.mix_composition(composition_table(mix)),
        "synthetic_audience_style": lambda: F.synthetic_audience_style(PER_CELL),
        "length_distributions": lambda: F.length_distributions(lengths()),
        "decontamination_removals": lambda: F.decontamination_removals(removals_table(mix)),
        "decision_matrix": lambda: F.decision_matrix(decisions_report()),
        "signal_noise": lambda: F.signal_noise(decisions_report()),
    }


FIGURES = ["benchmark_comparison", "benchmarks_vs_tokens", "training_curves", "classifier_confusion", "classifier_f1",
           "score_histograms", "mix_composition", "synthetic_audience_style", "length_distributions",
           "decontamination_removals", "decision_matrix", "signal_noise"]
TABLES = ["main_results", "metric_scores", "decisions", "signal_noise", "classifier_metrics", "mix_composition",
          "data_sources"]


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_renders_and_writes_pdf_and_png(tmp_path, logs, name):
    fig = _figures(tmp_path, logs)[name]()
    assert isinstance(fig, Figure)
    paths = F.save(fig, tmp_path / "out", name)
    assert [p.name for p in paths] == [f"{name}.pdf", f"{name}.png"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    assert fig.axes[0].get_ylabel()  # the quantity and its unit (panels sharing y label the first only)
    for ax in fig.axes:  # every panel is titled or labelled
        assert ax.get_title() or ax.get_xlabel() or ax.get_label() == "<colorbar>", name


def test_every_figure_in_the_module_is_covered():
    documented = re.findall(r"^  (\w+) ", F.__doc__, re.M)
    assert sorted(documented) == sorted(FIGURES)
    assert all(callable(getattr(F, n)) for n in FIGURES)


def test_benchmark_comparison_one_panel_per_benchmark_one_bar_per_mix(tmp_path):
    table = write_eval_csv(tmp_path / "t.csv", eval_table())
    fig = F.benchmark_comparison(table)
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["ARC-Easy", "ARC-Challenge", "HellaSwag", "MMLU"]
    ax = fig.axes[0]
    assert len(ax.patches) == len(MIXES) + 1  # one bar per mix + the reference model
    # each bar is the mix's LAST checkpoint (step 60), acc_norm, in percent
    last = table[(table.mix == "web") & (table.step == 60) & (table.benchmark == "arc_easy") &
                 (table.metric == "acc_norm") & table.subject.isna()]
    assert ax.patches[0].get_height() == pytest.approx(100 * last.value.iloc[0])
    # random baseline drawn at 25 % and present in the legend
    assert any(np.allclose(line.get_ydata(), 25) for line in ax.get_lines())
    assert "random baseline" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(getattr(c, "errorbar", None) is not None for c in ax.containers)  # CI error bars


def test_benchmarks_vs_tokens_lines_over_checkpoints_and_stage_boundaries(tmp_path):
    table = write_eval_csv(tmp_path / "t.csv", eval_table())
    fig = F.benchmarks_vs_tokens(table, boundaries=[50_000])
    ax = fig.axes[0]
    xs = sorted({tuple(line.get_xdata()) for line in ax.get_lines() if len(line.get_xdata()) == 3})
    assert xs == [(20 * 2048.0, 40 * 2048.0, 60 * 2048.0)]  # x is training tokens, one point per checkpoint
    assert any(list(line.get_xdata()) == [50_000, 50_000] for line in ax.get_lines())  # the stage boundary
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(MIXES) <= set(labels) and "stage boundary" in labels and "SmolLM2-135M-Instruct (reference)" in labels
    assert "training tokens" in ax.get_xlabel()


def test_training_curves_validation_loss_from_main_log(logs):
    fig = F.training_curves(logs)
    ax = fig.axes[0]
    val = [line for line in ax.get_lines() if line.get_label() == "web"][0]
    df = logs["web"]
    assert list(val.get_ydata()) == list(df.loc[df.val_loss.notna(), "val_loss"])
    assert list(val.get_xdata()) == [0, 40960, 81920, 122880]
    assert len(fig.axes) == 2 and "HellaSwag" in fig.axes[1].get_ylabel()


def test_training_curves_without_token_counts_fall_back_to_steps(tmp_path):
    df = read_log(main_log(tmp_path / "m", hs=False))  # no launch.json: tokens unknown
    fig = F.training_curves({"m": df})
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "training step"


def test_classifier_figures_show_the_metrics():
    m = classifier_metrics()
    fig = F.classifier_confusion(m)
    ax = fig.axes[0]
    cm = np.array(m["kinds"]["embedding"]["confusion_matrix"]["matrix"])
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(cm.ravel().tolist())
    assert ax.get_ylabel() == "label (labels)"  # named by what the labels are, never assumed to be an LLM's
    assert F.classifier_confusion(m, label="sample labels: edu_score").axes[0].get_ylabel() == \
        "label (sample labels: edu_score)"
    fig = F.classifier_f1(m)
    heights = [p.get_height() for p in fig.axes[0].patches][:6]
    assert heights == pytest.approx([m["kinds"]["embedding"]["per_class"][str(c)]["f1"] for c in range(6)])


def test_colours_are_shared_and_colour_blind_safe():
    c = F.mix_colors(["web", "synthetic"], {"web": F.OKABE_ITO[2]})
    assert c["web"] == F.OKABE_ITO[2] and c["synthetic"] == F.OKABE_ITO[0]
    assert set(F.mix_colors(MIXES).values()) <= set(F.OKABE_ITO)


# ---------------------------------------------------------------------------------------------
# tables


def balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    envs = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            envs.append(env)
        elif not envs or envs.pop() != env:
            return False
    return depth == 0 and not envs


def test_latex_escape_every_special_character():
    raw = r"50% of R&D costs $5 #1 a_b {x} ~ ^ \ <>|"
    out = T.latex_escape(raw)
    assert out == (r"50\% of R\&D costs \$5 \#1 a\_b \{x\} \textasciitilde{} \textasciicircum{} "
                   r"\textbackslash{} \textless{}\textgreater{}\textbar{}")
    assert T.latex_escape("45.2 ± 1.3, ≥ 3") == r"45.2 \ensuremath{\pm} 1.3, \ensuremath{\geq} 3"
    assert balanced(out)


def _best_report(significant: dict[str, bool]) -> dict:
    """A decisions.json whose best mix (web-edu) is, per benchmark, significantly better than the runner-up
    or not."""
    return {"scales": ["d4c128"], "results": [
        {"scale": "d4c128", "benchmark": b, "form": "cloze", "metric": "acc_norm",
         "best": {"mix": "web-edu", "runner_up": "web", "significant": sig}} for b, sig in significant.items()]}


def test_main_results_bold_only_where_the_best_is_significantly_better(tmp_path):
    table = write_eval_csv(tmp_path / "t.csv", eval_table(best="web-edu"))
    t = T.main_results(table)  # no decision report: bold only where the top CI lies above the runner-up's
    bold_rows = [line for line in t.latex.splitlines() if r"\textbf{" in line]
    assert len(bold_rows) == 1 and bold_rows[0].startswith("web-edu") and bold_rows[0].count(r"\textbf{") == 4
    assert balanced(t.latex) and "CI lies wholly above the runner-up's" in t.caption
    close = table.copy()
    close.loc[close["mix"] == "web-edu", "value"] -= 0.17  # now inside the runner-up's CI
    assert r"\textbf{" not in T.main_results(close).latex and "overlaps" in T.main_results(close).caption
    for env in ("table", "tabular"):
        assert t.latex.count(rf"\begin{{{env}}}") == t.latex.count(rf"\end{{{env}}}") == 1
    assert all(r in t.latex for r in (r"\toprule", r"\midrule", r"\bottomrule"))
    report = _best_report({"arc_easy": True, "arc_challenge": False, "hellaswag": True, "mmlu": False})
    t = T.main_results(table, decisions=report)
    rows = [line for line in t.latex.splitlines() if line.endswith(r"\\")][1:]  # after the header
    by_mix = {r.split(" & ")[0]: r for r in rows}
    assert set(by_mix) == {*(m.replace("_", r"\_") for m in MIXES), "SmolLM2-135M-Instruct (ref.)"}
    cells = by_mix["web-edu"].split(" & ")
    assert [c.startswith(r"\textbf{") for c in cells] == [False, False, True, False, True, False, False]  # Avg.: untested
    assert all(r"\textbf{" not in by_mix[m] for m in MIXES if m != "web-edu")
    assert r"\textbf{" not in by_mix["SmolLM2-135M-Instruct (ref.)"]  # references are never ranked
    assert t.data.loc[t.data.mix == "web-edu", "arc_easy_significantly_best"].item()
    no = T.main_results(table, decisions=_best_report({b: False for b in BENCH}))
    assert r"\textbf{" not in no.latex and "none is significantly better" in no.caption
    # mean ± CI half-width, in percent
    web = table[(table.mix == "web") & (table.step == 60) & (table.benchmark == "hellaswag") &
                (table.metric == "acc_norm")].iloc[0]
    cell = f"{100 * web.value:.1f} \\ensuremath{{\\pm}} {100 * (web.ci_high - web.ci_low) / 2:.1f}"
    assert cell in by_mix["web"]
    assert t.data.loc[t.data.mix == "web", "hellaswag"].iloc[0] == pytest.approx(100 * web.value)


def test_seeds_and_model_sizes_in_the_figures_and_the_main_table(tmp_path):
    """A table.csv with two model sizes and three seeds per mix: one bar per mix and size (seeds averaged),
    one line per mix and size over the checkpoints, one row per mix and size in the main table."""
    base = eval_table(steps=(20, 40))
    parts = []
    for scale in ("d2c64", "d4c128"):
        for seed in (42, 1, 2):
            t = base[~base["reference"]].copy()
            t["scale"], t["seed"] = scale, seed
            t["value"] = t["value"] + 0.01 * seed + (0.05 if scale == "d4c128" else 0)
            parts.append(t)
    table = write_eval_csv(tmp_path / "t.csv", pd.concat(parts + [base[base["reference"]]], ignore_index=True))
    fig = F.benchmark_comparison(table)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * len(MIXES) + 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "web · d2c64" in labels and "web · d4c128" in labels
    web = table[(table.mix == "web") & (table.scale == "d4c128") & (table.step == 40) & table.subject.isna() &
                (table.benchmark == "arc_easy") & (table.metric == "acc_norm")]
    heights = sorted(p.get_height() for p in ax.patches)
    assert 100 * web.value.mean() == pytest.approx(heights[[round(h, 6) for h in heights].index(
        round(100 * web.value.mean(), 6))])  # the seeds' mean
    fig = F.benchmarks_vs_tokens(table)
    two = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"]
    assert len(two) == 2 * len(MIXES)  # a line per mix and model size, seeds averaged
    t = T.main_results(table)
    assert {"web · d2c64", "web · d4c128"} <= set(t.display["Mix"]) and "3 training seeds" in t.caption


def test_decision_figures_and_tables_show_the_report():
    report = decisions_report()
    fig = F.decision_matrix(report)
    results = F.decision_results(report)  # the largest model size, highest signal-to-noise first
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == len(results) == 4
    assert results[0]["metric"] == "bpb" and fig.axes[0].get_title().startswith(results[0]["label"].replace("_", " "))
    pair = next(p for p in results[0]["pairs"] if (p["a"], p["b"]) == ("web", "synthetic"))
    assert pair["verdict"] == "better"  # synthetic: more bits per byte (lower is better)
    texts = {t.get_text() for t in fig.axes[0].texts}
    # row web, column synthetic: web is better, so the cell is positive: minus the difference in bits per byte
    assert f"{-pair['diff']:+.2f}\n[{-pair['ci_high']:+.2f}, {-pair['ci_low']:+.2f}]" in texts
    bold = [t for t in fig.axes[0].texts if t.get_fontweight() == "bold"]
    assert len(bold) == 4  # web and web-edu against synthetic, both directions; web vs web-edu is not detected
    d = T.decisions_table(report)
    assert balanced(d.latex) and d.display.columns.tolist()[:2] == ["Metric", "SNR"]
    arc = next(p for r in results if r["key"] == "arc_easy/cloze/bpb" for p in r["pairs"]
               if (p["a"], p["b"]) == ("web", "synthetic"))
    row = d.display.set_index("Metric").loc["ARC-Easy bpb ↓"]
    assert row["web − synthetic"] == f"{arc['diff']:+.3f} [{arc['ci_low']:+.3f}, {arc['ci_high']:+.3f}]"
    bpb_line = next(line for line in d.latex.splitlines() if line.startswith("ARC-Easy bpb"))
    assert bpb_line.count(r"\textbf{") == 2  # two detected pairs; web vs web-edu is plain
    assert set(d.data["verdict"]) <= {"better", "worse", "no detectable difference"}
    assert len(d.data) == 2 * 4 * 3  # every scale, metric and pair in the CSV
    scores = T.metric_scores(report)  # every metric, continuous ones too, of every mix
    assert balanced(scores.latex) and scores.display.columns.tolist() == ["Metric", "web", "web-edu", "synthetic"]
    v = next(r for r in results if r["key"] == "arc_easy/cloze/bpb")["mixes"]["synthetic"]
    assert scores.display.set_index("Metric").loc["ARC-Easy bpb ↓", "synthetic"] == (
        f"{v['value']:.3f} ± {(v['ci_high'] - v['ci_low']) / 2:.3f}")
    assert r"\textbf{" not in scores.latex  # web and web-edu tie for best: nobody is significantly best
    sn = T.signal_noise_table(report)
    assert balanced(sn.latex) and "Dec. acc. d2c64" in sn.display.columns
    text = T.results_paragraph(report)
    assert "web vs web-edu: no detectable difference" in text and text.count("\n\n") >= 3
    assert r"\textbf" not in text and balanced(text)
    fig = F.signal_noise(report)
    assert "decision accuracy" in fig.axes[1].get_title()


def test_mix_table_of_a_streaming_mix_without_epochs():
    m = mix_manifest()
    for mix in m["mixes"]:  # a streaming mix knows epochs only for a source read to its end
        for v in mix["per_source"].values():
            v.update(epochs=None, available_tokens=None, available_documents=None)
    t = T.mix_composition(m)
    assert balanced(t.latex) and "ep.)" not in t.latex and "None" not in t.latex and "& 45k & 255k" in t.latex
    assert F.mix_composition(composition_table(m)) is not None


def test_tables_escape_names_and_write_tex_and_csv(tmp_path):
    m = mix_manifest()
    m["mixes"][0]["name"] = "web_50%&more"
    t = T.mix_composition(m)
    assert r"web\_50\%\&more" in t.latex and balanced(t.latex)
    paths = t.write(tmp_path)
    assert [p.name for p in paths] == ["mix_composition.tex", "mix_composition.csv"]
    csv = pd.read_csv(paths[1])
    assert csv.loc[0, "mix"] == "web_50%&more" and csv.loc[2, "synthetic_share"] == pytest.approx(0.15, abs=0.01)
    c = T.classifier_metrics(classifier_metrics())
    assert balanced(c.latex) and r"\ensuremath{\geq}" in c.latex
    rows = {line.split(" & ")[0]: line.split(" & ") for line in c.latex.splitlines() if line.endswith(r"\\")}
    assert len(rows) == 1 + len(c.data) and r"\textbf{" not in c.latex  # no CIs: no kind is shown to be best
    assert "No bold" in c.caption
    s = T.data_sources(removals_table(m))
    assert balanced(s.latex) and "1,300" in s.latex


# ---------------------------------------------------------------------------------------------
# the stage: missing inputs, and a complete fake run through `study figures`


def _run(tmp_path, ci_config) -> Run:
    return Run(ci_config(), "figs")


def test_missing_inputs_name_the_stage_to_run_first(tmp_path, ci_config):
    run = _run(tmp_path, ci_config)
    res = paper.render(run, log=lambda m: None)
    assert not res.figures and not res.tables
    text = "\n".join(res.missing)
    for stage, cmd in (("evaluate", "study evaluate"), ("classify", "study classifier train"),
                       ("filter", "study classifier apply"), ("mix", "study mix"), ("train", "study train"),
                       ("generate", "study generate")):
        assert f"`{stage}` stage" in text and f"`{cmd} --preset ci --run figs`" in text, stage
    with pytest.raises(StudyError, match="nothing to draw"):
        paper.make(run, **QUIET)


QUIET = {"log": lambda m: None}


def ensure(run: Run, stage: str, fn=lambda ctx: {}) -> None:
    """Make `stage` done through Run.execute (a real manifest), its upstream stages first (empty ones)."""
    for dep in run.inputs(stage):
        if run.state(dep).status != "done":
            ensure(run, dep)
    run.execute(stage, fn, **QUIET)


def _write_docs(d, name, n, words):
    import gzip

    (d / name).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(d / name, "wt") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "text": " ".join(["word"] * (words + i)), "source": "x",
                                "metadata": {}}) + "\n")
    return {"split": "train", "path": name, "documents": n}


def _classify(ctx):
    (ctx.dir / "metrics.json").write_text(json.dumps(classifier_metrics()))
    return {}


def _train(ctx):
    for m in MIXES[:2]:
        main_log(ctx.dir / m)
        (ctx.dir / m / "launch.json").write_text(json.dumps({"flags": ["-d", "2048"]}))
    return {"outputs": [{"mix": m} for m in MIXES[:2]]}


def _evaluate(ctx):
    write_eval_csv(ctx.dir / "table.csv", eval_table())
    (ctx.dir / "decisions.json").write_text(json.dumps(decisions_report()))
    return {}


def fake_stages(run: Run) -> None:
    """Every stage the figures read, done, with outputs in the real shapes."""
    ensure(run, "ingest", lambda ctx: {"outputs": [_write_docs(ctx.dir, "train/w.jsonl.gz", 30, 200)]})
    ensure(run, "generate", lambda ctx: {"outputs": [_write_docs(ctx.dir, "documents/s.jsonl.gz", 10, 50)],
                                         "counts": {"per_cell": PER_CELL}})
    ensure(run, "classify", _classify)
    ensure(run, "filter", lambda ctx: {"histograms": filter_histograms(), "classifier": {"threshold": 3}})
    ensure(run, "mix", lambda ctx: mix_manifest())
    ensure(run, "train", _train)
    ensure(run, "evaluate", _evaluate)


def test_study_figures_writes_everything_and_exports_into_paper(tmp_path, ci_config, monkeypatch):
    from pipelines.cli import main

    run = _run(tmp_path, ci_config)
    fake_stages(run)
    paper_dir = tmp_path / "paper"
    (paper_dir / "figures").mkdir(parents=True)
    (paper_dir / "figures" / ".gitkeep").write_text("")
    (paper_dir / "figures" / "old_figure.pdf").write_text("from another run")
    monkeypatch.setattr(paper, "PAPER_DIR", paper_dir)
    rc = main(["figures", "--preset", "ci", "--run", "figs", "--set", f"results_dir={run.config.results_dir}",
               "--set", f"ingest.path={run.config.ingest.path}"])
    assert rc == 0
    m = run.read_manifest("figures")
    assert m["missing"] == [] and m["counts"] == {"figures": len(FIGURES), "tables": len(TABLES), "texts": 3,
                                                  "missing": 0}
    out = run.dir("figures")
    for name in FIGURES:
        assert (out / f"{name}.pdf").exists() and (out / f"{name}.png").exists()
        assert (paper_dir / "figures" / f"{name}.pdf").exists()
    for name in TABLES:
        assert (paper_dir / "tables" / f"{name}.tex").exists() and (paper_dir / "tables" / f"{name}.csv").exists()
    assert "no detectable difference" in (paper_dir / "tables" / "results_text.tex").read_text()
    report = (paper_dir / "tables" / "report.tex").read_text()  # the run report, the paper's appendix
    assert r"\section{Run report: figs}" in report and balanced(report)
    assert r"\paragraph{Synthetic text.}" in (paper_dir / "tables" / "setup_text.tex").read_text()
    assert not (paper_dir / "figures" / "old_figure.pdf").exists()  # another run's figure is gone
    assert (paper_dir / "figures" / ".gitkeep").exists()
    macros = (paper_dir / "tables" / "study.tex").read_text()
    assert r"\renewcommand{\studyrun}{figs}" in macros and balanced(macros)
    assert set(m["read"]) == {"evaluate", "train", "classify", "filter", "mix", "generate", "ingest"}


def test_partial_run_still_makes_the_other_figures(tmp_path, ci_config):
    run = _run(tmp_path, ci_config)
    ensure(run, "classify", _classify)
    result = paper.make(run, **QUIET)
    assert {o.name for o in result.outputs} == {"classifier_confusion", "classifier_f1", "classifier_metrics",
                                                      "setup_text", "report"}  # the texts say what is there
    assert any("`study evaluate --preset ci --run figs` first" in m for m in result.missing)
    assert (run.dir("figures") / "classifier_confusion.png").exists()
    assert (run.dir("figures") / "tables" / "classifier_metrics.tex").exists()
    # drawn, but the stage is not complete until every stage it reads is done
    assert run.state("figures").status == "incomplete"
    macros = (run.dir("figures") / "tables" / "study.tex").read_text()
    assert r"main\_results (needs evaluate)" in macros and r"classifier\_metrics (" not in macros


def test_notebook_is_thin_parameterised_and_committed_without_outputs():
    import ast

    import nbformat

    from pipelines.config import PROJECT_ROOT

    nb = nbformat.read(PROJECT_ROOT / "notebooks" / "07_figures.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    values = {t.targets[0].id: ast.literal_eval(t.value) for t in ast.parse(code[0].source).body}
    assert values == {"run": "smoke", "preset": "smoke", "results_dir": "results", "overrides": []}
    setup = code[1].source
    assert "cfg, run_dir = setup(run, preset, results_dir, overrides)" in setup
    assert all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    assert "paper.make(Run(cfg, run))" in source and "display(fig)" in source


@pytest.fixture
def tables_only(monkeypatch):
    """Stage-behaviour tests need not draw every figure: only the tables (fast)."""
    monkeypatch.setattr(paper, "OUTPUTS", [o for o in paper.OUTPUTS if o.kind == "table"])


def test_figures_stage_is_skipped_while_inputs_are_unchanged_and_redrawn_after_a_rerun(tmp_path, ci_config,
                                                                                         tables_only):
    run = _run(tmp_path, ci_config)
    fake_stages(run)
    paper.make(run, **QUIET)
    path = run.manifest_path("figures")
    stamp = path.stat().st_mtime_ns
    assert run.state("figures").status == "done"
    paper.make(run, **QUIET)  # nothing changed: skipped (as `study run` skips it)
    assert path.stat().st_mtime_ns == stamp
    run.execute("evaluate", _evaluate, force=True, **QUIET)  # an upstream stage is rerun
    assert run.state("figures").status == "stale"
    paper.make(run, **QUIET)
    assert path.stat().st_mtime_ns != stamp and run.state("figures").status == "done"


def test_a_sweep_point_never_shares_the_figures_of_another_point(tmp_path, ci_config, tables_only):
    a = Run(ci_config(), "a")
    fake_stages(a)
    paper.make(a, **QUIET)
    b = Run(ci_config("share_with=[a]", "evaluate.limit=9"), "b")  # another point: its own evaluation
    fake_stages(b)
    assert b.dir("mix").is_symlink()  # upstream stages with the same config are shared ...
    paper.make(b, **QUIET)
    assert not b.dir("figures").is_symlink()  # ... figures of other inputs are not
    assert r"\renewcommand{\studyrun}{b}" in (b.dir("figures") / "tables" / "study.tex").read_text()
