"""The `classify` stage: train the educational classifier (pipelines/classifier.py) on labelled pages.

Both kinds (embedding, hashed) are trained side by side on the same labels and the same seeded,
stratified split. The ridge head's output is linearly recalibrated on held-out training rows (ridge
shrinks toward the mean label, which would keep rounded scores off the ends of the scale).

Stage `classify` (`study classifier train`), output in results/<run>/classify/:
  <kind>/model.json, <kind>/weights.npz   one saved classifier per kind
  metrics.json       figure-ready: per kind MSE, accuracy, macro-F1, per-class F1, confusion matrix,
                     binary precision / recall / F1 at `threshold` (metrics.py); the label distribution
  predictions.jsonl.gz   validation pages: id, source, label, each kind's score (for figures)
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipelines.classifier import CLASSES, MAX_SCORE, EduClassifier, Embedder, fit_idf, hashed_counts, int_scores, tfidf
from pipelines.classify.metrics import classifier_metrics
from pipelines.config import ClassifierConfig, LabelField, MixSource
from pipelines.data.documents import DropLog, expand_paths, field_value
from pipelines.data.pages import external_documents
from pipelines.errors import StudyError
from pipelines.files import file_sha256, write_json_atomic
from pipelines.runs.manifest import Run, StageContext
from pipelines.runs.readers import stage_documents

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
# the ridge head


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
        val = classifier_metrics(labels[val_idx], pred[val_idx], cfg.threshold)
        tr = classifier_metrics(labels[train_idx], pred[train_idx], cfg.threshold)
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


