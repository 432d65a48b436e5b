"""The typed result of the `evaluate` stage (its manifest's fields; pipelines/runs/results.py)."""

from __future__ import annotations

from typing import Any

from pipelines.runs.results import Model, StageResult


class EvalOutput(Model):
    """One evaluated target: a trained checkpoint or a reference model."""

    target: str = ""  # its label: <mix>@<step>, or the reference model's name
    mix: str | None = None
    step: int | None = None
    model: str | None = None  # what was loaded
    dir: str = ""  # its folder in evaluate/
    seed: int | None = None
    scale: str | None = None
    items: dict[str, str] = {}  # task -> its per-item file


class EvaluateCounts(Model):
    models: int = 0
    tasks: int = 0
    items: dict[str, int] = {}  # benchmark -> items evaluated
    rows: dict[str, int] = {}  # benchmark -> rows in its file
    bad_items: dict[str, dict[str, int]] = {}  # benchmark -> reason -> items left out


class CoreFile(Model):
    source: str = ""
    verified: str = ""  # sha256 | git_blob | embedded | unverified: <why>


class CoreInfo(Model):
    """DCLM's CORE suite as evaluated (`core` in evaluate.benchmarks)."""

    label: str = ""  # e.g. CORE v1 20/22
    tasks: list[str] = []
    missing: dict[str, str] = {}  # task -> why it is left out
    limit: int | None = None  # the first `limit` items of each task
    version: str = "v1"
    files: dict[str, CoreFile] = {}


class EvaluateResult(StageResult):
    outputs: list[EvalOutput] = []
    table_csv: str = "table.csv"
    summary_csv: str = "summary.csv"
    table: list[dict[str, Any]] = []  # the rows of table.csv (pipelines/evaluate/tables.py target_rows)
    counts: EvaluateCounts = EvaluateCounts()
    sources: dict[str, str] = {}  # benchmark -> the file its items came from
    # target -> items, seconds, items_per_s, load_s, reused (, core: {items, seconds, items_per_s},
    # resumed_tasks): performance counters, open-ended per suite
    speed: dict[str, dict[str, Any]] = {}
    core: CoreInfo | None = None
    decisions: str | None = None  # decisions.json, when trained mixes were compared
    device: str | None = None
