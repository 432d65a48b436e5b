"""GPT-2 tokenization of document shards into llm.c token shards.

Documents are encoded in batches by a pool of processes (tiktoken, one thread each) and written in
input order by the parent: `<name>_val_000000.bin` first, then `<name>_train_000000.bin`, ....
A shard holds whole documents (so each one decodes back to documents) and closes when the next
document would take it past `shard_tokens`; a single document longer than that gets a shard of
its own.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from pipelines.data.documents import batched, read_documents
from pipelines.llmc.shards import ShardWriter
from pipelines.llmc.tokenizer import encode_stream
from pipelines.runs.manifest import StageContext

CHARS_PER_TOKEN = 4.2  # only for the progress bar's estimate of the total


def tokenize_files(paths_by_split: dict[str, list[Path]], out_dir: Path, name: str, shard_tokens: int,
                   workers: int, batch_documents: int, total_chars: int | None = None) -> list[dict]:
    """Tokenize document shards split by split (in the order given) into llm.c shards."""
    shards: list[dict] = []
    est = int(total_chars / CHARS_PER_TOKEN) if total_chars else None
    with tqdm(total=est, desc="tokenize", unit="tok", unit_scale=True, disable=None) as bar:
        for split, paths in paths_by_split.items():
            writer = ShardWriter(out_dir, name, split, shard_tokens)
            for tokens, lengths in encode_stream(batched((d["text"] for d in read_documents(paths)), batch_documents), workers):
                writer.add(tokens, lengths)
                bar.update(len(tokens))
            writer.flush()
            shards.extend(writer.shards)
    return shards


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.tokenize
    ingest = ctx.inputs["ingest"]
    ingest_dir = ctx.run.dir("ingest")
    paths = {s: [ingest_dir / o["path"] for o in ingest["outputs"] if o["split"] == s] for s in ("val", "train")}
    chars = ingest["counts"]["train_chars"] + ingest["counts"]["val_chars"]
    print(f"[tokenize] {ingest['counts']['documents']:,} documents, {chars:,} chars "
          f"(~{chars / CHARS_PER_TOKEN / 1e6:.1f}M tokens est.) -> shards of <= {cfg.shard_tokens:,} tokens, "
          f"{cfg.num_workers} worker(s)")
    t0 = time.perf_counter()
    shards = tokenize_files(paths, ctx.dir, cfg.name, cfg.shard_tokens, cfg.num_workers, cfg.batch_documents, chars)
    wall = time.perf_counter() - t0
    tok = {s: sum(x["tokens"] for x in shards if x["split"] == s) for s in ("train", "val")}
    docs = {s: sum(x["documents"] for x in shards if x["split"] == s) for s in ("train", "val")}
    print(f"[tokenize] {tok['train']:,} train + {tok['val']:,} val tokens in {len(shards)} shard(s), "
          f"{(tok['train'] + tok['val']) / max(wall, 1e-9):,.0f} tok/s")
    oversized = [s for s in shards if s["tokens"] > cfg.shard_tokens]  # one document longer than a shard
    for s in oversized:
        print(f"[tokenize] note: {s['path']} holds one document of {s['tokens']:,} tokens, more than "
              f"tokenize.shard_tokens={cfg.shard_tokens:,} (documents are never split across shards)")
    return {
        "outputs": shards,
        "counts": {
            "documents": docs["train"] + docs["val"],
            "tokens": tok["train"] + tok["val"],
            "train_tokens": tok["train"],
            "val_tokens": tok["val"],
            "train_documents": docs["train"],
            "val_documents": docs["val"],
            "shards": len(shards),
            "oversized_shards": len(oversized),
        },
        # llm.c's -i / -j take these glob patterns (relative to this stage's folder)
        "patterns": {"train": f"{cfg.name}_train_*.bin", "val": f"{cfg.name}_val_*.bin"},
        "throughput": {"tokens_per_s": round((tok["train"] + tok["val"]) / max(wall, 1e-9))},
    }
