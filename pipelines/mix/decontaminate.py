"""Benchmark decontamination by word n-gram overlap (GPT-3 / Cosmopedia style, n = 13 by default).

Words are lowercased alphanumeric runs. Every n-gram of an item's question (or context) and of the
question followed by each answer choice is indexed; a training document that shares any one of
them with an item is contaminated and is removed, recorded with the benchmark, the item and the
words that matched. Items shorter than n words cannot match and are counted as such.

The index is a sorted uint64 array of n-gram hashes with a parallel array of item numbers, so
looking a document up is one vectorised `searchsorted` (shapes: doc words W -> W-n+1 hashes).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from pipelines.data.benchmarks import load_benchmark

_WORD = re.compile(r"[a-z0-9]+")
_P = np.uint64(1_000_003)  # polynomial base of the rolling n-gram hash (uint64 arithmetic wraps)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class _WordHasher:
    """Stable 64-bit word hashes (Python's hash() is salted per process), memoised."""

    def __init__(self) -> None:
        self.memo: dict[str, int] = {}

    def __call__(self, ws: list[str]) -> np.ndarray:
        memo = self.memo
        out = np.empty(len(ws), dtype=np.uint64)
        for i, w in enumerate(ws):
            h = memo.get(w)
            if h is None:
                h = memo[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            out[i] = h
        return out


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """(W,) word hashes -> (W-n+1,) n-gram hashes; empty when W < n."""
    m = len(word_hashes) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.zeros(m, dtype=np.uint64)
        for k in range(n):
            h = h * _P + word_hashes[k : k + m]
    return h


def benchmark_items(name: str, eval_dir: str | None) -> Iterator[tuple[str, list[str]]]:
    """(item id, texts to index) for one benchmark, loaded as the evaluation stage loads it."""
    for item in load_benchmark(name, data_dir=eval_dir).items:
        yield item.id, [item.question] + [f"{item.question} {c}" for c in item.choices]


@dataclass
class NgramIndex:
    n: int
    hashes: np.ndarray  # (H,) sorted uint64
    owners: np.ndarray  # (H,) int32 index into `items`
    items: list[tuple[str, str]]  # (benchmark, item id)
    too_short: dict[str, int] = field(default_factory=dict)  # items with fewer than n words

    @classmethod
    def build(cls, benchmarks: list[str], eval_dir: str | None, n: int = 13) -> "NgramIndex":
        hasher = _WordHasher()
        parts_h, parts_o, items = [], [], []
        too_short: dict[str, int] = {b: 0 for b in benchmarks}
        for b in benchmarks:
            for item_id, texts in benchmark_items(b, eval_dir):
                hs = [ngram_hashes(hasher(words(t)), n) for t in texts]
                h = np.unique(np.concatenate(hs))
                if not len(h):
                    too_short[b] += 1
                    continue
                parts_h.append(h)
                parts_o.append(np.full(len(h), len(items), dtype=np.int32))
                items.append((b, item_id))
        hashes = np.concatenate(parts_h) if parts_h else np.empty(0, dtype=np.uint64)
        owners = np.concatenate(parts_o) if parts_o else np.empty(0, dtype=np.int32)
        order = np.argsort(hashes, kind="stable")
        return cls(n, hashes[order], owners[order], items, too_short)

    def match(self, text: str, hasher: _WordHasher | None = None) -> dict | None:
        """The first benchmark n-gram found in `text`: {benchmark, item, ngram}, or None."""
        ws = words(text)
        h = ngram_hashes((hasher or _WordHasher())(ws), self.n)
        if not len(h) or not len(self.hashes):
            return None
        pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        hits = np.flatnonzero(self.hashes[pos] == h)
        if not len(hits):
            return None
        at = int(hits[0])
        bench, item = self.items[int(self.owners[pos[at]])]
        return {"benchmark": bench, "item": item, "ngram": " ".join(ws[at : at + self.n])}
