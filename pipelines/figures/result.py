"""The typed result of the `figures` stage (its manifest's fields; pipelines/runs/results.py)."""

from __future__ import annotations

from pipelines.runs.results import Model, StageResult


class Drawn(Model):
    """One figure (PDF + PNG), table (TeX + CSV) or text (TeX), paths relative to figures/."""

    name: str
    kind: str  # figure | table | text
    paths: list[str] = []


class StageRead(Model):
    """A stage the figures read, as it was: done or stale, and its manifest's sha256."""

    status: str = ""
    sha256: str = ""


class FiguresCounts(Model):
    figures: int = 0
    tables: int = 0
    texts: int = 0
    missing: int = 0


class FiguresResult(StageResult):
    outputs: list[Drawn] = []
    missing: list[str] = []  # one message per output left out, naming the command to run first
    notes: list[str] = []  # stale stages drawn as they are
    read: dict[str, StageRead] = {}
    counts: FiguresCounts = FiguresCounts()
