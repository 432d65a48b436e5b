"""Mixes: token-budgeted blends of named sources, deduplicated and decontaminated, as llm.c shards.

  1. read every source a mix uses (a stage's documents, a local path or a hub dataset) into one
     union keyed by (source field, id): a filtered page and its unfiltered original are one document
  2. exact, then near-duplicate removal (datatrove MinHash) over the union, in priority order:
     the held-out validation pages first (never removed), then sources as listed in the config
  3. decontamination against ARC / HellaSwag / MMLU by n-gram overlap
  4. GPT-2 tokens of every surviving document (process pool, as `tokenize`)
  5. per mix: each source's share of the budget, sampled by seed; a source too small is repeated
     (epochs recorded) or stops the run (`mix.on_short`); documents shuffled across sources
  6. shards: mix/<name>/<name>_train_*.bin, plus one shared validation set mix/val/<val_name>_val_*.bin
     of real held-out web pages (ingest's val split) that no mix trains on

`mix.streaming: true` writes the mixes as streams instead (pipelines/mixstream.py): nothing held in
memory grows with the budget, exact dedup and decontamination per document, no near-duplicate pass,
resumable after each shard.

Every removed document is in removed/<reason>.jsonl (text truncated) with what it matched.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from pipelines.config import IngestConfig, MixConfig, MixSource
from pipelines.dedup import exact_duplicates, minhash_duplicates
from pipelines.decontaminate import NgramIndex, _WordHasher
from pipelines.documents import DropLog, read_documents
from pipelines.errors import StudyError
from pipelines.manifest import Run, StageContext
from pipelines.tokenize import ShardWriter, encode_stream


def stage_documents(run: Run, stage: str, split: str = "train") -> Iterator[dict]:
    """Documents a stage wrote: its manifest's .jsonl(.gz) outputs of `split` (or with no split)."""
    m = run.read_manifest(stage)
    if m is None:
        raise StudyError(f"stage `{stage}` has no manifest in {run.root}: run `study {stage}` first")
    paths = [run.dir(stage) / o["path"] for o in m.get("outputs", [])
             if o.get("split", split) == split and ".jsonl" in o["path"]]
    if not paths:
        raise StudyError(f"stage `{stage}` lists no document outputs of split {split!r} in its manifest")
    return read_documents(paths)


def external_documents(src: MixSource, seed: int, drops: DropLog) -> Iterator[dict]:
    """A local path or hub dataset, read and validated exactly as the ingest stage reads pages."""
    from pipelines import ingest

    cfg = IngestConfig(path=src.path, dataset=src.dataset or "", dataset_config=src.dataset_config,
                       split=src.split, max_documents=src.max_documents, sample="first", val_fraction=0.0)
    if src.path:
        records = ingest.local_records(cfg, drops)
    else:
        records = ((raw, src.dataset.split("/")[-1]) for raw in ingest.hub_records(cfg, seed))
    return ingest.select(cfg, seed, records, drops, sampled_upstream=True)


def sample_source(lengths: np.ndarray, target: int, rng: np.random.Generator, on_short: str,
                  what: str) -> tuple[np.ndarray, float]:
    """Indices of documents whose tokens reach `target` (overshooting by less than the last
    document), in seeded random order; epochs > 1 when the source had to be repeated."""
    total = int(lengths.sum())
    if total == 0:
        raise StudyError(f"{what}: the source has no documents left after dedup and decontamination")
    if total < target and on_short == "fail":
        raise StudyError(f"{what}: needs {target:,} tokens but the source has {total:,} after dedup and "
                         f"decontamination; lower the mix's tokens, or set mix.on_short=repeat to repeat it")
    picked: list[np.ndarray] = []
    got = 0
    while got < target:
        perm = rng.permutation(len(lengths))
        csum = np.cumsum(lengths[perm])
        k = int(np.searchsorted(csum, target - got, side="left")) + 1  # first prefix reaching the need
        k = min(k, len(perm))
        picked.append(perm[:k])
        got += int(csum[k - 1])
    return np.concatenate(picked), got / total


def run(ctx: StageContext) -> dict:
    cfg: MixConfig = ctx.config.mix
    if cfg.streaming:
        from pipelines import mixstream

        return mixstream.run(ctx)
    seed = ctx.config.seed
    run_ = ctx.run
    _empty(ctx.dir)  # the stage is resumable for streaming mixes only; this one starts over
    drops = DropLog(ctx.dir / "removed", examples_per_reason=10**12)  # every removal is recorded
    used = [n for n in cfg.sources if any(n in m.weights for m in cfg.mixes)]

    # 1. the union, in priority order; val pages first
    texts: dict[str, str] = {}
    meta: dict[str, dict] = {}  # key -> {"source", "id"} for records in removed/
    members: dict[str, list[str]] = {}  # source name -> keys
    val_keys: list[str] = []
    for doc in stage_documents(run_, "ingest", "val"):
        key = f"{doc['source']}\t{doc['id']}"
        texts[key], meta[key] = doc["text"], {"source": doc["source"], "id": doc["id"]}
        val_keys.append(key)
    val_set = set(val_keys)
    read_in: Counter[str] = Counter()
    for name in used:
        src = cfg.sources[name]
        docs = stage_documents(run_, src.stage) if src.stage else external_documents(src, seed, drops)
        keys = []
        for doc in tqdm(docs, desc=f"read {name}", unit="doc", disable=None):
            key = f"{doc['source']}\t{doc['id']}"
            if key in val_set:
                continue  # a validation page never trains
            texts.setdefault(key, doc["text"])
            meta.setdefault(key, {"source": doc["source"], "id": doc["id"]})
            keys.append(key)
        members[name] = list(dict.fromkeys(keys))
        read_in[name] = len(members[name])
    order = val_keys + list(dict.fromkeys(k for n in used for k in members[n]))
    print(f"[mix] {len(order):,} unique documents ({len(val_keys):,} held-out val) from {len(used)} source(s)")

    # 2. dedup: exact, then near; validation pages are kept whatever they match
    removed: dict[str, tuple[str, dict]] = {}  # key -> (reason, details)
    if cfg.dedup.exact:
        for dup, first in exact_duplicates((k, texts[k]) for k in order).items():
            if dup not in val_set:
                removed[dup] = ("exact_duplicate", {"duplicate_of": meta[first],
                                                    "of_val": first in val_set})
    if cfg.dedup.near:
        alive = [k for k in order if k not in removed]
        near = minhash_duplicates([(k, texts[k]) for k in alive], ctx.dir / "minhash", cfg.dedup.ngrams,
                                  cfg.dedup.buckets, cfg.dedup.hashes_per_bucket, workers=1)
        for k in near:
            if k not in val_set:
                removed[k] = ("near_duplicate", {})

    # 3. decontamination of training documents
    contamination: dict[str, Counter] = defaultdict(Counter)
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
    for k, (reason, details) in removed.items():
        drops.drop(reason, {**meta[k], **details, "text": texts[k]})
    drops.close()
    for name in used:
        for k in members[name]:
            if k in removed:
                reason, details = removed[k]
                contamination[name][details["benchmark"] if reason == "contaminated" else reason] += 1

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

    # 5-6. shared validation shards, then each mix
    val_writer = ShardWriter(_mkdir(ctx.dir / "val"), cfg.val_name, "val", cfg.shard_tokens)
    for k in val_keys:
        val_writer.add(tokens[k], np.array([len(tokens[k])]))
    val_writer.flush()
    val_tokens = sum(s["tokens"] for s in val_writer.shards)
    if not val_tokens:
        raise StudyError("[mix] the held-out validation set is empty: raise ingest.val_fraction")

    mixes = []
    for spec in cfg.mixes:
        rng = np.random.default_rng([seed, _stable(spec.name)])
        wsum = sum(spec.weights.values())
        picks: list[str] = []
        per_source = {}
        for name, w in spec.weights.items():
            pool = [k for k in members[name] if k not in removed]
            lengths = np.array([len(tokens[k]) for k in pool], dtype=np.int64)
            target = round(spec.tokens * w / wsum)
            idx, epochs = sample_source(lengths, target, rng, cfg.on_short, f"mix {spec.name!r}, source {name!r}")
            chosen = [pool[i] for i in idx]
            picks += chosen
            per_source[name] = {"weight": w / wsum, "target_tokens": target,
                                "tokens": int(lengths[idx].sum()), "documents": len(chosen),
                                "unique_documents": len(set(chosen)), "available_documents": len(pool),
                                "available_tokens": int(lengths.sum()), "epochs": round(epochs, 4)}
        out = _mkdir(ctx.dir / spec.name)
        writer = ShardWriter(out, spec.name, "train", cfg.shard_tokens)
        for i in rng.permutation(len(picks)):
            t = tokens[picks[i]]
            writer.add(t, np.array([len(t)]))
        writer.flush()
        mix_tokens = sum(s["tokens"] for s in writer.shards)
        mixes.append({
            "name": spec.name, "budget_tokens": spec.tokens, "tokens": mix_tokens, "documents": len(picks),
            "per_source": per_source,
            "train_pattern": f"{spec.name}/{spec.name}_train_*.bin",
            "val_pattern": f"val/{cfg.val_name}_val_*.bin",
            "shards": [{**s, "path": f"{spec.name}/{s['path']}"} for s in writer.shards],
        })
        share = ", ".join(f"{n} {v['tokens']:,} ({v['epochs']:.2f} ep)" for n, v in per_source.items())
        print(f"[mix] {spec.name}: {mix_tokens:,} tokens, {len(picks):,} docs: {share}")

    sources_table = {
        name: {"stage": cfg.sources[name].stage, "path": cfg.sources[name].path,
               "dataset": cfg.sources[name].dataset, "documents_in": read_in[name],
               "exact_duplicate": contamination[name].pop("exact_duplicate", 0),
               "near_duplicate": contamination[name].pop("near_duplicate", 0),
               "contaminated": dict(contamination[name]),
               "documents_kept": sum(1 for k in members[name] if k not in removed),
               "tokens_kept": int(sum(len(tokens[k]) for k in members[name] if k not in removed))}
        for name in used
    }
    return {
        "outputs": [{"split": "val", "path": f"val/{s['path']}", "tokens": s["tokens"], "documents": s["documents"]}
                    for s in val_writer.shards] + [s for m in mixes for s in m["shards"]],
        "mixes": mixes,
        "val": {"pattern": f"val/{cfg.val_name}_val_*.bin", "tokens": val_tokens, "documents": len(val_keys)},
        "sources": sources_table,
        "decontamination": {"ngram": cfg.decontaminate.ngram, "benchmarks": list(cfg.decontaminate.benchmarks),
                            "items_too_short": too_short,
                            "per_source": {n: sources_table[n]["contaminated"] for n in used}},
        "counts": {"documents": sum(m["documents"] for m in mixes), "tokens": sum(m["tokens"] for m in mixes),
                   "mixes": len(mixes), "removed": dict(drops.counts)},
    }


def _empty(d: Path) -> None:
    import shutil

    for p in d.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


def composition_table(manifest: dict):
    """Tidy table of a mix manifest: one row per (mix, source) with tokens, documents and epochs."""
    import pandas as pd

    rows = [{"mix": m["name"], "source": s, "weight": v["weight"], "tokens": v["tokens"],
             "documents": v["documents"], "unique_documents": v["unique_documents"], "epochs": v["epochs"]}
            for m in manifest["mixes"] for s, v in m["per_source"].items()]
    return pd.DataFrame(rows)


def removals_table(manifest: dict):
    """One row per source: documents read, exact / near duplicates, contaminated per benchmark, kept.
    A streaming mix has no near-duplicate pass (near_duplicate None in its manifest): 0 removed."""
    import pandas as pd

    rows = []
    for name, s in manifest["sources"].items():
        row = {"source": name, "documents_in": s["documents_in"], "exact_duplicate": s["exact_duplicate"],
               "near_duplicate": s["near_duplicate"] or 0}
        row.update({f"contaminated_{b}": s["contaminated"].get(b, 0)
                    for b in manifest["decontamination"]["benchmarks"]})
        row.update({"documents_kept": s["documents_kept"], "tokens_kept": s["tokens_kept"]})
        rows.append(row)
    return pd.DataFrame(rows)
