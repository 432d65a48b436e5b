"""Page sources: web pages from the hub (streamed) or local files, as documents, with the held-out split.

The ingest stage reads pages through these, and so does a mix or a classifier whose source is a
path or a hub dataset rather than a stage, so every page is validated the same way.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
from typing import Any, Iterator
from urllib.parse import urlparse

from pipelines.config import IngestConfig, MixSource
from pipelines.data.documents import DropLog, expand_paths, read_records
from pipelines.errors import StudyError

RESERVED = ("id", "text", "source", "metadata")



OFFLINE_HINT = "--set ingest.path=embedded (the repository's 4,494 real web pages, data/README.md)"



def in_val(doc_id: str, seed: int, fraction: float) -> bool:
    if fraction <= 0:
        return False
    h = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction



def to_document(raw: dict, default_source: str, position: int) -> tuple[dict | None, str | None]:
    """A raw record -> (document, None) or (None, drop reason)."""
    text = raw.get("text")
    if text is None:
        return None, "missing_text"
    if not isinstance(text, str):
        return None, "missing_text"
    if not text.strip():
        return None, "empty_text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON escapes such as "\ud800"
        return None, "undecodable"
    source = raw.get("source") if isinstance(raw.get("source"), str) and raw.get("source") else default_source
    doc_id = raw.get("id")
    doc_id = str(doc_id) if doc_id not in (None, "") else f"{source}/{position}"
    metadata: dict[str, Any] = {}
    if isinstance(raw.get("metadata"), dict):
        metadata.update(raw["metadata"])
    for k, v in raw.items():
        if k not in RESERVED:
            metadata[k] = v  # url, dump, date, language, token_count, score, int_score, meta ...
    return {"id": doc_id, "text": text, "source": source, "metadata": metadata}, None



def _hub_reachable(timeout: float = 5.0) -> str | None:
    """None when the hub answers on the network level, else why not (fails fast offline)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {host}: {e}"



def hub_records(cfg: IngestConfig, seed: int) -> Iterator[dict]:
    where = f"{cfg.dataset}" + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
    problem = _hub_reachable()
    if problem:
        raise StudyError(
            f"[ingest] cannot read {where} from the Hugging Face hub: {problem}.\n"
            f"Point ingest at local JSONL/JSONL.gz/Parquet pages instead, e.g. {OFFLINE_HINT}"
        )
    import datasets

    try:
        ds = datasets.load_dataset(cfg.dataset, name=cfg.dataset_config, split=cfg.split, streaming=True)
        if cfg.sample == "random":
            ds = ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
        yield from ds
    except (ConnectionError, OSError) as e:
        raise StudyError(f"[ingest] reading {where} from the hub failed: {e}\nOffline: {OFFLINE_HINT}") from None



def local_records(cfg: IngestConfig, drops: DropLog) -> Iterator[tuple[dict, str]]:
    for path in expand_paths(cfg.path):
        default_source = path.name.split(".")[0]
        for raw in read_records(path, drops):
            yield raw, default_source



def select(cfg: IngestConfig, seed: int, records: Iterator[tuple[dict, str]], drops: DropLog,
           sampled_upstream: bool) -> list[dict] | Iterator[dict]:
    """Valid documents, deduplicated by id, as the first N or a seeded reservoir sample of N."""
    seen: set[str] = set()
    exclude = set(cfg.exclude_sources)

    def valid() -> Iterator[dict]:
        for pos, (raw, default_source) in enumerate(records):
            doc, reason = to_document(raw, default_source, pos)
            if doc is None:
                drops.drop(reason, {"position": pos, "record": {k: raw.get(k) for k in ("id", "source", "text")}})
                continue
            if doc["source"] in exclude:
                drops.counts["excluded_source"] += 1  # a choice, not bad input: counted only
                continue
            if cfg.max_chars is not None and len(doc["text"]) > cfg.max_chars:
                drops.drop("too_long", doc)
                continue
            if doc["id"] in seen:
                drops.drop("duplicate_id", doc)
                continue
            seen.add(doc["id"])
            yield doc

    n = cfg.max_documents
    if cfg.sample == "first" or sampled_upstream or n is None:
        def first() -> Iterator[dict]:
            for i, doc in enumerate(valid()):
                if n is not None and i >= n:
                    return
                yield doc
        return first()
    # Algorithm R, then back to input order so the output is stable and readable
    rng = random.Random(seed)
    reservoir: list[tuple[int, dict]] = []
    for i, doc in enumerate(valid()):
        if i < n:
            reservoir.append((i, doc))
        else:
            j = rng.randint(0, i)
            if j < n:
                reservoir[j] = (i, doc)
    return [doc for _, doc in sorted(reservoir, key=lambda t: t[0])]


def external_documents(src: MixSource, seed: int, drops: DropLog) -> Iterator[dict]:
    """A local path or hub dataset, read and validated exactly as the ingest stage reads pages."""
    cfg = IngestConfig(path=src.path, dataset=src.dataset or "", dataset_config=src.dataset_config,
                       split=src.split, max_documents=src.max_documents, sample="first", val_fraction=0.0)
    if src.path:
        records = local_records(cfg, drops)
    else:
        records = ((raw, src.dataset.split("/")[-1]) for raw in hub_records(cfg, seed))
    return select(cfg, seed, records, drops, sampled_upstream=True)
