"""llm.c token shards: 256 int32 header ([0]=20240520 magic, [1]=1 version, [2]=token count), then
uint16 tokens, little-endian. llm.c refuses a file whose size is not exactly 1024 + 2*ntok.
Every document starts with <|endoftext|> (50256), so a shard splits back into documents there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.errors import StudyError
from pipelines.files import atomic_open
from pipelines.llmc.tokenizer import EOT, VOCAB, gpt2

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def shard_name(name: str, split: str, idx: int) -> str:
    return f"{name}_{split}_{idx:06d}.bin"


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write atomically (files.atomic_open): a killed writer leaves no valid-looking shard."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB):
        raise ValueError(f"token ids must be in [0, {VOCAB}), got [{tokens.min()}, {tokens.max()}]")
    if tokens.size >= 2**31:
        raise ValueError(f"{tokens.size} tokens do not fit an llm.c shard header (int32)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    with atomic_open(Path(path), "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())


def read_header(path: Path) -> np.ndarray:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise StudyError(f"{path}: cannot read llm.c shard: {e}") from None
    if len(raw) < HEADER_BYTES:
        raise StudyError(f"{path}: {len(raw)} bytes is shorter than the llm.c header ({HEADER_BYTES} bytes): truncated "
                         f"or not an llm.c file; rerun the stage that wrote it (`study mix` or `study tokenize`) with --force")
    return np.frombuffer(raw, dtype="<i4")


def validate_shard(path: Path, check_tokens: bool = True) -> int:
    """Check header, exact size and (optionally) token range; returns the token count."""
    path = Path(path)
    header = read_header(path)
    if header[0] != MAGIC:
        hint = " (that is llm.c's eval-file magic, not a token shard)" if header[0] == 20240522 else ""
        raise StudyError(f"{path}: bad magic {header[0]} (expected {MAGIC}): not an llm.c token shard{hint}")
    if header[1] != VERSION:
        raise StudyError(f"{path}: unsupported shard version {header[1]} (expected {VERSION})")
    ntok = int(header[2])
    size = path.stat().st_size
    if ntok < 0 or size != HEADER_BYTES + 2 * ntok:
        raise StudyError(
            f"{path}: size {size} bytes but the header says {ntok} tokens, i.e. "
            f"{HEADER_BYTES + 2 * max(ntok, 0)} bytes: truncated or corrupt (llm.c would refuse it)"
        )
    if check_tokens and ntok:
        tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))
        hi = int(tokens.max())
        if hi >= VOCAB:
            raise StudyError(f"{path}: token id {hi} is outside GPT-2's vocabulary (< {VOCAB})")
        if tokens[0] != EOT:
            raise StudyError(f"{path}: does not start with <|endoftext|> ({EOT}); documents would run together")
    return ntok


def read_shard(path: Path) -> np.ndarray:
    """Validated tokens of one shard (uint16, memory-mapped)."""
    ntok = validate_shard(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))


def split_documents(tokens: np.ndarray) -> list[np.ndarray]:
    """Token arrays of the documents in a shard, each without its leading <|endoftext|>."""
    starts = np.flatnonzero(np.asarray(tokens) == EOT)
    ends = np.append(starts[1:], len(tokens))
    return [np.asarray(tokens[s + 1 : e]) for s, e in zip(starts, ends)]


def decode_shard(path: Path) -> list[str]:
    enc = gpt2()
    return [enc.decode(doc.tolist()) for doc in split_documents(read_shard(path))]


class ShardWriter:
    def __init__(self, directory: Path, name: str, split: str, shard_tokens: int):
        self.dir, self.name, self.split, self.limit = directory, name, split, shard_tokens
        self.parts: list[np.ndarray] = []
        self.ntok = 0
        self.ndocs = 0
        self.shards: list[dict] = []

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if self.ntok + len(tokens) <= self.limit:  # the whole batch fits: no per-document work
            self.parts.append(tokens)
            self.ntok += len(tokens)
            self.ndocs += len(lengths)
            return
        pos = 0
        for n in lengths.tolist():
            if self.ntok and self.ntok + n > self.limit:
                self.flush()
            self.parts.append(tokens[pos : pos + n])
            self.ntok += n
            self.ndocs += 1
            pos += n

    def flush(self) -> None:
        if not self.ntok:
            return
        path = self.dir / shard_name(self.name, self.split, len(self.shards))
        write_shard(path, np.concatenate(self.parts))
        self.shards.append({"split": self.split, "path": path.name, "tokens": self.ntok, "documents": self.ndocs})
        self.parts, self.ntok, self.ndocs = [], 0, 0
