"""The run report: one page on what a run is and what a researcher must know before reading its results.

`study report RUN` prints it and writes results/<run>/report.md; notebook 07 and the paper's appendix
start with it (the figures stage renders it as LaTeX). It reads only what the stages wrote (their typed
results, pipelines/runs/results.py read_result; train logs, evaluate/decisions.json or table.csv), so it
works on a partial run and on a copied one.

  facts    what the run is: preset, data, sources and their tokens, which labels trained the classifier,
           the generator / annotator / trained / reference models
  flags    each with its number: a source repeated over several epochs, models trained on fewer tokens
           than their mix's budget, annotation parse failures over 20%, validation loss rising while
           train loss falls, classifier classes with fewer than 10 labelled pages, differences within
           their confidence intervals
  labels   which labels trained the classifier, in words and as a figure axis name
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.config import load_config
from pipelines.errors import StudyError
from pipelines.files import write_text_atomic
from pipelines.runs.manifest import STAGES, Run, check_run_name
from pipelines.runs.results import DataSet, GitState, StageResult, as_result, read_result
from pipelines.runs.trainlog import read_log

REPORT_FILE = "report.md"
PARSE_FAILURE_MAX = 0.2  # an annotator whose answers fail to parse more often than this is flagged
MIN_CLASS_PAGES = 10  # classifier classes with fewer labelled pages are flagged
VAL_RISE = 0.01  # validation loss this much (relative) above its minimum at the end counts as rising
# label fields the embedded and hub data carry, in words
KNOWN_FIELDS = {"meta.edu_score": "FineWeb-Edu Llama-3 educational scores (0-5)",
                "meta.dclm_human_quality_label": "DCLM human quality labels (0/1)",
                "score": "FineWeb-Edu Llama-3 educational scores (0-5)",
                "annotation.score": "this run's LLM annotation scores (0-5)"}


@dataclass
class Flag:
    kind: str  # repeated_source | under_budget | parse_failures | val_loss_rising | small_classes | within_ci
    title: str  # a few words
    value: float  # the number the flag is about (epochs, share of the budget, rate, loss rise, classes, count)
    message: str  # one sentence with its numbers


@dataclass
class Report:
    run: str
    facts: list[tuple[str, str]] = field(default_factory=list)  # (what, text)
    flags: list[Flag] = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # label_source(): used, short, text, fields
    info: dict = field(default_factory=dict)  # the facts' numbers and names, for the paper's Setup text
    not_checked: list[str] = field(default_factory=list)  # flags that need a stage this run lacks

    def fact(self, what: str) -> str | None:
        return dict(self.facts).get(what)

    def markdown(self) -> str:
        lines = [f"# Run report: `{self.run}`", "", "## What this run is", "", "| | |", "| --- | --- |"]
        lines += [f"| {what} | {text.replace('|', '/')} |" for what, text in self.facts]
        lines += ["", f"## Flags ({len(self.flags)})", ""]
        if self.flags:
            lines += [f"- **{f.title}**: {f.message}" for f in self.flags]
        else:
            lines.append("- none of the checks below found anything to flag")
        checks = ("sources repeated over epochs (mix); trained tokens below the mix budget (train); annotation "
                  f"parse failures over {PARSE_FAILURE_MAX:.0%} (annotate); validation loss rising while train "
                  f"loss falls (train logs); classifier classes with fewer than {MIN_CLASS_PAGES} pages "
                  "(classify); differences within their CIs (evaluate)")
        lines += ["", f"Checked: {checks}."]
        if self.not_checked:
            lines.append("Not checked (stage not there, or unreadable): " + "; ".join(self.not_checked) + ".")
        return "\n".join(lines) + "\n"


def open_run(name: str, results_dir: str | Path | None = None, overrides: list[str] = ()) -> Run:
    """A run as it was saved (results/<run>/config.yaml, with `overrides`), where it is found now: a copied
    or renamed run folder reports on itself. A mistyped name creates nothing."""
    check_run_name(name)
    results = Path(results_dir or "results")
    saved = results / name / "config.yaml"
    if not saved.exists():
        runs = sorted(p.name for p in results.glob("*") if (p / "config.yaml").exists())
        raise StudyError(f"no run at {results / name} (no config.yaml); runs: {', '.join(runs) or 'none'}")
    return Run(load_config(str(saved), [*overrides, f"results_dir={results}"]), name)


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.0f}" if isinstance(x, float) else str(x)


def _data_text(desc: DataSet | None) -> str:
    if not desc:
        return "?"
    if desc.kind == "hub":
        return f"the hub ({'/'.join(str(x) for x in (desc.dataset, desc.config) if x) or 'hub'})"
    if desc.kind == "embedded":
        return f"the repository's embedded data ({desc.path})"
    return f"a local path ({desc.path})"


# ---------------------------------------------------------------------------------------------
# which labels trained the classifier


def label_source(classify: StageResult | dict | None, annotate: StageResult | dict | None = None) -> dict:
    """{used: annotate | sample | hub | path | none, short (an axis name), text (a sentence), fields}
    from the classify result (its label_source record: where the labels came from and, with a fallback,
    why) and the annotate result (its annotators)."""
    if not classify:
        return {"used": "none", "short": "labels", "text": "no classifier was trained", "fields": []}
    cls = as_result("classify", classify)
    ls, fields = cls.label_source, cls.label_fields
    where = str(ls.from_ or "")
    annotators = [a.label for a in as_result("annotate", annotate).annotators] if annotate else []
    named = "; ".join(dict.fromkeys(KNOWN_FIELDS.get(f, f) for f in fields))
    if where.startswith("stage") and "annotate" in where or ls.choice.used == "annotate":
        who = ", ".join(annotators) or "the annotate stage's LLM"
        out = {"used": "annotate", "short": "LLM annotation",
               "text": f"this run's LLM annotations ({who}; {_n(ls.labelled)} labelled pages)"}
    else:
        kind = ("sample" if where in ("embedded", "") or "web_sample" in where or "web_pages" in where
                else "hub" if where.startswith("hub") else "path")
        src = {"sample": "the embedded sample", "hub": where, "path": where}[kind]
        out = {"used": kind, "short": f"{'sample' if kind == 'sample' else 'existing'} labels: "
                                      + ", ".join(f.split(".")[-1] for f in fields),
               "text": f"labels already in {src}: {named} ({_n(ls.labelled)} labelled pages), "
                       f"not LLM annotations of this run"}
    if ls.choice.used == "fallback":
        out["text"] += f"; the fallback, because {ls.choice.why}"
    return {**out, "fields": fields}


# ---------------------------------------------------------------------------------------------
# facts: one function per stage, each from that stage's result


def _run_facts(run: Run, rep: Report, rs: dict[str, StageResult | None]) -> None:
    cfg = run.config
    git = next((r.record.git for r in rs.values() if r is not None and r.record.git is not None), GitState())
    commit = (git.commit or "unknown")[:12] + (" (dirty)" if git.dirty else "")
    rep.facts.append(("run", f"`{run.name}` from preset `{cfg.preset}`"
                      + (f" ({cfg.description})" if cfg.description else "") + f", commit {commit}"))
    states = {s: run.state(s).status for s in STAGES}
    used = [s for s in STAGES if cfg.stages is None or s in cfg.stages]
    used = [s for s in used if s not in ("tokenize", "figures")]  # the study's stages, which the report reads
    done = [s for s in used if states[s] == "done"]
    other = [f"{s} {states[s]}" for s in used if states[s] != "done"]
    rep.facts.append(("stages", f"{len(done)} done ({', '.join(done) or 'none'})"
                      + (f"; {', '.join(other)}" if other else "")))


def _ingest_facts(run: Run, rep: Report, ing) -> None:
    c, pages = ing.counts, _data_text(ing.record.data.get("pages"))
    rep.info["pages"] = {"documents": c.documents, "train": c.train_documents, "val": c.val_documents,
                         "from": pages}
    rep.facts.append(("web pages", f"{_n(c.documents)} pages ({_n(c.train_documents)} train, "
                      f"{_n(c.val_documents)} held out) from {pages}"))


def _generate_facts(run: Run, rep: Report, gen) -> None:
    g, c = gen.generator, gen.counts
    rep.info["generator"] = {"models": list(g.models), "backend": g.backend, "documents": c.documents,
                             "tokens": c.tokens}
    rep.facts.append(("synthetic text", f"{_n(c.documents)} documents, {_n(c.tokens)} generator tokens, written "
                      f"by {', '.join(g.models) or '?'} ({g.backend or '?'} backend)"))


def _annotate_facts(run: Run, rep: Report, ann) -> None:
    c, names = ann.counts, [a.label for a in ann.annotators]
    rate = c.parse_failure_rate
    rep.info["annotation"] = {"annotators": names, "pages": c.pages, "parse_failure_rate": rate,
                              "label_from": c.label_from, "extract_chars": ann.extract_chars}
    rep.facts.append(("annotation", f"{_n(c.pages)} pages scored by {', '.join(f'{n}' for n in names) or '?'}"
                      + (f"; {rate:.0%} of answers did not parse" if rate is not None else "")))


def _classify_facts(run: Run, rep: Report, cls) -> None:
    rep.facts.append(("classifier labels", rep.labels["text"]))
    c = cls.counts
    rep.info["classifier"] = {"kinds": cls.kinds, "threshold": cls.threshold, "train": c.train,
                              "validation": c.validation}
    parts = [f"{k}: validation F1 {b.f1:.2f} at int_score ≥ {b.threshold if b.threshold is not None else '?'}"
             for k, v in cls.metrics.items() if (b := v.validation.binary) is not None]
    if parts:
        rep.facts.append(("classifier", f"{', '.join(cls.kinds)} on {_n(c.train)} train / {_n(c.validation)} "
                          f"validation pages; " + "; ".join(parts)))


def _filter_facts(run: Run, rep: Report, flt) -> None:
    c, used = flt.counts, flt.classifier
    threshold = used.threshold if used.threshold is not None else "?"
    rep.facts.append(("filter", f"kept {_n(c.documents)} of {_n(c.scored)} pages ({c.keep_rate or 0:.1%}) with "
                      f"{used.kind or '?'} int_score ≥ {threshold}"))


def _mix_facts(run: Run, rep: Report, mix) -> None:
    rep.info["mixes"] = {m.name: {"tokens": m.tokens, "budget": m.budget} for m in mix.mixes}
    srcs = "; ".join(f"{name} ({s.origin}): {_n(s.documents_kept)} documents, {_n(s.tokens_kept)} tokens"
                     for name, s in mix.sources.items())
    rep.facts.append(("sources (after dedup and decontamination)", srcs))
    rep.facts.append(("mixes", "; ".join(
        f"{m.name}: {_n(m.tokens)} tokens (budget {_n(m.budget)}) = "
        + " + ".join(f"{_n(v.tokens)} {s}" for s, v in m.per_source.items()) for m in mix.mixes)))


def _train_facts(run: Run, rep: Report, tr) -> None:
    cfg = run.config.train
    params = sorted({r.parameters for r in tr.runs.values() if r.parameters})
    tokens = sorted({int(o.tokens) for o in tr.outputs if o.tokens is not None})
    rep.info["train"] = {"models": list(cfg.run_models), "parameters": params, "backend": cfg.backend,
                         "seeds": list(cfg.run_seeds), "tokens": tokens, "runs": len(tr.outputs)}
    rep.facts.append(("trained models", f"{len(tr.outputs)} run(s), GPT-2 {', '.join(cfg.run_models)} "
                      f"({', '.join(f'{p / 1e6:.1f}M' for p in params)} parameters), {cfg.backend} backend, "
                      f"seeds {', '.join(map(str, cfg.run_seeds))}; "
                      f"{' / '.join(_n(t) for t in tokens) or '?'} training tokens per run"))


def _evaluate_facts(run: Run, rep: Report, ev) -> None:
    cfg = run.config.evaluate
    suites = [f"{b} {_n(n)} items" for b, n in ev.counts.items.items()]
    if "core" in cfg.benchmarks:  # DCLM's CORE: tasks as configured, the first `limit` items of each
        core = cfg.core
        suites.append(f"CORE {core.version} ({len(core.tasks) if core.tasks else 'all available'} tasks, "
                      f"{f'the first {core.limit} items' if core.limit else 'every item'} of each)")
    rep.facts.append(("evaluation", ", ".join(suites)
                      + f"; reference models: {', '.join(m.name for m in cfg.models) or 'none'}"
                      + f"; benchmarks from {_data_text(ev.record.data.get('benchmarks'))}"))


STAGE_FACTS = {"ingest": _ingest_facts, "generate": _generate_facts, "annotate": _annotate_facts,
               "classify": _classify_facts, "filter": _filter_facts, "mix": _mix_facts, "train": _train_facts,
               "evaluate": _evaluate_facts}  # in the report's order


def _facts(run: Run, rep: Report, rs: dict[str, StageResult | None]) -> None:
    _run_facts(run, rep, rs)
    for stage, facts in STAGE_FACTS.items():
        if rs.get(stage) is not None:
            facts(run, rep, rs[stage])


# ---------------------------------------------------------------------------------------------
# flags


def _trained_tokens(train) -> dict[str, int]:
    """{mix: most tokens any plain (not scheduled) run trained on it}."""
    out: dict[str, int] = {}
    for o in train.outputs if train is not None else []:
        if not o.schedule:
            out[o.mix] = max(out.get(o.mix, 0), int(o.tokens or 0))
    return out


def _repeated(mix, train) -> list[Flag]:
    trained = _trained_tokens(train)
    flags = []
    for m in mix.mixes:
        for s, v in m.per_source.items():
            ep = v.epochs
            if ep is None or ep <= 1.0:
                continue
            msg = (f"source `{s}` is repeated {ep:.1f} times in mix `{m.name}` (its "
                   f"{_n(v.unique_documents)} unique documents, {_n(v.available_tokens)} tokens, "
                   f"fill {_n(v.tokens)} tokens of the mix)")
            if m.name in trained and m.tokens:
                passes = ep * trained[m.name] / m.tokens
                msg += f"; training reads {_n(trained[m.name])} of the mix's tokens: about {passes:.1f} passes"
            flags.append(Flag("repeated_source", "repeated source", round(ep, 2), msg))
    return flags


def _under_budget(mix, train) -> list[Flag]:
    budgets = {m.name: m.budget for m in mix.mixes}
    groups: dict[tuple[int, int], list[str]] = {}
    for o in train.outputs:
        b = budgets.get(o.mix)
        if o.schedule or not b or o.tokens is None or o.tokens >= b:
            continue
        groups.setdefault((int(o.tokens), int(b)), []).append(o.folder)
    return [Flag("under_budget", "trained below the mix budget", round(t / b, 3),
                 f"{len(names)} run(s) ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''}) trained on "
                 f"{_n(t)} tokens, {t / b:.0%} of their mix's {_n(b)}-token budget: the mix tables describe data "
                 f"the models mostly did not see")
            for (t, b), names in groups.items()]


def _parse_failures(annotate) -> list[Flag]:
    c = annotate.counts
    if c.label_from and c.unlabelled_rate is not None:  # annotate.scoring: labels without the text
        then = f"the labels come from the {c.label_from} instead ({1 - c.unlabelled_rate:.0%} of pages labelled)"
    else:
        then = "those pages carry no label"
    flags = []
    for a in annotate.annotators:
        rate = a.parse_failure_rate
        if rate is not None and rate > PARSE_FAILURE_MAX:
            n = (a.parsed or 0) + (a.failed or 0)
            flags.append(Flag("parse_failures", "annotation parse failures", round(rate, 3),
                              f"{rate:.0%} of {_n(n)} answers of {a.label} did not parse "
                              f"(no final score line): {then}"))
    return flags


def val_loss_rising(df: pd.DataFrame) -> dict | None:
    """{min_step, min, last_step, last, train_at_min, train_last} when the validation loss ends more than
    VAL_RISE above its minimum while the train loss is lower than at that minimum; else None."""
    val = df[df["val_loss"].notna()]
    tr = df[df["train_loss"].notna()]
    if len(val) < 2 or tr.empty:
        return None
    i = val["val_loss"].to_numpy().argmin()
    vmin, smin = float(val["val_loss"].iloc[i]), int(val["step"].iloc[i])
    vlast, slast = float(val["val_loss"].iloc[-1]), int(val["step"].iloc[-1])
    before = tr[tr["step"] <= smin]
    t_at = float((before if len(before) else tr)["train_loss"].iloc[-1 if len(before) else 0])
    t_last = float(tr["train_loss"].iloc[-1])
    if slast > smin and vlast > vmin * (1 + VAL_RISE) and t_last < t_at:
        return {"min_step": smin, "min": vmin, "last_step": slast, "last": vlast, "train_at_min": t_at,
                "train_last": t_last}
    return None


def _val_rising(run: Run, train) -> list[Flag]:
    flags = []
    for o in train.outputs:
        name = o.folder
        try:
            r = val_loss_rising(read_log(run.dir("train") / name))
        except (OSError, StudyError):
            continue
        if r:
            flags.append(Flag("val_loss_rising", "validation loss rising", round(r["last"] - r["min"], 4),
                              f"`{name}`: validation loss rises {r['min']:.2f} (step {r['min_step']}) -> {r['last']:.2f} "
                              f"(step {r['last_step']}) while train loss falls {r['train_at_min']:.2f} -> "
                              f"{r['train_last']:.2f}: it memorises its training text (repeated data?)"))
    return flags


def _small_classes(classify) -> list[Flag]:
    every, val = classify.labels.all, classify.labels.validation
    small = {k: n for k, n in every.items() if n < MIN_CLASS_PAGES}
    if not small:
        return []
    return [Flag("small_classes", f"classes with < {MIN_CLASS_PAGES} pages", len(small),
                 f"{len(small)} of {len(every)} classifier classes have fewer than {MIN_CLASS_PAGES} labelled pages: "
                 + ", ".join(f"score {k}: {n} ({val.get(k, 0)} in validation)" for k, n in small.items())
                 + "; their per-class metrics are noise")]


def _within_ci_decisions(dec: dict) -> list[Flag]:
    flags = []
    level = (dec.get("settings") or {}).get("level", 0.95)
    for scale in dec.get("scales", []):
        rs = [r for r in dec.get("results", []) if r["scale"] == scale]
        pairs = [p for r in rs for p in r["pairs"]]
        same = [p for p in pairs if p["verdict"] == "no detectable difference"]
        top = [r for r in rs if r.get("best") and not r["best"].get("significant")]
        if same:
            flags.append(Flag("within_ci", "differences within their CIs", len(same),
                              f"model {scale}: {len(same)} of {len(pairs)} paired differences between mixes "
                              f"({len(rs)} metrics) are within their {level:.0%} CIs (no detectable difference); "
                              f"the top mix is not significantly better than the runner-up on {len(top)} of "
                              f"{sum(bool(r.get('best')) for r in rs)} metrics: do not read those orderings as rankings"))
    return flags


def final_scores(table: pd.DataFrame, metric: str = "acc_norm", form: str = "cloze") -> pd.DataFrame:
    """Each trained mix's score at its last evaluated step per benchmark (subject rows, reference models
    and other metrics left out); with seeds or sizes, one row per (mix, scale, seed)."""
    t = table[(table["metric"] == metric) & (table["form"] == form) & table["subject"].isna()]
    if "reference" in t:
        t = t[~t["reference"].astype(str).str.lower().eq("true")]
    keys = [k for k in ("mix", "scale", "seed") if k in t]
    last = t.groupby(keys, dropna=False)["step"].transform("max")
    return t[t["step"] == last]


def _within_ci_table(table: pd.DataFrame) -> list[Flag]:
    """Without decisions.json: benchmarks where the top mix's CI overlaps the runner-up's."""
    t = final_scores(table)
    if "seed" in t and t.groupby(["mix", "benchmark"])["seed"].nunique().max() > 1:
        return []  # several seeds: decisions.json is the comparison; table.csv's CIs are per seed
    overlap, compared = [], 0
    for (bench, *_), g in t.groupby(["benchmark", *(["scale"] if "scale" in t else [])], dropna=False):
        if len(g) < 2:
            continue
        compared += 1
        a, b = g.sort_values("value", ascending=False).iloc[:2].itertuples()
        if a.ci_low <= b.ci_high:
            overlap.append(f"{bench} ({a.mix} {100 * a.value:.1f} vs {b.mix} {100 * b.value:.1f})")
    if not overlap:
        return []
    return [Flag("within_ci", "differences within their CIs", len(overlap),
                 f"on {len(overlap)} of {compared} benchmarks the top mix's 95% CI overlaps the runner-up's: "
                 + "; ".join(overlap) + " (no decisions.json: CI overlap, no paired test)")]


def _within_ci(run: Run) -> list[Flag]:
    path = run.dir("evaluate") / "decisions.json"
    if path.exists():
        return _within_ci_decisions(json.loads(path.read_text()))
    if (run.dir("evaluate") / "table.csv").exists():
        return _within_ci_table(pd.read_csv(run.dir("evaluate") / "table.csv"))
    return []


def _flags(run: Run, rep: Report, rs: dict[str, StageResult | None]) -> None:
    """Each check runs when its stages finished; one that cannot read what it needs says so (not_checked)."""
    mix, train, annotate, classify = rs.get("mix"), rs.get("train"), rs.get("annotate"), rs.get("classify")
    checks = [("repeated sources (mix)", mix is not None, lambda: _repeated(mix, train)),
              ("trained tokens against the budget (mix, train)", mix is not None and train is not None,
               lambda: _under_budget(mix, train)),
              ("annotation parse failures (annotate)", annotate is not None, lambda: _parse_failures(annotate)),
              ("validation loss (train)", train is not None, lambda: _val_rising(run, train)),
              ("classifier classes (classify)", classify is not None, lambda: _small_classes(classify)),
              ("differences within CIs (evaluate)", rs.get("evaluate") is not None, lambda: _within_ci(run))]
    for what, ready, check in checks:
        if not ready:
            rep.not_checked.append(what)
            continue
        try:
            rep.flags += check()
        except (KeyError, TypeError, ValueError, OSError) as e:  # a file of another shape or version
            rep.not_checked.append(f"{what}: unreadable ({type(e).__name__}: {e})")


# ---------------------------------------------------------------------------------------------
# the report


def _results(run: Run, rep: Report) -> dict[str, StageResult | None]:
    """{stage: its result} of the finished stages (done or stale); a manifest that does not read as its
    stage's result is left out, and said so."""
    out = {}
    for stage in STAGES:
        try:
            out[stage] = read_result(run, stage, missing_ok=True)
        except StudyError as e:
            out[stage] = None
            rep.not_checked.append(f"stage {stage}: {e}")
    return out


def build(run: Run) -> Report:
    """The report of a run from its stages' results and outputs (finished stages only; stale ones as they are)."""
    rep = Report(run.name)
    rs = _results(run, rep)
    rep.labels = label_source(rs.get("classify"), rs.get("annotate"))
    _facts(run, rep, rs)
    _flags(run, rep, rs)
    return rep


def write(run: Run) -> tuple[Report, Path]:
    """build() and write it to results/<run>/report.md."""
    rep = build(run)
    path = run.root / REPORT_FILE
    write_text_atomic(path, rep.markdown())
    return rep, path
