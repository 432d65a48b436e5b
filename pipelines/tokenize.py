"""GPT-2 tokenization of document shards into llm.c token shards.

Documents are encoded in batches by a pool of processes (tiktoken, one thread each) and written in
input order by the parent: `<name>_val_000000.bin` first, then `<name>_train_000000.bin`, ....
A shard holds whole documents (so each one decodes back to documents) and closes when the next
document would take it past `shard_tokens`; a single document longer than that gets a shard of
its own.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from pipelines.documents import read_documents
from pipelines.manifest import StageContext
from pipelines.shards import shard_name, write_shard
from pipelines.tokenizer import EOT, gpt2

CHARS_PER_TOKEN = 4.2  # only for the progress bar's estimate of the total


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (all documents' tokens, each prefixed with EOT, as one uint16 array; their lengths)."""
    enc = gpt2()
    encoded = [enc.encode_ordinary(t) for t in texts]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    out = np.empty(int(lengths.sum()), dtype=np.uint16)
    pos = 0
    for e in encoded:
        out[pos] = EOT
        out[pos + 1 : pos + 1 + len(e)] = e
        pos += len(e) + 1
    return out, lengths


def _init_worker() -> None:
    gpt2()


def encode_stream(batches: Iterable[list[str]], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """encode_batch over `batches` in order, with at most 2 batches in flight per worker."""
    if workers <= 1:
        for b in batches:
            yield encode_batch(b)
        return
    with mp.get_context().Pool(workers, initializer=_init_worker) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append(pool.apply_async(encode_batch, (b,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class ShardWriter:
    def __init__(self, directory: Path, name: str, split: str, shard_tokens: int):
        self.dir, self.name, self.split, self.limit = directory, name, split, shard_tokens
        self.parts: list[np.ndarray] = []
        self.ntok = 0
        self.ndocs = 0
        self.shards: list[dict] = []

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if self.ntok + len(tokens) <= self.limit:  # the whole batch fits: no per-document work
            self.parts.append(tokens)
            self.ntok += len(tokens)
            self.ndocs += len(lengths)
            return
        pos = 0
        for n in lengths.tolist():
            if self.ntok and self.ntok + n > self.limit:
                self.flush()
            self.parts.append(tokens[pos : pos + n])
            self.ntok += n
            self.ndocs += 1
            pos += n

    def flush(self) -> None:
        if not self.ntok:
            return
        path = self.dir / shard_name(self.name, self.split, len(self.shards))
        write_shard(path, np.concatenate(self.parts))
        self.shards.append({"split": self.split, "path": path.name, "tokens": self.ntok, "documents": self.ndocs})
        self.parts, self.ntok, self.ndocs = [], 0, 0


def _batches(paths: list[Path], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in read_documents(paths):
        batch.append(doc["text"])
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_files(paths_by_split: dict[str, list[Path]], out_dir: Path, name: str, shard_tokens: int,
                   workers: int, batch_documents: int, total_chars: int | None = None) -> list[dict]:
    """Tokenize document shards split by split (in the order given) into llm.c shards."""
    shards: list[dict] = []
    est = int(total_chars / CHARS_PER_TOKEN) if total_chars else None
    with tqdm(total=est, desc="tokenize", unit="tok", unit_scale=True, disable=None) as bar:
        for split, paths in paths_by_split.items():
            writer = ShardWriter(out_dir, name, split, shard_tokens)
            for tokens, lengths in encode_stream(_batches(paths, batch_documents), workers):
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
        },
        # llm.c's -i / -j take these glob patterns (relative to this stage's folder)
        "patterns": {"train": f"{cfg.name}_train_*.bin", "val": f"{cfg.name}_val_*.bin"},
        "throughput": {"tokens_per_s": round((tok["train"] + tok["val"]) / max(wall, 1e-9))},
    }
