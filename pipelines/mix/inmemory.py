"""Mixes: token-budgeted blends of named sources, deduplicated and decontaminated, as llm.c shards.

  1. read every source a mix uses (a stage's documents, a local path or a hub dataset) into one
     union keyed by (source field, id): a filtered page and its unfiltered original are one document
     (_read_union)
  2. exact, then near-duplicate removal (datatrove MinHash) over the union, in priority order:
     the held-out validation pages first (never removed), then sources as listed in the config
  3. decontamination against ARC / HellaSwag / MMLU by n-gram overlap
  4. GPT-2 tokens of every surviving document (process pool, as `tokenize`)
     (2-4 depend on the union and the settings only: with `mix.keep_prepared` they are kept in
     mix/prepared/<key>/ and a run of share_with with the same key reuses them, prepared.py; _prepared,
     _prepare; removals recorded by _record_removals)
  5. per mix: each source's part of the budget (plan.py's share.tokens), sampled by seed; a source too small
     is repeated (epochs recorded) or stops the run (`mix.on_short`); documents shuffled across sources
  6. shards: mix/<name>/<name>_train_*.bin (5-6: _write_mix), plus one shared validation set
     mix/val/<val_name>_val_*.bin of real held-out web pages (ingest's val split) that no mix trains on (_write_val)

`mix.streaming: true` writes the mixes as streams instead (streaming.py; both follow plan.py): nothing held in
memory grows with the budget, exact dedup and decontamination per document, no near-duplicate pass,
resumable after each shard.

Every removed document is in removed/<reason>.jsonl (text truncated) with what it matched.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pipelines.config import MixConfig
from pipelines.data.documents import DropLog
from pipelines.data.pages import external_documents
from pipelines.errors import StudyError
from pipelines.llmc.shards import ShardWriter
from pipelines.llmc.tokenizer import encode_stream
from pipelines.mix import prepared
from pipelines.mix.decontaminate import NgramIndex, _WordHasher
from pipelines.mix.dedup import exact_duplicates, minhash_duplicates
from pipelines.mix.plan import (
    MixPlan,
    input_record,
    mkdir,
    plan,
    source_record,
    stage_result,
)
from pipelines.runs.manifest import Run, StageContext
from pipelines.runs.readers import stage_documents


def sample_source(lengths: np.ndarray, tokens: int, rng: np.random.Generator, on_short: str,
                  what: str) -> tuple[np.ndarray, float]:
    """Indices of documents whose lengths reach `tokens` (the source's part of the budget, overshooting
    by less than the last document), in seeded random order; epochs > 1 when the source had to be repeated."""
    total = int(lengths.sum())
    if total == 0:
        raise StudyError(f"{what}: the source has no documents left after dedup and decontamination")
    if total < tokens and on_short == "fail":
        raise StudyError(f"{what}: needs {tokens:,} tokens but the source has {total:,} after dedup and "
                         f"decontamination; lower the mix's tokens, or set mix.on_short=repeat to repeat it")
    picked: list[np.ndarray] = []
    got = 0
    while got < tokens:
        perm = rng.permutation(len(lengths))
        csum = np.cumsum(lengths[perm])
        k = int(np.searchsorted(csum, tokens - got, side="left")) + 1  # first prefix reaching the need
        k = min(k, len(perm))
        picked.append(perm[:k])
        got += int(csum[k - 1])
    return np.concatenate(picked), got / total


@dataclass
class _Union:
    """Step 1's result: every document the mixes may use, once, keyed `source\tid`."""

    texts: dict[str, str]
    meta: dict[str, dict]  # key -> {"source", "id"} for records in removed/
    members: dict[str, list[str]]  # source name -> keys, in its reading order
    val_keys: list[str]  # the held-out validation pages, first in priority
    read_in: Counter[str]  # source name -> documents read (unique, validation pages left out)
    order: list[str]  # priority order: validation pages, then sources as listed in the config


def run(ctx: StageContext) -> dict:
    cfg: MixConfig = ctx.config.mix
    _empty(ctx.dir)  # the stage is resumable for streaming mixes only; this one starts over
    drops = DropLog(ctx.dir / "removed", examples_per_reason=10**12)  # every removal is recorded
    union = _read_union(ctx, cfg, drops)
    prep, reused = _prepared(ctx, cfg, union)
    contamination = _record_removals(cfg, union, prep.removed, drops)
    val_shards, val_tokens = _write_val(ctx, cfg, union.val_keys, prep.tokens)
    mixes = [_write_mix(ctx, cfg, p, union.members, prep) for p in plan(cfg)]
    sources_table = {
        name: input_record(
            cfg.sources[name], documents_in=union.read_in[name],
            exact_duplicate=contamination[name].pop("exact_duplicate", 0),
            near_duplicate=contamination[name].pop("near_duplicate", 0), contaminated=dict(contamination[name]),
            documents_kept=sum(1 for k in union.members[name] if k not in prep.removed),
            tokens_kept=int(sum(len(prep.tokens[k]) for k in union.members[name] if k not in prep.removed)))
        for name in cfg.used_sources
    }
    val = {"pattern": f"val/{cfg.val_name}_val_*.bin", "tokens": val_tokens, "documents": len(union.val_keys)}
    near = ({"sign_chars": cfg.dedup.sign_chars, "documents_signed_in_part": prep.signed_in_part}
            if cfg.dedup.near else None)
    return stage_result(cfg, val_shards, val, mixes, sources_table, prep.too_short, dict(drops.counts),
                        near_dedup=near, prepared=reused)


def _read_union(ctx: StageContext, cfg: MixConfig, drops: DropLog) -> _Union:
    """Step 1: the union, in priority order; validation pages first (a validation page never trains)."""
    u = _Union({}, {}, {}, [], Counter(), [])
    for doc in stage_documents(ctx.run, "ingest", "val"):
        key = f"{doc['source']}\t{doc['id']}"
        u.texts[key], u.meta[key] = doc["text"], {"source": doc["source"], "id": doc["id"]}
        u.val_keys.append(key)
    val_set = set(u.val_keys)
    used = cfg.used_sources
    for name in used:
        src = cfg.sources[name]
        docs = stage_documents(ctx.run, src.stage) if src.stage else external_documents(src, ctx.config.seed, drops)
        keys = []
        for doc in tqdm(docs, desc=f"read {name}", unit="doc", disable=None):
            key = f"{doc['source']}\t{doc['id']}"
            if key in val_set:
                continue
            u.texts.setdefault(key, doc["text"])
            u.meta.setdefault(key, {"source": doc["source"], "id": doc["id"]})
            keys.append(key)
        u.members[name] = list(dict.fromkeys(keys))
        u.read_in[name] = len(u.members[name])
    u.order = u.val_keys + list(dict.fromkeys(k for n in used for k in u.members[n]))
    print(f"[mix] {len(u.order):,} unique documents ({len(u.val_keys):,} held-out val) from {len(used)} source(s)")
    return u


def _prepared(ctx: StageContext, cfg: MixConfig, u: _Union) -> tuple[prepared.Prepared, dict]:
    """Steps 2-4 (dedup, decontamination, tokens): computed, or reused from a run of share_with
    (prepared.py). Returns them and the manifest's `prepared` record."""
    key = prepared.key(cfg, u.order, u.texts, u.members)
    donors = {r: Run(ctx.config, r).dir("mix") / "prepared" for r in ctx.config.share_with if r != ctx.run.name}
    found = prepared.find(donors, key)
    reused = {"key": key, "from_run": found[0] if found else None}
    if found is not None:
        prep = prepared.load(found[1], key)
        print(f"[mix] dedup, decontamination and tokens reused from {found[1]}")
        return prep, reused
    prep = _prepare(ctx, cfg, u.order, u.texts, u.meta, set(u.val_keys))
    if cfg.keep_prepared:
        prepared.save(ctx.dir / "prepared", key, prep, [k for k in u.order if k not in prep.removed])
    return prep, reused


def _record_removals(cfg: MixConfig, u: _Union, removed: dict[str, tuple[str, dict]],
                     drops: DropLog) -> dict[str, Counter]:
    """Every removed document into removed/<reason>.jsonl; returns per source the removals by reason
    (the benchmark's name for a contaminated one)."""
    for k, (reason, details) in removed.items():
        drops.drop(reason, {**u.meta[k], **details, "text": u.texts[k]})
    drops.close()
    contamination: dict[str, Counter] = defaultdict(Counter)
    for name in cfg.used_sources:
        for k in u.members[name]:
            if k in removed:
                reason, details = removed[k]
                contamination[name][details["benchmark"] if reason == "contaminated" else reason] += 1
    return contamination


def _write_val(ctx: StageContext, cfg: MixConfig, val_keys: list[str],
               tokens: dict[str, np.ndarray]) -> tuple[list[dict], int]:
    """Step 6, shared: the held-out validation shards val/<val_name>_val_*.bin; (their shards, tokens)."""
    writer = ShardWriter(mkdir(ctx.dir / "val"), cfg.val_name, "val", cfg.shard_tokens)
    for k in val_keys:
        writer.add(tokens[k], np.array([len(tokens[k])]))
    writer.flush()
    val_tokens = sum(s["tokens"] for s in writer.shards)
    if not val_tokens:
        raise StudyError("[mix] the held-out validation set is empty: raise ingest.val_fraction")
    return writer.shards, val_tokens


def _write_mix(ctx: StageContext, cfg: MixConfig, p: MixPlan, members: dict[str, list[str]],
               prep: prepared.Prepared) -> dict:
    """Steps 5-6 for one mix: each source sampled to its part of the budget (share.tokens) by the mix's
    seeded generator, the documents shuffled across sources into <name>/<name>_train_*.bin; its record."""
    rng = p.rng(ctx.config.seed)
    picks: list[str] = []
    per_source = {}
    for share in p.sources:
        pool = [k for k in members[share.name] if k not in prep.removed]
        lengths = np.array([len(prep.tokens[k]) for k in pool], dtype=np.int64)
        idx, epochs = sample_source(lengths, share.tokens, rng, cfg.on_short, f"mix {p.name!r}, source {share.name!r}")
        chosen = [pool[i] for i in idx]
        picks += chosen
        per_source[share.name] = source_record(
            share, tokens=int(lengths[idx].sum()), documents=len(chosen), unique_documents=len(set(chosen)),
            available_documents=len(pool), available_tokens=int(lengths.sum()), epochs=round(epochs, 4))
    writer = ShardWriter(mkdir(ctx.dir / p.name), p.name, "train", cfg.shard_tokens)
    for i in rng.permutation(len(picks)):
        t = prep.tokens[picks[i]]
        writer.add(t, np.array([len(t)]))
    writer.flush()
    entry = p.entry(writer.shards, per_source)
    share_text = ", ".join(f"{n} {v['tokens']:,} ({v['epochs']:.2f} ep)" for n, v in per_source.items())
    print(f"[mix] {p.name}: {entry['tokens']:,} tokens, {len(picks):,} docs: {share_text}")
    return entry


def _prepare(ctx: StageContext, cfg: MixConfig, order: list[str], texts: dict[str, str], meta: dict[str, dict],
             val_set: set[str]) -> prepared.Prepared:
    """Steps 2-4 over the union (keys in priority order): what is removed and why, the tokens of the rest."""
    # 2. dedup: exact, then near; validation pages are kept whatever they match
    removed: dict[str, tuple[str, dict]] = {}  # key -> (reason, details)
    signed_in_part = 0
    if cfg.dedup.exact:
        for dup, first in exact_duplicates((k, texts[k]) for k in order).items():
            if dup not in val_set:
                removed[dup] = ("exact_duplicate", {"duplicate_of": meta[first],
                                                    "of_val": first in val_set})
    if cfg.dedup.near:
        alive = [k for k in order if k not in removed]
        near = minhash_duplicates([(k, texts[k]) for k in alive], ctx.dir / "minhash", cfg.dedup.ngrams,
                                  cfg.dedup.buckets, cfg.dedup.hashes_per_bucket, workers=1,
                                  sign_chars=cfg.dedup.sign_chars)
        signed_in_part = sum(len(texts[k]) > cfg.dedup.sign_chars for k in alive)
        if signed_in_part:
            print(f"[mix] near-dedup: {signed_in_part:,} document(s) longer than mix.dedup.sign_chars="
                  f"{cfg.dedup.sign_chars:,} signed on their first {cfg.dedup.sign_chars:,} characters")
        pos = {k: i for i, k in enumerate(alive)}
        for k in sorted(near, key=pos.__getitem__):  # in priority order: removed/ is the same every run
            if k not in val_set:
                removed[k] = ("near_duplicate", {})

    # 3. decontamination of training documents
    too_short: dict[str, int] = {}
    if cfg.decontaminate.enabled:
        index = NgramIndex.build(list(cfg.decontaminate.benchmarks), cfg.decontaminate.eval_dir,
                                 cfg.decontaminate.ngram)
        too_short = index.too_short
        hasher = _WordHasher()
        for k in tqdm([k for k in order if k not in removed and k not in val_set], desc="decontaminate",
                      unit="doc", disable=None):
            hit = index.match(texts[k], hasher)
            if hit:
                removed[k] = ("contaminated", hit)

    # 4. tokens of every surviving document (val included)
    keep = [k for k in order if k not in removed]
    tokens: dict[str, np.ndarray] = {}
    workers = cfg.workers or ctx.config.tokenize.num_workers
    key_batches = [keep[i : i + 64] for i in range(0, len(keep), 64)]
    encoded = encode_stream(([texts[k] for k in kb] for kb in key_batches), workers)
    with tqdm(total=len(keep), desc="tokenize", unit="doc", disable=None) as bar:
        for kb, (arr, lengths) in zip(key_batches, encoded):
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for j, k in enumerate(kb):
                tokens[k] = arr[offsets[j] : offsets[j + 1]]
            bar.update(len(kb))
    return prepared.Prepared(removed, tokens, too_short, signed_in_part)


def _empty(d: Path) -> None:
    import shutil

    for p in d.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()




