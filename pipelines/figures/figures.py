"""The `figures` stage: every paper figure and table whose inputs exist, and their export into paper/.

  results/<run>/figures/<name>.pdf, <name>.png      figures (pipelines/figures/plots.py)
  results/<run>/figures/tables/<name>.tex, .csv     tables (pipelines/figures/tables.py)
  results/<run>/figures/tables/results_text.tex     the Results paragraph, from evaluate/decisions.json
  results/<run>/figures/tables/setup_text.tex       the Setup paragraphs, from the run's facts (pipelines/runs/report.py)
  results/<run>/figures/tables/report.tex           the run report (`study report`), the paper's appendix
  results/<run>/figures/tables/study.tex            \\renewcommand macros: run, preset, commit, mixes

As a stage (last in STAGES, inputs: every stage it reads) it behaves like the others: `study run`
skips it while its inputs are unchanged and redraws it when one was rerun. `study figures` (make())
also works on a partial run: every output whose stages are there is drawn into the same folder and
each one left out gets a message naming the command to run first; without a manifest (the stage stays
incomplete until every input is done). A stale input is drawn as it is, with a note.

export() (`study figures`) replaces the generated files in paper/figures/ and paper/tables/ with this
run's, so the paper in paper/ builds from one run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.config import PROJECT_ROOT
from pipelines.data.documents import read_documents
from pipelines.errors import StudyError
from pipelines.figures import plots as F
from pipelines.figures import tables as T
from pipelines.figures.result import FiguresResult
from pipelines.files import write_text_atomic
from pipelines.llmc.tokenizer import gpt2
from pipelines.runs import report as R
from pipelines.runs.manifest import STAGES, Run, StageContext, file_sha256, git_state
from pipelines.runs.readers import composition_table, removals_table
from pipelines.runs.results import DocumentFile, read_result
from pipelines.runs.trainlog import read_log

PAPER_DIR = PROJECT_ROOT / "paper"
DOCUMENT_STAGES = {"ingest": "web", "filter": "web-edu", "generate": "synthetic"}  # default labels
MAX_LENGTH_DOCUMENTS = 5000  # per source, for the length distributions


@dataclass(frozen=True)
class Output:
    name: str  # file stem
    kind: str  # figure | table | text (LaTeX text for the paper, tables/<name>.tex)
    needs: tuple[str, ...]  # stages it reads
    build: Callable[[Run], object]  # -> matplotlib Figure or tables.Table


# ---------------------------------------------------------------------------------------------
# reading a run's stages: their typed results (pipelines/runs/results.py read_result) and output files


def colors(run: Run) -> dict[str, str]:
    """One colour per name for every figure: the mix config's sources first, then its mixes (a mix
    named as its only source shares that source's colour), then the staged schedules."""
    names = [*run.config.mix.sources, *(m.name for m in run.config.mix.mixes),
             *(s.name for s in run.config.train.schedules)]
    return F.mix_colors(names)


def eval_table(run: Run):
    import pandas as pd  # evaluate.read_table would import torch (pipelines.evaluate.scoring) for nothing

    path = run.dir("evaluate") / "table.csv"
    if not path.exists():
        raise StudyError(f"{path} is missing although the evaluate stage has a manifest: "
                         f"rerun `study evaluate --force`")
    t = pd.read_csv(path)
    if t.empty:
        raise StudyError(f"{path} has no rows: the evaluate stage evaluated nothing")
    return t


def eval_summary(run: Run):
    """evaluate/summary.csv (each mix and model size: seeds and checkpoints averaged, CI over items and seeds;
    the reference models), or table.csv when the evaluate stage wrote none."""
    import pandas as pd

    path = run.dir("evaluate") / "summary.csv"
    if not path.exists():
        return eval_table(run)
    t = pd.read_csv(path)
    return t if not t.empty else eval_table(run)


def read_decisions(run: Run) -> dict:
    """evaluate/decisions.json (the evaluate stage writes it when it evaluated trained mixes)."""
    path = run.dir("evaluate") / "decisions.json"
    if not path.exists():
        raise StudyError(f"{path} is missing: the evaluate stage evaluated no trained mix to decide between "
                         f"(evaluate.trained, or rerun `study evaluate --force`)")
    return json.loads(path.read_text())


def decisions_or_none(run: Run) -> dict | None:
    try:
        return read_decisions(run)
    except StudyError:
        return None


def stage_boundaries(run: Run) -> dict[str, list[float]]:
    """{schedule: training tokens where it switches to its next stage} from the train result
    (`stage_boundaries`); {} when the run has no staged schedule (or no train stage)."""
    train = read_result(run, "train", missing_ok=True)
    b = train.stage_boundaries if train is not None else {}
    if not isinstance(b, dict):  # a bare list: boundaries of no particular run
        b = {"": b}
    return {name: sorted(float(x) for x in xs) for name, xs in b.items() if xs}


def train_logs(run: Run) -> dict:
    """{run folder (a mix, at another model size or seed <mix>-<model>-s<seed>) or schedule:
    trainlog.read_log(...)} of each run the train stage lists (a schedule's stages end to end)."""
    logs = {o.folder: read_log(run.dir("train") / o.folder) for o in _train_outputs(run)}
    if not any(len(df) for df in logs.values()):
        raise StudyError(f"no main.log rows under {run.dir('train')}: rerun `study train --force`")
    return logs


def run_colors(run: Run) -> dict[str, str]:
    """colors(), and each run folder of the train stage in its mix's colour."""
    c = colors(run)
    return {**c, **{o.dir: c[o.mix] for o in _train_outputs(run) if o.dir and o.mix in c}}


def _train_outputs(run: Run) -> list:
    train = read_result(run, "train", missing_ok=True)
    return train.outputs if train is not None else []


def classifier_metrics(run: Run) -> dict:
    return json.loads((run.dir("classify") / "metrics.json").read_text())


def label_name(run: Run) -> str:
    """What the classifier's labels are, as an axis name (this run's LLM annotations, or labels already in
    the data): from the classify result."""
    return R.label_source(read_result(run, "classify", missing_ok=True),
                          read_result(run, "annotate", missing_ok=True))["short"]


def _documents(run: Run, stage: str):
    """The training documents a stage lists (none: no documents, not an error)."""
    result = read_result(run, stage, missing_ok=True)
    paths = [run.dir(stage) / o.path for o in (result.outputs if result is not None else [])
             if isinstance(o, DocumentFile) and (o.split or "train") == "train" and ".jsonl" in o.path]
    return read_documents(paths)


def document_lengths(run: Run, max_documents: int = MAX_LENGTH_DOCUMENTS):
    """(DataFrame source, length; unit): GPT-2 tokens of the first `max_documents` training documents
    of each document stage that is there (ingest: real web; filter: classifier-kept web; generate:
    synthetic), named as the mix config names them. Characters when the GPT-2 BPE is unavailable."""
    import itertools

    import pandas as pd

    names = {src.stage: name for name, src in run.config.mix.sources.items() if src.stage in DOCUMENT_STAGES}
    texts = {}
    for stage, default in DOCUMENT_STAGES.items():
        if run.state(stage).status in ("done", "stale"):
            docs = itertools.islice(_documents(run, stage), max_documents)
            texts[names.get(stage, default)] = [d["text"] for d in docs]
    try:
        enc = gpt2()
        lengths = {s: [len(t) for t in enc.encode_ordinary_batch(ts)] for s, ts in texts.items()}
        unit = "GPT-2 tokens"
    except StudyError as e:
        print(f"[figures] document lengths in characters: {e}")
        lengths = {s: [len(t) for t in ts] for s, ts in texts.items()}
        unit = "characters"
    rows = [{"source": s, "length": n} for s, ns in lengths.items() for n in ns]
    return pd.DataFrame(rows, columns=["source", "length"]), unit


def _lengths_figure(run: Run):
    df, unit = document_lengths(run)
    if df.empty:
        raise StudyError("no documents to measure in ingest / filter / generate")
    return F.length_distributions(df, unit, colors(run))


def _core_figure(run: Run, plot):
    """A DCLM CORE figure; None (not applicable, not missing) when the evaluate table has no CORE rows."""
    t = eval_table(run)
    return plot(t, colors=colors(run)) if (t["benchmark"] == "core").any() else None


def _mix(run: Run):
    return read_result(run, "mix")


def _composition(run: Run):
    return composition_table(_mix(run))


def _removals(run: Run):
    return removals_table(_mix(run))


def _filter_hist(run: Run):
    flt = read_result(run, "filter")
    threshold = flt.classifier.threshold
    return F.score_histograms(flt.histograms.model_dump(), int(threshold if threshold is not None else 3))


OUTPUTS: list[Output] = [
    Output("benchmark_comparison", "figure", ("evaluate",),
           lambda r: F.benchmark_comparison(eval_summary(r), colors=colors(r))),
    Output("benchmarks_vs_tokens", "figure", ("evaluate",),
           lambda r: F.benchmarks_vs_tokens(eval_table(r), stage_boundaries(r), colors=colors(r))),
    Output("core_vs_tokens", "figure", ("evaluate",), lambda r: _core_figure(r, F.core_vs_tokens)),
    Output("core_per_task", "figure", ("evaluate",), lambda r: _core_figure(r, F.core_per_task)),
    Output("training_curves", "figure", ("train",),
           lambda r: F.training_curves(train_logs(r), stage_boundaries(r), run_colors(r))),
    Output("classifier_confusion", "figure", ("classify",),
           lambda r: F.classifier_confusion(classifier_metrics(r), label=label_name(r))),
    Output("classifier_f1", "figure", ("classify",), lambda r: F.classifier_f1(classifier_metrics(r))),
    Output("score_histograms", "figure", ("filter",), _filter_hist),
    Output("mix_composition", "figure", ("mix",), lambda r: F.mix_composition(_composition(r), colors(r))),
    Output("synthetic_audience_style", "figure", ("generate",),
           lambda r: F.synthetic_audience_style(read_result(r, "generate").counts.per_cell)),
    Output("length_distributions", "figure", ("ingest", "generate"), _lengths_figure),
    Output("decontamination_removals", "figure", ("mix",), lambda r: F.decontamination_removals(_removals(r))),
    Output("decision_matrix", "figure", ("evaluate",), lambda r: F.decision_matrix(read_decisions(r))),
    Output("signal_noise", "figure", ("evaluate",), lambda r: F.signal_noise(read_decisions(r))),
    Output("main_results", "table", ("evaluate",),
           lambda r: T.main_results(eval_summary(r), level=r.config.evaluate.ci, decisions=decisions_or_none(r))),
    Output("metric_scores", "table", ("evaluate",), lambda r: T.metric_scores(read_decisions(r))),
    Output("decisions", "table", ("evaluate",), lambda r: T.decisions_table(read_decisions(r))),
    Output("signal_noise", "table", ("evaluate",), lambda r: T.signal_noise_table(read_decisions(r))),
    Output("results_text", "text", ("evaluate",), lambda r: T.results_paragraph(read_decisions(r))),
    # from whatever stages are there (pipelines/runs/report.py reads only finished ones)
    Output("setup_text", "text", (), lambda r: T.setup_paragraphs(R.build(r))),
    Output("report", "text", (), lambda r: T.report_latex(R.build(r))),
    Output("classifier_metrics", "table", ("classify",),
           lambda r: T.classifier_metrics(classifier_metrics(r), labels=label_name(r))),
    Output("mix_composition", "table", ("mix",), lambda r: T.mix_composition(_mix(r))),
    Output("data_sources", "table", ("mix",), lambda r: T.data_sources(_removals(r))),
]


# ---------------------------------------------------------------------------------------------
# rendering


def missing_message(run: Run, output: str, stage: str, status: str) -> str:
    cmd = STAGES[stage].command
    return (f"{output}: needs the `{stage}` stage, which is {status} in {run.root}: run "
            f"`{cmd} --preset {run.config.preset} --run {run.name}` first")


def check_inputs(run: Run, out: Output) -> tuple[list[str], list[str]]:
    """(problems that stop this output, notes): a missing/incomplete stage stops it; stale is a note."""
    problems, notes = [], []
    for stage in out.needs:
        st = run.state(stage)
        if st.status in ("missing", "incomplete"):
            problems.append(missing_message(run, out.name, stage, st.status))
        elif st.status == "stale":
            notes.append(f"`{stage}` is stale ({st.reason}): its figures show its last complete outputs")
    return problems, notes


@dataclass
class Rendered:
    figures: dict  # name -> matplotlib Figure
    tables: dict  # name -> tables.Table
    texts: dict  # name -> LaTeX text
    missing: list[str]  # one message per output left out
    left_out: dict  # name -> short reason (for the paper)
    notes: list[str]
    read: dict  # stage -> {status, sha256 of its manifest}


def render(run: Run, only: list[str] | None = None, log=print) -> Rendered:
    """Build every output whose inputs exist (all, or those named in `only`), in memory."""
    res = Rendered({}, {}, {}, [], {}, [], {})
    for out in OUTPUTS:
        if only and out.name not in only:
            continue
        problems, notes = check_inputs(run, out)
        for n in notes:
            if n not in res.notes:
                res.notes.append(n)
                log(f"[figures] note: {n}")
        if problems:
            res.missing += problems
            res.left_out[out.name] = "needs " + ", ".join(s for s in out.needs if run.state(s).status in
                                                         ("missing", "incomplete"))
            for p in problems:
                log(f"[figures] skipped {out.kind} {p}")
            continue
        try:
            obj = out.build(run)
        except StudyError as e:
            res.missing.append(f"{out.name}: {e}")
            res.left_out[out.name] = "its inputs could not be read"
            log(f"[figures] skipped {out.kind} {out.name}: {e}")
            continue
        if obj is None:  # not applicable to this run (a CORE figure without CORE rows)
            continue
        {"figure": res.figures, "table": res.tables, "text": res.texts}[out.kind][out.name] = obj
        for stage in out.needs:
            res.read.setdefault(stage, {"status": run.state(stage).status,
                                        "sha256": file_sha256(run.manifest_path(stage))})
    return res


def macros(run: Run, res: Rendered) -> str:
    """study.tex: facts about the run for the paper's text (\\renewcommand of paper.tex's defaults)."""
    cfg = run.config
    git = git_state()
    esc = T.latex_escape
    facts = {
        "studyrun": esc(run.name),
        "studypreset": esc(cfg.preset),
        "studycommit": esc((git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")),
        "studymixes": esc(", ".join(m.name for m in cfg.mix.mixes)),
        "studymodel": esc(f"{', '.join(cfg.train.run_models)} ({cfg.train.backend} backend"
                          + (f", seeds {', '.join(map(str, cfg.train.run_seeds))})" if len(cfg.train.run_seeds) > 1
                             else ")")),
        "studymissing": esc("; ".join(f"{k} ({v})" for k, v in res.left_out.items())) if res.left_out else "none",
    }
    return "".join(f"\\renewcommand{{\\{k}}}{{{v}}}\n" for k, v in facts.items())


def write(res: Rendered, run: Run, out_dir: Path) -> list[dict]:
    """Save the figures (PDF + PNG) and tables (TeX + CSV) and study.tex; -> the manifest's outputs."""
    outputs = []
    for name, fig in res.figures.items():
        paths = F.save(fig, out_dir, name)
        outputs.append({"name": name, "kind": "figure", "paths": [p.relative_to(out_dir).as_posix() for p in paths]})
    for name, table in res.tables.items():
        paths = table.write(out_dir / "tables")
        outputs.append({"name": name, "kind": "table", "paths": [p.relative_to(out_dir).as_posix() for p in paths]})
    for name, text in res.texts.items():
        write_text_atomic(out_dir / "tables" / f"{name}.tex", text)
        outputs.append({"name": name, "kind": "text", "paths": [f"tables/{name}.tex"]})
    write_text_atomic(out_dir / "tables" / "study.tex", macros(run, res))
    return outputs


def draw(run: Run, out_dir: Path, log=print) -> FiguresResult:
    """render() + write() into out_dir; -> the stage's result. Fails only when nothing can be drawn."""
    res = render(run, log=log)
    outputs = write(res, run, out_dir)
    if not res.figures and not res.tables:  # the texts alone (a report of nothing) are not a paper
        raise StudyError("[figures] nothing to draw: every figure and table needs a stage this run does not "
                         "have yet:\n  " + "\n  ".join(res.missing))
    log(f"[figures] {len(res.figures)} figure(s), {len(res.tables)} table(s) -> {out_dir}"
        + (f"; {len(res.missing)} left out (see above)" if res.missing else ""))
    return FiguresResult(outputs=outputs, missing=res.missing, notes=res.notes, read=res.read,
                         counts={"figures": len(res.figures), "tables": len(res.tables), "texts": len(res.texts),
                                 "missing": len(res.missing)})


def run(ctx: StageContext) -> FiguresResult:
    """The stage: every input is done here (Run.execute checked)."""
    return draw(ctx.run, ctx.dir)


def make(run: Run, force: bool = False, log=print) -> FiguresResult:
    """`study figures`: the stage when every input is done (skipped while up to date, unless force);
    otherwise every output whose stages are there, drawn into the stage folder without a manifest."""
    not_done = {s: run.state(s) for s in run.inputs("figures")}
    not_done = {s: st for s, st in not_done.items() if st.status != "done"}
    if not not_done:
        run.execute("figures", force=force, log=log)
        return read_result(run, "figures")
    log(f"[figures] partial run: {', '.join(f'`{s}` {st.status}' for s, st in not_done.items())}; drawing what "
        f"is there (the figures stage stays incomplete until every input is done)")
    d = run.dir("figures")
    if d.is_symlink():
        d.unlink()
    elif d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return draw(run, d, log)


# ---------------------------------------------------------------------------------------------
# export into paper/


def _clear(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for p in d.iterdir():
        if p.is_file() and p.name != ".gitkeep":
            p.unlink()


def export(run: Run, paper_dir: str | Path | None = None, log=print) -> dict:
    """Replace paper/figures/* and paper/tables/* (but .gitkeep) with the run's figures stage outputs
    (paper_dir: default PAPER_DIR, the checkout's paper/)."""
    src = run.dir("figures")
    if not any(src.glob("*.pdf")) and not any(src.glob("tables/*.tex")):
        raise StudyError(f"no figures in {src}: run `study figures --preset {run.config.preset} --run {run.name}` "
                         f"first")
    paper = Path(paper_dir or PAPER_DIR)
    figs, tabs = paper / "figures", paper / "tables"
    _clear(figs)
    _clear(tabs)
    copied = {"figures": [], "tables": []}
    for p in sorted(src.glob("*")):
        if p.suffix in (".pdf", ".png"):
            shutil.copy2(p, figs / p.name)
            copied["figures"].append(p.name)
    for p in sorted((src / "tables").glob("*")):
        if p.suffix in (".tex", ".csv"):
            shutil.copy2(p, tabs / p.name)
            copied["tables"].append(p.name)
    log(f"[figures] exported {len(copied['figures'])} figure file(s) to {figs} and {len(copied['tables'])} table "
        f"file(s) to {tabs}; build the paper: cd {paper} && latexmk -pdf paper.tex")
    return copied
