"""Typed stage results (pipelines/runs/results.py): every stage's manifest of a real ci study reads back as
its type and dumps to the same fields, keys in the same order, ints still ints; a field a type does not
describe fails loudly (at read and when a stage returns it); read_result names the command of a missing
stage."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import StudyError
from pipelines.ingest.result import IngestResult
from pipelines.runs.manifest import STAGES, Run
from pipelines.runs.results import RECORD_FIELDS, Number, StageResult, as_result, read_result, result_type
from pipelines.runs.runner import run_stages


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory, web_sample):
    """Every stage of the ci preset, run directly (`study run --direct`), once for the module."""
    from pipelines.config import load_config

    results = tmp_path_factory.mktemp("results")
    cfg = load_config("ci", [f"results_dir={results}", f"ingest.path={web_sample}"])
    run_stages(cfg, "r", list(STAGES))
    return Run(cfg, "r")


def body(manifest: dict) -> dict:
    """A manifest's result fields: all but the runner's record."""
    return {k: v for k, v in manifest.items() if k not in RECORD_FIELDS}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_real_manifest_reads_as_its_type_and_dumps_the_same_fields(ci_study, stage):
    m = ci_study.read_manifest(stage)
    r = read_result(ci_study, stage)
    assert isinstance(r, result_type(stage)) and isinstance(r, StageResult)
    assert json.dumps(r.fields()) == json.dumps(body(m))  # same keys, same order, same values (3 stays 3)
    assert r.record.stage == stage and r.record.status == "complete" and r.record.config_hash == m["config_hash"]
    again = result_type(stage).of(r.fields())  # what a stage returns as a dict, validated
    assert again.model_dump() == r.model_dump() and again.fields() == r.fields()


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_field_its_type_does_not_describe_fails_loudly(ci_study, stage):
    cls, fields = result_type(stage), body(ci_study.read_manifest(stage))
    with pytest.raises(TypeError, match=f"(?s){cls.__name__}.*not_a_field"):
        cls.of({**fields, "not_a_field": 1})
    with pytest.raises(TypeError, match="outputs"):
        cls.of({**fields, "outputs": [{"not_a_field": 1}]})
    key = next(k for k, v in fields["counts"].items() if isinstance(v, int) and not isinstance(v, bool))
    with pytest.raises(TypeError, match=f"counts.{key}"):  # strict: a string is not a number
        cls.of({**fields, "counts": {**fields["counts"], key: str(fields["counts"][key])}})


def test_numbers_keep_their_kind():
    from pydantic import TypeAdapter

    number = TypeAdapter(Number)
    assert type(number.validate_python(3)) is int and type(number.validate_python(3.0)) is float
    ingest = IngestResult.of({"counts": {"documents": 3}})
    with pytest.raises(TypeError, match="counts.documents"):
        IngestResult.of({"counts": {"documents": 3.0}})  # a float count is a stage's bug, not rounded away
    assert ingest.fields() == {"counts": {"documents": 3}}  # only the keys the stage set


def test_a_stage_may_return_its_typed_result_or_a_dict_but_nothing_else(ci_config):
    run = Run(ci_config(), "r")
    outputs = [{"split": "train", "path": "train/x.jsonl.gz", "documents": 2, "chars": 10}]
    m = run.execute("ingest", lambda ctx: IngestResult(outputs=outputs, warnings=[]), log=lambda s: None)
    assert body(m) == {"outputs": outputs, "warnings": []}  # only what the stage set
    assert read_result(run, "ingest").outputs[0].documents == 2
    with pytest.raises(TypeError, match="(?s)IngestResult.*not_a_field"):
        run.execute("ingest", lambda ctx: {"not_a_field": 1}, force=True, log=lambda s: None)
    assert run.read_manifest("ingest") is None  # no manifest for a result its type does not describe
    with pytest.raises(TypeError, match="IngestResult"):
        run.execute("ingest", lambda ctx: ["outputs"], force=True, log=lambda s: None)


def test_read_result_names_the_command_of_a_missing_stage(ci_config):
    run = Run(ci_config(), "r")
    with pytest.raises(StudyError, match=r"stage `classify` has no manifest .*`study classifier train --run r`"):
        read_result(run, "classify")
    assert read_result(run, "classify", missing_ok=True) is None
    run.dir("mix").mkdir(parents=True)
    run.manifest_path("mix").write_text('{"stage": "mix", "status": "running"}')
    with pytest.raises(StudyError, match=r"no complete manifest .*`study mix --run r`"):
        read_result(run, "mix")
    run.manifest_path("mix").write_text('{"stage": "mix", "status": "complete", "mixes": [], "shuffled": true}')
    with pytest.raises(StudyError, match=r"(?s)does not read as its stage's result.*`study mix --run r --force`"):
        read_result(run, "mix")


def test_as_result_takes_a_whole_manifest_and_keeps_its_record(ci_study):
    m = ci_study.read_manifest("mix")
    r = as_result("mix", m)
    assert r.record.inputs["ingest"].sha256 == m["inputs"]["ingest"]["sha256"]
    assert r.mixes[0].name == m["mixes"][0]["name"] and as_result("mix", r) is r
