"""The synthetic-data sections: Cosmopedia-style prompts, and their completions (generate)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipelines.config.executors import InferenceExecutor
from pipelines.config.llm import BackendConfig, SamplingConfig
from pipelines.config.section import Section


class PromptsConfig(Section):
    """Cosmopedia-style prompts: seed x audience x style, rendered from pipelines/synthetic/templates/*.yaml."""

    seeds: Literal["web", "topics"] = "web"  # web: extracts of ingest's documents; topics: topics_path
    topics_path: str | None = None  # YAML (list of strings or {topic, outline, id}) or CSV (topic[,outline][,id])
    templates_dir: str | None = None  # None: pipelines/synthetic/templates
    n_prompts: int = Field(1000, ge=1)
    # weights per audience / style (normalised; counts that add up to n_prompts give exactly those
    # counts); empty: every audience / style of the templates, equal shares
    audiences: dict[str, float] = {}
    styles: dict[str, float] = {}
    split: Literal["train", "val"] = "train"  # which ingest split gives seeds
    extract_chars: int = Field(1000, ge=100)  # seed extract length (cut at a sentence or word end)
    min_seed_chars: int = Field(300, ge=1)  # shorter pages are not used as seeds
    topic_field: str | None = None  # a metadata key of seed documents with a topic label, if any
    shard_prompts: int = Field(10_000, ge=1)

    @property
    def input_stages(self) -> tuple[str, ...]:
        """Upstream stages: ingest for web seeds, none for a topics file."""
        return ("ingest",) if self.seeds == "web" else ()


class GenerateConfig(Section):
    """Completions for every prompt, resumable, then post-processing into documents."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"executor"})  # who sends the requests never changes an answer

    backend: BackendConfig = BackendConfig()
    executor: InferenceExecutor = InferenceExecutor()
    sampling: SamplingConfig = SamplingConfig()
    min_tokens: int = Field(150, ge=0)  # shorter outputs go to removed/ as `too_short`
    on_length: Literal["drop", "trim", "keep"] = "drop"  # output cut off at max_new_tokens: drop it,
    #   trim it back to its last complete sentence, or keep it as is
    strip_openers: bool = True  # remove "Sure! Here is ...:" style first lines and leading titles
    source: str = "synthetic"  # the `source` field of output documents
    shard_documents: int = Field(10_000, ge=1)
