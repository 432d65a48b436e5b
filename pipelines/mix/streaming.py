"""Streaming mixes (`mix.streaming: true`): each source read once, in its own order, straight into
llm.c shards; for budgets far beyond memory (the GPU presets: 33.5B GPT-2 tokens per mix from hub
datasets). Nothing held grows with the budget but one compact set of 64-bit text hashes per source
(HashSet, ~16-32 bytes a document) and, for a local path or hub dataset, the set of ids that
ingest.select keeps to drop repeated ids (~100 bytes a document).

  1. the shared validation shards, as the in-memory mix writes them: ingest's val split ->
     val/<val_name>_val_*.bin; their keys (source, id) and exact-text hashes never train
  2. per mix, each source's share of the budget, round(tokens * w / wsum) as in the in-memory mix
  3. each source streams in its own order (a stage's files; a local path; a hub dataset through
     `datasets` streaming), validation pages skipped; a process pool computes per document its
     exact-text hash (dedup.exact_key, 64 bits), its benchmark n-gram match (decontaminate.NgramIndex)
     and its GPT-2 tokens; the parent then drops, in stream order, exact duplicates (of a val page or
     of any document the mix's sources have passed in their current pass) and contaminated documents
  4. the next document comes from the source furthest behind its part of the budget (tokens taken /
     share.tokens); a source stops there, overshooting by less than one document; documents reach the shards
     (tokenize.ShardWriter) through a shuffle buffer of mix.shuffle_buffer documents drawn by the
     mix's seeded rng, so every shard mixes the sources
  5. a source that ends before its part of the budget stops the run (mix.on_short: fail) or starts over (repeat,
     epochs recorded); the dedup set is per pass, so a repeated document passes again

Unlike the in-memory mix: there is no near-duplicate (MinHash) pass (the manifest says
"near_dedup": "skipped (streaming)"); exact duplicates are kept first-come in stream order, not in
source priority order, and carry no `duplicate_of` (only which source, or "val", had the text);
removals are counted and logged (removed/<mix>/<reason>.jsonl, the first 100 per reason, merged into
removed/<reason>.jsonl) during a source's first pass only; a source's documents_in, documents_kept and
tokens_kept count what the mix read of it (a source in several mixes: the mix that read most), and
its available_documents, available_tokens and epochs are None unless its stream was read to the end.

Resume: after each complete shard, progress/<mix>/progress.json (written atomically) records the
shards, every source's position (pass, documents of the stream gone past, tokens taken), the rng
state, the removal logs' counts and lengths, and the documents in the shuffle buffer by identity
(source, pass, position) in progress/<mix>/buffer_<shards>.npy; each source's dedup hashes are
appended to progress/<mix>/seen_<source>.u64. A rerun skips each stream to its position without
tokenizing (a hub dataset is read again from its start to get there), re-reads and tokenizes the
buffered documents, reloads the hash sets, truncates the logs and continues: the same shards, bytes
for bytes, as an uninterrupted run (the number of workers changes speed only). A finished mix is
recorded as done and skipped; a mix whose config, seed or input stages changed (`_mix_key`) starts
over. Invalid records of a local path or hub dataset (ingest's drop reasons) are counted in the
manifest's counts.removed, without examples.

Over 400 lines as one thing: the streaming executor (sources, shuffle buffer, checkpoints per shard)
must be read together to see why a resumed run writes the same bytes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from pipelines.config import MixConfig, config_hash
from pipelines.data.documents import DropLog, batched, expand_paths
from pipelines.data.pages import external_documents
from pipelines.errors import StudyError
from pipelines.files import atomic_open, file_sha256, write_json_atomic
from pipelines.llmc.shards import ShardWriter
from pipelines.llmc.tokenizer import encode_batch, encode_stream, gpt2
from pipelines.mix.decontaminate import NgramIndex, _WordHasher
from pipelines.mix.dedup import exact_key
from pipelines.mix.plan import (
    MixPlan,
    SourceShare,
    input_record,
    mkdir,
    plan,
    source_record,
    stage_result,
)
from pipelines.runs.manifest import StageContext
from pipelines.runs.readers import stage_documents

MEMO_WORDS = 1_000_000  # a worker's word-hash memo is cleared past this many words (the hashes are stable)


def text_hash(text: str) -> int:
    """64 bits of dedup.exact_key: sha1 of the lowercased, whitespace-collapsed text."""
    return int(exact_key(text)[:16], 16)


class HashSet:
    """A set of 64-bit hashes in one numpy open-addressing table (linear probing, at most half full):
    16-32 bytes a hash where a Python set of ints takes ~70. Slot value 0 means empty, so the hash 0
    is stored as 1."""

    def __init__(self, capacity: int = 1024):
        self.table = np.zeros(capacity, dtype=np.uint64)  # capacity: a power of two
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def _slot(self, h: int) -> int:
        mask = len(self.table) - 1
        i = h & mask
        while True:
            v = int(self.table[i])
            if v == 0 or v == h:
                return i
            i = (i + 1) & mask

    def __contains__(self, h: int) -> bool:
        h = h or 1
        return int(self.table[self._slot(h)]) == h

    def add(self, h: int) -> None:
        h = h or 1
        i = self._slot(h)
        if int(self.table[i]) == h:
            return
        self.table[i] = h
        self.n += 1
        if 2 * self.n > len(self.table):
            old = self.table[self.table != 0].tolist()
            self.table = np.zeros(2 * len(self.table), dtype=np.uint64)
            self.n = 0
            for x in old:
                self.add(x)


# ---------------------------------------------------------------------------------------------
# the worker side: per document, its hash, its contamination and its tokens

_INDEX: NgramIndex | None = None
_HASHER = _WordHasher()


def _init_worker(index: NgramIndex | None) -> None:
    global _INDEX
    _INDEX = index
    gpt2()


def prepare_batch(texts: list[str]) -> tuple[list[int], list[dict | None], np.ndarray, np.ndarray]:
    """texts -> (exact-text hashes, the benchmark match of each or None, tokens of the uncontaminated
    texts (each EOT first, concatenated, uint16), lengths (n,) with 0 for a contaminated text)."""
    if len(_HASHER.memo) > MEMO_WORDS:  # billions of words would otherwise all stay memoised
        _HASHER.memo.clear()
    hashes = [text_hash(t) for t in texts]
    hits = [_INDEX.match(t, _HASHER) if _INDEX is not None else None for t in texts]
    clean = [i for i, hit in enumerate(hits) if hit is None]
    tokens, clean_lengths = encode_batch([texts[i] for i in clean])
    lengths = np.zeros(len(texts), dtype=np.int64)
    lengths[clean] = clean_lengths
    return hashes, hits, tokens, lengths


class _Ready:
    def __init__(self, value: Any):
        self.value = value

    def get(self) -> Any:
        return self.value


class _Pool:
    """prepare_batch / encode_batch in worker processes (tokenize.encode_stream's pool, with the
    decontamination index in every worker: n-gram matching costs more than tokenizing), or inline
    for <= 1 worker. `depth`: batches a source keeps in flight."""

    def __init__(self, workers: int, index: NgramIndex | None):
        self.pool = mp.get_context().Pool(workers, initializer=_init_worker, initargs=(index,)) if workers > 1 else None
        if self.pool is None:
            _init_worker(index)
        self.depth = 2 * workers if self.pool else 1

    def submit(self, fn: Callable, arg: Any) -> Any:
        return self.pool.apply_async(fn, (arg,)) if self.pool else _Ready(fn(arg))

    def __enter__(self) -> "_Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# ---------------------------------------------------------------------------------------------
# the parent side


class _MixDropLog(DropLog):
    """The removal log of one mix, continued by a resumed run: checkpoint() gives per reason the
    count and the bytes written; resume() truncates the files back to them and appends from there."""

    def checkpoint(self) -> dict:
        for f in self._files.values():
            f.flush()
        return {"counts": dict(self.counts),
                "bytes": {r: (self.dir / f"{r}.jsonl").stat().st_size for r in self._files}}

    def resume(self, state: dict) -> None:
        self.counts = Counter(state["counts"])
        for p in sorted(self.dir.glob("*.jsonl")) if self.dir.exists() else []:
            size = state["bytes"].get(p.stem)
            if size is None:  # first written after the checkpoint
                p.unlink()
                continue
            os.truncate(p, size)
            self._files[p.stem] = open(p, "a", encoding="utf-8")


@dataclass
class _Doc:
    where: tuple[int, int, int]  # (source index in the mix, pass, position in the source's stream)
    tokens: np.ndarray  # uint16, EOT first


class _Source:
    """One source of one mix: its stream read in order through the pool, one surviving document at a
    time. Positions count the stream's documents (validation pages included), so a pass's stream is
    the same sequence every time it is opened."""

    def __init__(self, mix: "_StreamingMix", i: int, share: SourceShare, opener: Callable[[DropLog], Iterator[dict]]):
        self.mix, self.i, self.share, self.opener = mix, i, share, opener
        self.name = share.name
        self.passno = 1
        self.consumed = 0  # documents of this pass's stream the mix has gone past
        self.taken = self.tokens = self.taken_in_pass = 0  # documents and tokens given to the mix (all passes)
        self.stats = {"documents_in": 0, "exact_duplicate": 0, "contaminated": {}, "documents_kept": 0,
                      "tokens_kept": 0}  # first pass only
        self.available: list[int] | None = None  # [documents, tokens] of a whole first pass, once read
        self.input_drops = DropLog(None)  # invalid records of an external source (counts only)
        self.seen = HashSet()  # exact-text hashes of this pass's documents
        self.new_hashes: list[int] = []  # ... not yet appended to the seen file
        self.hashes = 0  # hashes in the seen file
        self.pass_start = 0  # index in the seen file where this pass's hashes begin
        self._raw: Iterator[dict] | None = None
        self._read = 0  # position of the next document the batches take from the stream
        self._inflight: deque = deque()  # (items, pending prepare_batch result)
        self._ready: deque = deque()  # (position, doc, hash, hit, tokens) prepared, not yet consumed

    @property
    def seen_path(self) -> Path:
        return self.mix.work / f"seen_{self.i}.u64"

    def what(self) -> str:
        return f"mix {self.mix.spec.name!r}, source {self.name!r}"

    # -- reading

    def start(self, skip: int = 0, collect: frozenset[int] | set[int] = frozenset()) -> dict[int, str]:
        """Open this pass's stream, skipping `skip` documents unread but for the texts at `collect`."""
        self._raw = iter(self.opener(self.input_drops if self.passno == 1 else DropLog(None)))
        texts = {}
        for pos in range(skip):
            doc = next(self._raw, None)
            if doc is None:
                raise StudyError(f"{self.what()}: the stream ended after {pos:,} documents, but the run being "
                                 f"resumed had read {skip:,}: the source changed. Delete "
                                 f"{self.mix.work} to start the mix over")
            if pos in collect:
                texts[pos] = doc["text"]
        self._read = self.consumed = skip
        self._inflight.clear()
        self._ready.clear()
        return texts

    def collect(self, positions: set[int]) -> dict[int, str]:
        """Texts at `positions` of a fresh read of the stream (buffered documents of an earlier pass)."""
        texts = {}
        for pos, doc in enumerate(self.opener(DropLog(None))):
            if pos in positions:
                texts[pos] = doc["text"]
                if len(texts) == len(positions):
                    break
        return texts

    def _fill(self) -> None:
        """Keep `depth` batches of the stream in the pool (validation pages left out)."""
        m = self.mix
        while len(self._inflight) < m.pool.depth and self._raw is not None:
            items = []
            for doc in self._raw:
                pos = self._read
                self._read += 1
                if f"{doc['source']}\t{doc['id']}" in m.val_keys:
                    continue  # a validation page never trains
                items.append((pos, {"source": doc["source"], "id": doc["id"], "text": doc["text"]}))
                if len(items) >= m.batch:
                    break
            else:
                self._raw = None  # the stream ended
            if items:
                self._inflight.append((items, m.pool.submit(prepare_batch, [d["text"] for _, d in items])))

    def _next_prepared(self) -> tuple | None:
        if not self._ready:
            self._fill()
            if not self._inflight:
                return None
            items, pending = self._inflight.popleft()
            hashes, hits, tokens, lengths = pending.get()
            ends = np.cumsum(lengths)
            for (pos, doc), h, hit, a, b in zip(items, hashes, hits, (ends - lengths).tolist(), ends.tolist()):
                self._ready.append((pos, doc, h, hit, tokens[a:b]))
            self._fill()
        return self._ready.popleft()

    def next_doc(self) -> _Doc | None:
        """The next document of this pass that is neither an exact duplicate nor contaminated; None at
        the end of the stream."""
        m = self.mix
        first = self.passno == 1
        while True:
            item = self._next_prepared()
            if item is None:
                return None
            pos, doc, h, hit, tokens = item
            self.consumed = pos + 1
            if first:
                self.stats["documents_in"] += 1
            dup = m.duplicate_in(h)
            if dup is not None:
                if first:
                    self.stats["exact_duplicate"] += 1
                    m.drop("exact_duplicate", self, doc, {"duplicate_in": dup, "of_val": dup == "val"})
                continue
            if m.cfg.dedup.exact:
                self.seen.add(h)
                self.new_hashes.append(h)
            if hit is not None:
                if first:
                    c = self.stats["contaminated"]
                    c[hit["benchmark"]] = c.get(hit["benchmark"], 0) + 1
                    m.drop("contaminated", self, doc, hit)
                continue
            if first:
                self.stats["documents_kept"] += 1
                self.stats["tokens_kept"] += len(tokens)
            return _Doc((self.i, self.passno, pos), tokens.copy())  # a copy: the batch's array can go

    def take(self) -> _Doc:
        """The next document for the mix; at the end of the stream, fail or start another pass."""
        doc = self.next_doc()
        while doc is None:
            if self.passno == 1:
                self.available = [self.stats["documents_kept"], self.stats["tokens_kept"]]
            if self.taken_in_pass == 0:
                raise StudyError(f"{self.what()}: no documents left after dedup and decontamination "
                                 f"(pass {self.passno}); check the source, or drop it from the mix")
            if self.mix.cfg.on_short == "fail":
                raise StudyError(f"{self.what()}: needs {self.share.tokens:,} tokens but the source has "
                                 f"{self.tokens:,} after dedup and decontamination; lower the mix's tokens, or "
                                 f"set mix.on_short=repeat to repeat it")
            self.passno += 1
            self.taken_in_pass = 0
            self.pass_start = self.hashes + len(self.new_hashes)
            self.seen = HashSet()  # dedup within one pass: a repeated document passes again
            self.start()
            doc = self.next_doc()
        self.taken += 1
        self.taken_in_pass += 1
        self.tokens += len(doc.tokens)
        return doc

    # -- checkpoints

    def save_hashes(self) -> None:
        with open(self.seen_path, "ab") as f:
            np.asarray(self.new_hashes, dtype="<u8").tofile(f)
            f.flush()
            os.fsync(f.fileno())
        self.hashes += len(self.new_hashes)
        self.new_hashes = []

    def state(self) -> dict:
        return {"name": self.name, "target": self.share.tokens, "pass": self.passno, "consumed": self.consumed,
                "taken": self.taken, "tokens": self.tokens, "taken_in_pass": self.taken_in_pass, "hashes": self.hashes,
                "pass_start": self.pass_start, "stats": self.stats, "available": self.available,
                "input_drops": dict(self.input_drops.counts)}

    def restore(self, st: dict, positions: set[int]) -> dict[int, str]:
        """Continue from a checkpoint: the hash set from the seen file, the stream skipped to its
        position. Returns the texts at `positions` (the buffered documents)."""
        self.passno, self.consumed, self.taken, self.tokens = st["pass"], st["consumed"], st["taken"], st["tokens"]
        self.taken_in_pass, self.hashes, self.pass_start = st["taken_in_pass"], st["hashes"], st["pass_start"]
        self.stats, self.available = st["stats"], st["available"]
        if self.passno > 1:  # a first pass being resumed counts its invalid records again as it skips
            self.input_drops.counts = Counter(st["input_drops"])
        size = self.seen_path.stat().st_size if self.seen_path.exists() else 0
        if size < 8 * self.hashes:
            raise StudyError(f"{self.seen_path}: {size} bytes, but the progress file counts {self.hashes} hashes "
                             f"({8 * self.hashes} bytes): delete {self.mix.work} to start the mix over")
        if self.seen_path.exists():
            os.truncate(self.seen_path, 8 * self.hashes)
            for h in np.fromfile(self.seen_path, dtype="<u8")[self.pass_start:].tolist():
                self.seen.add(h)
        texts = self.start(skip=self.consumed, collect=positions)
        missing = positions - texts.keys()
        if missing:
            texts.update(self.collect(missing))
        return texts


class _StreamingMix:
    """One mix written as a stream: sources -> shuffle buffer -> shards, with a checkpoint per shard."""

    def __init__(self, ctx: StageContext, mix_plan: MixPlan, val_keys: set[str], val_hashes: set[int]):
        self.ctx, self.plan, self.spec, self.cfg = ctx, mix_plan, mix_plan.spec, ctx.config.mix
        self.val_keys, self.val_hashes = val_keys, val_hashes
        self.out = ctx.dir / mix_plan.name
        self.work = ctx.dir / "progress" / mix_plan.name
        self.progress_path = self.work / "progress.json"
        self.key = _mix_key(ctx, mix_plan)
        self.batch = ctx.config.tokenize.batch_documents

    def finished(self) -> dict | None:
        """The recorded result when this mix is done with the same config and inputs."""
        p = self._progress()
        return p["result"] if p and p.get("done") else None

    def _progress(self) -> dict | None:
        try:
            p = json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return None
        return p if isinstance(p, dict) and p.get("key") == self.key else None

    # -- the parts a checkpoint restores

    def _setup(self, pool: _Pool) -> None:
        cfg, spec, run = self.cfg, self.spec, self.ctx.run
        self.pool = pool
        self.rng = self.plan.rng(self.ctx.config.seed)
        self.writer = ShardWriter(mkdir(self.out), spec.name, "train", cfg.shard_tokens)
        self.drops = _MixDropLog(self.ctx.dir / "removed" / spec.name)
        self.buffer: list[_Doc] = []
        self.sources = []
        for i, share in enumerate(self.plan.sources):
            src = cfg.sources[share.name]
            if src.stage:
                opener = lambda drops, stage=src.stage: stage_documents(run, stage)  # noqa: E731
            else:
                opener = lambda drops, src=src: external_documents(src, self.ctx.config.seed, drops)  # noqa: E731
            self.sources.append(_Source(self, i, share, opener))

    def _start_over(self) -> None:
        _remove_shards(self.out, self.spec.name, keep=0)
        for d in (self.work, self.ctx.dir / "removed" / self.spec.name):
            shutil.rmtree(d, ignore_errors=True)
        self.work.mkdir(parents=True)
        for s in self.sources:
            s.start()

    def _resume(self, p: dict) -> _Doc:
        """Back to the checkpoint `p`: returns the document drawn for the next shard."""
        self.writer.shards = p["shards"]
        _remove_shards(self.out, self.spec.name, keep=len(p["shards"]))
        self.rng.bit_generator.state = p["rng"]
        self.drops.resume(p["drops"])
        where = [tuple(w) for w in np.load(self.work / p["buffer"]).reshape(-1, 3).tolist()] + [tuple(p["pending"])]
        texts: dict[tuple[int, int], str] = {}
        for s, st in zip(self.sources, p["sources"]):
            got = s.restore(st, {pos for i, _, pos in where if i == s.i})
            texts.update({(s.i, pos): t for pos, t in got.items()})
        keys = list(dict.fromkeys((i, pos) for i, _, pos in where))
        tokens = {}
        for at in range(0, len(keys), self.batch):
            part = keys[at : at + self.batch]
            arr, lengths = self.pool.submit(encode_batch, [texts[k] for k in part]).get()
            ends = np.cumsum(lengths)
            tokens.update({k: arr[a:b].copy() for k, a, b in zip(part, (ends - lengths).tolist(), ends.tolist())})
        docs = [_Doc(w, tokens[(w[0], w[2])]) for w in where]
        self.buffer = docs[:-1]
        return docs[-1]

    def _checkpoint(self, pending: _Doc) -> None:
        """After a complete shard: everything needed to write the rest exactly as an uninterrupted run."""
        for s in self.sources:
            s.save_hashes()
        name = f"buffer_{len(self.writer.shards):06d}.npy"
        with atomic_open(self.work / name, "wb") as f:
            np.save(f, np.array([d.where for d in self.buffer], dtype=np.int64).reshape(-1, 3))
        write_json_atomic(self.progress_path, {
            "key": self.key, "done": False, "shards": self.writer.shards, "rng": self.rng.bit_generator.state,
            "buffer": name, "pending": list(pending.where), "sources": [s.state() for s in self.sources],
            "drops": self.drops.checkpoint()})
        for old in self.work.glob("buffer_*.npy"):
            if old.name != name:
                old.unlink()

    # -- the stream

    def drop(self, reason: str, src: _Source, doc: dict, details: dict) -> None:
        self.drops.drop(reason, {"source": doc["source"], "id": doc["id"], "mix": self.spec.name,
                                 "mix_source": src.name, **details, "text": doc["text"]})

    def duplicate_in(self, h: int) -> str | None:
        """'val' or the source whose current pass had this text; None for a new text."""
        if h in self.val_hashes:
            return "val"
        if self.cfg.dedup.exact:
            for s in self.sources:
                if h in s.seen:
                    return s.name
        return None

    def _behind(self) -> _Source | None:
        """The source furthest behind its part of the budget (ties: config order); None when all reached theirs."""
        live = [s for s in self.sources if s.tokens < s.share.tokens]
        return min(live, key=lambda s: s.tokens / s.share.tokens) if live else None

    def _emit(self, doc: _Doc) -> None:
        n = len(doc.tokens)
        if self.writer.ntok and self.writer.ntok + n > self.writer.limit:  # ShardWriter's own rule
            self.writer.flush()
            self._checkpoint(pending=doc)
        self.writer.add(doc.tokens, np.array([n]))

    def write(self, pool: _Pool) -> dict:
        spec = self.spec
        self._setup(pool)
        p = self._progress()
        if p is not None and not p.get("done") and p.get("shards"):
            pending = self._resume(p)
            print(f"[mix] {spec.name}: resuming after {len(p['shards'])} shard(s), "
                  f"{sum(s['tokens'] for s in p['shards']):,} tokens")
        else:
            if self.progress_path.exists() or any(self.out.glob(f"{spec.name}_train_*.bin")):
                print(f"[mix] {spec.name}: config or inputs changed (or no shard was complete): starting over")
            self._start_over()
            pending = None
        buffer_size = self.cfg.shuffle_buffer
        with tqdm(total=spec.tokens, initial=sum(s.tokens for s in self.sources), desc=f"mix {spec.name}",
                  unit="tok", unit_scale=True, disable=None) as bar:
            if pending is not None:
                self.writer.add(pending.tokens, np.array([len(pending.tokens)]))
            while True:
                src = self._behind()
                if src is not None:
                    doc = src.take()
                    bar.update(len(doc.tokens))
                    self.buffer.append(doc)
                    if len(self.buffer) <= buffer_size:
                        continue
                elif not self.buffer:
                    break
                j = int(self.rng.integers(len(self.buffer)))  # a random buffered document out
                doc = self.buffer[j]
                self.buffer[j] = self.buffer[-1]
                self.buffer.pop()
                self._emit(doc)
        self.writer.flush()
        self.drops.close()
        result = self._result()
        write_json_atomic(self.progress_path, {"key": self.key, "done": True, "result": result})
        for f in [*self.work.glob("seen_*.u64"), *self.work.glob("buffer_*.npy")]:
            f.unlink()
        return result

    def _result(self) -> dict:
        per_source = {}
        for share, s in zip(self.plan.sources, self.sources):
            avail = s.available
            per_source[s.name] = source_record(
                share, tokens=s.tokens, documents=s.taken,
                unique_documents=min(s.taken, avail[0]) if avail else s.taken,
                available_documents=avail[0] if avail else None, available_tokens=avail[1] if avail else None,
                epochs=round(s.tokens / avail[1], 4) if avail and avail[1] else None)
        removed = Counter(self.drops.counts)
        for s in self.sources:
            removed.update(s.input_drops.counts)
        return {
            "mix": self.plan.entry(self.writer.shards, per_source),
            "sources": {s.name: s.stats for s in self.sources},
            "removed": dict(removed),
        }


# ---------------------------------------------------------------------------------------------
# the stage


def _mix_key(ctx: StageContext, mix_plan: MixPlan) -> str:
    """What one mix's shards depend on: its spec, its sources (a local path's files by size and
    modification time), the settings the stream uses, the seed and the manifests of the stages it
    reads (ingest for the validation pages, stage sources). A hub dataset is taken as unchanging."""
    cfg: MixConfig = ctx.config.mix
    sources = {n: cfg.sources[n].hashed_dict() for n in mix_plan.source_names}
    for n in mix_plan.source_names:
        if cfg.sources[n].path:
            sources[n]["files"] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns]
                                   for p in expand_paths(cfg.sources[n].path)]
    stages = ["ingest"] + [cfg.sources[n].stage for n in mix_plan.source_names if cfg.sources[n].stage]
    return config_hash({
        "seed": ctx.config.seed, "mix": mix_plan.spec.hashed_dict(), "sources": sources, "on_short": cfg.on_short,
        "exact": cfg.dedup.exact, "decontaminate": cfg.decontaminate.hashed_dict(), "val_name": cfg.val_name,
        "shard_tokens": cfg.shard_tokens, "shuffle_buffer": cfg.shuffle_buffer,
        "inputs": {s: file_sha256(ctx.run.manifest_path(s)) for s in dict.fromkeys(stages)}})


def _remove_shards(d: Path, name: str, keep: int) -> None:
    """Shards <name>_train_<idx>.bin with idx >= keep, and writers' temporary files, in folder d."""
    if not d.exists():
        return
    pattern = re.compile(rf"^\.?{re.escape(name)}_train_(\d+)\.bin(\.tmp-\d+)?$")
    for p in d.iterdir():
        m = pattern.match(p.name)
        if m and (m.group(2) or int(m.group(1)) >= keep):
            p.unlink()


def _write_val(ctx: StageContext, workers: int) -> tuple[set[str], set[int], dict, list[dict]]:
    """The shared validation shards from ingest's val split, streamed; returns (their keys, their
    exact-text hashes, the manifest's `val`, the shards)."""
    cfg = ctx.config.mix
    keys: set[str] = set()
    hashes: set[int] = set()

    def texts() -> Iterator[str]:
        for doc in stage_documents(ctx.run, "ingest", "val"):
            keys.add(f"{doc['source']}\t{doc['id']}")
            hashes.add(text_hash(doc["text"]))
            yield doc["text"]

    d = mkdir(ctx.dir / "val")
    for p in d.glob(f"{cfg.val_name}_val_*.bin"):
        p.unlink()
    writer = ShardWriter(d, cfg.val_name, "val", cfg.shard_tokens)
    for arr, lengths in encode_stream(batched(texts(), 64), workers):
        writer.add(arr, lengths)
    writer.flush()
    tokens = sum(s["tokens"] for s in writer.shards)
    if not tokens:
        raise StudyError("[mix] the held-out validation set is empty: raise ingest.val_fraction")
    val = {"pattern": f"val/{cfg.val_name}_val_*.bin", "tokens": tokens,
           "documents": sum(s["documents"] for s in writer.shards)}
    return keys, hashes, val, writer.shards


def _drop_stale(d: Path, names: list[str]) -> None:
    """Work of streaming mixes no longer configured, and the in-memory mix's MinHash folder."""
    shutil.rmtree(d / "minhash", ignore_errors=True)
    if not (d / "progress").exists():
        return
    for p in (d / "progress").iterdir():
        if p.is_dir() and p.name not in names:
            shutil.rmtree(p)
            shutil.rmtree(d / "removed" / p.name, ignore_errors=True)
            _remove_shards(d / p.name, p.name, keep=0)
            if (d / p.name).is_dir() and not any((d / p.name).iterdir()):
                (d / p.name).rmdir()


def _merge_removed(d: Path, names: list[str]) -> None:
    """removed/<reason>.jsonl: every mix's removed/<mix>/<reason>.jsonl, mixes in config order."""
    out = mkdir(d / "removed")
    for p in out.glob("*.jsonl"):
        p.unlink()
    for name in names:
        for part in sorted((out / name).glob("*.jsonl")) if (out / name).is_dir() else []:
            with open(part, "rb") as src, open(out / part.name, "ab") as dst:
                shutil.copyfileobj(src, dst)


def _epochs(v: dict) -> str:
    return f"{v['epochs']:.2f} ep" if v["epochs"] is not None else "part of one pass"


def run(ctx: StageContext) -> dict:
    cfg: MixConfig = ctx.config.mix
    plans = plan(cfg)
    names = [p.name for p in plans]
    used = cfg.used_sources
    workers = cfg.workers or ctx.config.tokenize.num_workers
    _drop_stale(ctx.dir, names)
    val_keys, val_hashes, val, val_shards = _write_val(ctx, workers)
    print(f"[mix] streaming {len(names)} mix(es) from {len(used)} source(s); held-out val: "
          f"{val['documents']:,} documents, {val['tokens']:,} tokens")
    index = None
    if cfg.decontaminate.enabled:
        index = NgramIndex.build(list(cfg.decontaminate.benchmarks), cfg.decontaminate.eval_dir,
                                 cfg.decontaminate.ngram)
    mixes = [_StreamingMix(ctx, p, val_keys, val_hashes) for p in plans]
    results = {m.spec.name: m.finished() for m in mixes}
    for name, r in results.items():
        if r is not None:
            print(f"[mix] {name}: done in an earlier run with the same config and inputs: kept")
    todo = [m for m in mixes if results[m.spec.name] is None]
    if todo:
        with _Pool(workers, index) as pool:
            for m in todo:
                r = results[m.spec.name] = m.write(pool)
                share = ", ".join(f"{n} {v['tokens']:,} ({_epochs(v)})" for n, v in r["mix"]["per_source"].items())
                print(f"[mix] {m.spec.name}: {r['mix']['tokens']:,} tokens, {r['mix']['documents']:,} docs: {share}")
    _merge_removed(ctx.dir, names)

    ordered = [results[n] for n in names]
    sources_table = {}
    for name in used:  # a source in several mixes: the mix that read most of its stream
        s = max((r["sources"][name] for r in ordered if name in r["sources"]), key=lambda x: x["documents_in"])
        sources_table[name] = input_record(
            cfg.sources[name], documents_in=s["documents_in"], exact_duplicate=s["exact_duplicate"],
            near_duplicate=None, contaminated=dict(s["contaminated"]), documents_kept=s["documents_kept"],
            tokens_kept=s["tokens_kept"])
    removed: Counter[str] = Counter()
    for r in ordered:
        removed.update(r["removed"])
    mix_entries = [r["mix"] for r in ordered]
    return stage_result(cfg, val_shards, val, mix_entries, sources_table, index.too_short if index else {},
                        dict(removed), near_dedup="skipped (streaming)")
