"""Training throughput: the torch backend's step next to a minimal nanoGPT-style PyTorch loop, in one run.

  .venv/bin/python benchmarks/bench_train.py [--models d2c64:4:32,d4c128:8:128] [--steps 6] [--threads N]

  peak       best fp32 matmul FLOP/s of torch on this CPU (2048 x 2048), measured before and after the
             steps (the larger counts): the MFU denominator
  ours       one optimizer step of the reference trainer (pipelines.train.reference.train_step: GPT2.loss
             with the lm head + cross-entropy in chunks of rows, fp32 grad norm, clip, llm.c's AdamW on
             torch's fused kernel)
  minimal    the same GPT-2 blocks, full (B*T, V) logits, F.cross_entropy, loss.backward(),
             clip_grad_norm_(1.0), torch.optim.AdamW (betas 0.9/0.95, decay on 2D weights), default
             (foreach) and fused=True, zero_grad(set_to_none=True)
  the three are timed interleaved, step by step on the same random tokens, so a busy spell on a shared
  machine hits all alike; tok/s = B*T / median step time; MFU = tok/s x llm.c's 6N + 6LCT FLOPs per
  token (N counts the padded 50304-row embedding, as gpt2_estimate_mfu does) / peak; faults = minor
  page faults per step (fresh pages mapped). Written to results/benchmarks/train.json with the load.

For these small shapes the tied lm head (T x C x 50257 per sequence) is most of the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]
sys.path.insert(0, str(ROOT))

from benchmarks.common import record  # noqa: E402, I001  (first: the OpenMP wait policy, before torch loads)

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipelines.llmc.shapes import DECAYED, parse_descriptor  # noqa: E402
from pipelines.model import GPT2  # noqa: E402
from pipelines.train.optim import AdamW  # noqa: E402
from pipelines.onednn import keep_heap  # noqa: E402
from pipelines.train.reference import measure_peak_flops, train_step  # noqa: E402


def ours(model: GPT2):
    named = model.llmc_parameters()
    opt = AdamW([p for _, _, p in named], [n in DECAYED for n, _, _ in named], weight_decay=0.1)
    return lambda x, t: train_step(model, opt, [(x[:, :-1], x[:, 1:])], lr=1e-3, t=t)


def minimal(model: GPT2, fused: bool):
    """nanoGPT's training step on the same blocks: logits for every position, then cross-entropy."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=fused)

    def step(x: np.ndarray, t: int) -> None:
        x = torch.from_numpy(x)
        logits = model.logits(model.hidden(x[:, :-1]))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_model(descriptor: str, B: int, T: int, steps: int, warmup: int = 2) -> list[dict]:
    shape = parse_descriptor(descriptor)
    variants = {"ours": ours(GPT2(shape)), "minimal, AdamW": minimal(GPT2(shape), False),
                "minimal, fused AdamW": minimal(GPT2(shape), True)}
    rng = np.random.default_rng(0)
    times = {k: [] for k in variants}
    faults = {k: [] for k in variants}
    for i in range(warmup + steps):
        x = rng.integers(0, shape.vocab_size, (B, T + 1))
        for name, step in variants.items():  # interleaved: the same tokens, the same moment
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step(x, i + 1)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    rows = []
    for name in variants:
        dt = statistics.median(times[name])
        tok_s = B * T / dt
        rows.append({"model": descriptor, "variant": name, "params_M": round(shape.num_parameters / 1e6, 2), "B": B,
                     "T": T, "step_ms": round(dt * 1e3, 1), "step_ms_min": round(min(times[name]) * 1e3, 1),
                     "tok_s": round(tok_s, 1), "model_gflops": round(tok_s * shape.flops_per_token(T) / 1e9, 2),
                     "page_faults_per_step": int(statistics.median(faults[name]))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="d2c64:4:32,d4c128:8:128",
                    help="descriptor:B:T,... (default: the ci and smoke presets' shapes)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (the median counts)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_heap()  # as the trainer's process does (train()): ours' 26 MB lm-head blocks stay mapped; the
    # minimal loop's (B*T, V) blocks are above glibc's 32 MB mmap limit either way
    peak_before = measure_peak_flops(seconds=2.0, n=2048)
    print(f"CPU: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; fp32 matmul peak {peak_before / 1e9:.1f} GFLOP/s (2048x2048, MKL or oneDNN)", flush=True)
    rows = []
    for spec in args.models.split(","):
        desc, B, T = spec.split(":")
        rows += bench_model(desc, int(B), int(T), args.steps)
    peak_after = measure_peak_flops(seconds=2.0, n=2048)
    peak = max(peak_before, peak_after)
    print(f"fp32 matmul peak after: {peak_after / 1e9:.1f} GFLOP/s; MFU against the larger, {peak / 1e9:.1f}")
    print(f"{'model':<8} {'B x T':>9} {'variant':<21} {'step ms':>8} {'tok/s':>8} {'GFLOP/s':>8} {'MFU':>6} "
          f"{'faults':>8} {'ours is':>8}")
    summary = {}
    for r in rows:
        r["mfu_pct"] = round(100 * r["model_gflops"] * 1e9 / peak, 1)
        mine = next(o for o in rows if o["model"] == r["model"] and o["variant"] == "ours")
        r["ours_speedup"] = round(mine["tok_s"] / r["tok_s"], 3)
        print(f"{r['model']:<8} {r['B']:>4} x {r['T']:<4}{r['variant']:<21} {r['step_ms']:>8.1f} {r['tok_s']:>8,.0f} "
              f"{r['model_gflops']:>8.1f} {r['mfu_pct']:>5.1f}% {r['page_faults_per_step']:>8,} "
              f"{'' if r['variant'] == 'ours' else format(r['ours_speedup'], '.2f') + 'x':>8}")
        if r["variant"] != "ours":
            summary[f"{r['model']} ours / {r['variant']}"] = r["ours_speedup"]
    for k, v in summary.items():
        print(f"  {k}: {v:.2f}x")
    record("train", {"peak_gflops_before": round(peak_before / 1e9, 1), "peak_gflops_after": round(peak_after / 1e9, 1),
                     "threads": torch.get_num_threads(), "rows": rows, "ours_speedup": summary})


if __name__ == "__main__":
    main()
