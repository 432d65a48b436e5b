"""Files that are never seen half-written (atomic_path / atomic_open: the one atomic write), the sha256
that manifests record, and the lock that keeps one writer per run and stage."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from pipelines.errors import StudyError


@contextmanager
def atomic_path(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` for the block to write (a file, or a folder); renamed onto `path`
    when the block ends, removed if it raises, so `path` is never seen half-written. keep_suffix: the
    name ends in path's suffix too (writers that pick the format from it, e.g. matplotlib's savefig)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}" + (path.suffix if keep_suffix else ""))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """open(path, mode) for writing ("w" or "wb"), atomically: flushed to disk, then renamed (atomic_path)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_HELD: set["Lock"] = set()


def _drop_locks_in_child() -> None:
    """A forked child (datatrove's Manager, a worker pool) inherits the lock's open file; its copy is closed
    at once, so the lock lives exactly as long as the process that took it."""
    for lock in list(_HELD):
        try:
            lock.f.close()
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


class Lock:
    """An exclusive lock on `path` (created if needed) held for a `with` block; a second process
    stops at once with an error naming the holder's pid. The kernel drops it when its holder dies,
    so a killed run never leaves a stale lock (a forked child does not keep it: _drop_locks_in_child)."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what

    def __enter__(self) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            holder = self.f.read().strip() or "?"
            self.f.close()
            raise StudyError(f"another process (pid {holder}) is writing {self.what}; wait for it or stop it, "
                             f"then rerun (lock: {self.path})") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(str(os.getpid()))
        self.f.flush()
        _HELD.add(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _HELD.discard(self)
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()
