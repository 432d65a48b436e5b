"""Generation throughput: our batched transformers backend versus one prompt at a time, in one run.

  .venv/bin/python benchmarks/generate.py [--preset smoke] [--prompts 16] [--max-new-tokens 64]
                                          [--batch-size B] [--threads T] [--sample] [--set k=v ...]

On the same Cosmopedia-style prompts (built by pipelines.synthetic.prompts from the shared web sample), with
the same loaded model (default: the bundled SmolLM2-135M-Instruct GGUF):
  batched     TransformersBackend at the configured batch size (generate.backend.batch_size)
  one-by-one  the same backend with batch size 1
  llama.cpp   llama-cpp-python on the same GGUF file, one prompt at a time (only if installed)
Greedy decoding unless --sample, so every variant does comparable work. Prints completion tokens/s
of each and the ratios. Model loading is excluded; a short warm-up call runs first.
"""

from __future__ import annotations

import sys

# benchmarks/tokenize.py is named like the stdlib's `tokenize`: take this folder off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from benchmarks.common import record  # noqa: E402, I001  (first: the OpenMP wait policy, before torch loads)

import argparse
import gzip
import json
import os
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import load_config  # noqa: E402
from pipelines.engines.factory import make_backend  # noqa: E402
from pipelines.engines.transformers_backend import bundled_model  # noqa: E402
from pipelines.synthetic.prompts import Seed, build_prompts, extract, load_templates  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "web" / "web_sample.jsonl.gz"


def seeds_from(path: Path, n: int, cfg) -> list[Seed]:
    seeds = []
    with gzip.open(path, "rt") as f:
        for line in f:
            doc = json.loads(line)
            if len(doc.get("text", "")) >= cfg.min_seed_chars and doc.get("source") not in ("fineweb_sample10BT_legalpilot",):
                seeds.append(Seed(str(doc["id"]), "web", extract(doc["text"], cfg.extract_chars), doc.get("source", "")))
            if len(seeds) >= n:
                break
    return seeds


def timed(backend, prompts, sampling) -> tuple[float, int, list[str]]:
    t0 = time.perf_counter()
    out = backend.generate(prompts, sampling)
    return time.perf_counter() - t0, sum(c.completion_tokens for c in out), [c.text for c in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default: generate.backend.batch_size of the preset")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's, 0 = all cores)")
    ap.add_argument("--sample", action="store_true", help="sample with the preset's temperature/top-p instead of greedy")
    ap.add_argument("--input", default=str(SAMPLE))
    args = ap.parse_args()

    cfg = load_config(args.preset, args.overrides)
    bcfg = cfg.generate.backend
    if bcfg.kind != "transformers":
        bcfg = bcfg.model_copy(update={"kind": "transformers", "model": None})
    if args.batch_size:
        bcfg = bcfg.model_copy(update={"batch_size": args.batch_size})
    if args.threads is not None:
        bcfg = bcfg.model_copy(update={"threads": args.threads})
    sampling = cfg.generate.sampling.model_copy(update={"max_new_tokens": args.max_new_tokens})
    if not args.sample:
        sampling = sampling.model_copy(update={"temperature": 0.0})
    pcfg = cfg.prompts.model_copy(update={"n_prompts": args.prompts})
    prompts = [p["text"] for p in build_prompts(pcfg, cfg.seed, seeds_from(Path(args.input), args.prompts, pcfg),
                                                load_templates(pcfg.templates_dir))]

    t0 = time.perf_counter()
    backend = make_backend(bcfg, cfg.seed)
    print(f"model {backend.model_name} on {backend.device}, loaded in {time.perf_counter() - t0:.1f} s; "
          f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, "
          f"{'sampling' if args.sample else 'greedy'}, torch threads={__import__('torch').get_num_threads()}")
    backend.generate(["Say hi."], sampling.model_copy(update={"max_new_tokens": 4}))  # warm-up

    results = {}
    batch = bcfg.batch_size
    wall, tok, texts_b = timed(backend, prompts, sampling)
    results[f"batched (batch {batch})"] = (wall, tok)
    backend.cfg = bcfg.model_copy(update={"batch_size": 1})
    wall, tok, texts_1 = timed(backend, prompts, sampling)
    results["one-by-one (batch 1)"] = (wall, tok)
    backend.cfg = bcfg

    try:
        from llama_cpp import Llama
    except ImportError:
        Llama = None
    if Llama is not None and bcfg.model is None:
        d, f = bundled_model()
        llm = Llama(model_path=str(Path(d) / f), n_ctx=4096, n_threads=bcfg.threads or os.cpu_count(), verbose=False,
                    seed=cfg.seed)
        t0, tok = time.perf_counter(), 0
        for p in prompts:
            r = llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=args.max_new_tokens,
                                           temperature=sampling.temperature, top_p=sampling.top_p)
            tok += r["usage"]["completion_tokens"]
        results["llama.cpp (one-by-one)"] = (time.perf_counter() - t0, tok)
    else:
        print("llama.cpp: llama-cpp-python not installed (or a non-GGUF model): skipped")

    print(f"{'variant':<26} {'tokens':>7} {'wall s':>8} {'tok/s':>8}")
    for name, (wall, tok) in results.items():
        print(f"{name:<26} {tok:>7} {wall:>8.1f} {tok / wall:>8.1f}")
    rate = {k: t / w for k, (w, t) in results.items()}
    names = list(rate)
    print(f"ratio batched / one-by-one: {rate[names[0]] / rate[names[1]]:.2f}x")
    if "llama.cpp (one-by-one)" in rate:
        print(f"ratio batched / llama.cpp: {rate[names[0]] / rate['llama.cpp (one-by-one)']:.2f}x")
    same = None
    if not args.sample:
        same = sum(a == b for a, b in zip(texts_b, texts_1))
        print(f"greedy outputs identical batched vs one-by-one: {same}/{len(prompts)} "
              f"(padding changes float rounding, so a few may differ)")
    record("generate", {"model": backend.model_name, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                        "sample": args.sample, "batch_size": batch,
                        "variants": {k: {"wall_s": round(w, 2), "tokens": t, "tok_s": round(t / w, 2)}
                                     for k, (w, t) in results.items()},
                        "greedy_identical": same})


if __name__ == "__main__":
    main()
