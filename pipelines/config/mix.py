"""The mix section: named document sources, token-budgeted mixes of them (a mix's `tokens` is the
budget: mix.mixes[].tokens), dedup and decontamination."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.config.section import Section


class MixSource(Section):
    """Where a mix source's documents come from: exactly one of a stage, a local path or a hub dataset."""

    stage: str | None = None  # a document stage of this run (ingest: its train split; generate; ...)
    path: str | None = None  # local JSONL/JSONL.gz/JSONL.zst/Parquet file, folder or glob
    dataset: str | None = None  # hub dataset id, e.g. mlfoundations/dclm-baseline-1.0-parquet
    dataset_config: str | None = None
    split: str = "train"
    max_documents: int | None = Field(None, ge=1)  # external sources: read at most this many

    @model_validator(mode="after")
    def _one_origin(self) -> "MixSource":
        given = [k for k in ("stage", "path", "dataset") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of stage / path / dataset (got {given or 'none'})")
        return self


class MixSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    tokens: int = Field(ge=1)  # training-token budget, GPT-2 tokens (EOT separators included)
    weights: dict[str, float]  # source name -> share (normalised)

    @model_validator(mode="after")
    def _positive(self) -> "MixSpec":
        if not self.weights or any(w <= 0 for w in self.weights.values()):
            raise ValueError(f"mix {self.name!r}: weights must be positive and non-empty")
        return self


class DedupConfig(Section):
    exact: bool = True
    near: bool = True  # datatrove MinHash
    ngrams: int = Field(5, ge=1)
    buckets: int = Field(14, ge=1)
    hashes_per_bucket: int = Field(8, ge=1)
    # MinHash signs the first this many characters of a document: bounds the memory a single huge
    # page takes (one 10 MB page took 4 GB in datatrove's signature step); longer pages are counted
    sign_chars: int = Field(200_000, ge=1000)


class DecontamConfig(Section):
    enabled: bool = True
    ngram: int = Field(13, ge=4)
    benchmarks: list[Literal["arc_easy", "arc_challenge", "hellaswag", "mmlu"]] = [
        "arc_easy", "arc_challenge", "hellaswag", "mmlu"]
    eval_dir: str | None = None  # hub-schema JSONL.gz files; None / `embedded`: data/eval; `hub`: the hub


class MixConfig(Section):
    """Token-budgeted blends of named sources, deduplicated and decontaminated, as llm.c shards."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"workers", "keep_prepared"})

    sources: dict[str, MixSource] = {"web": MixSource(stage="ingest")}
    mixes: list[MixSpec] = [MixSpec(name="web", tokens=1_000_000, weights={"web": 1.0})]
    on_short: Literal["repeat", "fail"] = "repeat"  # a source smaller than its share: repeat it, or stop
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontamConfig = DecontamConfig()
    val_name: str = "heldout"  # the shared validation shards: val/<val_name>_val_000000.bin
    shard_tokens: int = Field(100_000_000, ge=1024, le=2**31 - 1)
    workers: int = Field(0, ge=0)
    # stream each source straight into shards (exact dedup by hash and decontamination per document,
    # no near-duplicate pass): for budgets too large to hold in memory (the GPU presets, 10B+ tokens)
    streaming: bool = False
    shuffle_buffer: int = Field(100_000, ge=1)  # streaming: documents shuffled across sources in a buffer
    # in-memory: keep the deduplicated, decontaminated, tokenized union in mix/prepared/<key>/ so runs naming
    # this one in share_with skip that work (mixture searches); changes no output, costs one copy of its tokens
    keep_prepared: bool = False

    @model_validator(mode="after")
    def _known_sources(self) -> "MixConfig":
        names = [m.name for m in self.mixes]
        if len(set(names)) != len(names):
            raise ValueError(f"mix names must be unique: {names}")
        for m in self.mixes:
            unknown = set(m.weights) - set(self.sources)
            if unknown:
                raise ValueError(f"mix {m.name!r} uses unknown source(s) {sorted(unknown)}; "
                                 f"defined in mix.sources: {sorted(self.sources)}")
        return self

    @property
    def used_sources(self) -> list[str]:
        """Sources some mix draws from, in the order of `sources` (their priority in dedup)."""
        used = {n for m in self.mixes for n in m.weights}
        return [n for n in self.sources if n in used]

    @property
    def source_stages(self) -> tuple[str, ...]:
        """Stages this mix reads: ingest (the shared validation pages) and every stage source used."""
        return tuple(dict.fromkeys(["ingest"] + [self.sources[n].stage for n in sorted(self.used_sources)
                                                 if self.sources[n].stage]))
