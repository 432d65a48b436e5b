"""The backend a config names: `make_backend(cfg.backend, seed)`. Each backend imports its optional
dependency (torch, vllm) when it is built, so a missing one fails here, never at import."""

from __future__ import annotations

from pipelines.config import BackendConfig
from pipelines.engines.backend import Backend
from pipelines.engines.openai_backend import OpenAIBackend
from pipelines.engines.transformers_backend import TransformersBackend
from pipelines.engines.vllm_backend import VLLMBackend
from pipelines.errors import StudyError


def make_backend(cfg: BackendConfig, seed: int = 0) -> Backend:
    if cfg.kind == "transformers":
        return TransformersBackend(cfg, seed)
    if cfg.kind == "openai":
        return OpenAIBackend(cfg)
    if cfg.kind == "vllm":
        return VLLMBackend(cfg, seed)
    raise StudyError(f"unknown backend kind {cfg.kind!r}")
