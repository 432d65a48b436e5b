"""The educational classifier: labels, split, features, metrics, train -> save -> load -> identical
predictions for both kinds, and apply (score + filter) through datatrove's local executor."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import classifier as edu
from pipelines.classify import classify as C
from pipelines.classify.metrics import classifier_metrics
from pipelines.cli import build_parser, main
from pipelines.config import ClassifierConfig, FilterConfig, LabelField
from pipelines.data.documents import read_documents
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run
from pipelines.runs.readers import stage_documents

EDU = ["photosynthesis", "chlorophyll", "equation", "fraction", "student", "lesson", "experiment", "molecule",
       "history", "geometry", "energy", "cell", "theorem", "grammar", "planet", "exercise"]
SPAM = ["discount", "buy", "cheap", "casino", "click", "offer", "free", "shipping", "deal", "bonus", "login",
        "subscribe", "coupon", "sale", "winner", "cart"]


def synthetic_corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Pages whose share of lesson words sets the label 0..5 (a learnable signal, no model needed)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 6
        words = [rng.choice(EDU) if rng.random() < label / 5 else rng.choice(SPAM) for _ in range(60)]
        texts.append(" ".join(words) + f". Page {i}.")
        labels.append(float(label))
    return texts, np.array(labels)


# ---------------------------------------------------------------------------------------------
# labels and split


def test_labels_from_metadata_fields_with_maps_and_dotted_paths():
    fields = [LabelField(field="meta.edu_score"), LabelField(field="meta.quality", map={"0": 0, "1": 2})]
    lab = lambda meta: C.label_of({"metadata": meta}, fields)  # noqa: E731
    assert lab({"meta": {"edu_score": "4"}}) == 4.0  # strings, as the shared sample has them
    assert lab({"meta": {"edu_score": 9}}) == 5.0  # clipped
    assert lab({"meta": {"quality": 1}}) == 2.0  # mapped
    assert lab({"meta": {"quality": 1.0}}) == 2.0  # 1.0 is the key "1"
    assert lab({"meta": {"quality": 7}}) is None  # a value the map leaves out
    assert lab({"meta": {"edu_score": 3, "quality": 0}}) == 3.0  # the first field present wins
    assert lab({"meta": {"edu_score": "n/a"}}) is None
    assert lab({"other": 1}) is None and lab({"meta": "flat"}) is None


def test_stratified_split_is_seeded_and_keeps_class_shares():
    classes = np.array([0] * 50 + [1] * 30 + [3] * 10 + [5] * 1)
    t1, v1 = C.stratified_split(classes, 0.2, seed=7)
    t2, v2 = C.stratified_split(classes, 0.2, seed=7)
    t3, v3 = C.stratified_split(classes, 0.2, seed=8)
    assert np.array_equal(v1, v2) and not np.array_equal(v1, v3)
    assert sorted(np.concatenate([t1, v1]).tolist()) == list(range(len(classes)))  # disjoint and complete
    assert [int((classes[v1] == c).sum()) for c in (0, 1, 3, 5)] == [10, 6, 2, 0]  # the lone 5 trains


# ---------------------------------------------------------------------------------------------
# features and metrics


def test_hashed_ngrams_are_deterministic_and_stable():
    a = edu.hashed_ngrams("Hello, World! hello world", bits=20, ngrams=2, max_chars=1000)
    b = edu.hashed_ngrams("hello world HELLO WORLD", bits=20, ngrams=2, max_chars=1000)
    assert np.array_equal(a, b)  # lower-cased words, punctuation ignored
    assert len(a) == 4 + 3 and a.min() >= 0 and a.max() < 2**20
    assert a[0] == a[2] and a[4] == a[6]  # repeated unigram / bigram -> same bucket
    # fixed values: a saved hashed model is only valid while these never change
    assert a[:2].tolist() == edu.hashed_ngrams("hello world", 20, 1, 100).tolist()
    word = sum(b * pow(0x100000001B3, j, 2**64) for j, b in enumerate(b"hello")) % 2**64  # polynomial hash
    assert edu.hashed_ngrams("hello", 20, 1, 100).tolist() == [((word + 0x632BE5AB) * 0x9E3779B97F4A7C15 % 2**64) >> 44]
    big = edu.hashed_ngrams("café au lait", 20, 2, 100)
    assert len(big) == 3 + 2  # "café" is one word (non-ASCII bytes are word bytes)
    assert edu.hashed_ngrams("hello world", 20, 2, 5).size == 1  # only the first 5 characters


def test_metrics_on_a_known_case():
    y = np.array([0, 1, 2, 3, 4, 5, 3, 4], dtype=float)
    p = np.array([0.2, 1.4, 2.6, 2.4, 4.1, 4.6, 3.5, 1.0])  # rounded: 0 1 3 2 4 5 4 1
    m = classifier_metrics(y, p, threshold=3)
    assert m["n"] == 8
    assert m["mse"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["accuracy"] == pytest.approx(4 / 8)
    cm = np.array(m["confusion_matrix"]["matrix"])
    assert cm.sum() == 8 and cm[2, 3] == 1 and cm[3, 2] == 1 and cm[4, 1] == 1 and cm[3, 4] == 1
    b = m["binary"]  # true >= 3: idx 3,4,5,6,7; predicted >= 3: idx 2,4,5,6
    assert (b["precision"], b["recall"]) == (pytest.approx(3 / 4), pytest.approx(3 / 5))
    assert b["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert m["per_class"]["0"]["f1"] == 1.0 and m["per_class"]["1"]["recall"] == 1.0
    assert b["f1_keep_everything"] == pytest.approx(2 * (5 / 8) / (1 + 5 / 8))


# ---------------------------------------------------------------------------------------------
# train -> save -> load -> identical predictions


def _no_pickle(directory: Path) -> None:
    meta = json.loads((directory / "model.json").read_text())
    assert meta["format"] == edu.FORMAT
    with np.load(directory / "weights.npz", allow_pickle=False) as w:  # would raise on object arrays
        assert all(w[k].dtype != object for k in w.files)
    assert not [p for p in directory.iterdir() if p.suffix in (".pkl", ".pickle", ".joblib")]


def test_hashed_train_save_load_identical(tmp_path):
    texts, y = synthetic_corpus(240)
    cfg = ClassifierConfig(kinds=["hashed"], hash_bits=16)
    train_idx, val_idx = C.stratified_split(edu.int_scores(y), 0.25, seed=1)
    model, X, _ = C.train("hashed", texts, y, train_idx, cfg, seed=1)
    pred = model.predict([texts[i] for i in val_idx])
    assert classifier_metrics(y[val_idx], pred)["binary"]["f1"] > 0.8  # it learned the signal
    model.save(tmp_path / "m")
    _no_pickle(tmp_path / "m")
    loaded = edu.load_classifier(tmp_path / "m")
    assert loaded.kind == "hashed" and loaded.settings == {"hash_bits": 16, "ngrams": 2, "max_chars": 1000}
    assert np.array_equal(loaded.coef, model.coef) and np.array_equal(loaded.idf, model.idf)
    assert np.array_equal(loaded.predict([texts[i] for i in val_idx]), pred)  # bit for bit
    assert np.array_equal(model.predict_features(X)[val_idx], pred)  # batch composition does not matter


def test_embedding_train_save_load_identical(tmp_path):
    texts, y = synthetic_corpus(48)
    cfg = ClassifierConfig(kinds=["embedding"], max_tokens=32, batch_size=16, threads=1)
    train_idx, val_idx = C.stratified_split(edu.int_scores(y), 0.25, seed=1)
    model, X, _ = C.train("embedding", texts, y, train_idx, cfg, seed=1)
    assert X.shape == (48, 384)  # all-MiniLM-L6-v2 from the bundled package, offline
    model.save(tmp_path / "e")
    _no_pickle(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "model.json").read_text())
    assert meta["settings"] == {"embedder": "all-MiniLM-L6-v2", "max_tokens": 32}
    loaded = edu.load_classifier(tmp_path / "e")
    assert np.array_equal(loaded.coef, model.coef) and loaded.intercept == model.intercept
    val = [texts[i] for i in val_idx]
    p1, p2 = model.predict(val), loaded.predict(val)  # a fresh embedder, loaded from the saved name
    np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-6)
    assert np.array_equal(edu.int_scores(p2), edu.int_scores(p1))
    assert np.corrcoef(p1, y[val_idx])[0, 1] > 0.5  # the score follows the label


def test_unknown_embedder_fails_with_what_to_do():
    with pytest.raises(StudyError, match="all-MiniLM-L6-v2"):
        edu.Embedder("/nonexistent/dir/for/an/embedder-model")


# ---------------------------------------------------------------------------------------------
# the stages: classify, then filter through datatrove's LocalPipelineExecutor


@pytest.fixture
def labels_file(tmp_path) -> Path:
    """Synthetic labelled pages in the ingest record (a 0-5 score in meta.edu_score)."""
    texts, y = synthetic_corpus(180, seed=3)
    path = tmp_path / "labelled.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i, (t, s) in enumerate(zip(texts, y)):
            f.write(json.dumps({"id": f"lab-{i}", "text": t, "source": "labelled", "meta": {"edu_score": str(int(s))}}) + "\n")
    return path


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    """Pages to filter, half lesson-like and half spam-like."""
    texts, y = synthetic_corpus(90, seed=11)
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i, (t, s) in enumerate(zip(texts, y)):
            f.write(json.dumps({"id": f"page-{i}", "text": t, "source": "web", "truth": s}) + "\n")
    return path


def test_classify_then_filter_keeps_int_score_at_threshold(ci_config, labels_file, corpus_file):
    cfg = ci_config(f"ingest.path={corpus_file}", "ingest.max_documents=90", "ingest.val_fraction=0.1",
                    "ingest.exclude_sources=[]", "ingest.shard_documents=30",
                    f"classifier.label_source={{path: {labels_file}}}",
                    "classifier.label_fields=[{field: meta.edu_score}]", "classifier.hash_bits=16")
    run = Run(cfg, "filt")
    run.execute("ingest")
    m = run.execute("classify")
    assert m["counts"] == {"documents": 180, "train": 144, "validation": 36}
    v = m["metrics"]["hashed"]["validation"]
    assert set(v) >= {"mse", "accuracy", "macro_f1", "per_class", "confusion_matrix", "binary"}
    assert v["binary"]["f1"] > 0.8
    fig = json.loads((run.dir("classify") / "metrics.json").read_text())
    assert fig["kinds"]["hashed"]["confusion_matrix"]["matrix"] == v["confusion_matrix"]["matrix"]
    _no_pickle(run.dir("classify") / "hashed")

    f = run.execute("filter")  # `study classifier apply`
    train_in = [d for d in stage_documents(run, "ingest", "train")]
    kept = list(stage_documents(run, "filter"))  # what a mix reads as {stage: filter}
    removed = list(read_documents(sorted((run.dir("filter") / "removed").glob("*.jsonl.gz"))))
    assert len(kept) + len(removed) == len(train_in) == f["counts"]["scored"]
    assert sorted(d["id"] for d in kept + removed) == sorted(d["id"] for d in train_in)  # none lost, none twice
    assert kept and removed
    assert all(d["metadata"]["int_score"] >= 3 for d in kept)
    assert all(d["metadata"]["int_score"] < 3 and d["metadata"]["dropped_reason"] == "edu_score_below_3"
               for d in removed)
    for d in kept + removed:  # the study record, metadata carried through, score written
        assert set(d) == {"id", "text", "source", "metadata"} and d["source"] == "web"
        assert "truth" in d["metadata"] and d["metadata"]["int_score"] == int(edu.int_scores([d["metadata"]["score"]])[0])
        assert "filter_reason" not in d["metadata"] and "file_path" not in d["metadata"]
    assert np.mean([d["metadata"]["truth"] >= 3 for d in kept]) > 0.8  # it kept the lesson-like pages
    h = f["histograms"]
    assert h["before"]["documents"] == len(train_in) and h["after"]["documents"] == len(kept)
    assert sum(h["before"]["score_bins"]["counts"]) == len(train_in)
    assert [h["after"]["int_score"][str(k)] for k in range(3)] == [0, 0, 0]
    assert f["throughput"]["tasks"] == 3  # one datatrove task per ingest shard
    assert len(list((run.dir("filter") / "logs" / "completions").iterdir())) == 3
    assert all(o["split"] == "train" for o in f["outputs"])

    # resume: a task killed mid-write (no completion marker, no stats, a torn output) is redone, the rest skipped
    d = run.dir("filter")
    (d / "logs" / "completions" / "00001").unlink()
    (d / "stats" / "hist_00001.json").unlink()
    torn = d / "kept" / "edu_00001.jsonl.gz"
    torn.write_bytes(torn.read_bytes()[:20])
    done_before = (d / "stats" / "hist_00000.json").stat().st_mtime_ns
    again = run.execute("filter", force=True)
    assert again["counts"] == f["counts"] and again["outputs"] == f["outputs"]
    assert (d / "stats" / "hist_00000.json").stat().st_mtime_ns == done_before  # task 0 was not redone
    assert sorted(x["id"] for x in stage_documents(run, "filter")) == sorted(x["id"] for x in kept)

    # a lower threshold keeps more, and the stage reruns because its config changed
    run1 = Run(ci_config(*[f"ingest.path={corpus_file}", "ingest.max_documents=90", "ingest.val_fraction=0.1",
                           "ingest.exclude_sources=[]", "ingest.shard_documents=30",
                           f"classifier.label_source={{path: {labels_file}}}",
                           "classifier.label_fields=[{field: meta.edu_score}]", "classifier.hash_bits=16",
                           "filter.threshold=1"]), "filt")
    assert run1.state("filter").status == "stale"
    f1 = run1.execute("filter")
    kept1 = list(stage_documents(run1, "filter"))
    assert len(kept1) > len(kept) and all(d["metadata"]["int_score"] >= 1 for d in kept1)
    assert f1["counts"]["scored"] == len(train_in)


def test_filter_reads_raw_pages_from_input_path(ci_config, labels_file, corpus_file, tmp_path):
    """input_path: pages that are not a stage's output (FineWeb parquet/JSONL, local or hf://)."""
    cfg = ci_config(f"classifier.label_source={{path: {labels_file}}}", "classifier.label_fields=[{field: meta.edu_score}]",
                    "classifier.hash_bits=16", f"filter.input_path={corpus_file}", "filter.input_source=fineweb")
    run = Run(cfg, "raw")
    run.execute("classify")
    assert run.inputs("filter") == ("classify",)  # no ingest needed
    f = run.execute("filter")
    docs = list(stage_documents(run, "filter")) + list(read_documents(sorted((run.dir("filter") / "removed").glob("*.gz"))))
    assert len(docs) == 90 == f["counts"]["scored"]
    assert {d["source"] for d in docs} == {"web"}  # the page's own source wins over input_source
    assert all("truth" in d["metadata"] and "score" in d["metadata"] for d in docs)


def test_executor_switch_builds_slurm_and_explains_missing_pieces(tmp_path):
    from pipelines.data.executors import make_executor

    with pytest.raises(StudyError, match="filter.slurm.partition"):
        make_executor("slurm", [], 2, tmp_path / "logs", "x", "filter.executor")
    s = FilterConfig(executor="slurm", slurm={"partition": "cpu", "cpus_per_task": 3})
    ex = make_executor("slurm", [], 2, tmp_path / "logs", "edu", "filter.executor", slurm=s.slurm, gpus_per_task=0)
    assert type(ex).__name__ == "SlurmPipelineExecutor" and ex.tasks == 2 and ex.cpus_per_task == 3
    gpu = make_executor("slurm", [], 8, tmp_path / "g", "gen", "generate.executor", slurm=s.slurm, gpus_per_task=4,
                        nodes_per_task=2)
    assert (gpu.gpus_per_task, gpu.nodes_per_task) == (4, 2)
    local = make_executor("local", [], 4, tmp_path / "l", "x", "filter.executor")
    assert type(local).__name__ == "LocalPipelineExecutor" and local.workers == 1
    if importlib.util.find_spec("ray") is None:  # without Ray: a clear error naming the install
        with pytest.raises(StudyError, match="pip install"):
            make_executor("ray", [], 2, tmp_path / "r", "x", "filter.executor")


def test_cli_classifier_train_and_apply_are_the_stages(ci_config, capsys):
    args = build_parser().parse_args(["classifier", "apply", "--preset", "ci", "--run", "x"])
    assert (args.command, args.action) == ("classifier", "apply")
    cfg = ci_config()
    rc = main(["classifier", "apply", "--preset", "ci", "--run", "nothing-here", "--set",
               f"results_dir={cfg.results_dir}", "--set", f"ingest.path={cfg.ingest.path}"])
    assert rc == 2
    assert "study classifier train" in capsys.readouterr().err  # filter needs classify: says how to make it


def test_reference_agreement_by_hand():
    from pipelines.annotate.prompt import reference_agreement

    up = reference_agreement([(1, 0.5), (2, 1.0), (3, 2.5), (4, 4.0)], "meta.edu_score", seed=0)
    assert up["pages"] == 4 and up["spearman"] == 1.0 and up["ci95"] == [1.0, 1.0]
    # ranks (1, 2, 3, 4) vs (2, 1, 4, 3): d^2 = 4, rho = 1 - 6*4 / (4*15) = 0.6
    assert reference_agreement([(1, 2), (2, 1), (3, 4), (4, 3)], "f", seed=0)["spearman"] == 0.6
    flat = reference_agreement([(1, 3), (1, 2), (1, 1)], "f", seed=0)  # a constant side: no correlation
    assert flat["spearman"] is None and flat["ci95"] is None


@pytest.mark.parametrize("reference, used, why", [
    (None, "fallback", "measured no agreement"),
    ({"field": "meta.edu_score", "pages": 12, "spearman": 0.9, "ci95": [0.6, 1.0]}, "fallback", "only 12 annotated"),
    ({"field": "meta.edu_score", "pages": 150, "spearman": -0.05, "ci95": [-0.2, 0.1]}, "fallback", "below 0.3"),
    ({"field": "meta.edu_score", "pages": 40, "spearman": 0.35, "ci95": [-0.01, 0.6]}, "fallback", "reaches 0"),
    ({"field": "meta.edu_score", "pages": 150, "spearman": 0.62, "ci95": [0.5, 0.72]}, "annotate", "Spearman 0.62"),
])
def test_the_classifier_trains_on_its_own_annotations_only_if_they_carry_signal(ci_config, reference, used, why):
    fallback = ("classifier.fallback={source: {path: embedded}, fields: [{field: meta.edu_score}], min_pages: 30, "
                "min_spearman: 0.3}")
    cfg = ci_config("classifier.label_source={stage: annotate, path: null}",
                    "classifier.label_fields=[{field: annotation.score}]", fallback)
    run = Run(cfg, "choice")
    counts = {"pages": 16} | ({"reference": reference} if reference else {})
    run.dir("annotate").mkdir(parents=True)
    (run.dir("annotate") / "manifest.json").write_text(json.dumps({"stage": "annotate", "counts": counts}))
    src, fields, choice = C.choose_labels(run, cfg.classifier)
    assert choice["used"] == used and why in choice["why"]
    if used == "fallback":
        assert (src.path, [f.field for f in fields]) == ("embedded", ["meta.edu_score"])
    else:
        assert (src.stage, [f.field for f in fields]) == ("annotate", ["annotation.score"])


def test_a_fallback_needs_the_annotate_stage_as_label_source():
    with pytest.raises(Exception, match="needs label_source"):
        ClassifierConfig(label_source={"path": "x"}, fallback={"source": {"path": "embedded"},
                                                                "fields": [{"field": "meta.edu_score"}]})
