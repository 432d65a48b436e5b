"""The per-item metrics: their names and direction (METRICS), which a task form has, and one benchmark
item's record from its choices' log-likelihoods (item_record). numpy only: decisions.py reads METRICS."""

from __future__ import annotations

import numpy as np

from pipelines.data.benchmarks import Item, Prompt

METRICS: dict[str, dict] = {
    "acc": {"higher_is_better": True, "label": "accuracy", "percent": True},
    "acc_norm": {"higher_is_better": True, "label": "accuracy (per-character normalised)", "percent": True},
    "bpb": {"higher_is_better": False, "label": "bits per byte of the correct answer", "percent": False},
    "prob_norm": {"higher_is_better": True, "label": "probability of the correct answer among the choices",
                  "percent": True},
    "margin": {"higher_is_better": True, "label": "log-likelihood margin over the best wrong answer (nats)",
               "percent": False},
    # DCLM's CORE (evaluate/core.py): (acc - random) / (1 - random) per task; its macro average over tasks is CORE
    "centered": {"higher_is_better": True, "label": "centered accuracy", "percent": True},
    "core": {"higher_is_better": True, "label": "CORE (mean centered accuracy over tasks)", "percent": True},
}
CLOZE_METRICS = ["acc", "acc_norm", "bpb", "prob_norm", "margin"]
LETTER_METRICS = ["acc", "bpb", "prob_norm", "margin"]  # letters all have one character: acc_norm = acc
CHANCE_METRICS = ("acc", "acc_norm", "prob_norm")  # a random guess scores 1/choices on these


def form_metrics(form: str) -> list[str]:
    return LETTER_METRICS if form == "letter" else CLOZE_METRICS


def item_record(item: Item, p: Prompt, lls: list[float]) -> dict:
    """Per-item result; ties go to the first choice (numpy argmax, as lm-evaluation-harness).

    acc, acc_norm: the choice of largest log-likelihood, raw or per character of the answer, is the gold
    one. The continuous metrics (DataDecide's) from the same log-likelihoods of the scored continuations
    (" " + answer): bpb, bits per byte of the gold continuation, -ll / (ln 2 x its UTF-8 bytes);
    prob_norm, the gold answer's probability normalised over the choices, exp(ll_gold) / sum exp(ll);
    margin, ll_gold minus the largest ll of a wrong choice (nats; > 0 exactly when acc is 1, ties aside)."""
    ll = np.array(lls, dtype=np.float64)
    norm = ll / np.array([float(len(a)) for a in p.answers])
    pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
    gold_bytes = len(p.continuations[item.gold].encode("utf-8"))
    wrong = np.delete(ll, item.gold)
    prob = np.exp(ll - ll.max())
    return {"id": item.id, "row": item.row, "subject": item.subject, "gold": item.gold, "lls": lls,
            "answer_chars": [len(a) for a in p.answers], "pred": pred, "pred_norm": pred_norm,
            "acc": int(pred == item.gold), "acc_norm": int(pred_norm == item.gold),
            "bpb": float(-ll[item.gold] / (np.log(2) * gold_bytes)),
            "prob_norm": float(prob[item.gold] / prob.sum()),
            "margin": float(ll[item.gold] - wrong.max()) if len(wrong) else 0.0}

