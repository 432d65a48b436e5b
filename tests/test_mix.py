import gzip
import json

import numpy as np
import pytest

from pipelines.cli import run_stages
from pipelines.documents import read_documents
from pipelines.errors import StudyError
from pipelines.manifest import Run
from pipelines.mix import sample_source
from pipelines.shards import read_shard, split_documents
from pipelines.tokenizer import gpt2

from conftest import EVAL_DIR


def test_sample_source_meets_budget_within_one_document():
    lengths = np.random.default_rng(0).integers(50, 3000, size=400)
    for target in (1, 777, 100_000, 2_000_000):
        idx, epochs = sample_source(lengths, target, np.random.default_rng(1), "repeat", "t")
        got = int(lengths[idx].sum())
        assert target <= got < target + lengths[idx[-1]]
        assert epochs == pytest.approx(got / lengths.sum())
    idx, epochs = sample_source(lengths, int(lengths.sum()) * 2 + 5, np.random.default_rng(1), "repeat", "t")
    assert epochs > 2 and len(set(idx.tolist())) == len(lengths)  # every document, repeated
    with pytest.raises(StudyError, match="mix.on_short=repeat"):
        sample_source(lengths, int(lengths.sum()) + 1, np.random.default_rng(1), "fail", "mix 'x', source 'y'")


@pytest.fixture
def planted(tmp_path, ci_config):
    """An ingested ci run plus an external source with planted duplicates and a benchmark leak."""
    cfg = ci_config()
    run_stages(cfg, "r", ["ingest"])
    run = Run(cfg, "r")
    web = list(read_documents(run.dir("ingest") / o["path"] for o in run.read_manifest("ingest")["outputs"]
                              if o["split"] == "train"))
    with gzip.open(EVAL_DIR / "arc_easy_test.jsonl.gz", "rt") as f:
        arc = json.loads(f.readline())
    with gzip.open(cfg.ingest.path, "rt") as f:  # real pages the ci ingest leaves out
        legal = [d for d in map(json.loads, f) if d["source"] == "fineweb_sample10BT_legalpilot"][:5]
    words = web[3]["text"].split()
    words[len(words) // 2] = "CHANGED"
    planted = [
        {"id": "near", "text": " ".join(words)},  # near-duplicate of a web page
        {"id": "exact", "text": web[4]["text"].upper()},  # same text up to case and spacing
        {"id": "leak", "text": "Quiz time! " + arc["question"] + " " + arc["choices"]["text"][0] + " Good luck."},
        *({"id": f"clean{i}", "text": d["text"]} for i, d in enumerate(legal)),
    ]
    path = tmp_path / "planted.jsonl"
    path.write_text("".join(json.dumps({**d, "source": "planted"}) + "\n" for d in planted))
    return cfg, path, web, arc


def _mix(cfg, path, *extra, force=False):
    from pipelines.config import load_config

    overrides = [f"results_dir={cfg.results_dir}", f"ingest.path={cfg.ingest.path}",
                 "mix.sources={web: {stage: ingest}, planted: {path: " + str(path) + "}}",
                 "mix.decontaminate.benchmarks=[arc_easy]", f"mix.decontaminate.eval_dir={EVAL_DIR}", *extra]
    c = load_config("ci", overrides)
    run_stages(c, "r", ["mix"], force=force)
    return c, Run(c, "r")


def test_dedup_and_decontamination_with_planted_documents(planted):
    cfg, path, web, arc = planted
    c, run = _mix(cfg, path, "mix.mixes=[{name: both, tokens: 20000, weights: {web: 0.5, planted: 0.5}}]")
    m = run.read_manifest("mix")
    src = m["sources"]["planted"]
    assert src["documents_in"] == 8
    assert (src["exact_duplicate"], src["near_duplicate"]) == (1, 1)
    assert src["contaminated"] == {"arc_easy": 1}
    assert src["documents_kept"] == 5  # the five clean pages survive
    assert m["sources"]["web"]["near_duplicate"] == 0 and m["sources"]["web"]["exact_duplicate"] == 0
    removed = {r: [json.loads(l) for l in (run.dir("mix") / "removed" / f"{r}.jsonl").read_text().splitlines()]
               for r in ("exact_duplicate", "near_duplicate", "contaminated")}
    assert [r["id"] for r in removed["exact_duplicate"]] == ["exact"]
    assert removed["exact_duplicate"][0]["duplicate_of"]["id"] == web[4]["id"]
    assert [r["id"] for r in removed["near_duplicate"]] == ["near"]
    leak = removed["contaminated"][0]
    assert (leak["id"], leak["benchmark"], leak["item"]) == ("leak", "arc_easy", arc["id"])
    assert leak["ngram"] in arc["question"].lower().replace(",", "").replace("?", "").replace(".", "") or leak["ngram"]
    # the mix holds only surviving documents
    enc = gpt2()
    texts = [enc.decode(d.tolist()) for d in split_documents(read_shard(run.dir("mix") / m["mixes"][0]["shards"][0]["path"]))]
    assert not any("Quiz time!" in t or "CHANGED" in t for t in texts)


def test_mix_budgets_val_and_seeds(planted):
    cfg, path, web, _ = planted
    mixes = ("mix.mixes=[{name: a, tokens: 30000, weights: {web: 1}},"
             " {name: b, tokens: 12000, weights: {web: 0.75, planted: 0.25}}]")
    c, run = _mix(cfg, path, mixes)
    m = run.read_manifest("mix")
    for mx in m["mixes"]:
        longest = max(len(d) + 1 for s in mx["shards"] for d in split_documents(read_shard(run.dir("mix") / s["path"])))
        for name, ps in mx["per_source"].items():
            assert ps["target_tokens"] <= ps["tokens"] < ps["target_tokens"] + longest
        assert sum(s["tokens"] for s in mx["shards"]) == mx["tokens"]
    assert m["mixes"][1]["per_source"]["planted"]["target_tokens"] == 3000
    # one shared validation set: the ingest val pages, in no mix
    enc = gpt2()
    val_texts = [enc.decode(d.tolist()) for d in split_documents(read_shard(run.dir("mix") / "val" / "heldout_val_000000.bin"))]
    ingest_val = [d["text"] for d in read_documents(run.dir("ingest") / o["path"]
                  for o in run.read_manifest("ingest")["outputs"] if o["split"] == "val")]
    assert val_texts == ingest_val
    train_texts = {enc.decode(d.tolist()) for s in m["mixes"][0]["shards"]
                   for d in split_documents(read_shard(run.dir("mix") / s["path"]))}
    assert not train_texts & set(val_texts)
    assert m["inputs"]["ingest"]["sha256"]
    # same seed: the same bytes; another seed: another sample
    first = (run.dir("mix") / "a" / "a_train_000000.bin").read_bytes()
    written = run.manifest_path("mix").stat().st_mtime_ns
    c2, run2 = _mix(cfg, path, mixes, "mix.workers=1", force=True)  # workers change speed only
    assert run2.manifest_path("mix").stat().st_mtime_ns != written  # it really ran again
    assert (run2.dir("mix") / "a" / "a_train_000000.bin").read_bytes() == first
    from pipelines.config import load_config

    c4 = load_config("ci", [f"results_dir={cfg.results_dir}", f"ingest.path={cfg.ingest.path}",
                            "mix.sources={web: {stage: ingest}, planted: {path: " + str(path) + "}}",
                            "mix.decontaminate.benchmarks=[arc_easy]", f"mix.decontaminate.eval_dir={EVAL_DIR}",
                            mixes, "seed=99"])
    run_stages(c4, "s99", ["ingest", "mix"])
    other = (Run(c4, "s99").dir("mix") / "a" / "a_train_000000.bin").read_bytes()
    assert other != first


def test_too_small_source_fails_when_asked(planted):
    cfg, path, _, _ = planted
    with pytest.raises(StudyError, match="source 'planted'.*mix.on_short=repeat"):
        _mix(cfg, path, "mix.on_short=fail", "mix.mixes=[{name: p, tokens: 50000, weights: {planted: 1}}]")


def test_mix_config_is_checked():
    from pipelines.config import load_config

    with pytest.raises(StudyError, match="unknown source"):
        load_config("ci", ["mix.mixes=[{name: x, tokens: 10, weights: {nope: 1}}]"])
    with pytest.raises(StudyError, match="exactly one of stage / path / dataset"):
        load_config("ci", ["mix.sources={web: {stage: ingest, path: x}}"])
