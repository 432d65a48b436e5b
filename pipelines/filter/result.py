"""The typed result of the `filter` stage (its manifest's fields; pipelines/runs/results.py)."""

from __future__ import annotations

from pipelines.runs.results import DocumentFile, Model, Number, StageResult


class ScoreBins(Model):
    edges: list[Number] = []  # the continuous score's bin edges, 0..5
    counts: list[int] = []


class ScoreHistogram(Model):
    """The classifier's scores of one set of pages (all scored, or kept)."""

    documents: int = 0
    int_score: dict[str, int] = {}  # "0".."5" -> pages
    score_bins: ScoreBins = ScoreBins()
    mean_score: Number | None = None
    per_source: dict[str, int] = {}


class Histograms(Model):
    before: ScoreHistogram = ScoreHistogram()
    after: ScoreHistogram = ScoreHistogram()


class FilterCounts(Model):
    documents: int = 0  # kept
    scored: int = 0
    removed: int = 0
    keep_rate: Number | None = None
    kept_per_source: dict[str, int] = {}
    scored_per_source: dict[str, int] = {}


class ClassifierUsed(Model):
    kind: str | None = None  # embedding | hashed
    path: str | None = None  # the classify stage's <kind>/ folder
    threshold: int | None = None  # keeps int_score >= this


class FilterThroughput(Model):
    tasks: int = 0
    executor: str = ""
    wall_s: Number = 0
    task_s: Number = 0
    pages_per_task_s: Number | None = None


class FilterResult(StageResult):
    outputs: list[DocumentFile] = []  # kept/edu_*.jsonl.gz (split train)
    removed: dict[str, list[str]] = {}  # edu_score_below_<threshold> -> removed/removed_*.jsonl.gz
    histograms: Histograms = Histograms()
    counts: FilterCounts = FilterCounts()
    classifier: ClassifierUsed = ClassifierUsed()
    throughput: FilterThroughput = FilterThroughput()
