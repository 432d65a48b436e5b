import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pipelines.data.documents import read_documents
from pipelines.errors import StudyError
from pipelines.ingest.tokenize import tokenize_files
from pipelines.llmc.shards import decode_shard, read_shard, split_documents, validate_shard, write_shard
from pipelines.llmc.tokenizer import EOT, gpt2
from pipelines.runs.manifest import Run
from pipelines.runs.runner import run_stages


def llmc_reader(path: Path) -> list[int]:
    """Written from llm.c's spec alone (dataloader.h / train_gpt2.py), not from our package:
    256 little-endian int32, magic 20240520, version 1, ntok; then ntok little-endian uint16."""
    data = Path(path).read_bytes()
    header = struct.unpack("<256i", data[:1024])
    assert header[0] == 20240520, "magic number mismatch in the data .bin file"
    assert header[1] == 1, "unsupported version"
    ntok = header[2]
    assert len(data) == 1024 + 2 * ntok, "number of tokens read does not match header"
    return list(struct.unpack(f"<{ntok}H", data[1024:]))


def test_gpt2_tokenizer_is_the_real_one():
    enc = gpt2()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.eot_token == EOT == 50256 and enc.n_vocab == 50257
    assert enc.encode_ordinary("<|endoftext|>") != [EOT]  # text never yields the separator


def test_ingest_tokenize_round_trip_through_an_independent_reader(ci_config):
    cfg = ci_config("tokenize.shard_tokens=60000")
    run_stages(cfg, "r", ["ingest", "tokenize"])
    run = Run(cfg, "r")
    ing, tok = run.read_manifest("ingest"), run.read_manifest("tokenize")
    enc = gpt2()
    names = [o["path"] for o in tok["outputs"]]
    assert names[0] == "web_val_000000.bin"  # val first
    assert names == sorted(names, key=lambda n: ("train" in n, n))
    total = 0
    for split in ("val", "train"):
        docs = list(read_documents(run.dir("ingest") / o["path"] for o in ing["outputs"] if o["split"] == split))
        decoded = []
        for o in [o for o in tok["outputs"] if o["split"] == split]:
            tokens = llmc_reader(run.dir("tokenize") / o["path"])
            assert len(tokens) == o["tokens"] <= cfg.tokenize.shard_tokens or o["documents"] == 1
            assert tokens[0] == EOT and max(tokens) <= EOT
            total += len(tokens)
            pieces = [[]]
            for t in tokens[1:]:
                pieces.append([]) if t == EOT else pieces[-1].append(t)
            decoded += [enc.decode(p) for p in pieces]
            assert decode_shard(run.dir("tokenize") / o["path"]) == [enc.decode(p) for p in pieces]
        assert decoded == [d["text"] for d in docs]
    assert total == tok["counts"]["tokens"]
    assert len(names) >= 4  # the small shard size really split the data
    assert tok["counts"]["documents"] == ing["counts"]["documents"]


def test_parallel_and_serial_tokenization_write_identical_shards(tmp_path, web_sample):
    docs = []
    with gzip.open(web_sample, "rt") as f:
        for line, _ in zip(f, range(120)):
            docs.append(json.loads(line))
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    sa = tokenize_files({"train": [src]}, a, "x", 20000, workers=1, batch_documents=7)
    sb = tokenize_files({"train": [src]}, b, "x", 20000, workers=2, batch_documents=16)
    assert sa == sb
    for s in sa:
        assert (a / s["path"]).read_bytes() == (b / s["path"]).read_bytes()


def test_a_document_longer_than_a_shard_gets_its_own(tmp_path):
    src = tmp_path / "d.jsonl"
    texts = ["short one", "long " * 3000, "short two"]
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    shards = tokenize_files({"train": [src]}, tmp_path, "x", 1024, workers=1, batch_documents=2)
    assert [s["documents"] for s in shards] == [1, 1, 1]
    assert shards[1]["tokens"] > 1024
    assert [t for s in shards for t in decode_shard(tmp_path / s["path"])] == texts


def test_write_read_and_split(tmp_path):
    tokens = np.array([EOT, 1, 2, 3, EOT, EOT, 7], dtype=np.uint16)
    p = tmp_path / "t.bin"
    write_shard(p, tokens)
    assert p.stat().st_size == 1024 + 2 * len(tokens)
    assert read_shard(p).tolist() == tokens.tolist()
    assert [d.tolist() for d in split_documents(read_shard(p))] == [[1, 2, 3], [], [7]]
    with pytest.raises(ValueError, match="token ids"):
        write_shard(tmp_path / "bad.bin", np.array([EOT, 50257]))


def _corrupt(tmp_path, fn):
    p = tmp_path / "c.bin"
    write_shard(p, np.array([EOT, 10, 20, 30], dtype=np.uint16))
    data = bytearray(p.read_bytes())
    fn(data)
    p.write_bytes(bytes(data))
    return p


def test_corrupt_shards_are_rejected_with_clear_messages(tmp_path):
    bad_magic = _corrupt(tmp_path, lambda d: d.__setitem__(slice(0, 4), struct.pack("<i", 12345)))
    with pytest.raises(StudyError, match="bad magic 12345"):
        validate_shard(bad_magic)
    eval_magic = _corrupt(tmp_path, lambda d: d.__setitem__(slice(0, 4), struct.pack("<i", 20240522)))
    with pytest.raises(StudyError, match="eval-file magic"):
        read_shard(eval_magic)
    truncated = _corrupt(tmp_path, lambda d: d.__delitem__(slice(-2, None)))
    with pytest.raises(StudyError, match="truncated or corrupt"):
        read_shard(truncated)
    extra = _corrupt(tmp_path, lambda d: d.extend(b"\0\0"))
    with pytest.raises(StudyError, match="size"):
        read_shard(extra)
    version = _corrupt(tmp_path, lambda d: d.__setitem__(slice(4, 8), struct.pack("<i", 2)))
    with pytest.raises(StudyError, match="version 2"):
        read_shard(version)
    out_of_vocab = _corrupt(tmp_path, lambda d: d.__setitem__(slice(1026, 1028), struct.pack("<H", 60000)))
    with pytest.raises(StudyError, match="60000 is outside"):
        read_shard(out_of_vocab)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 100)
    with pytest.raises(StudyError, match="shorter than the llm.c header"):
        read_shard(short)


def test_a_file_shorter_than_the_header_is_a_clear_error_in_both_readers(tmp_path):
    from pipelines.train.data import shard_ntok

    bad = tmp_path / "web_train_000000.bin"
    bad.write_bytes(b"\x01\x02\x03\x04\x05\x06\x07")  # 7 bytes: not even a multiple of 4
    for read in (lambda: validate_shard(bad), lambda: shard_ntok(str(bad), 1)):
        with pytest.raises(StudyError, match="shorter than the llm.c header.*`study mix` or `study tokenize`"):
            read()
