"""Prompt builder: templates as data, the sampling plan, seeds, reproducibility (no model needed)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter

import pytest

from pipelines.config import PromptsConfig
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run
from pipelines.runs.runner import run_stages
from pipelines.synthetic.prompts import (
    Seed,
    allocate,
    build_prompts,
    extract,
    load_templates,
    prompts_digest,
    topic_seeds,
    unwrap,
)

WEB = Seed("doc-1", "web", "Volcanoes form where magma {rises} through the crust. They erupt.", "src", topic="geology")
TOPIC = Seed("topic:7", "topic", "Fractions", "units.yaml", topic="Fractions", outline="- halves\n- quarters")


def test_every_cell_renders_with_its_audience_style_seed_and_rules():
    t = load_templates()
    assert set(t.audiences) == {"young_children", "middle_school", "high_school", "college_students", "researchers"}
    assert set(t.styles) == {"textbook_academic", "textbook_narrative", "blog_post", "wikihow", "story"}
    ids = set()
    for audience, style in t.cells():
        for seed in (WEB, TOPIC):
            text, template_id, sha = t.render(audience, style, seed)
            ids.add(template_id)
            assert t.audiences[audience].label in text and t.audiences[audience].guidance in text
            assert t.rules in text and "no title" in text
            assert "{" not in text.replace("{rises}", "")  # every placeholder filled
            if seed is WEB:
                assert seed.text in text and "about geology" in text  # braces of the extract stay literal
            else:
                assert '"Fractions"' in text and "- halves\n- quarters" in text
            assert len(sha) == 12
    assert len(ids) == 2 * len(t.cells())  # one id per (cell, seed kind)
    # academic textbooks and blog posts are not written for small children
    assert ("young_children", "textbook_academic") not in t.cells()
    assert ("young_children", "blog_post") not in t.cells()


def test_unwrap_joins_wrapped_lines_but_keeps_lists_and_separators():
    src = "Write a text for {audience}\nabout this.\n\n- one\n  continued\n- two\n---\n{extract}\n---\nEnd."
    assert unwrap(src) == "Write a text for {audience} about this.\n\n- one continued\n- two\n---\n{extract}\n---\nEnd."


def test_bad_templates_fail_with_file_and_placeholder(tmp_path):
    d = tmp_path / "templates"
    shutil.copytree(load_templates.__globals__["TEMPLATES_DIR"], d)
    story = d / "story.yaml"
    story.write_text(story.read_text().replace("{audience_guidance}", "{audience_guidence}", 1))
    with pytest.raises(StudyError, match=r"story.yaml.*unknown placeholder.*audience_guidence"):
        load_templates(d)
    story.write_text("kind: style\nid: story\nlabel: story\nfrom_extract: 'no seed here'\nfrom_topic: '{topic}'\n")
    with pytest.raises(StudyError, match=r"must contain \{extract\}"):
        load_templates(d)


def test_allocation_is_exact_spread_and_respects_exclusions():
    t = load_templates()
    small = allocate(6, t, {}, {}, seed=1)
    assert sum(small.values()) == 6
    assert len({a for a, _ in small}) == 5  # six prompts still reach all five audiences
    assert len({s for _, s in small}) == 5  # ... and all five styles
    big = allocate(1000, t, {}, {}, seed=1)
    per_audience = Counter()
    for (a, _), k in big.items():
        per_audience[a] += k
    assert set(per_audience.values()) == {200}
    assert ("young_children", "textbook_academic") not in big
    # weights that are counts give exactly those counts
    plan = allocate(30, t, {"college_students": 20, "young_children": 10}, {"story": 1, "textbook_academic": 1})
    assert plan == {("young_children", "story"): 10, ("college_students", "story"): 10,
                    ("college_students", "textbook_academic"): 10}
    with pytest.raises(StudyError, match="unknown audiences.*toddlers"):
        allocate(5, t, {"toddlers": 1}, {})
    with pytest.raises(StudyError, match="no allowed"):
        allocate(5, t, {"young_children": 1}, {"textbook_academic": 1})


def test_extract_cuts_at_a_sentence_end():
    text = "First sentence here. " * 80
    out = extract(text, 1000)
    assert len(out) <= 1000 and out.endswith(".") and len(out) >= 600
    assert extract("short page", 1000) == "short page"
    assert len(extract("x" * 5000, 1000)) == 1000  # no sentence or space: a hard cut


def test_build_prompts_is_a_function_of_the_seed():
    t = load_templates()
    seeds = [Seed(f"d{i}", "web", f"Extract number {i}. " * 30, "src") for i in range(10)]
    cfg = PromptsConfig(n_prompts=25)
    a, b = build_prompts(cfg, 1, seeds, t), build_prompts(cfg, 1, seeds, t)
    c = build_prompts(cfg, 2, seeds, t)
    assert a == b and prompts_digest(a) == prompts_digest(b)
    assert prompts_digest(a) != prompts_digest(c)
    uses = Counter(p["metadata"]["seed_id"] for p in a)
    assert len(uses) == 10 and max(uses.values()) - min(uses.values()) <= 1  # seeds used evenly
    assert [p["id"] for p in a] == [f"prompt-{i:06d}" for i in range(25)]


def test_topic_lists_from_yaml_and_csv(tmp_path):
    y = tmp_path / "t.yaml"
    y.write_text("topics:\n  - Fractions\n  - {topic: Photosynthesis, outline: [light, chlorophyll], id: bio1}\n")
    seeds = topic_seeds(y)
    assert [s.id for s in seeds] == ["topic:0", "topic:bio1"]
    assert seeds[1].outline == "- light\n- chlorophyll" and seeds[1].kind == "topic"
    c = tmp_path / "t.csv"
    c.write_text("topic,outline\nPlate tectonics,\nThe water cycle,evaporation then rain\n")
    assert [s.text for s in topic_seeds(c)] == ["Plate tectonics", "The water cycle"]
    bad = tmp_path / "bad.csv"
    bad.write_text("title\nx\n")
    with pytest.raises(StudyError, match="`topic` column"):
        topic_seeds(bad)


def _read(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_prompts_stage_uses_ingest_extracts_and_records_diversity(ci_config):
    cfg = ci_config("prompts.n_prompts=12")
    run_stages(cfg, "p", ["ingest", "prompts"])
    run = Run(cfg, "p")
    m = run.read_manifest("prompts")
    prompts = _read(run.dir("prompts") / m["outputs"][0]["path"])
    assert len(prompts) == 12 == m["counts"]["documents"]
    ingest = {d["id"]: d for o in run.read_manifest("ingest")["outputs"] if o["split"] == "train"
              for d in _read(run.dir("ingest") / o["path"])}
    for p in prompts:
        md = p["metadata"]
        assert {"audience", "style", "template_id", "template_sha", "seed_id"} <= set(md)
        seed_text = ingest[md["seed_id"]]["text"]  # a real train document of this run's ingest
        head = " ".join(seed_text.split()[:8])
        assert head and head in " ".join(p["text"].split())
    d = m["diversity"]
    assert sum(d["per_audience"].values()) == 12 and len(d["per_audience"]) == 5
    assert d["unique_seeds"] == 12 and 0 < d["evenness"]["cell"] <= 1
    assert m["prompts_sha256"] == prompts_digest(prompts)

    # the same config and seed in another run: the identical prompt set; another seed: a different one
    run_stages(cfg, "p2", ["ingest", "prompts"])
    assert Run(cfg, "p2").read_manifest("prompts")["prompts_sha256"] == m["prompts_sha256"]
    other = ci_config("prompts.n_prompts=12", "seed=7")
    run_stages(other, "p3", ["ingest", "prompts"])
    assert Run(other, "p3").read_manifest("prompts")["prompts_sha256"] != m["prompts_sha256"]


def test_topic_seeds_need_no_ingest(ci_config, tmp_path):
    topics = tmp_path / "units.yaml"
    topics.write_text("- Fractions\n- {topic: Binary search, outline: [sorted input, halving]}\n")
    cfg = ci_config("prompts.seeds=topics", f"prompts.topics_path={topics}", "prompts.n_prompts=5")
    run_stages(cfg, "t", ["prompts"])
    run = Run(cfg, "t")
    assert not run.dir("ingest").exists()
    m = run.read_manifest("prompts")
    prompts = _read(run.dir("prompts") / m["outputs"][0]["path"])
    assert {p["metadata"]["seed_kind"] for p in prompts} == {"topic"}
    assert {p["metadata"]["seed_id"] for p in prompts} == {"topic:0", "topic:1"}
    assert any("- sorted input\n- halving" in p["text"] for p in prompts)
    assert m["inputs"] == {} and len(m["topics_sha256"]) == 64
