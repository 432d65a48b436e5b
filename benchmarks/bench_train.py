"""Training throughput of the torch backend on this CPU, next to the CPU's matmul FLOP/s, in one run.

  .venv/bin/python benchmarks/train.py [--models d2c64:4:32,d4c128:8:128] [--steps 5] [--threads N]

  peak      best fp32 matmul FLOP/s of torch on this CPU (2048 x 2048, the MFU denominator)
  per model one optimizer step of the reference trainer (pipelines.train.reference.train_step:
            forward, backward, grad norm, clip, llm.c's AdamW) on random tokens, B x T per step;
            tok/s = B*T / median step time; model FLOP/s = tok/s x llm.c's 6N + 6LCT per token
            (N counts the padded 50304-row embedding, as gpt2_estimate_mfu does); MFU = that / peak.

For these small shapes the tied lm head (T x C x 50257 per sequence) is most of the work, and the
softmax over 50257 logits is memory-bound, so MFU is well below what d12 would reach.
"""

from __future__ import annotations

import sys

# benchmarks/tokenize.py would shadow the stdlib's `tokenize`: take this folder off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the launcher sets it for the torch backend

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.llmc.shapes import DECAYED, parse_descriptor  # noqa: E402
from pipelines.model import GPT2  # noqa: E402
from pipelines.train.optim import AdamW  # noqa: E402
from pipelines.train.reference import measure_peak_flops, train_step  # noqa: E402


def peak_flops(n: int = 2048, seconds: float = 2.0) -> float:
    return measure_peak_flops(seconds=seconds, n=n)  # the trainer's own MFU denominator, larger and longer


def bench_model(descriptor: str, B: int, T: int, steps: int, warmup: int = 2) -> dict:
    shape = parse_descriptor(descriptor)
    model = GPT2(shape, seed=42)
    named = model.llmc_parameters()
    opt = AdamW([p for _, _, p in named], [n in DECAYED for n, _, _ in named], weight_decay=0.1)
    rng = np.random.default_rng(0)
    times = []
    for i in range(warmup + steps):
        x = rng.integers(0, shape.vocab_size, (B, T + 1))
        t0 = time.perf_counter()
        train_step(model, opt, [(x[:, :-1], x[:, 1:])], lr=1e-3, t=i + 1)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    tok_s = B * T / dt
    return {"model": descriptor, "params_M": shape.num_parameters / 1e6, "B": B, "T": T, "step_ms": dt * 1e3,
            "tok_s": tok_s, "model_gflops": tok_s * shape.flops_per_token(T) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="d2c64:4:32,d4c128:8:128",
                    help="descriptor:B:T,... (default: the ci and smoke presets' shapes)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (median counts)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = peak_flops()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load "
          f"{load:.1f}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (2048x2048)")
    rows = []
    for spec in args.models.split(","):
        desc, B, T = spec.split(":")
        r = bench_model(desc, int(B), int(T), args.steps)
        r["mfu_pct"] = 100 * r["model_gflops"] * 1e9 / peak
        rows.append(r)
    print(f"{'model':<8} {'params':>8} {'B x T':>9} {'step ms':>9} {'tok/s':>9} {'GFLOP/s':>9} {'MFU':>6}")
    for r in rows:
        print(f"{r['model']:<8} {r['params_M']:>7.1f}M {r['B']:>4} x {r['T']:<4}{r['step_ms']:>8.1f} "
              f"{r['tok_s']:>9,.0f} {r['model_gflops']:>9.1f} {r['mfu_pct']:>5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_gflops": peak / 1e9, "threads": torch.get_num_threads(), "load": load,
                                               "models": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
