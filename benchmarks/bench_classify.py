"""Classifier scoring throughput: MiniLM embeddings + ridge versus hashed n-grams + ridge, in one run.

  .venv/bin/python benchmarks/classify.py [--docs N] [--max-tokens 512] [--batch-size 64] [--out FILE]

Both kinds are trained on the same labelled pages of ../shared/data/web/web_sample.jsonl.gz (the
FineWeb-Edu re-annotated pages' 0-5 score and the DCLM pool pages' human 0/1 label, as in the smoke
preset) with the same seeded stratified split, then score the same N general-web pages in batches
of --batch-size, as the filter stage does. Reported per kind: documents/s (best of --repeats rounds),
and F1 at threshold 3 (plus MSE, macro-F1) on the held-out labelled pages.
Goals on 2 cores: >= 200 docs/s for MiniLM at 512 tokens, >= 10,000 docs/s for the hashed kind.
"""

from __future__ import annotations

import sys

# benchmarks/ holds a file named like the stdlib's `tokenize`: take the folder off the import path first
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from benchmarks.common import record  # noqa: E402, I001  (first: the OpenMP wait policy, before torch loads)

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipelines import classifier as edu  # noqa: E402
from pipelines.classify import classify as C  # noqa: E402
from pipelines.classify.metrics import classifier_metrics  # noqa: E402
from pipelines.config import ClassifierConfig, LabelField  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "web" / "web_sample.jsonl.gz"
FIELDS = [LabelField(field="meta.edu_score"), LabelField(field="meta.dclm_human_quality_label", map={"0": 0, "1": 1})]


def load(path: Path) -> tuple[list[dict], list[str]]:
    """(labelled pages [{text, label}], unlabelled general-web texts) of the shared sample."""
    labelled, web = [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            d = json.loads(line)
            label = C.label_of({"metadata": {"meta": d.get("meta") or {}}}, FIELDS)
            if label is not None:
                labelled.append({"text": d["text"], "label": label})
            elif d["source"] != "fineweb_sample10BT_legalpilot":
                web.append(d["text"])
    return labelled, web


def throughput(model: edu.EduClassifier, texts: list[str], batch: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            model.predict(texts[i : i + batch])
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(SAMPLE))
    ap.add_argument("--docs", type=int, default=512, help="general-web pages scored by both kinds")
    ap.add_argument("--hashed-repeat", type=int, default=20,
                    help="the hashed kind scores the same pages this many times over (it is too fast to time once)")
    ap.add_argument("--max-tokens", type=int, default=512, help="MiniLM truncation (the goal is stated at 512)")
    ap.add_argument("--max-chars", type=int, default=1000, help="hashed kind: first N characters")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", default=None, help="also write the numbers here (they always go to "
                    "results/benchmarks/classify.json)")
    args = ap.parse_args()

    labelled, web = load(Path(args.input))
    texts = [r["text"] for r in labelled]
    y = np.array([r["label"] for r in labelled])
    train_idx, val_idx = C.stratified_split(edu.int_scores(y), 0.2, args.seed)
    docs = web[: args.docs]
    import torch

    print(f"{len(labelled)} labelled pages ({len(train_idx)} train / {len(val_idx)} held out), "
          f"{len(docs)} pages to score ({sum(map(len, docs)) / len(docs):,.0f} chars on average); "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    cfg = ClassifierConfig(max_tokens=args.max_tokens, max_chars=args.max_chars, batch_size=args.batch_size)
    rows = []
    for kind in ("embedding", "hashed"):
        t0 = time.perf_counter()
        model, _, feat_s = C.train(kind, texts, y, train_idx, cfg, args.seed)
        train_s = time.perf_counter() - t0
        val = classifier_metrics(y[val_idx], model.predict([texts[i] for i in val_idx]), 3)
        pages = docs * (args.hashed_repeat if kind == "hashed" else 1)
        model.predict(docs[: args.batch_size])  # warm-up (model load, caches)
        rate = throughput(model, pages, args.batch_size, args.repeats)
        goal = 200 if kind == "embedding" else 10_000
        setting = f"{model.settings['max_tokens']} tokens" if kind == "embedding" else f"{args.max_chars} chars"
        rows.append({"kind": kind, "setting": setting, "docs_per_s": round(rate, 1), "goal_docs_per_s": goal,
                     "meets_goal": rate >= goal, "f1_at_3": round(val["binary"]["f1"], 4),
                     "precision_at_3": round(val["binary"]["precision"], 4), "recall_at_3": round(val["binary"]["recall"], 4),
                     "mse": round(val["mse"], 4), "macro_f1": round(val["macro_f1"], 4),
                     "f1_keep_everything": round(val["binary"]["f1_keep_everything"], 4),
                     "train_s": round(train_s, 1), "scored_pages": len(pages)})
        print(f"  {kind:9s} {setting:>11s}: {rate:10,.1f} docs/s (goal {goal:,}) | held-out F1@3 {val['binary']['f1']:.3f} "
              f"(P {val['binary']['precision']:.3f} R {val['binary']['recall']:.3f}), MSE {val['mse']:.3f}, "
              f"macro-F1 {val['macro_f1']:.3f} | trained in {train_s:.1f} s", flush=True)
    out = {"rows": rows, "labelled": len(labelled), "held_out": int(len(val_idx)), "scored_docs": len(docs),
           "batch_size": args.batch_size, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average": os.getloadavg()}
    record("classify", out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
