"""Bad input that must end in a counted, recorded skip (README, "Reliability"): lone surrogates in an
LLM's answer, a benchmark file with a line that is not UTF-8."""

from __future__ import annotations

import gzip
import json

from pipelines.config import GenerateConfig
from pipelines.data.benchmarks import load_benchmark
from pipelines.data.documents import ShardedWriter, read_documents
from pipelines.synthetic.generate import postprocess


def test_a_lone_surrogate_in_an_answer_is_dropped_as_undecodable_and_written_safely(tmp_path):
    row = {"prompt_id": "p1", "text": "Fine text \ud800 and more words " * 20, "finish_reason": "stop",
           "completion_tokens": 200}
    text, info, reason = postprocess(row, GenerateConfig(min_tokens=1))
    assert reason == "undecodable"
    w = ShardedWriter(tmp_path, "removed", 10)  # where generate keeps its dropped outputs, whole
    w.write({"id": "p1", "text": text, "source": "synthetic", "metadata": {"dropped_reason": reason}})
    w.close()
    (back,) = read_documents(sorted(tmp_path.glob("*.jsonl.gz")))
    assert back["text"] == text  # kept exactly, as JSON escapes


def test_a_benchmark_line_that_is_not_utf8_is_a_counted_bad_item_naming_the_file(tmp_path):
    good = {"id": "q1", "question": "Which is a gas?", "choices": {"text": ["air", "rock", "wood", "iron"],
                                                                  "label": ["A", "B", "C", "D"]}, "answerKey": "A"}
    path = tmp_path / "arc_easy_test.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write((json.dumps(good) + "\n").encode())
        f.write(b'{"id": "q2", "question": "caf\xe9?"}\n')  # Latin-1, not UTF-8
        f.write((json.dumps({**good, "id": "q3"}) + "\n").encode())
    b = load_benchmark("arc_easy", data_dir=tmp_path)
    assert [it.id for it in b.items] == ["q1", "q3"]
    (bad,) = b.bad
    assert bad["reason"] == "undecodable" and "arc_easy_test.jsonl.gz line 2" in bad["detail"]


def test_minhash_signs_a_bounded_prefix_of_a_huge_page(tmp_path):
    import random

    from pipelines.mix.dedup import minhash_duplicates

    rng = random.Random(0)
    words = [f"w{rng.randrange(5000)}" for _ in range(400_000)]  # ~2.4 MB of text
    page = " ".join(words)
    near = page[:50_000] + " CHANGED " + page[50_000:]
    other = " ".join(f"x{rng.randrange(5000)}" for _ in range(2_000))
    gone = minhash_duplicates([("page", page), ("near", near), ("other", other)], tmp_path, sign_chars=20_000)
    assert gone == {"near"}  # the copy is found on the prefix; the first one and the unrelated page stay
    with gzip.open(tmp_path / "corpus" / "00000.jsonl.gz", "rt") as f:
        assert max(len(json.loads(line)["text"]) for line in f) == 20_000  # what datatrove was given to sign
