"""llm.c's data loaders in Python (llmc/dataloader.h, llmc/rand.h), same order of batches.

DataLoader: the shards matching a glob pattern, in sorted order (C's glob sorts). Each shard is cut
into `(ntok - 1) // (P*B*T)` samples of P*B*T+1 tokens (P processes; this process reads its
B*T+1 slice at offset rank*B*T). The train loader shuffles: a Mersenne Twister seeded 42 + rank
permutes the shard order at every epoch start and the samples inside each shard when it is
loaded (Fisher-Yates with `randint32 % (i + 1)`). The val loader does not shuffle. At the end of
the last shard a new epoch starts. Resume restores (shard index, sample index) and the shuffle
state, so a resumed run sees exactly the batches an uninterrupted one would.

EvalLoader: llm.c's HellaSwag file (see hellaswag.py); each example fills 4 rows of a batch.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from pipelines.errors import StudyError
from pipelines.llmc.shards import HEADER_BYTES, MAGIC, VERSION, read_header


class MT19937:
    """llm.c's mt19937_state (= torch's CPU generator): manual_seed, randint32, random_permutation."""

    N, M = 624, 397

    def __init__(self, seed: int):
        s = [seed & 0xFFFFFFFF]
        for j in range(1, self.N):
            s.append((1812433253 * (s[-1] ^ (s[-1] >> 30)) + j) & 0xFFFFFFFF)
        self.state, self.left, self.next = s, 1, 0

    def _twist(self) -> None:
        s, N, M = self.state, self.N, self.M
        for j in range(N):
            y = (s[j] & 0x80000000) | (s[(j + 1) % N] & 0x7FFFFFFF)
            s[j] = s[(j + M) % N] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.left, self.next = N, 0

    def randint32(self) -> int:
        self.left -= 1
        if self.left <= 0:
            self._twist()
        y = self.state[self.next]
        self.next += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)

    def permute(self, data: list[int]) -> None:
        """In place, as llm.c's random_permutation."""
        for i in range(len(data) - 1, 0, -1):
            j = self.randint32() % (i + 1)
            data[i], data[j] = data[j], data[i]

    # llm.c's struct mt19937_state as stored in a state file: seed_ (u64), left_ (i32), next_ (u32),
    # state_[624] (u32), MATRIX_A[2] (u32): 2520 bytes
    def to_bytes(self) -> bytes:
        head = np.array([0], "<u8").tobytes() + np.array([self.left], "<i4").tobytes()
        return head + np.array([self.next, *self.state, 0, 0x9908B0DF], "<u4").tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "MT19937":
        rng = cls(0)
        rng.left = int(np.frombuffer(raw[8:12], "<i4")[0])
        words = np.frombuffer(raw[12:], "<u4")
        rng.next, rng.state = int(words[0]), [int(x) for x in words[1 : 1 + cls.N]]
        return rng


MT_STATE_BYTES = 2520


def shard_ntok(path: str, min_tokens: int) -> int:
    """llm.c's dataloader_load_shard_ checks, with messages that say what is wrong."""
    p = Path(path)
    header = read_header(p)  # a file shorter than the header: a clear error, not numpy's
    if header[0] != MAGIC:
        raise StudyError(f"{p}: bad magic in the data file: not an llm.c token shard (rerun the stage that "
                         f"wrote it, `study mix` or `study tokenize`, with --force)")
    if header[1] != VERSION:
        raise StudyError(f"{p}: bad version {header[1]} in data file (expected {VERSION})")
    ntok = int(header[2])
    if p.stat().st_size != HEADER_BYTES + 2 * ntok:
        raise StudyError(f"{p}: file size is not as expected ({p.stat().st_size} bytes for {ntok} tokens)")
    if ntok < min_tokens:
        raise StudyError(f"{p}: {ntok} tokens, but llm.c needs at least P*B*T+1 = {min_tokens} per shard: "
                         f"use a smaller train.batch_size / seq_len or larger shards (tokenize.shard_tokens)")
    return ntok


class DataLoader:
    def __init__(self, pattern: str, B: int, T: int, rank: int = 0, nproc: int = 1, shuffle: bool = True,
                 seed: int = 42):
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise StudyError(f"no files found matching the pattern: {pattern}")
        self.B, self.T, self.rank, self.nproc, self.shuffle = B, T, rank, nproc, shuffle
        self.total = nproc * B * T  # tokens per sample across processes (a sample has total+1)
        self.ntoks = [shard_ntok(f, self.total + 1) for f in self.files]
        self.num_tokens = sum(self.ntoks)
        self.rng = MT19937(seed + rank) if shuffle else None
        self.shard_indices = list(range(len(self.files)))
        self.intra: list[int] = []
        self.reset()

    def _load_shard(self, i: int) -> None:
        idx = self.shard_indices[i] if self.shuffle else i
        ntok = self.ntoks[idx]
        self.tokens = np.memmap(self.files[idx], dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))
        # -1: each sample reads total+1 tokens but the next starts `total` later
        self.shard_num_samples = (ntok - 1) // self.total

    def _prepare_intra(self) -> None:
        self.intra = list(range(self.shard_num_samples))
        self.rng.permute(self.intra)

    def reset(self) -> None:
        self.shard_idx, self.sample_idx = 0, 0
        if self.shuffle:
            self.rng.permute(self.shard_indices)
        self._load_shard(0)
        if self.shuffle:
            self._prepare_intra()

    def _advance(self) -> None:
        if self.shard_idx == len(self.files) - 1:  # end of the last shard: a new epoch
            self.reset()
            return
        self.shard_idx += 1
        self.sample_idx = 0
        self._load_shard(self.shard_idx)
        if self.shuffle:
            self._prepare_intra()

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each (B, T) int64."""
        if self.sample_idx >= self.shard_num_samples:
            self._advance()
        i = self.intra[self.sample_idx] if self.shuffle else self.sample_idx
        start = i * self.total + self.rank * self.B * self.T
        buf = np.asarray(self.tokens[start : start + self.B * self.T + 1], dtype=np.int64)
        self.sample_idx += 1
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)

    def resume(self, shard_idx: int, sample_idx: int) -> None:
        """llm.c's dataloader_resume (shuffle state restored by the caller beforehand)."""
        self.shard_idx, self.sample_idx = shard_idx, sample_idx
        self._load_shard(shard_idx)


