"""The classifier's metrics, as metrics.json holds them per kind: regression MSE; accuracy, macro-F1,
per-class F1 and the confusion matrix of the rounded score; binary precision / recall / F1 at the
filter threshold."""

from __future__ import annotations

import numpy as np

from pipelines.classifier import CLASSES, int_scores


def classifier_metrics(y_true: np.ndarray, y_pred: np.ndarray, threshold: int = 3) -> dict:
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

