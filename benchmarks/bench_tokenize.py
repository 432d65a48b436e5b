"""Tokenization throughput: our `study tokenize` path versus plain tiktoken, in one run.

  .venv/bin/python benchmarks/tokenize.py [--docs N] [--workers W]

On the same real web documents (../shared/data/web/web_sample.jsonl.gz):
  ours        tokenize_files(): read .jsonl.gz shards, encode in a process pool, write llm.c shards
  batch       tiktoken encode_ordinary_batch over all cores (threads), texts already in memory
  pool-1doc   a process pool encoding one document at a time (chunksize 1), texts in memory
and our ratio to the faster reference (goal >= 0.9). The references do no I/O; ours does.
"""

from __future__ import annotations

import sys

# this file is named like the stdlib's `tokenize`: take its folder off the import path first
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from benchmarks.common import record  # noqa: E402, I001

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from multiprocessing import Pool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.data.documents import ShardedWriter  # noqa: E402
from pipelines.ingest.tokenize import tokenize_files  # noqa: E402
from pipelines.llmc.tokenizer import gpt2  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "web" / "web_sample.jsonl.gz"


def _encode_one(text: str) -> int:
    return len(gpt2().encode_ordinary(text))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=None, help="first N documents (default: all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--input", default=str(SAMPLE))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time of each counts")
    args = ap.parse_args()

    with gzip.open(args.input, "rt") as f:
        docs = [json.loads(l) for l, _ in zip(f, range(args.docs or 10**12))]
    texts = [d["text"] for d in docs]
    enc = gpt2()
    print(f"{len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f} MB of text, {args.workers} workers")

    with tempfile.TemporaryDirectory() as tmp, Pool(args.workers, initializer=gpt2) as pool:
        tmp = Path(tmp)
        w = ShardedWriter(tmp / "in", "train", 1000)
        for d in docs:
            w.write({"id": str(d.get("id")), "text": d["text"], "source": d.get("source", ""), "metadata": {}})
        paths = [tmp / "in" / s["path"] for s in w.close()]
        best = {"ours": float("inf"), "batch": float("inf"), "pool": float("inf")}
        for _ in range(args.repeats):  # interleaved, so a noisy neighbour hurts every method alike
            t0 = time.perf_counter()
            shards = tokenize_files({"train": paths}, tmp, "bench", 100_000_000, args.workers, 64)
            best["ours"] = min(best["ours"], time.perf_counter() - t0)
            ntok = sum(s["tokens"] for s in shards) - len(docs)  # without the EOT separators

            t0 = time.perf_counter()
            n_batch = sum(len(t) for t in enc.encode_ordinary_batch(texts, num_threads=args.workers))
            best["batch"] = min(best["batch"], time.perf_counter() - t0)

            t0 = time.perf_counter()
            n_pool = sum(pool.imap(_encode_one, texts, chunksize=1))
            best["pool"] = min(best["pool"], time.perf_counter() - t0)
            assert n_batch == n_pool == ntok, (n_batch, n_pool, ntok)
    t_ours, t_batch, t_pool = best["ours"], best["batch"], best["pool"]

    rows = [("ours (files -> llm.c shards)", t_ours), ("tiktoken encode_ordinary_batch", t_batch),
            ("process pool, 1 doc at a time", t_pool)]
    for name, t in rows:
        print(f"{name:34s} {ntok / t:12,.0f} tok/s  ({t:.2f} s)")
    ratio = (ntok / t_ours) / max(ntok / t_batch, ntok / t_pool)
    print(f"ratio ours / faster reference: {ratio:.2f}  (goal >= 0.9)")
    record("tokenize", {"documents": len(docs), "tokens": ntok, "workers": args.workers, "repeats": args.repeats,
                        "tok_s": {name: round(ntok / t) for name, t in rows}, "ratio_vs_faster": round(ratio, 3)})


if __name__ == "__main__":
    main()
