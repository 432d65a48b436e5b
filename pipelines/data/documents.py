"""Documents between stages: `{"id", "text", "source", "metadata": {...}}` in JSONL(.gz/.zst) or
Parquet shards. Reading streams line by line (a 10 MB page never needs the corpus in memory);
bad input is counted per reason and its first examples kept in removed/.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, TypeVar

from pipelines.data.embedded import EMBEDDED, WEB_PAGES
from pipelines.errors import StudyError

T = TypeVar("T")
SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".parquet")
EXAMPLE_CHARS = 2000  # text kept per example in removed/ (the reason and full length are kept too)


def expand_paths(spec: str) -> list[Path]:
    """A file, a directory (every shard inside, sorted), a glob, or `embedded` (the repository's pages)."""
    if spec == EMBEDDED:
        return [WEB_PAGES]
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
    elif p.exists():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not files:
        raise StudyError(f"no input files at {spec!r} (expected {', '.join(SUFFIXES)})")
    return files


def _open_binary(path: Path) -> IO[bytes]:
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


class DropLog:
    """Counts dropped items per reason and keeps the first examples in removed/<reason>.jsonl."""

    def __init__(self, removed_dir: Path | None, examples_per_reason: int = 100):
        self.dir = removed_dir
        self.limit = examples_per_reason
        self.counts: Counter[str] = Counter()
        self._files: dict[str, IO[str]] = {}

    def drop(self, reason: str, example: dict[str, Any]) -> None:
        self.counts[reason] += 1
        if self.dir is None or self.counts[reason] > self.limit:
            return
        f = self._files.get(reason)
        if f is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = self._files[reason] = open(self.dir / f"{reason}.jsonl", "w", encoding="utf-8")
        text = example.get("text")
        if isinstance(text, str) and len(text) > EXAMPLE_CHARS:
            example = {**example, "text": text[:EXAMPLE_CHARS], "text_chars": len(text), "truncated": True}
        record = {"dropped_reason": reason, **example}
        line = json.dumps(record, ensure_ascii=False, default=repr)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: keep them as \ud800 escapes
            line = json.dumps(record, ensure_ascii=True, default=repr)
        f.write(line + "\n")

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def read_records(path: Path, drops: DropLog) -> Iterator[dict]:
    """Raw JSON objects (or Parquet rows) of one file; broken lines go to `drops`."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:  # a corrupt or truncated file: its readable batches are kept, the file is counted
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            drops.drop("unreadable_file", {"file": str(path), "error": f"{type(e).__name__}: {e}"})
        return
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = {"file": str(path), "line": lineno}
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    drops.drop("undecodable", {**where, "error": str(e), "raw": raw[:EXAMPLE_CHARS].decode("utf-8", "replace")})
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    drops.drop("invalid_json", {**where, "error": str(e), "raw": line[:EXAMPLE_CHARS]})
                    continue
                if not isinstance(obj, dict):
                    drops.drop("invalid_json", {**where, "error": "not a JSON object", "raw": line[:EXAMPLE_CHARS]})
                    continue
                yield obj
    except (OSError, EOFError, ValueError) as e:  # truncated gzip, bad zstd frame
        drops.drop("unreadable_file", {"file": str(path), "error": f"{type(e).__name__}: {e}"})


class ShardedWriter:
    """Writes documents as `<prefix>_<idx:05d>.jsonl.gz`, `shard_documents` per shard.

    Each shard is written under a temporary name and renamed when closed, so a killed run never
    leaves a truncated shard that looks whole.
    """

    def __init__(self, directory: Path, prefix: str, shard_documents: int, compresslevel: int = 3):
        self.dir = directory
        self.prefix = prefix
        self.per_shard = shard_documents
        self.level = compresslevel
        self.shards: list[dict] = []
        self._f: IO[str] | None = None
        self._n = 0
        self._chars = 0

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}_{len(self.shards):05d}.jsonl.gz"
        self._final = self.dir / name
        # not files.atomic_path: gzip writes the file's name into its header, and atomic_path's name
        # carries the pid, which would make the shard's bytes differ from run to run
        self._tmp = self.dir / f".{name}.tmp"
        self._f = gzip.open(self._tmp, "wt", encoding="utf-8", compresslevel=self.level)
        self._n = self._chars = 0

    def write(self, doc: dict) -> None:
        if self._f is None:
            self._open()
        line = json.dumps(doc, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (an LLM answer with "\ud800"): kept as JSON escapes
            line = json.dumps(doc, ensure_ascii=True)
        self._f.write(line)
        self._f.write("\n")
        self._n += 1
        self._chars += len(doc["text"])
        if self._n >= self.per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        assert self._f is not None
        self._f.close()
        os.replace(self._tmp, self._final)
        self.shards.append({"path": self._final.name, "documents": self._n, "chars": self._chars})
        self._f = None

    def close(self) -> list[dict]:
        if self._f is not None:
            self._close_shard()
        return self.shards


def read_documents(paths: Iterable[Path]) -> Iterator[dict]:
    """Documents written by a stage (trusted: any error here is a bug or a corrupted run)."""
    for path in paths:
        with _open_binary(path) as f:
            for raw in f:
                yield json.loads(raw)


def field_value(metadata: dict, dotted: str) -> Any:
    """metadata["a"]["b"] for "a.b"; None when any part is missing."""
    node: Any = metadata
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items in order, the last one shorter (itertools.batched from Python 3.12)."""
    batch: list[T] = []
    for x in items:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
