"""DCLM's CORE score: 22 in-context tasks scored as MosaicML llm-foundry (v0.9.0, the version DCLM pins)
scores them, through the batched scorer of scoring.py; centered accuracy per task and their mean.

Prompts (llm-foundry's InContextLearningDataset, for every task type):
  - every top-level string field of a row is stripped (`strip_data`); lists (choices, context_options) are not;
  - few-shot: one random.Random(fewshot_random_seed) per task (per category for jeopardy), consumed item by
    item in file order: rng.sample(range(N), k); if the item itself was drawn, it is removed and one
    rng.choice(range(N)) redraw (not the item, not already drawn) replaces it; the shots are used in set order;
  - a shot is `[example_delimiter] query|context + continuation_delimiter + answer` (the delimiter only when
    text precedes it; the answer with no added space); the test item is the same without its answer,
    right-stripped (multiple choice, language modelling) so "\\nAnswer: " ends as "\\nAnswer:";
  - schema (winograd, winogrande): one context per option, `[example_delimiter] option
    [continuation_delimiter.rstrip() when shots precede]`, not stripped, then the shared continuation;
  - the scored continuation gets a leading space when the tokenizer is GPT-2-style BPE (" a" is one token)
    and it has none; the preamble (prompt string + shots) is tokenized with the tokenizer's special tokens
    (a trailing EOS dropped), the test context and continuation without, and the three are concatenated;
  - a context that does not fit is cut from the left to min(max_seq_len, the model's length) minus the
    continuation (llm-foundry's trim_context, per option).
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
import random
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from pipelines.data.core import CoreData, CoreTask, TaskSpec, load_core
from pipelines.errors import StudyError
from pipelines.evaluate.scoring import LM, Encoded, score_encoded

CORE_SIZE = 22  # DCLM's low-variance task set
CONTINUOUS = ("bpb", "prob_norm", "margin")  # multiple_choice and schema items only


# ---------------------------------------------------------------------------------------------
# prompts (strings), as llm-foundry builds them


def strip_row(row: dict) -> dict:
    """llm-foundry's strip_data: top-level strings stripped, everything else as it is."""
    return {k: v.strip() if isinstance(v, str) else v for k, v in row.items()}


def fewshot_indices(n: int, k: int, idx: int, rng: random.Random) -> set[int]:
    """llm-foundry's get_fewshot_sample_idxs: k distinct rows of n, never `idx`, in a set (its order is used)."""
    k = min(n - 1, k)
    picked = set(rng.sample(range(0, n), k))
    if idx in picked:
        picked.remove(idx)
        if len(picked) >= n - 1:
            return picked
        redraw = rng.choice(range(0, n))
        while redraw in picked or redraw == idx:
            redraw = rng.choice(range(0, n))
        picked.add(redraw)
    return picked


def add_prefix_space(text: str, prefix_space: bool) -> str:
    return f" {text}" if prefix_space and not text.startswith(" ") else text


def shot_text(spec: TaskSpec, row: dict, preceding: str) -> str:
    """One solved example (construct_context with add_answer=True)."""
    t = spec.icl_task_type
    if t == "schema":
        body = row["context_options"][row["gold"]]
        head = spec.example_delimiter if preceding else ""
        return f"{head}{body}{spec.continuation_delimiter}{row['continuation']}"
    body, answer = (row["query"], row["choices"][row["gold"]]) if t == "multiple_choice" else \
        (row["context"], row["continuation"])
    head = spec.example_delimiter if preceding else ""
    return f"{head}{body}{spec.continuation_delimiter}{answer}"


@dataclass(frozen=True)
class CorePrompt:
    """One item: the preamble (prompt string + shots), and per option its context and continuation."""

    row: int  # position in the task file
    category: str | None
    gold: int | None  # None for language_modeling
    preamble: str
    contexts: list[str]
    continuations: list[str]
    shots: tuple[int, ...] = ()  # the few-shot rows (positions in the task file), in preamble order


def item_prompt(spec: TaskSpec, row: dict, row_index: int, preamble: str, prefix_space: bool,
                shots: tuple[int, ...] = ()) -> CorePrompt:
    t = spec.icl_task_type
    head = spec.example_delimiter if preamble else ""
    if t == "schema":
        tail = spec.continuation_delimiter.rstrip() if preamble else ""
        contexts = [f"{head}{c}{tail}" for c in row["context_options"]]
        cont = add_prefix_space(row["continuation"], prefix_space)
        return CorePrompt(row_index, row.get("category"), row["gold"], preamble, contexts, [cont] * len(contexts),
                          shots)
    body = row["query"] if t == "multiple_choice" else row["context"]
    ctxt = f"{head}{body}{spec.continuation_delimiter}".rstrip()
    if t == "multiple_choice":
        conts = [add_prefix_space(c, prefix_space) for c in row["choices"]]
        return CorePrompt(row_index, row.get("category"), row["gold"], preamble, [ctxt] * len(conts), conts, shots)
    return CorePrompt(row_index, row.get("category"), None, preamble, [ctxt],
                      [add_prefix_space(row["continuation"], prefix_space)], shots)


def build_prompts(task: CoreTask, prefix_space: bool, limit: int | None = None) -> list[CorePrompt]:
    """Prompts of the first `limit` rows (all: None), in file order. The few-shot RNG is consumed as for
    the whole file, so an item's prompt never depends on the limit. Jeopardy-style tasks (has_categories):
    each category is its own data set (llm-foundry's partition_dataset_by_category), with its own RNG."""
    spec = task.spec
    rows = [strip_row(r) for r in task.rows]
    keep = len(rows) if limit is None else min(limit, len(rows))
    if spec.has_categories:
        parts: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            parts.setdefault(r["category"], []).append(i)
        groups = [parts[c] for c in sorted(parts)]
    else:
        groups = [list(range(len(rows)))]
    out: dict[int, CorePrompt] = {}
    for members in groups:
        rng = random.Random(spec.fewshot_random_seed)
        for j, i in enumerate(members):
            if i >= keep:
                break  # file order: the rest of this group lies beyond the limit too
            preamble = spec.prompt_string
            shots = tuple(members[s] for s in fewshot_indices(len(members), spec.num_fewshot, j, rng)) \
                if spec.num_fewshot > 0 else ()
            for s in shots:
                preamble += shot_text(spec, rows[s], preamble)
            out[i] = item_prompt(spec, rows[i], i, preamble, prefix_space, shots)
    return [out[i] for i in range(keep)]


# ---------------------------------------------------------------------------------------------
# tokens, as llm-foundry tokenizes


def needs_prefix_space(lm: LM) -> bool:
    """llm-foundry's tokenizer_needs_prefix_space: " a" is one token (GPT-2-style BPE)."""
    return len(lm.encode([" a"], add_special_tokens=False)[0]) == 1


def _encode_unique(lm: LM, texts: list[str], special: bool) -> dict[str, list[int]]:
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, lm.encode(unique, add_special_tokens=special))) if unique else {}


def trim_context(context: list[int], continuation: list[int], max_len: int) -> list[int]:
    """llm-foundry's trim_context: cut from the left so that context + continuation <= max_len."""
    if len(context) + len(continuation) > max_len:
        room = max_len - len(continuation)
        if room <= 0:
            raise StudyError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                             f"{max_len}-token context")
        context = context[-room:]
    return context


def encode_core(lm: LM, prompts: list[CorePrompt], max_len: int) -> tuple[list[Encoded], list[list[tuple[int, int]]]]:
    """Scorer inputs: options of one item that share their (trimmed) context are one Encoded (the context
    is run once); owners[k] = the (item, option) of each continuation of encoded[k]. Also each option's
    token count (the continuation's)."""
    pre = _encode_unique(lm, [p.preamble for p in prompts], special=True)
    ctx = _encode_unique(lm, [c for p in prompts for c in p.contexts], special=False)
    cont = _encode_unique(lm, [c for p in prompts for c in p.continuations], special=False)
    eos = lm.eos_token_id
    encoded, owners = [], []
    for i, p in enumerate(prompts):
        head = pre[p.preamble]
        if eos is not None and len(head) > 1 and head[-1] == eos:  # _fix_eos_on_preamble
            head = head[:-1]
        by_context: dict[tuple[int, ...], int] = {}
        for j, (c, x) in enumerate(zip(p.contexts, p.continuations)):
            toks = cont[x]
            if not toks:
                raise StudyError(f"item {p.row}: continuation {x!r} encodes to no tokens: nothing to score")
            context = trim_context(head + ctx[c], toks, max_len) or [lm.prefix_token_id]
            key = tuple(context)
            if key not in by_context:
                by_context[key] = len(encoded)
                encoded.append(Encoded(list(context), []))
                owners.append([])
            k = by_context[key]
            encoded[k].continuations.append(toks)
            owners[k].append((i, j))
    return encoded, owners


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


def score_task(lm: LM, task: CoreTask, prompts: list[CorePrompt], share_context: bool = True,
               batch_tokens: int = 4096, max_batch: int = 64, progress: bool = False, desc: str = "") -> list[dict]:
    max_len = min(task.spec.max_seq_len, lm.max_length)
    encoded, owners = encode_core(lm, prompts, max_len)
    scores = score_encoded(lm, encoded, share_context, batch_tokens, max_batch, progress, desc or task.spec.label)
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


def evaluate_core(lm: LM, suite: CoreSuite, share_context: bool = True, batch_tokens: int = 4096,
                  max_batch: int = 64, progress: bool = False, log=print, label: str = "",
                  skip: frozenset[str] = frozenset(), on_task=None) -> tuple[dict, dict]:
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
        records = score_task(lm, task, prompts, share_context, batch_tokens, max_batch, progress,
                             f"{label} core {t}".strip())
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
    rng = np.random.default_rng([seed, zlib.crc32(spec.label.encode())])
    parts = strata(records, spec)
    reps = np.zeros(n_boot)
    for x in parts:
        reps += np.concatenate([x[rng.integers(0, len(x), size=(min(chunk, n_boot - i), len(x)))].mean(axis=1)
                                for i in range(0, n_boot, chunk)]) / len(parts)
    return reps


def summarize(results: dict[str, list[dict]], suite_specs: dict[str, TaskSpec], version: str, n_boot: int = 1000,
              level: float = 0.95, seed: int = 0) -> dict:
    """Per task: acc and centered accuracy with CIs; CORE (mean centered accuracy over the tasks scored)
    with its CI and label. `results`: {label: records}."""
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
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
                        "acc": acc, "acc_ci": [float(np.quantile(reps, lo_q)), float(np.quantile(reps, hi_q))],
                        "centered": centered(acc, b),
                        "centered_ci": [float(np.quantile(creps, lo_q)), float(np.quantile(creps, hi_q))]}
    n = len(tasks)
    core = float(np.mean([t["centered"] for t in tasks.values()])) if n else float("nan")
    reps = np.mean(core_reps, axis=0) if n else np.array([np.nan])
    return {"label": core_label(version, n), "version": version, "tasks_scored": n, "of": CORE_SIZE,
            "core": core, "ci": [float(np.quantile(reps, lo_q)), float(np.quantile(reps, hi_q))],
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
                rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
                reps = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
                rows.append({**base, "metric": m, "value": float(x.mean()), "ci_low": float(np.quantile(reps, (1 - level) / 2)),
                             "ci_high": float(np.quantile(reps, 1 - (1 - level) / 2)), "random_baseline": None})
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

