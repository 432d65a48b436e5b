"""`study run`: the stage notebooks, executed in order with papermill.

Each notebook in notebooks/ (01_synthetic ... 07_figures) has one `parameters` cell of primitives;
papermill injects `run`, `preset`, `results_dir` and `overrides` (the --set strings) and writes the
executed copy to results/<run>/notebooks/, the readable record of its stage. The notebooks call the
same stage functions as the CLI, so complete stages are skipped by their manifests. A failing
notebook stops the run; its partial output stays, and the error names the notebook and the cell.

What the notebooks display is summarised here, so the executed records read as reports: quiet()
keeps a stage cell's own messages and sends everything else (trainer lines, datatrove logs) to
results/<run>/notebooks/<notebook>.log; status_table, show_samples (the instruct preamble removed for
display), show_tables, show_training (curves and one row per run), mmlu_summary, annotation_note.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from pipelines.config import PROJECT_ROOT, StudyConfig, load_config
from pipelines.errors import StudyError
from pipelines.figures.plots import training_curves
from pipelines.runs.manifest import Run, changed_keys, check_run_name
from pipelines.runs.results import StageResult, as_result, read_result
from pipelines.runs.trainlog import read_log, run_dirs, run_table
from pipelines.synthetic.generate import samples_table

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
_STAGE_NOTEBOOK = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")


def stage_notebooks(directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    books = sorted(p for p in directory.glob("*.ipynb") if _STAGE_NOTEBOOK.match(p.name))
    if not books:
        raise StudyError(f"no stage notebooks (NN_name.ipynb) in {directory}")
    return books


def parameters(cfg: StudyConfig, run: str, overrides: list[str], preset: str | None = None) -> dict:
    """What papermill injects: primitives only. Notebooks run in the project root, so paths inside it
    are given relative to it (an executed record stays valid when the checkout moves)."""
    p = Path(preset) if preset else None
    preset = _portable(p) if p is not None and p.suffix in (".yaml", ".yml") else (preset or cfg.preset)
    return {"run": run, "preset": preset, "results_dir": _portable(Path(cfg.results_dir)),
            "overrides": list(overrides)}


def _portable(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(PROJECT_ROOT)) if p.is_relative_to(PROJECT_ROOT) else str(p)


# the stages each notebook is about (it may also run their inputs): a study whose `stages` has none
# of them skips the notebook
NOTEBOOK_STAGES = {"01_synthetic": ("prompts", "generate"), "02_annotate": ("annotate",),
                   "03_classifier": ("classify", "filter"), "04_mixes": ("tokenize", "mix"), "05_train": ("train",),
                   "06_evaluate": ("evaluate",), "07_figures": ("figures",)}


def wanted(nb: Path, cfg: StudyConfig) -> bool:
    stages = NOTEBOOK_STAGES.get(nb.stem)
    return cfg.stages is None or stages is None or any(s in cfg.stages for s in stages)


def run_notebooks(cfg: StudyConfig, run: str, overrides: list[str], preset: str | None = None,
                  notebooks: list[Path] | None = None, kernel: str | None = None, log=print) -> list[dict]:
    """Execute the stage notebooks in order; returns one record per notebook (path, seconds)."""
    try:
        import papermill as pm
        from papermill.exceptions import PapermillExecutionError
    except ImportError:
        raise StudyError("`study run` executes the notebooks with papermill: pip install -e '.[notebooks]'") from None
    out_dir = Path(cfg.results_dir) / run / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = parameters(cfg, run, overrides, preset)
    state = Run(cfg, run)
    records = []
    for nb in notebooks or stage_notebooks():
        out = out_dir / nb.name
        if not wanted(nb, cfg):
            log(f"[run] {nb.name}: none of its stages ({', '.join(NOTEBOOK_STAGES[nb.stem])}) is among this "
                f"study's stages; skipped")
            continue
        ours = [s for s in NOTEBOOK_STAGES.get(nb.stem, ()) if cfg.stages is None or s in cfg.stages]
        if out.exists() and ours and all(state.state(s).status == "done" for s in ours):
            log(f"[run] {nb.name}: its stages are done; the record of the run that made them is kept ({out})")
            continue
        log(f"[run] {nb.name} -> {out}")
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(PROJECT_ROOT),
                                kernel_name=kernel, progress_bar=False, log_output=False)
        except PapermillExecutionError as e:
            raise StudyError(
                f"notebook {nb.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                f"{e.ename}: {e.evalue}\nthe partial output is in {out}"
            ) from None
        records.append({"notebook": nb.name, "output": str(out), "seconds": round(time.perf_counter() - t0, 1)})
    return records


def setup(run: str, preset: str, results_dir: str, overrides: list[str], knobs: dict | None = None
          ) -> tuple[StudyConfig, Path]:
    """The first cell of every stage notebook, after its `parameters` cell: work from the project
    root (config paths are relative to it), draw figures inline, and load the config with the
    notebook's knobs ({"section.key": value}, None: the preset's). Returns (config, run folder).

    On a run that exists, a notebook opened with no overrides and no knobs attaches to the run's saved
    config (results/<run>/config.yaml) and says how it differs from the preset, so Run All never
    reruns, empties or restales a finished stage; given overrides or knobs are applied on purpose."""
    os.chdir(PROJECT_ROOT)
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    extra = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in (knobs or {}).items() if v is not None]
    cfg = load_config(preset, [f"results_dir={results_dir}", *overrides, *extra])
    saved = Path(results_dir) / check_run_name(run) / "config.yaml"
    if saved.exists():
        theirs = load_config(str(saved), [f"results_dir={results_dir}"])
        keys = changed_keys(theirs.model_dump(mode="json"), cfg.model_dump(mode="json"))
        if keys and not overrides and not extra:
            print(f"attached to run `{run}`'s saved config ({saved}); it differs from preset `{preset}` in "
                  f"{', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}. To rerun on purpose, give overrides.")
            cfg = theirs
        elif keys:
            print(f"run `{run}`: your overrides change {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}; "
                  f"stages they touch will rerun")
    return cfg, Path(cfg.results_dir) / run


# ---------------------------------------------------------------------------------------------
# what the notebooks display: summaries, not raw logs

# stage messages and the derived config, less the per-task lines of the CORE suite (20 per model: the log has them)
STAGE_LINE = re.compile(r"^(?!\[evaluate\] (?:\S+ )?core [a-z_]+: )(\[[a-z]+\] |study: |  [\w.]+ = )")


class _Filtered(io.TextIOBase):
    """A text stream that writes everything to `log` and passes on the lines `show` matches. After
    close() it passes everything on (a library may keep a reference to it, as loguru does)."""

    def __init__(self, log, out, show: re.Pattern | None):
        self.log, self.out, self.show, self.buf, self.lines, self.open_ = log, out, show, "", 0, True

    def write(self, s: str) -> int:
        if not self.open_:
            return self.out.write(s)
        self.log.write(s)
        self.buf += s.replace("\r", "\n")
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            self.lines += 1
            if self.show is not None and self.show.match(line):
                self.out.write(line + "\n")
        return len(s)

    def flush(self) -> None:
        if self.open_:
            self.log.flush()
        self.out.flush()

    def close(self) -> None:
        self.open_ = False


@contextmanager
def quiet(log: str | Path, show: re.Pattern | None = STAGE_LINE):
    """Inside: printed output (and libraries' logs to stderr) goes to the file `log`, the readable record
    keeps only the lines `show` matches (stage messages and the derived config); progress bars (widgets)
    are unaffected. At the end one line says how many lines the log holds."""
    path = Path(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        out, err = _Filtered(f, sys.stdout, show), _Filtered(f, sys.stderr, None)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                yield path
        finally:
            out.close()
            err.close()
    print(f"(the full output, {out.lines + err.lines:,} lines, is in {_portable(path)})")


def status_table(cfg: StudyConfig, run: str):
    """The stages of the run as a table (`study status`)."""
    import pandas as pd

    return pd.DataFrame(Run(cfg, run).status_rows()).set_index("stage").fillna("")


def show_samples(run_dir: str | Path, per_cell: int = 1, chars: int = 500) -> None:
    """One generated document per audience and style, as readable text (paragraphs kept)."""
    from IPython.display import Markdown, display

    t = samples_table(run_dir, per_cell=per_cell, chars=10 * chars)
    if t.empty:
        display(Markdown("_no generated documents_"))
        return
    blocks = []
    for r in t.itertuples():
        text = r.text  # as the mix reads it (the generate stage already removed the model's preamble)
        text = text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " …"
        quoted = "\n".join("> " + line.replace("*", r"\*").replace("#", r"\#") for line in text.splitlines())
        blocks.append(f"**{r.audience} · {r.style}** ({r.tokens} tokens, finished by {r.finish})\n\n{quoted}")
    display(Markdown("\n\n".join(blocks)))


def show_tables(tables: dict) -> None:
    """Named tables (pandas DataFrames or Series) under small headings; an empty one says so in a line."""
    import pandas as pd
    from IPython.display import display

    for name, t in tables.items():
        title = name.replace("_", " ")
        empty = len(t) == 0
        # the heading as Markdown, and as its name where only text shows (a terminal, nbconvert --to text)
        display({"text/markdown": f"**{title}**" + (": none" if empty else ""),
                 "text/plain": name + (": none" if empty else "")}, raw=True)
        if not empty:
            display(t.to_frame() if isinstance(t, pd.Series) else t)


def show_training(run: Run, seconds: float = 0, every: float = 10.0) -> None:
    """The training curves (paper style: legend outside the axes; a schedule's stage boundaries from the
    train result) and one row per run, redrawn every `every` s for `seconds` s (0: once), also while a
    run trains in another process."""
    from IPython.display import clear_output, display

    train_dir = run.dir("train")
    end = time.monotonic() + seconds
    while True:
        logs = {name: read_log(d) for name, d in run_dirs(train_dir).items()}
        train = read_result(run, "train", missing_ok=True)  # training here or elsewhere right now: none yet
        boundaries = (train.stage_boundaries or {}) if train is not None else {}
        clear_output(wait=True)
        if any(len(df) for df in logs.values()):
            display(training_curves(logs, boundaries))
        table = run_table(train_dir)
        shown = table.drop(columns=["backend", "steps_logged"], errors="ignore")  # narrow enough to read whole
        display(shown.set_index("mix").round(4) if len(table) else "no runs yet under " + str(train_dir))
        if time.monotonic() + every > end:
            return
        time.sleep(every)


def mmlu_summary(table, shown: int = 5):
    """MMLU per subject, summarised so it fits: per model the subjects, items per subject and the macro
    average; then the `shown` hardest and easiest subjects (mean over the models), one column per model
    (cloze acc_norm, %). -> (summary, subjects) DataFrames."""
    import pandas as pd

    t = table[(table["benchmark"] == "mmlu") & table["subject"].notna() & (table["form"] == "cloze")
              & (table["metric"] == "acc_norm")]
    if t.empty:
        return pd.DataFrame(), pd.DataFrame()
    t = t[t.groupby("mix")["step"].transform(lambda s: s.isna() | (s == s.max()))]  # each model's last checkpoint
    summary = t.groupby("mix").agg(subjects=("subject", "nunique"), items_per_subject=("n", "median"),
                                   macro_acc_norm=("value", "mean"), subjects_at_0=("value", lambda v: int((v == 0).sum())),
                                   subjects_at_100=("value", lambda v: int((v == 1).sum())))
    summary["macro_acc_norm"] = (100 * summary["macro_acc_norm"]).round(1)
    wide = 100 * t.pivot_table(index="subject", columns="mix", values="value", aggfunc="mean")
    ranked = wide.loc[wide.mean(axis=1).sort_values().index]
    subjects = pd.concat([ranked.head(shown), ranked.tail(shown)]) if len(ranked) > 2 * shown else ranked
    return summary, subjects.round(0).astype("Int64")


def annotation_note(annotate: StageResult | dict, cfg: StudyConfig) -> str:
    """Why the annotation notebook has no label histogram or examples: no answer parsed (Markdown)."""
    annotate = as_result("annotate", annotate)
    c = annotate.counts
    reasons = {k: v for a in annotate.annotators for k, v in a.finish_reasons.items()}
    cut = reasons.get("length", 0)
    fb = cfg.classifier.fallback
    return (f"**No answer parsed**: {c.unparsed:,} of {c.pages:,} answers "
            f"({c.parse_failure_rate:.0%}) have no final `Educational score: N` line"
            + (f"; {cut:,} stopped at `annotate.sampling.max_new_tokens` = {cfg.annotate.sampling.max_new_tokens}"
               if cut else "")
            + ". So there is no label histogram and no example per score; the unparsed answers are below. "
            + ("The classifier falls back to `classifier.fallback` when these labels carry no signal "
               "(notebook 03 and `study report` say which labels it used)." if fb is not None else
               "The classifier trains on `classifier.label_source` (notebook 03 and `study report` say which "
               "labels it used)."))
