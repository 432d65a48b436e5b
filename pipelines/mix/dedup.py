"""Exact and near-duplicate removal over the union of a study's sources.

Exact: sha1 of the lowercased, whitespace-collapsed text; the first occurrence is kept.
Near:  datatrove's MinHash stages over the first `mix.dedup.sign_chars` characters of each document
       (signature -> buckets -> cluster -> filter; 5-grams, 14 buckets x
       8 hashes by default; sha1 shingle hashes, as xxhash>=4 rejects the str datatrove passes) run by
       `LocalPipelineExecutor` on a JSONL copy of the corpus. In each
       cluster datatrove keeps the first document in input order, so the caller orders the corpus by
       priority (held-out validation pages first, then real web, then synthetic).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable

_WS = re.compile(r"\s+")


def exact_key(text: str) -> str:
    return hashlib.sha1(_WS.sub(" ", text.lower()).strip().encode("utf-8")).hexdigest()


def exact_duplicates(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """(key, text) in priority order -> {duplicate key: key of the first copy}."""
    first: dict[str, str] = {}
    dups: dict[str, str] = {}
    for key, text in items:
        h = exact_key(text)
        if h in first:
            dups[key] = first[h]
        else:
            first[h] = key
    return dups


def minhash_duplicates(items: list[tuple[str, str]], workdir: Path, ngrams: int = 5, buckets: int = 14,
                       hashes_per_bucket: int = 8, workers: int = 1, sign_chars: int | None = None) -> set[str]:
    """(key, text) in priority order -> keys that datatrove's MinHash dedup removes. Each document is
    signed on its first `sign_chars` characters (None: all), which bounds the memory one page takes."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from loguru import logger

    if not items:
        return set()
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    with gzip.open(corpus / "00000.jsonl.gz", "wt", encoding="utf-8") as f:
        for key, text in items:
            f.write(json.dumps({"id": key, "text": text[:sign_chars]}, ensure_ascii=False) + "\n")
    cfg = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"), n_grams=ngrams,
                        num_buckets=buckets, hashes_per_bucket=hashes_per_bucket)
    sigs, bucket_dir, clusters, removed = (str(workdir / d) for d in ("signatures", "buckets", "remove_ids", "removed"))

    def execute(name: str, pipeline: list, tasks: int = 1) -> None:
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                              logging_dir=str(workdir / "logs" / name), skip_completed=False).run()

    # one input file and one task: document indices agree between the signature and filter stages
    logger.disable("datatrove")  # its per-stage banners would drown our output; stats stay in logs/
    try:
        execute("signatures", [JsonlReader(str(corpus)), MinhashDedupSignature(output_folder=sigs, config=cfg)])
        execute("buckets", [MinhashDedupBuckets(input_folder=sigs, output_folder=bucket_dir, config=cfg)], buckets)
        execute("clusters", [MinhashDedupCluster(input_folder=bucket_dir, output_folder=clusters, config=cfg)])
        execute("filter", [JsonlReader(str(corpus)),
                           MinhashDedupFilter(input_folder=clusters, exclusion_writer=JsonlWriter(removed))])
    finally:
        logger.enable("datatrove")
    gone: set[str] = set()
    for path in sorted(Path(removed).glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            gone.update(json.loads(line)["id"] for line in f)
    return gone
