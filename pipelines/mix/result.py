"""The typed result of the `mix` stage (its manifest's fields; pipelines/runs/results.py), the same for
both executors (pipelines/mix/plan.py stage_result)."""

from __future__ import annotations

from pipelines.runs.results import Model, Number, StageResult, TokenShard


class SourceShare(Model):
    """One source's part of one mix (plan.py source_record; None: not known, e.g. a stream not read to
    its end)."""

    weight: Number = 0
    target_tokens: int = 0
    tokens: int = 0
    documents: int = 0
    unique_documents: int = 0
    available_documents: int | None = None
    available_tokens: int | None = None
    epochs: Number | None = None  # how often its surviving documents are used


class MixEntry(Model):
    """One mix (plan.py MixPlan.entry)."""

    name: str
    budget_tokens: int | None = None
    tokens: int = 0
    documents: int = 0
    per_source: dict[str, SourceShare] = {}
    train_pattern: str = ""
    val_pattern: str = ""
    shards: list[TokenShard] = []

    @property
    def budget(self) -> int:
        """Its token budget (manifests written before budgets were recorded: its tokens)."""
        return self.budget_tokens if self.budget_tokens is not None else self.tokens


class Val(Model):
    """The held-out validation shards every mix shares."""

    pattern: str = ""
    tokens: int = 0
    documents: int = 0


class SourceInput(Model):
    """What was read from one source and what survived dedup and decontamination (plan.py input_record)."""

    stage: str | None = None
    path: str | None = None
    dataset: str | None = None
    documents_in: int = 0
    exact_duplicate: int = 0
    near_duplicate: int | None = None  # None: no near-duplicate pass ran (streaming)
    contaminated: dict[str, int] = {}  # benchmark -> documents
    documents_kept: int = 0
    tokens_kept: int = 0

    @property
    def origin(self) -> str | None:
        """Where it comes from: a stage, a dataset or a path."""
        return self.stage or self.dataset or self.path


class Decontamination(Model):
    ngram: int = 0
    benchmarks: list[str] = []
    items_too_short: dict[str, int] = {}  # benchmark -> items with fewer than `ngram` words
    per_source: dict[str, dict[str, int]] = {}  # source -> benchmark -> documents removed


class NearDedup(Model):
    sign_chars: int = 0
    documents_signed_in_part: int = 0  # longer than sign_chars: signed on their prefix


class Prepared(Model):
    """Dedup, decontamination and tokens: computed here, or reused from a run of share_with."""

    key: str = ""
    from_run: str | None = None


class MixCounts(Model):
    documents: int = 0
    tokens: int = 0
    mixes: int = 0
    removed: dict[str, int] = {}  # reason -> documents


class MixResult(StageResult):
    outputs: list[TokenShard] = []  # val/..., then every mix's train shards
    mixes: list[MixEntry] = []
    val: Val = Val()
    sources: dict[str, SourceInput] = {}
    decontamination: Decontamination = Decontamination()
    # in memory: its settings, None when mix.dedup.near is off; streaming: "skipped (streaming)"
    near_dedup: NearDedup | str | None = None
    prepared: Prepared | None = None  # in memory only
    counts: MixCounts = MixCounts()
