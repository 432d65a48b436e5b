"""The typed results of the `ingest` and `tokenize` stages (their manifests' fields; pipelines/runs/results.py)."""

from __future__ import annotations

from pipelines.runs.results import DocumentFile, Model, Number, StageResult, TokenShard


class IngestCounts(Model):
    documents: int = 0
    train_documents: int = 0
    val_documents: int = 0
    train_chars: int = 0
    val_chars: int = 0
    longest_document_chars: int = 0
    per_source: dict[str, int] = {}  # kept documents per source
    dropped: dict[str, int] = {}  # documents per drop reason


class IngestResult(StageResult):
    outputs: list[DocumentFile] = []  # val/val_*.jsonl.gz, then train/train_*.jsonl.gz
    counts: IngestCounts = IngestCounts()
    removed_examples: dict[str, str] = {}  # drop reason -> removed/<reason>.jsonl
    warnings: list[str] = []


class TokenizeCounts(Model):
    documents: int = 0
    tokens: int = 0
    train_tokens: int = 0
    val_tokens: int = 0
    train_documents: int = 0
    val_documents: int = 0
    shards: int = 0
    oversized_shards: int = 0  # shards holding one document longer than tokenize.shard_tokens


class Patterns(Model):
    """llm.c's -i / -j glob patterns, relative to the stage folder."""

    train: str = ""
    val: str = ""


class TokenizeThroughput(Model):
    tokens_per_s: Number = 0


class TokenizeResult(StageResult):
    outputs: list[TokenShard] = []
    counts: TokenizeCounts = TokenizeCounts()
    patterns: Patterns = Patterns()
    throughput: TokenizeThroughput = TokenizeThroughput()
