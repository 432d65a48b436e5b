"""DCLM's CORE score: 22 in-context tasks scored as MosaicML llm-foundry (v0.9.0, the version DCLM pins)
scores them, through the batched scorer of scoring.py; centered accuracy per task and their mean. The
prompts and their tokens, as llm-foundry builds them, are core_prompts.py's.

Scoring (llm-foundry's metrics):
  - multiple_choice: the option with the lowest mean per-token cross-entropy (= highest mean log-likelihood
    per token; the first on ties);
  - schema: the option under which the shared continuation has the lowest mean cross-entropy;
  - language_modeling: correct iff every continuation token is the argmax of its position (greedy
    decoding reproduces the target).
Per item the continuous metrics of the other benchmarks come from the same scores (multiple choice and
schema): bpb of the gold continuation, prob_norm (its probability among the options, from the summed
log-likelihoods) and margin (gold's mean per-token log-likelihood minus the best wrong option's: > 0
exactly when the item is correct, ties aside).

Aggregation (DCLM eval/aggregated_metrics.py): centered_t = (acc_t - b_t) / (1 - b_t) with DCLM's random
baselines (v1: the paper and nanochat; v2: DCLM's default since 2025-09); CORE = the mean over tasks;
jeopardy's accuracy is the mean of its 5 categories' accuracies. A score over fewer than 22 tasks is
labelled with its count ("CORE v1 20/22") and is not DCLM's CORE. Intervals: percentile bootstrap over
items, resampled within each task (and within each jeopardy category), the same draws for every model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from pipelines.config import EvaluateConfig
from pipelines.data.core_tasks import CoreData, CoreTask, TaskSpec, load_core
from pipelines.evaluate.bootstrap import percentile_ci, resampled_means, task_rng
from pipelines.evaluate.core_prompts import CorePrompt, build_prompts, encode_core, needs_prefix_space
from pipelines.evaluate.models import LM
from pipelines.evaluate.scoring import Batching, score_encoded

CORE_SIZE = 22  # DCLM's low-variance task set
CONTINUOUS = ("bpb", "prob_norm", "margin")  # multiple_choice and schema items only


# ---------------------------------------------------------------------------------------------
# per-item results


def item_record(spec: TaskSpec, p: CorePrompt, lls: list[float], ntok: list[int], greedy: list[bool]) -> dict:
    """One item's result from its options' summed log-likelihoods, token counts and greedy flags."""
    rec = {"row": p.row, "category": p.category, "gold": p.gold, "lls": lls, "ntok": ntok}
    if spec.icl_task_type == "language_modeling":
        return {**rec, "greedy": bool(greedy[0]), "acc": int(greedy[0])}
    ll = np.array(lls, dtype=np.float64)
    mean = ll / np.array(ntok, dtype=np.float64)  # mean per-token log-likelihood = -cross-entropy
    pred = int(np.argmax(mean))  # first maximum: llm-foundry's first minimum of the cross-entropy
    wrong = np.delete(mean, p.gold)
    prob = np.exp(ll - ll.max())
    gold_bytes = len(p.continuations[p.gold].encode("utf-8"))
    return {**rec, "pred": pred, "acc": int(pred == p.gold),
            "bpb": float(-ll[p.gold] / (math.log(2) * gold_bytes)),
            "prob_norm": float(prob[p.gold] / prob.sum()),
            "margin": float(mean[p.gold] - wrong.max()) if len(wrong) else 0.0}


def rescore(spec: TaskSpec, prompts: list[CorePrompt], saved: list[dict]) -> list[dict] | None:
    """Records from saved ones (their scores through item_record again); None when they are not these items."""
    if len(saved) != len(prompts) or any(r.get("row") != p.row or len(r.get("lls", ())) != len(p.continuations)
                                         for r, p in zip(saved, prompts)):
        return None
    lm_task = spec.icl_task_type == "language_modeling"
    return [item_record(spec, p, r["lls"], r["ntok"], [r.get("greedy", False)] if lm_task else [False])
            for r, p in zip(saved, prompts)]


def score_task(lm: LM, task: CoreTask, prompts: list[CorePrompt], batching: Batching | EvaluateConfig = Batching(),
               desc: str = "") -> list[dict]:
    max_len = min(task.spec.max_seq_len, lm.max_length)
    encoded, owners = encode_core(lm, prompts, max_len)
    scores = score_encoded(lm, encoded, batching, desc or task.spec.label)
    n_opt = [len(p.continuations) for p in prompts]
    lls = [[0.0] * n for n in n_opt]
    ntok = [[0] * n for n in n_opt]
    greedy = [[False] * n for n in n_opt]
    for k, e in enumerate(encoded):
        for m, (i, j) in enumerate(owners[k]):
            lls[i][j], ntok[i][j], greedy[i][j] = scores.lls[k][m], len(e.continuations[m]), scores.greedy[k][m]
    return [item_record(task.spec, p, lls[i], ntok[i], greedy[i]) for i, p in enumerate(prompts)]


# ---------------------------------------------------------------------------------------------
# the suite: tasks + prompts, for every model of a run


@dataclass
class CoreSuite:
    data: CoreData
    limit: int | None = None
    version: str = "v1"
    _prompts: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.data.tasks)

    def prompts(self, label: str, prefix_space: bool) -> list[CorePrompt]:
        key = (label, prefix_space)
        if key not in self._prompts:
            self._prompts[key] = build_prompts(self.data.tasks[label], prefix_space, self.limit)
        return self._prompts[key]

    @property
    def title(self) -> str:
        return core_label(self.version, len(self.labels))


def load_suite(tasks: list[str] | None, limit: int | None, version: str, core_dir: str | None,
               data_dir: str | None, check: bool = True) -> CoreSuite:
    return CoreSuite(load_core(tasks, core_dir, data_dir, check), limit, version)


def task_name(label: str) -> str:
    """The evaluate stage's name of a CORE task (items_<name>.jsonl, results keys)."""
    return f"core_{label}"


def evaluate_core(lm: LM, suite: CoreSuite, batching: Batching | EvaluateConfig = Batching(), log=print,
                  label: str = "", skip: frozenset[str] = frozenset(), on_task=None) -> tuple[dict, dict]:
    """The suite's tasks with one model, but those whose task_name is in `skip` (already scored):
    ({task_name: records}, speed); on_task(task_name, records) after each task."""
    prefix_space = needs_prefix_space(lm)
    results, n_items, total = {}, 0, 0.0
    for t in suite.labels:
        if task_name(t) in skip:
            continue
        task = suite.data.tasks[t]
        prompts = suite.prompts(t, prefix_space)
        t0 = time.perf_counter()
        records = score_task(lm, task, prompts, batching, f"{label} core {t}".strip())
        dt = time.perf_counter() - t0
        results[task_name(t)] = records
        if on_task is not None:
            on_task(task_name(t), records)
        n_items, total = n_items + len(records), total + dt
        log(f"[evaluate] {label} core {t}: {len(records)} items, acc {task_accuracy(records, task.spec):.3f}, "
            f"{len(records) / max(dt, 1e-9):.1f} items/s")
    return results, {"items": n_items, "seconds": round(total, 3), "items_per_s": round(n_items / max(total, 1e-9), 2)}


# ---------------------------------------------------------------------------------------------
# accuracy, centered accuracy, CORE


def core_label(version: str, n_tasks: int) -> str:
    """"CORE v1" for all 22 tasks, "CORE v1 20/22" for fewer: never presented as the full score."""
    return f"CORE {version}" + ("" if n_tasks == CORE_SIZE else f" {n_tasks}/{CORE_SIZE}")


def centered(acc: float, baseline: float) -> float:
    """(acc - b) / (1 - b); a task with baseline 0 keeps its accuracy."""
    return (acc - baseline) / (1.0 - baseline)


def strata(records: list[dict], spec: TaskSpec) -> list[np.ndarray]:
    """Per-item correctness, one array per stratum: the categories of a has_categories task, else one."""
    if not spec.has_categories:
        return [np.array([r["acc"] for r in records], dtype=np.float64)]
    cats: dict[str, list[int]] = {}
    for r in records:
        cats.setdefault(r["category"], []).append(r["acc"])
    return [np.array(cats[c], dtype=np.float64) for c in sorted(cats)]


def task_accuracy(records: list[dict], spec: TaskSpec) -> float:
    """Mean correctness; jeopardy: the unweighted mean of its categories' accuracies (DCLM)."""
    parts = strata(records, spec)
    return float(np.mean([x.mean() for x in parts])) if records else float("nan")


def resampled_accuracy(records: list[dict], spec: TaskSpec, n_boot: int, seed: int, chunk: int = 100) -> np.ndarray:
    """(n_boot,) bootstrap replicates of task_accuracy, resampled within each stratum; the draws depend
    only on the seed, the task and the item counts, so models scored on the same items are paired."""
    return resampled_means(strata(records, spec), n_boot, task_rng(seed, spec.label), chunk)


def summarize(results: dict[str, list[dict]], suite_specs: dict[str, TaskSpec], version: str, n_boot: int = 1000,
              level: float = 0.95, seed: int = 0) -> dict:
    """Per task: acc and centered accuracy with CIs; CORE (mean centered accuracy over the tasks scored)
    with its CI and label. `results`: {label: records}."""
    tasks, core_reps = {}, []
    for label, records in results.items():
        if not records:
            continue
        spec = suite_specs[label]
        b = spec.baseline(version)
        acc = task_accuracy(records, spec)
        reps = resampled_accuracy(records, spec, n_boot, seed)
        creps = centered(reps, b)
        core_reps.append(creps)
        tasks[label] = {"type": spec.icl_task_type, "shots": spec.num_fewshot, "n": len(records), "baseline": b,
                        "acc": acc, "acc_ci": list(percentile_ci(reps, level)), "centered": centered(acc, b),
                        "centered_ci": list(percentile_ci(creps, level))}
    n = len(tasks)
    core = float(np.mean([t["centered"] for t in tasks.values()])) if n else float("nan")
    reps = np.mean(core_reps, axis=0) if n else np.array([np.nan])
    return {"label": core_label(version, n), "version": version, "tasks_scored": n, "of": CORE_SIZE,
            "core": core, "ci": list(percentile_ci(reps, level)),
            "tasks": tasks}


def table_rows(results: dict[str, list[dict]], suite_specs: dict[str, TaskSpec], version: str, n_boot: int,
               level: float, seed: int) -> list[dict]:
    """The evaluate table's rows: per task (subject = the task) acc, centered and, for multiple choice and
    schema, the continuous metrics; and the CORE row (subject None, metric `core`, label "CORE v1 20/22")."""
    s = summarize(results, suite_specs, version, n_boot, level, seed)
    rows = []
    for label, t in s["tasks"].items():
        base = {"benchmark": "core", "subject": label, "form": "icl", "n": t["n"], "fewshot": t["shots"], "label": None}
        rows.append({**base, "metric": "acc", "value": t["acc"], "ci_low": t["acc_ci"][0], "ci_high": t["acc_ci"][1],
                     "random_baseline": t["baseline"]})
        rows.append({**base, "metric": "centered", "value": t["centered"], "ci_low": t["centered_ci"][0],
                     "ci_high": t["centered_ci"][1], "random_baseline": 0.0})
        records = results[label]
        for m in CONTINUOUS:
            if records and m in records[0]:
                x = np.array([r[m] for r in records], dtype=np.float64)
                # the task's draws (as acc's, for a task without categories), all items in one group
                lo, hi = percentile_ci(resampled_means([x], n_boot, task_rng(seed, label)), level)
                rows.append({**base, "metric": m, "value": float(x.mean()), "ci_low": lo, "ci_high": hi,
                             "random_baseline": None})
    if s["tasks"]:
        rows.append({"benchmark": "core", "subject": None, "form": "icl", "metric": "core", "value": s["core"],
                     "ci_low": s["ci"][0], "ci_high": s["ci"][1], "n": s["tasks_scored"], "random_baseline": 0.0,
                     "fewshot": None, "label": s["label"]})
    return rows


def decision_values(records: dict[str, list[dict]], suite_specs: dict[str, TaskSpec], version: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-item values whose macro average over `groups` (the task labels) is CORE: centered correctness,
    jeopardy's items weighted so its group mean is the mean of its categories. -> (values, groups)."""
    values, groups = [], []
    for label, recs in records.items():
        spec = suite_specs[label]
        b = spec.baseline(version)
        x = centered(np.array([r["acc"] for r in recs], dtype=np.float64), b)
        if spec.has_categories and recs:
            cats = np.array([r["category"] for r in recs])
            names, inverse, counts = np.unique(cats, return_inverse=True, return_counts=True)
            x = x * len(recs) / (len(names) * counts[inverse])
        values.append(x)
        groups += [label] * len(recs)
    return (np.concatenate(values) if values else np.zeros(0)), np.array(groups)


def format_core(summary: dict) -> str:
    lines = [f"  {summary['label']}: {summary['core']:.4f} [{summary['ci'][0]:.4f}, {summary['ci'][1]:.4f}]"]
    for label, t in summary["tasks"].items():
        lines.append(f"    {label:<34} acc {t['acc']:.3f}  centered {t['centered']:+.3f}  n={t['n']}  "
                     f"({t['type']}, {t['shots']}-shot, baseline {t['baseline']:.3f})")
    return "\n".join(lines)

