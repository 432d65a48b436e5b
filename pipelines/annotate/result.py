"""The typed result of the `annotate` stage (its manifest's fields; pipelines/runs/results.py)."""

from __future__ import annotations

from typing import Any

from pipelines.runs.results import DocumentFile, Model, Number, StageResult


class ReferenceAgreement(Model):
    """Labels against the reference scores of the pages that carry one (annotate/prompt.py reference_agreement)."""

    field: str = ""
    pages: int = 0
    spearman: Number | None = None
    ci95: list[Number] | None = None  # [low, high], percentile bootstrap over pages


class AnnotateCounts(Model):
    documents: int = 0  # pages with a label
    pages: int = 0
    unparsed: int = 0  # pages without a label
    parse_failure_rate: Number | None = None
    label_distribution: dict[str, int] = {}  # "0".."5" -> pages
    reference: ReferenceAgreement | None = None  # with annotate.reference_field
    # annotate.scoring distribution / both: labels from the digits' distribution
    scoring: str | None = None
    label_from: str | None = None
    unlabelled_rate: Number | None = None


class Annotator(Model):
    name: str | None = None
    model: str | None = None
    kind: str | None = None  # the backend
    parsed: int | None = None
    failed: int | None = None
    clipped: int | None = None
    parse_failure_rate: Number | None = None
    finish_reasons: dict[str, int] = {}
    label_distribution: dict[str, int] = {}
    distribution: dict[str, Any] | None = None  # scoring distribution / both: the digits' statistics
    agreement: dict[str, Any] | None = None  # scoring both: parsed score against the digits' score

    @property
    def label(self) -> str | None:
        """How the report names it: its model, else its name."""
        return self.model or self.name


class AnnotateResult(StageResult):
    outputs: list[DocumentFile] = []  # labels/annotated_*.jsonl.gz
    unparsed: list[DocumentFile] = []  # unparsed/unparsed_*.jsonl.gz
    counts: AnnotateCounts = AnnotateCounts()
    annotators: list[Annotator] = []
    prompt_sha256: str = ""
    throughput: list[dict[str, Any]] = []  # per annotator, this invocation's counters (open-ended per scoring)

    @property
    def extract_chars(self) -> int | None:
        """The characters of each page the annotators read (the annotate section it ran with)."""
        return (self.record.config.get("annotate") or {}).get("extract_chars")
