"""The typed results of the `prompts` and `generate` stages (their manifests' fields; pipelines/runs/results.py)."""

from __future__ import annotations

from typing import Any

from pipelines.runs.results import DocumentFile, LengthSummary, Model, Number, StageResult

# ---------------------------------------------------------------------------------------------
# prompts


class PromptsCounts(Model):
    documents: int = 0
    prompts: int = 0
    seeds_available: int = 0
    seed_documents_too_short: int = 0
    plan: dict[str, int] = {}  # "<audience>/<style>" -> prompts allocated


class Diversity(Model):
    """How varied the prompt set is (pipelines/synthetic/prompts.py diversity)."""

    per_audience: dict[str, int] = {}
    per_style: dict[str, int] = {}
    per_cell: dict[str, int] = {}  # "<audience>/<style>"
    per_seed_source: dict[str, int] = {}
    entropy_bits: dict[str, Number] = {}  # audience | style | cell | seed_source -> bits
    evenness: dict[str, Number] = {}  # the same keys: entropy / log2(values), 1.0 = even
    unique_seeds: int = 0
    seed_uses_max: int = 0
    unique_templates: int = 0
    seed_distinct_3gram_ratio: Number | None = None
    prompt_chars: LengthSummary = LengthSummary()
    seed_chars: LengthSummary = LengthSummary()


class Templates(Model):
    dir: str = ""
    styles: dict[str, int] = {}  # style -> its template version
    audiences: list[str] = []
    rules_version: int = 0


class PromptsResult(StageResult):
    outputs: list[DocumentFile] = []  # prompts_*.jsonl.gz
    counts: PromptsCounts = PromptsCounts()
    diversity: Diversity = Diversity()
    templates: Templates = Templates()
    prompts_sha256: str = ""  # generate checks its saved completions against it
    topics_sha256: str | None = None  # seeds: topics only


# ---------------------------------------------------------------------------------------------
# generate


class GenerateCounts(Model):
    documents: int = 0
    tokens: int = 0
    completions: int = 0
    dropped: dict[str, int] = {}  # reason -> documents
    per_audience: dict[str, int] = {}
    per_style: dict[str, int] = {}
    per_cell: dict[str, int] = {}  # "<audience>/<style>" -> kept documents
    finish_reasons: dict[str, int] = {}
    stripped_openers: int = 0
    trimmed: int = 0


class Histogram(Model):
    edges: list[int | None] = []  # bin k: edges[k] <= tokens < edges[k + 1] (None: no upper end)
    counts: list[int] = []


class Lengths(Model):
    tokens: LengthSummary = LengthSummary()
    chars: LengthSummary = LengthSummary()
    tokens_histogram: Histogram = Histogram()


class Generator(Model):
    backend: str | None = None
    models: dict[str, int] = {}  # model name -> completions


class GenerateResult(StageResult):
    outputs: list[DocumentFile] = []  # documents/synthetic_*.jsonl.gz
    removed: dict[str, list[str]] = {}  # reason -> removed/<reason>_*.jsonl.gz
    counts: GenerateCounts = GenerateCounts()
    lengths: Lengths = Lengths()
    generator: Generator = Generator()
    # this invocation's counters (prompts_total, generated_now, wall_s_now, ..., sessions): open-ended, the
    # backend and the executor (datatrove) add their own
    throughput: dict[str, Any] = {}
    parts: list[str] = []  # parts/part-*.jsonl, the saved completions
