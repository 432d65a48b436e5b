import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipelines.config import load_config
from pipelines.data.documents import read_documents
from pipelines.data.pages import in_val
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run
from pipelines.runs.runner import run_stages


def _docs(run, split=None):
    m = run.read_manifest("ingest")
    paths = [run.dir("ingest") / o["path"] for o in m["outputs"] if split in (None, o["split"])]
    return list(read_documents(paths))


def _ingest(tmp_path, path, *overrides):
    cfg = load_config("ci", [f"results_dir={tmp_path / 'results'}", f"ingest.path={path}",
                             "ingest.exclude_sources=[]", "ingest.sample=first", "ingest.max_documents=null",
                             "ingest.max_chars=null", *overrides])
    run_stages(cfg, "r", ["ingest"])
    return Run(cfg, "r")


def test_broken_lines_are_counted_and_kept_in_removed(tmp_path):
    good = {"id": "g1", "text": "A real page about rivers.", "url": "http://x", "dump": "CC-MAIN-2024-10",
            "score": 3.2, "int_score": 3}
    lines = [
        json.dumps(good).encode(),
        b'{"id": "broken", "text": "no closing brace"',
        b"[1, 2, 3]",
        json.dumps({"id": "m", "body": "no text field"}).encode(),
        json.dumps({"id": "n", "text": None}).encode(),
        json.dumps({"id": "e", "text": "   \n "}).encode(),
        b'{"id": "u", "text": "caf\xe9 latin-1 bytes"}',
        b'{"id": "s", "text": "lone surrogate \\ud800 here"}',
        json.dumps({"id": "g1", "text": "same id again"}).encode(),
        b"",
        json.dumps({"text": "no id, still fine", "source": "mysrc"}).encode(),
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run = _ingest(tmp_path, path, "ingest.val_fraction=0")
    m = run.read_manifest("ingest")
    assert m["counts"]["dropped"] == {"invalid_json": 2, "missing_text": 2, "empty_text": 1,
                                      "undecodable": 2, "duplicate_id": 1}
    assert m["counts"]["documents"] == 2
    docs = _docs(run)
    assert [d["id"] for d in docs] == ["g1", "mysrc/6"]  # position among readable records
    assert docs[0]["metadata"] == {k: v for k, v in good.items() if k not in ("id", "text")}
    assert docs[0]["source"] == "in"  # file stem when the record has no source
    removed = run.dir("ingest") / "removed"
    bad_json = [json.loads(l) for l in (removed / "invalid_json.jsonl").read_text().splitlines()]
    assert {r["line"] for r in bad_json} == {2, 3}
    assert all(r["dropped_reason"] == "invalid_json" for r in bad_json)
    assert (removed / "undecodable.jsonl").exists() and (removed / "duplicate_id.jsonl").exists()


def test_ten_megabyte_document_streams_through(tmp_path):
    big = "word " * 2_000_000  # 10 MB
    path = tmp_path / "big.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"id": "small", "text": "short page"}) + "\n")
        f.write(json.dumps({"id": "big", "text": big}) + "\n")
        f.write(json.dumps({"id": "after", "text": "another page"}) + "\n")
    run = _ingest(tmp_path, path, "ingest.val_fraction=0")
    docs = {d["id"]: d for d in _docs(run)}
    assert len(docs["big"]["text"]) == len(big)
    assert run.read_manifest("ingest")["counts"]["longest_document_chars"] == len(big)
    # with a size limit it becomes a counted, recorded drop (example truncated in removed/)
    run2 = _ingest(tmp_path, path, "ingest.val_fraction=0", "ingest.max_chars=100000", "seed=2")
    assert run2.read_manifest("ingest")["counts"]["dropped"] == {"too_long": 1}
    ex = json.loads((run2.dir("ingest") / "removed" / "too_long.jsonl").read_text())
    assert ex["id"] == "big" and ex["text_chars"] == len(big) and len(ex["text"]) < 10_000


def test_truncated_gzip_keeps_what_was_readable(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(2000):
            f.write(json.dumps({"id": str(i), "text": f"page {i} " * 50}) + "\n")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    run = _ingest(tmp_path, path, "ingest.val_fraction=0")
    m = run.read_manifest("ingest")
    assert m["counts"]["dropped"] == {"unreadable_file": 1}
    assert 0 < m["counts"]["documents"] < 2000
    ids = [int(d["id"]) for d in _docs(run)]
    assert ids == list(range(len(ids)))  # a prefix, in order, no gaps


def test_zstd_and_parquet_inputs(tmp_path):
    rows = [{"id": f"p{i}", "text": f"parquet page {i}", "url": f"http://x/{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    payload = "".join(json.dumps({"id": f"z{i}", "text": f"zstd page {i}"}) + "\n" for i in range(4))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload.encode()))
    run = _ingest(tmp_path, tmp_path, "ingest.val_fraction=0")
    ids = [d["id"] for d in _docs(run)]
    assert ids == [f"p{i}" for i in range(5)] + [f"z{i}" for i in range(4)]
    assert _docs(run)[0]["metadata"]["url"] == "http://x/0"


def test_shared_sample_split_and_sampling_are_seeded(ci_config):
    cfg = ci_config()
    run_stages(cfg, "a", ["ingest"])
    run_a = Run(cfg, "a")
    val = _docs(run_a, "val")
    train = _docs(run_a, "train")
    assert len(val) + len(train) == cfg.ingest.max_documents
    assert 0 < len(val) < len(train)
    assert all(in_val(d["id"], cfg.seed, cfg.ingest.val_fraction) for d in val)
    assert not any(in_val(d["id"], cfg.seed, cfg.ingest.val_fraction) for d in train)
    assert "fineweb_sample10BT_legalpilot" not in {d["source"] for d in train}
    assert len({d["source"] for d in train}) >= 4  # a random sample spans the sources
    # same seed: same documents; another seed: another sample
    cfg_b = cfg.model_copy(update={"results_dir": cfg.results_dir + "_b"})
    run_stages(cfg_b, "a", ["ingest"])
    assert [d["id"] for d in _docs(Run(cfg_b, "a"))] == [d["id"] for d in _docs(run_a)]
    cfg_c = cfg.model_copy(update={"seed": 7, "results_dir": cfg.results_dir + "_c"})
    run_stages(cfg_c, "a", ["ingest"])
    assert [d["id"] for d in _docs(Run(cfg_c, "a"))] != [d["id"] for d in _docs(run_a)]


def test_unreachable_hub_names_the_local_option(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config("smoke-hub", [f"results_dir={tmp_path}"])
    with pytest.raises(StudyError) as e:
        run_stages(cfg, "r", ["ingest"])
    assert "HuggingFaceFW/fineweb" in str(e.value) and "--set ingest.path=embedded" in str(e.value)
    assert "../shared" not in str(e.value)
    assert Run(cfg, "r").state("ingest").status != "done"


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(StudyError, match="no input files"):
        _ingest(tmp_path, tmp_path / "nothing.jsonl")


def test_a_corrupt_parquet_file_is_counted_and_the_good_files_kept(tmp_path):
    rows = [{"id": f"p{i}", "text": f"parquet page {i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    run = _ingest(tmp_path, tmp_path, "ingest.val_fraction=0")
    m = run.read_manifest("ingest")
    assert m["counts"]["dropped"] == {"unreadable_file": 1}
    assert [d["id"] for d in _docs(run)] == [f"p{i}" for i in range(5)]
    removed = json.loads((run.dir("ingest") / "removed" / "unreadable_file.jsonl").read_text())
    assert removed["file"].endswith("b.parquet")


def test_no_validation_page_is_a_recorded_warning(tmp_path, capsys):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"a short page {i}"}) + "\n" for i in range(3)))
    ids = [f"d{i}" for i in range(3)]
    assert not any(in_val(i, 1337, 0.01) for i in ids)  # none of these ids falls in a 1% split
    run = _ingest(tmp_path, path, "ingest.val_fraction=0.01")
    assert "WARNING: no validation document" in capsys.readouterr().out
    assert run.read_manifest("ingest")["warnings"][0].startswith("no validation document")
