import gzip
import json
from collections import Counter

import numpy as np
import pytest
from conftest import EVAL_DIR

from pipelines.data.documents import read_documents
from pipelines.errors import StudyError
from pipelines.llmc.shards import read_shard, split_documents
from pipelines.llmc.tokenizer import gpt2
from pipelines.mix.inmemory import sample_source
from pipelines.runs.manifest import Run
from pipelines.runs.runner import run_stages


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
    outputs = run.read_manifest("ingest")["outputs"]
    web = list(read_documents(run.dir("ingest") / o["path"] for o in outputs if o["split"] == "train"))
    ingested = {d["id"] for d in read_documents(run.dir("ingest") / o["path"] for o in outputs)}
    with gzip.open(EVAL_DIR / "arc_easy_test.jsonl.gz", "rt") as f:
        arc = json.loads(f.readline())
    with gzip.open(cfg.ingest.path, "rt") as f:  # real pages the ci ingest leaves out
        legal = [d for d in map(json.loads, f) if d["id"] not in ingested and len(d["text"]) > 1000][:5]
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


def _mix_as(cfg, path, run, *extra):
    """The planted mix in another run (ingest linked from `r` when share_with names it, else run again)."""
    from pipelines.config import load_config

    c = load_config("ci", [f"results_dir={cfg.results_dir}", f"ingest.path={cfg.ingest.path}",
                           "mix.sources={web: {stage: ingest}, planted: {path: " + str(path) + "}}",
                           "mix.decontaminate.benchmarks=[arc_easy]", f"mix.decontaminate.eval_dir={EVAL_DIR}",
                           *extra])
    run_stages(c, run, ["ingest", "mix"])
    return Run(c, run)


def _shards(run) -> dict[str, bytes]:
    d = run.dir("mix")
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.glob("*/*.bin"))}


def test_a_shared_prepared_union_gives_the_same_shards_and_a_changed_setting_is_not_reused(planted):
    cfg, path, _, _ = planted
    both = "mix.mixes=[{name: m, tokens: 15000, weights: {web: 0.5, planted: 0.5}}]"
    other = "mix.mixes=[{name: m, tokens: 12000, weights: {web: 0.8, planted: 0.2}}]"
    donor = _mix_as(cfg, path, "r", both, "mix.keep_prepared=true")
    assert donor.read_manifest("mix")["prepared"]["from_run"] is None
    assert len(list((donor.dir("mix") / "prepared").glob("*/prepared.json"))) == 1
    # another weight vector and budget, sharing with the donor: dedup, decontamination, tokens reused
    proxy = _mix_as(cfg, path, "p", other, "share_with=[r]")
    mp = proxy.read_manifest("mix")
    assert mp["prepared"] == {**donor.read_manifest("mix")["prepared"], "from_run": "r"}
    assert not (proxy.dir("mix") / "minhash").exists()  # no near-dedup pass ran here
    assert not (proxy.dir("mix") / "prepared").exists()  # keep_prepared is off: nothing kept
    # ... and its output equals a from-scratch mix with the same weights, byte for byte
    fresh = _mix_as(cfg, path, "fresh", other)
    mf = fresh.read_manifest("mix")
    assert mf["prepared"]["from_run"] is None and (fresh.dir("mix") / "minhash").exists()
    assert _shards(proxy) == _shards(fresh) and len(_shards(proxy)) == 2  # the mix and the val shard
    for k in ("mixes", "sources", "decontamination", "val", "counts"):
        assert mp[k] == mf[k], k
    for reason in ("exact_duplicate", "near_duplicate", "contaminated"):
        f = f"removed/{reason}.jsonl"
        assert (proxy.dir("mix") / f).read_text() == (fresh.dir("mix") / f).read_text() != ""
    # a changed dedup setting or another set of sources: another key, computed again
    changed = _mix_as(cfg, path, "q", other, "share_with=[r]", "mix.dedup.ngrams=4")
    assert changed.read_manifest("mix")["prepared"]["from_run"] is None
    assert changed.read_manifest("mix")["prepared"]["key"] != mp["prepared"]["key"]
    web_only = _mix_as(cfg, path, "w", "mix.mixes=[{name: m, tokens: 9000, weights: {web: 1}}]", "share_with=[r]")
    assert web_only.read_manifest("mix")["prepared"]["from_run"] is None


def test_a_benchmark_file_edited_in_place_changes_the_prepared_key(tmp_path):
    """Decontamination reads the benchmark files: their bytes are part of the prepared union's key."""
    import shutil

    from pipelines.config import load_config
    from pipelines.mix import prepared

    evals = tmp_path / "eval"
    shutil.copytree(EVAL_DIR, evals)
    cfg = load_config("ci", [f"mix.decontaminate.eval_dir={evals}", "mix.decontaminate.benchmarks=[arc_easy]"]).mix
    before = prepared.key(cfg, ["d"], {"d": "text"}, {"web": ["d"]})
    f = evals / "arc_easy_test.jsonl.gz"
    lines = gzip.open(f, "rt").read().splitlines()
    lines[0] = lines[0].replace('"question": "', '"question": "Edited: ', 1)
    with gzip.open(f, "wt") as out:
        out.write("\n".join(lines) + "\n")
    assert prepared.benchmark_files(cfg)["arc_easy"] != "hub"
    assert prepared.key(cfg, ["d"], {"d": "text"}, {"web": ["d"]}) != before


def test_mix_config_is_checked():
    from pipelines.config import load_config

    with pytest.raises(StudyError, match="unknown source"):
        load_config("ci", ["mix.mixes=[{name: x, tokens: 10, weights: {nope: 1}}]"])
    with pytest.raises(StudyError, match="exactly one of stage / path / dataset"):
        load_config("ci", ["mix.sources={web: {stage: ingest, path: x}}"])


# ---------------------------------------------------------------------------------------------
# streaming mixes (mix.streaming: true, pipelines/mix/streaming.py)


def _write_jsonl_gz(path, docs):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": d["id"], "text": d["text"], "source": d["source"]}) + "\n" for d in docs)
    return path


@pytest.fixture
def streams(tmp_path, ci_config):
    """An ingested ci run and local sources cut from its pages: `a` and `b` start with half of ingest's
    val pages each (the mix must skip them), then train pages; planted: in `a` an exact copy (case,
    spacing) of one of its earlier pages, in `b` a val page's text under another id and an ARC question;
    `c` is small (six pages: it runs out)."""
    cfg = ci_config()
    run_stages(cfg, "r", ["ingest"])
    run = Run(cfg, "r")
    split = {s: list(read_documents(run.dir("ingest") / o["path"] for o in run.read_manifest("ingest")["outputs"]
                                    if o["split"] == s)) for s in ("val", "train")}
    val, train = split["val"], split["train"]
    with gzip.open(EVAL_DIR / "arc_easy_test.jsonl.gz", "rt") as f:
        arc = json.loads(f.readline())
    a = [*val[0::2], *train[0:100]]
    a.insert(len(val[0::2]) + 10, {"id": "exact", "source": "planted", "text": "  " + train[3]["text"].upper()})
    b = [*val[1::2], *train[100:200]]
    b.insert(5, {"id": "val-copy", "source": "planted", "text": val[0]["text"]})
    b.insert(8, {"id": "leak", "source": "planted",
                 "text": "Quiz time! " + arc["question"] + " " + arc["choices"]["text"][0] + " Good luck."})
    paths = {n: _write_jsonl_gz(tmp_path / f"{n}.jsonl.gz", docs)
             for n, docs in (("a", a), ("b", b), ("c", train[200:206]))}
    return cfg, paths, val, arc


def _smix(cfg, paths, mixes, *extra, run="r", force=False):
    from pipelines.config import load_config

    sources = ", ".join(f"{n}: {{path: {p}}}" for n, p in paths.items())
    c = load_config("ci", [f"results_dir={cfg.results_dir}", f"ingest.path={cfg.ingest.path}",
                           "mix.sources={" + sources + "}", f"mix.mixes={mixes}", "mix.streaming=true",
                           "mix.shard_tokens=4096", "mix.shuffle_buffer=20", "mix.decontaminate.benchmarks=[arc_easy]",
                           f"mix.decontaminate.eval_dir={EVAL_DIR}", *extra])
    run_stages(c, run, ["ingest", "mix"], force=force)
    return Run(c, run)


def _shard_texts(run, mix):
    enc = gpt2()
    return [[enc.decode(d.tolist()) for d in split_documents(read_shard(run.dir("mix") / s["path"]))]
            for s in mix["shards"]]


def _mix_files(run):
    """Every shard and removal log of a mix stage: relative path -> bytes."""
    d = run.dir("mix")
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and (p.suffix == ".bin" or p.parent.name == "removed")}


def test_streaming_mix_budgets_dedup_decontamination_and_val(streams):
    from pipelines.mix.dedup import exact_key
    from pipelines.runs.readers import composition_table, removals_table

    cfg, paths, val, arc = streams
    run = _smix(cfg, paths, "[{name: ab, tokens: 60000, weights: {a: 1, b: 1}}]", "mix.workers=1")
    m = run.read_manifest("mix")
    mx = m["mixes"][0]
    shards = _shard_texts(run, mx)
    for s in mx["shards"]:  # valid llm.c shards of whole documents, none over shard_tokens but a lone long one
        assert (s["tokens"] <= 4096 or s["documents"] == 1) and len(read_shard(run.dir("mix") / s["path"])) == s["tokens"]
    assert sum(s["tokens"] for s in mx["shards"]) == mx["tokens"]
    assert sum(s["documents"] for s in mx["shards"]) == mx["documents"] == sum(len(t) for t in shards)
    # tokens per source: as the manifest says, each within one document of its target
    of = {}
    for n, p in paths.items():
        of.update({d["text"]: n for d in read_documents([p])})
    enc = gpt2()
    texts = [t for ts in shards for t in ts]
    for n in ("a", "b"):
        ps = mx["per_source"][n]
        mine = [t for t in texts if of[t] == n]
        assert sum(len(enc.encode_ordinary(t)) + 1 for t in mine) == ps["tokens"]
        assert len(mine) == ps["documents"] == ps["unique_documents"]
        longest = max(len(enc.encode_ordinary(t)) + 1 for t in mine)
        assert ps["target_tokens"] == 30000 and 30000 <= ps["tokens"] < 30000 + longest
        assert ps["available_tokens"] is None and ps["epochs"] is None  # neither stream was read to its end
    assert {of[t] for t in texts[:10]} == {"a", "b"}  # interleaved and shuffled
    assert len({exact_key(t) for t in texts}) == len(texts)  # no document twice
    assert not {t for t in texts} & {d["text"] for d in val}  # val pages never train
    # the shared validation shards: ingest's val pages
    val_shards = [o["path"] for o in m["outputs"] if o["split"] == "val"]
    assert val_shards == [f"val/heldout_val_{i:06d}.bin" for i in range(len(val_shards))]
    val_texts = [enc.decode(d.tolist()) for p in val_shards for d in split_documents(read_shard(run.dir("mix") / p))]
    assert val_texts == [d["text"] for d in val] and m["val"]["documents"] == len(val)
    # removals: counted per source, logged with what they matched
    assert m["sources"]["a"]["exact_duplicate"] == 1 and m["sources"]["b"]["exact_duplicate"] == 1
    assert m["sources"]["b"]["contaminated"] == {"arc_easy": 1} and m["sources"]["a"]["contaminated"] == {}
    assert m["near_dedup"] == "skipped (streaming)" and m["sources"]["a"]["near_duplicate"] is None
    removed = {r: [json.loads(l) for l in (run.dir("mix") / "removed" / f"{r}.jsonl").read_text().splitlines()]
               for r in ("exact_duplicate", "contaminated")}
    dups = {r["id"]: r for r in removed["exact_duplicate"]}
    assert set(dups) == {"exact", "val-copy"}
    assert (dups["exact"]["duplicate_in"], dups["val-copy"]["duplicate_in"], dups["val-copy"]["of_val"]) == ("a", "val", True)
    leak = removed["contaminated"][0]
    assert (leak["id"], leak["benchmark"], leak["item"], leak["mix"]) == ("leak", "arc_easy", arc["id"], "ab")
    assert m["counts"]["removed"] == {"exact_duplicate": 2, "contaminated": 1}
    assert not any("Quiz time!" in t for t in texts)
    src = m["sources"]["a"]
    assert src["documents_kept"] == mx["per_source"]["a"]["documents"]
    assert src["documents_in"] == src["documents_kept"] + 1  # read = kept + the exact copy (val pages not counted)
    # the notebooks' tables cope with what a stream does not know
    comp = composition_table(m)
    assert list(comp["tokens"]) == [mx["per_source"]["a"]["tokens"], mx["per_source"]["b"]["tokens"]]
    rem = removals_table(m)
    assert list(rem["near_duplicate"]) == [0, 0] and list(rem["contaminated_arc_easy"]) == [0, 1]


def test_streaming_mix_resumes_to_the_same_bytes(streams, monkeypatch, capsys):
    import pipelines.llmc.shards as shards_module

    cfg, paths, _, _ = streams
    mixes = "[{name: ac, tokens: 40000, weights: {a: 3, c: 1}}]"  # c (6 pages) repeats: buffered pages of older passes
    whole = _smix(cfg, paths, mixes, "mix.workers=1", run="whole")
    real = shards_module.write_shard
    progress = Run(cfg, "cut").dir("mix") / "progress" / "ac" / "progress.json"
    for stop, resumed in ((3, None), (8, 2)):  # killed after writing a shard, before its checkpoint
        calls = []

        def dying(path, tokens, stop=stop, calls=calls):
            real(path, tokens)
            calls.append("_train_" in path.name)
            if sum(calls) == stop:
                raise RuntimeError("killed")

        monkeypatch.setattr(shards_module, "write_shard", dying)
        with pytest.raises(RuntimeError, match="killed"):
            _smix(cfg, paths, mixes, "mix.workers=2", run="cut")
        out = capsys.readouterr().out
        assert (f"ac: resuming after {resumed} shard(s)" in out) if resumed else "resuming" not in out
        assert len(json.loads(progress.read_text())["shards"]) == stop - 1 + (resumed or 0)
    # the second kill came while draining the buffer: every source had reached its target
    assert all(s["tokens"] >= s["target"] for s in json.loads(progress.read_text())["sources"])
    monkeypatch.setattr(shards_module, "write_shard", real)
    cut = _smix(cfg, paths, mixes, "mix.workers=2", run="cut")
    assert "ac: resuming after 9 shard(s)" in capsys.readouterr().out
    assert _mix_files(cut) == _mix_files(whole)
    m, w = cut.read_manifest("mix"), whole.read_manifest("mix")
    assert m["mixes"] == w["mixes"] and m["sources"] == w["sources"] and m["counts"] == w["counts"]
    assert len(m["mixes"][0]["shards"]) > 8 and m["mixes"][0]["per_source"]["c"]["epochs"] > 1


def test_streaming_mix_keeps_finished_mixes_and_restarts_changed_ones(streams, capsys):
    cfg, paths, _, _ = streams
    one = "{name: one, tokens: 9000, weights: {a: 1}}"
    run = _smix(cfg, paths, f"[{one}, {{name: two, tokens: 9000, weights: {{b: 1}}}}]")
    d = run.dir("mix")
    stamp = {p: p.stat().st_mtime_ns for p in (d / "one").glob("*.bin")}
    capsys.readouterr()
    run = _smix(cfg, paths, f"[{one}, {{name: two, tokens: 12000, weights: {{b: 1}}}}]")
    out = capsys.readouterr().out
    assert "one: done in an earlier run" in out and "two: config or inputs changed" in out
    assert {p: p.stat().st_mtime_ns for p in (d / "one").glob("*.bin")} == stamp  # not rewritten
    m = run.read_manifest("mix")
    assert [x["tokens"] >= x["budget_tokens"] for x in m["mixes"]] == [True, True]
    assert m["mixes"][1]["budget_tokens"] == 12000
    assert sorted(p.name for p in (d / "two").iterdir()) == [s["path"].split("/")[1] for s in m["mixes"][1]["shards"]]


def test_streaming_mix_short_source_fails_or_repeats(streams):
    cfg, paths, _, _ = streams
    with pytest.raises(StudyError, match="source 'c': needs 20,000 tokens but the source has .*mix.on_short=repeat"):
        _smix(cfg, paths, "[{name: c, tokens: 20000, weights: {c: 1}}]", "mix.on_short=fail")
    run = _smix(cfg, paths, "[{name: c, tokens: 20000, weights: {c: 1}}]", "mix.on_short=repeat", run="rep")
    m = run.read_manifest("mix")
    ps = m["mixes"][0]["per_source"]["c"]
    assert ps["available_documents"] == ps["unique_documents"] == 6 and ps["documents"] > 6
    assert ps["epochs"] == pytest.approx(ps["tokens"] / ps["available_tokens"], abs=1e-4) and ps["epochs"] > 2
    assert m["sources"]["c"]["documents_in"] == 6  # counted over the first pass
    copies = Counter(t for ts in _shard_texts(run, m["mixes"][0]) for t in ts)
    assert len(copies) == 6 and sum(copies.values()) == ps["documents"]
    assert max(copies.values()) - min(copies.values()) <= 1  # each pass: every page once, in stream order


def test_hash_set_matches_a_python_set():
    from pipelines.mix.streaming import HashSet

    xs = np.random.default_rng(0).integers(2, 2**63, size=5000).tolist()
    inside, outside = set(xs[::2]) | {0, 2**64 - 1}, set(xs[1::2]) - set(xs[::2])  # 0 is stored as 1
    hs = HashSet(capacity=8)
    for x in [*inside, *inside]:
        hs.add(x)
    assert len(hs) == len(inside)
    assert all(x in hs for x in inside) and not any(x in hs for x in outside)


def test_streaming_mix_reads_a_hub_dataset_as_a_stream(streams, monkeypatch):
    from pipelines.config import load_config
    from pipelines.data import pages as page_sources

    cfg, paths, _, _ = streams
    pages = [d for d in read_documents([paths["b"]]) if d["source"] != "planted"]
    pulled = []

    def hub_records(icfg, seed):  # the hub, offline: a long stream of which the mix reads only what it needs
        assert icfg.dataset == "org/web" and icfg.split == "train"
        for i in range(100_000):
            pulled.append(i)
            d = pages[i % len(pages)]
            yield {"id": f"{d['id']}#{i}", "text": f"Copy {i}. " + d["text"]}

    monkeypatch.setattr(page_sources, "hub_records", hub_records)
    c = load_config("ci", [f"results_dir={cfg.results_dir}", f"ingest.path={cfg.ingest.path}",
                           "mix.sources={hub: {dataset: org/web}}", "mix.mixes=[{name: h, tokens: 20000, weights: {hub: 1}}]",
                           "mix.streaming=true", "mix.shard_tokens=4096", "mix.workers=1",
                           "mix.decontaminate.benchmarks=[arc_easy]", f"mix.decontaminate.eval_dir={EVAL_DIR}"])
    run_stages(c, "r", ["mix"])
    m = Run(c, "r").read_manifest("mix")
    docs = m["mixes"][0]["documents"]
    assert m["mixes"][0]["tokens"] >= 20000 and docs < len(pulled) <= docs + 2 * 64  # read ahead by a batch or two
    assert m["sources"]["hub"]["dataset"] == "org/web" and m["sources"]["hub"]["documents_in"] == docs
