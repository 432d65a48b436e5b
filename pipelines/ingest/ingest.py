"""Ingest real web documents (FineWeb from the hub, or local files of the same fields).

Output, in results/<run>/ingest/:
  train/train_00000.jsonl.gz ...  documents in the record of docs/design.md ("The spine")
  val/val_00000.jsonl.gz ...      the held-out slice: a seeded hash of the id picks it, so a
                                  document's split never depends on order or on max_documents
  removed/<reason>.jsonl          first examples of each drop reason (counts in the manifest)
"""

from __future__ import annotations

from collections import Counter

from tqdm.auto import tqdm

from pipelines.data.documents import DropLog, ShardedWriter
from pipelines.data.pages import hub_records, in_val, local_records, select
from pipelines.errors import StudyError
from pipelines.runs.manifest import StageContext


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.ingest
    seed = ctx.config.seed
    drops = DropLog(ctx.dir / "removed", cfg.removed_examples)
    if cfg.path:
        records = local_records(cfg, drops)
        sampled_upstream = False
    else:
        default_source = cfg.dataset.split("/")[-1] + (f"/{cfg.dataset_config}" if cfg.dataset_config else "")
        records = ((raw, default_source) for raw in hub_records(cfg, seed))
        sampled_upstream = True  # the hub stream is already shuffled by seed when sample=random
    writers = {s: ShardedWriter(ctx.dir / s, s, cfg.shard_documents) for s in ("train", "val")}
    per_source: Counter[str] = Counter()
    chars = Counter()
    longest = 0
    with tqdm(total=cfg.max_documents, desc="ingest", unit="doc", disable=None) as bar:
        for doc in select(cfg, seed, records, drops, sampled_upstream):
            split = "val" if in_val(doc["id"], seed, cfg.val_fraction) else "train"
            writers[split].write(doc)
            per_source[doc["source"]] += 1
            chars[split] += len(doc["text"])
            longest = max(longest, len(doc["text"]))
            bar.update(1)
    drops.close()
    shards = {s: w.close() for s, w in writers.items()}
    docs = {s: sum(x["documents"] for x in shards[s]) for s in shards}
    if docs["train"] + docs["val"] == 0:
        raise StudyError(f"[ingest] no valid documents in the input; drops: {dict(drops.counts)}")
    print(f"[ingest] {docs['train']:,} train + {docs['val']:,} val documents, "
          f"{sum(chars.values()):,} chars; dropped: {dict(drops.counts) or 'none'}")
    warnings = []
    if cfg.val_fraction > 0 and docs["val"] == 0:
        warnings.append(f"no validation document: {docs['train']:,} pages at val_fraction {cfg.val_fraction} left "
                        f"none held out; `mix` and training need some: raise ingest.val_fraction or max_documents")
    for w in warnings:
        print(f"[ingest] WARNING: {w}")
    return {
        "outputs": [{"split": s, "path": f"{s}/{x['path']}", "documents": x["documents"], "chars": x["chars"]}
                    for s in ("val", "train") for x in shards[s]],
        "counts": {
            "documents": docs["train"] + docs["val"],
            "train_documents": docs["train"],
            "val_documents": docs["val"],
            "train_chars": chars["train"],
            "val_chars": chars["val"],
            "longest_document_chars": longest,
            "per_source": dict(sorted(per_source.items())),
            "dropped": dict(sorted(drops.counts.items())),
        },
        "removed_examples": {r: f"removed/{r}.jsonl" for r in sorted(drops.counts) if r != "excluded_source"},
        "warnings": warnings,
    }
