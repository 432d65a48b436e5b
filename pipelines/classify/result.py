"""The typed result of the `classify` stage (its manifest's fields; pipelines/runs/results.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.runs.results import Model, Number, StageResult


class ModelFile(Model):
    kind: str = ""  # embedding | hashed
    path: str = ""  # <kind>/model.json


class Binary(Model):
    """Keeping a page (int_score >= threshold) as a yes / no decision."""

    threshold: int | None = None
    precision: Number = 0
    recall: Number = 0
    f1: Number = 0
    positives: int = 0
    predicted_positives: int = 0
    f1_keep_everything: Number | None = None


class ClassMetrics(Model):
    precision: Number = 0
    recall: Number = 0
    f1: Number = 0
    support: int = 0


class Confusion(Model):
    labels: list[int] = []
    rows: str = "label"
    columns: str = "prediction"
    matrix: list[list[int]] = []


class Metrics(Model):
    """pipelines/classify/metrics.py classifier_metrics on one split."""

    n: int = 0
    mse: Number = 0
    accuracy: Number = 0
    macro_f1: Number = 0
    per_class: dict[str, ClassMetrics] = {}  # "0".."5"
    confusion_matrix: Confusion = Confusion()
    binary: Binary | None = None


class TrainMetrics(Model):
    n: int = 0
    mse: Number = 0
    accuracy: Number = 0
    macro_f1: Number = 0
    binary_f1: Number = 0


class KindResult(Model):
    """One trained classifier kind."""

    validation: Metrics = Metrics()
    train: TrainMetrics = TrainMetrics()
    settings: dict[str, Any] = {}  # its feature settings (embedder, max_tokens | hash_bits, ngrams, max_chars)
    alpha: Number = 0  # the ridge penalty kept
    feature_s: Number = 0
    fit_s: Number = 0
    feature_docs_per_s: Number | None = None
    path: str = ""  # <kind>/


class Labels(Model):
    """Labelled pages per int_score ("0".."5") in each split."""

    train: dict[str, int] = {}
    validation: dict[str, int] = {}
    all: dict[str, int] = {}


class LabelFieldRecord(Model):
    field: str  # dotted path inside a page's metadata
    map: dict[str, Number] = {}  # raw value -> label; empty: the value is the label


class LabelChoice(Model):
    """label_source or classifier.fallback, and why (pipelines/classify/classify.py choose_labels)."""

    used: str | None = None  # label_source | annotate | fallback
    why: str | None = None
    reference: dict[str, Any] | None = None  # the annotate stage's counts.reference it was decided on


class LabelSource(Model):
    """Where the labels came from (pipelines/classify/classify.py labelled_documents)."""

    labelled: int = 0
    unlabelled_per_source: dict[str, int] = {}
    labelled_per_source: dict[str, int] = {}
    from_: str | None = Field(None, alias="from")  # "stage 'annotate'", a path, "hub <dataset>", "embedded"
    fields: list[LabelFieldRecord] = []
    choice: LabelChoice = LabelChoice()
    sha256: str | None = None  # a labels file outside the run


class ClassifyCounts(Model):
    documents: int = 0  # labelled pages
    train: int = 0
    validation: int = 0


class ClassifyResult(StageResult):
    outputs: list[ModelFile] = []
    metrics: dict[str, KindResult] = {}  # kind -> its metrics
    metrics_json: str = "metrics.json"
    predictions: str = "predictions.jsonl.gz"
    labels: Labels = Labels()
    label_source: LabelSource = LabelSource()
    counts: ClassifyCounts = ClassifyCounts()

    # the classifier section it ran with (its record's config)

    @property
    def kinds(self) -> list[str]:
        return list(self._section().get("kinds") or [])

    @property
    def threshold(self) -> int | None:
        return self._section().get("threshold")

    @property
    def label_fields(self) -> list[str]:
        """The label fields it read: recorded with the labels, else (older manifests) the config's."""
        return ([f.field for f in self.label_source.fields]
                or [f["field"] for f in self._section().get("label_fields") or []])

    def _section(self) -> dict:
        return self.record.config.get("classifier") or {}
