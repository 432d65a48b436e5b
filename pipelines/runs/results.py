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
used to fall back on. `Open` is for the few records that are open-ended by nature (a trainer's
summary, throughput bags).
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
    """Strict, closed, and dumped as JSON with NaN / inf kept as they are (json writes them as NaN)."""

    model_config = ConfigDict(strict=True, extra="forbid", ser_json_inf_nan="constants", validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)


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
    git: GitState = GitState()
    argv: list[str] = []


RECORD_FIELDS = frozenset(Record.model_fields)
BEFORE_RESULT = ("stage", "run", "status", "execution", "preset", "config", "config_hash", "derived", "inputs",
                 "data")  # then the result's fields, then timings, versions, git, argv


# ---------------------------------------------------------------------------------------------
# results


class StageResult(Model):
    """What every stage returns: its outputs (files relative to its folder) and counts. Each stage's
    subclass narrows both and adds its own fields."""

    outputs: list[Any] = []
    counts: Any = None
    _record: Record | None = PrivateAttr(None)

    @property
    def record(self) -> Record:
        """The runner's part of the manifest this result was read from (an empty Record for a result
        that was never written)."""
        return self._record if self._record is not None else Record()

    def fields(self) -> dict:
        """The manifest's fields of this result: the keys the stage set, as JSON values."""
        return self.model_dump(mode="json", exclude_unset=True)


class Output(Model):
    """A file a stage wrote, relative to its folder; `split` train / val where the stage splits."""

    split: str | None = None
    path: str = ""
    documents: int = 0


def result_type(stage: str) -> type[StageResult]:
    return STAGES[stage].load_result()


def as_result(stage: str, obj: StageResult | dict) -> StageResult:
    """`obj` as the stage's result type: a result as it is; a dict (what run() returned, or a whole
    manifest: its record goes to `.record`) validated, through JSON as the manifest stores it."""
    cls = result_type(stage)
    if isinstance(obj, cls):
        return obj
    if not isinstance(obj, dict):
        raise TypeError(f"[{stage}] a result is a {cls.__name__} or a dict, not {type(obj).__name__}")
    plain = json.loads(json.dumps(obj, default=str))  # tuples -> lists, int keys -> str: what the manifest holds
    record = {k: v for k, v in plain.items() if k in RECORD_FIELDS}
    try:
        result = cls.model_validate({k: v for k, v in plain.items() if k not in RECORD_FIELDS})
        result._record = Record.model_validate(record) if record else None
    except ValidationError as e:
        raise TypeError(f"[{stage}] not a {cls.__module__}.{cls.__name__}: {e}") from None
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
