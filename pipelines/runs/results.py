"""Typed stage results, and the one function that reads them: read_result(run, stage).

A stage's run() returns its result (a StageResult subclass defined beside the stage, in its package's
result.py and named in STAGES as "module:Class"). The runner wraps it in the Record (config, inputs,
timings, versions, ...) and writes both into results/<run>/<stage>/manifest.json with the keys the
stage's dict had always had:

  manifest.json = {stage, run, status, execution, preset, config, config_hash, derived, inputs, data,
                   <the result's fields>, timings, versions, git, argv}

The report, readers, figures and notebooks read a finished stage through read_result(): the result,
typed, with its record on `.record`; a missing stage is an error naming the command that makes it.

Types are strict (a string is not a number, a float not an int) and closed (extra="forbid"): a stage
that returns a field its type does not describe fails, the manifest is not written. A field a manifest
may lack (one written before the field existed, or a test's small fake) has the default the readers
used to fall back on. Open-ended by nature, and typed as such: throughput and speed counters and the
evaluation table's rows (dict[str, Any]), and the data-set descriptions of the record (`Open`).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from pipelines.errors import StudyError
from pipelines.runs.manifest import STAGES, Run

# a JSON number kept as written: an int stays an int, a float a float (pydantic's `float` would turn
# 3 into 3.0, and the report prints them differently)
Number = int | float


class Model(BaseModel):
    """Strict, closed (also when a field is assigned later), and dumped as JSON with NaN / inf kept as they
    are (json writes them as NaN)."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True, ser_json_inf_nan="constants",
                              validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class Open(Model):
    """A record whose keys are open-ended: the named fields are typed, any others are kept as they are."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------------------------
# the runner's part of a manifest


class InputRecord(Model):
    path: str = ""
    sha256: str | None = None
    config_hash: str | None = None


class Timings(Model):
    started: str = ""  # ISO 8601, UTC, seconds
    finished: str = ""
    wall_s: Number = 0


class GitState(Model):
    commit: str | None = None
    dirty: bool | None = None


class DataSet(Open):
    """A data set read from outside the run (pipelines/data/embedded.py describe_*): embedded, hub or local."""

    kind: str = ""  # embedded | hub | local
    path: str | None = None
    dataset: str | None = None
    config: str | None = None


class Record(Model):
    """What the runner writes around a stage's result (pipelines/runs/manifest.py Run._execute)."""

    stage: str = ""
    run: str = ""
    status: str = ""  # "complete" once written
    execution: str = ""  # unique per execution
    preset: str | None = None
    config: dict[str, Any] = {}  # {"seed": ..., <section>: the section as run}
    config_hash: str | None = None
    derived: dict[str, Any] = {}
    inputs: dict[str, InputRecord] = {}
    data: dict[str, DataSet] = {}  # what = "pages", "labels", "benchmarks", "source <name>", ...
    timings: Timings = Timings()
    versions: dict[str, str] = {}
    git: GitState | None = None
    argv: list[str] = []


RECORD_FIELDS = frozenset(Record.model_fields)


# ---------------------------------------------------------------------------------------------
# results


class StageResult(Model):
    """What a stage returns. Each stage's subclass declares its fields in the order its manifest has
    them, `outputs` (files relative to its folder) and `counts` among them (pydantic keeps a base class's
    fields first, so they are not declared here)."""

    _record: Record | None = PrivateAttr(None)

    @property
    def record(self) -> Record:
        """The runner's part of the manifest this result was read from (an empty Record for a result
        that was never written)."""
        return self._record if self._record is not None else Record()

    @classmethod
    def of(cls, obj: "StageResult | dict") -> "StageResult":
        """`obj` as this type: a result of it as it is; a dict of its fields validated, through JSON as the
        manifest stores it (tuples become lists, int keys strings). Anything else: a TypeError."""
        if isinstance(obj, cls):
            return obj
        if not isinstance(obj, dict):
            raise TypeError(f"a stage returns a {cls.__name__} or a dict of its fields, not {type(obj).__name__}")
        try:
            return cls.model_validate(json.loads(json.dumps(obj, default=str)))
        except ValidationError as e:
            raise TypeError(f"not a {cls.__module__}.{cls.__name__}: {e}") from None

    def fields(self) -> dict:
        """The manifest's fields of this result: the keys the stage set, as JSON values."""
        return self.model_dump(mode="json", exclude_unset=True)


# the output files most stages list (paths relative to the stage folder)


class DocumentFile(Model):
    """A .jsonl.gz of documents (pipelines/data/documents.py ShardedWriter); split: train / val where the
    stage splits (no split: every reader's split)."""

    split: str | None = None
    path: str = ""
    documents: int = 0
    chars: int = 0


class TokenShard(Model):
    """An llm.c token shard (pipelines/llmc/shards.py ShardWriter)."""

    split: str | None = None
    path: str = ""
    tokens: int = 0
    documents: int = 0


class LengthSummary(Model):
    """min, p10, p50, p90, max and mean of lengths (pipelines/synthetic/prompts.py length_summary; none: {})."""

    min: Number = 0
    p10: Number = 0
    p50: Number = 0
    p90: Number = 0
    max: Number = 0
    mean: Number = 0


def result_type(stage: str) -> type[StageResult]:
    return STAGES[stage].load_result()


def as_result(stage: str, obj: StageResult | dict) -> StageResult:
    """`obj` as the stage's result type: a result as it is; a dict of its fields, or a whole manifest
    (its record goes to `.record`), validated (StageResult.of)."""
    if not isinstance(obj, dict):
        return result_type(stage).of(obj)
    result = result_type(stage).of({k: v for k, v in obj.items() if k not in RECORD_FIELDS})
    record = {k: v for k, v in obj.items() if k in RECORD_FIELDS}
    if record:
        try:
            result._record = Record.model_validate(json.loads(json.dumps(record, default=str)))
        except ValidationError as e:
            raise TypeError(f"not a manifest's record: {e}") from None
    return result


def read_result(run: Run, stage: str, missing_ok: bool = False) -> StageResult | None:
    """The typed result of a finished stage (done, or stale: as it was written), from its manifest.
    A stage with no complete manifest: a StudyError naming the command to run (missing_ok: None)."""
    m = run.read_manifest(stage)
    if m is None or m.get("status") != "complete":
        if missing_ok:
            return None
        what = "no manifest" if m is None else "no complete manifest (killed, or running now)"
        raise StudyError(f"stage `{stage}` has {what} in {run.root}: run `{STAGES[stage].command} --run "
                         f"{run.name}` first")
    try:
        return as_result(stage, m)
    except TypeError as e:
        raise StudyError(f"{run.manifest_path(stage)} does not read as its stage's result ({e}); a manifest of "
                         f"another version: rerun `{STAGES[stage].command} --run {run.name} --force`") from None
