"""The ingest and tokenize sections: real web documents, and their GPT-2 tokens in llm.c shards."""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field

from pipelines.config.section import Section


class IngestConfig(Section):
    """Real web documents, from the hub (streaming) or a local JSONL / JSONL.gz / JSONL.zst / Parquet."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"removed_examples"})

    dataset: str = "HuggingFaceFW/fineweb"  # or HuggingFaceFW/fineweb-edu
    dataset_config: str | None = "sample-10BT"
    split: str = "train"
    path: str | None = None  # a local file, directory or glob; when set, the hub is not used
    max_documents: int | None = Field(2000, ge=1)  # None: every document
    sample: Literal["first", "random"] = "first"  # random: seeded (reservoir locally, shuffle buffer on the hub)
    shuffle_buffer: int = Field(10_000, ge=1)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # held out by a seeded hash of the document id
    exclude_sources: list[str] = []
    max_chars: int | None = Field(None, ge=1)  # longer documents are dropped as `too_long`
    shard_documents: int = Field(10_000, ge=1)
    removed_examples: int = Field(100, ge=0)  # first examples kept per drop reason in removed/

    @property
    def expected_val_documents(self) -> int | None:
        return None if self.max_documents is None else round(self.max_documents * self.val_fraction)


class TokenizeConfig(Section):
    """GPT-2 BPE (tiktoken) into llm.c uint16 shards."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"workers", "batch_documents"})

    name: str = Field("web", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # shard file prefix
    shard_tokens: int = Field(100_000_000, ge=1024, le=2**31 - 1)
    workers: int = Field(0, ge=0)  # 0: one process per core
    batch_documents: int = Field(64, ge=1)

    @property
    def num_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)
