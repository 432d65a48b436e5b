"""Resumable part files: the engine under generate and annotate.

  parts/part-<time>-<pid>.jsonl   one JSON line per finished request, appended batch by batch and
                                  fsync'd. Each invocation writes a new part file, so a line torn by
                                  `kill -9` is always the last line of an old file; scan_parts skips it
                                  and the request is made again.
  state.json                      the key the answers depend on (keep_parts_if_same): when it changes,
                                  the old parts are discarded
  .lock                           one writer per folder (pipelines.files.Lock)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import IO

from pipelines.config import config_hash
from pipelines.engines.backend import Completion
from pipelines.files import write_json_atomic


def scan_parts(parts_dir: Path) -> tuple[dict[str, tuple[Path, int]], dict[str, int]]:
    """{prompt_id: (part file, byte offset of its line)} for every complete line, first one winning;
    plus counts of torn / unreadable lines and of duplicates ignored."""
    index: dict[str, tuple[Path, int]] = {}
    stats = Counter({"torn_lines": 0, "duplicate_lines": 0})
    for path in sorted(parts_dir.glob("part-*.jsonl")):
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                start, offset = offset, offset + len(line)
                if not line.endswith(b"\n"):  # the last line of a killed run
                    stats["torn_lines"] += 1
                    continue
                try:
                    row = json.loads(line)
                    pid = row["prompt_id"]
                except (ValueError, KeyError, TypeError):
                    stats["torn_lines"] += 1
                    continue
                if pid in index:
                    stats["duplicate_lines"] += 1
                    continue
                index[pid] = (path, start)
    return index, dict(stats)



def read_row(handles: dict[Path, IO[bytes]], where: tuple[Path, int]) -> dict:
    path, offset = where
    f = handles.get(path)
    if f is None:
        f = handles[path] = open(path, "rb")
    f.seek(offset)
    return json.loads(f.readline())



def completion_record(prompt_id, c: Completion, generator: str) -> dict:
    """One saved completion, as a part file line (generate and annotate save the same fields)."""
    return {"prompt_id": prompt_id, "text": c.text, "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "error": c.error,
            "generator": generator}



class PartWriter:
    """Appends whole lines to this invocation's part file and fsyncs after every batch."""

    def __init__(self, parts_dir: Path):
        parts_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.path = parts_dir / f"part-{stamp}-{os.getpid()}.jsonl"
        self.f = open(self.path, "ab")
        _fsync_dir(parts_dir)  # the file's name survives a crash too

    def write(self, rows: list[dict]) -> None:
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self.f.write(blob.encode("utf-8", "surrogatepass"))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()
        if self.path.stat().st_size == 0:
            self.path.unlink()



def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)




def keep_parts_if_same(parts_dir: Path, state_path: Path, key: dict, what: str) -> None:
    """Saved parts stay only while `key` (what the completions depend on) is unchanged; else they go.
    Records the key in `state_path` for the next call."""
    old = None
    if state_path.exists():
        try:
            old = json.loads(state_path.read_text())
        except ValueError:
            old = None
    if parts_dir.exists() and (old or {}).get("key_hash") != config_hash(key):
        n_old = len(scan_parts(parts_dir)[0])
        print(f"{what} changed since the {n_old:,} saved answers: discarding them")
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_path, {"key_hash": config_hash(key), "key": key})
