"""The vllm backend: offline `vllm.LLM` on GPUs (`tensor_parallel_size`); vLLM is imported when the
backend is built, so a machine without it fails there with what to do, never at import."""

from __future__ import annotations

from typing import Any, Sequence

from pipelines.config import BackendConfig, SamplingConfig
from pipelines.engines.backend import (
    TOP_LOGPROBS,
    Backend,
    BackendError,
    Completion,
    Prompt,
    first_content_position,
    match_top_logprobs,
    to_messages,
)
from pipelines.errors import StudyError


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise StudyError(
            f"the vllm backend needs vLLM on a machine with NVIDIA GPUs ({e}): `pip install -e '.[gpu]'` there. "
            f"Without a GPU use generate.backend.kind=transformers; to use a remote `vllm serve`, "
            f"generate.backend.kind=openai with generate.backend.base_url=http://HOST:8000/v1"
        ) from None
    return vllm


class VLLMBackend(Backend):
    """`vllm.LLM(...).chat(conversations, [SamplingParams per prompt])`: vLLM applies the model's chat
    template and schedules the whole list itself (continuous batching)."""

    kind = "vllm"

    def __init__(self, cfg: BackendConfig, seed: int = 0):
        if not cfg.model:
            raise StudyError("the vllm backend needs generate.backend.model (a hub id or local dir, e.g. "
                             "mistralai/Mixtral-8x7B-Instruct-v0.1 or Qwen/Qwen2.5-7B-Instruct)")
        vllm = import_vllm()
        self.cfg = cfg
        self.model_name = cfg.model
        self._sampling_params = vllm.SamplingParams
        kw: dict[str, Any] = {"model": cfg.model, "tensor_parallel_size": cfg.tensor_parallel_size,
                              "gpu_memory_utilization": cfg.gpu_memory_utilization, "dtype": cfg.dtype, "seed": seed}
        if cfg.max_model_len:
            kw["max_model_len"] = cfg.max_model_len
        try:
            self.llm = vllm.LLM(**kw)
        except Exception as e:  # vLLM raises many types (CUDA, OOM, config); say what to check
            raise StudyError(
                f"vLLM could not start {cfg.model} with tensor_parallel_size={cfg.tensor_parallel_size}: "
                f"{type(e).__name__}: {e}\nvLLM needs NVIDIA GPUs (as many as tensor_parallel_size) with room for "
                f"the weights; lower generate.backend.gpu_memory_utilization / max_model_len, or use kind=transformers "
                f"on CPU") from e

    def sampling_params(self, sampling: SamplingConfig, seed: int | None) -> Any:
        kw: dict[str, Any] = {"n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p,
                              "max_tokens": sampling.max_new_tokens, "seed": seed}
        if sampling.top_k:
            kw["top_k"] = sampling.top_k
        if sampling.repetition_penalty:
            kw["repetition_penalty"] = sampling.repetition_penalty
        if sampling.stop:
            kw["stop"] = list(sampling.stop)
        return self._sampling_params(**kw)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        if not prompts:
            return []
        convs = [to_messages(p, self.cfg.system_prompt) for p in prompts]
        params = [self.sampling_params(sampling, None if seeds is None else seeds[i]) for i in range(len(convs))]
        outputs = self.llm.chat(convs, sampling_params=params, use_tqdm=False)
        if len(outputs) != len(convs):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(convs)} prompts")
        result = []
        for o in outputs:  # RequestOutput: .prompt_token_ids, .outputs[0] (CompletionOutput)
            c = o.outputs[0]
            result.append(Completion(c.text, c.finish_reason or "stop",  # stop | length | abort
                                     len(o.prompt_token_ids or []), len(c.token_ids)))
        return result

    def candidate_probs(self, prompts: Sequence[Prompt], prefixes: Sequence[str],
                        candidates: Sequence[str]) -> list[list[float]]:
        if not prompts:
            return []
        convs = [[*to_messages(p, self.cfg.system_prompt), {"role": "assistant", "content": x}]
                 for p, x in zip(prompts, prefixes, strict=True)]
        params = self._sampling_params(n=1, temperature=0.0, max_tokens=2, logprobs=TOP_LOGPROBS)
        outputs = self.llm.chat(convs, sampling_params=params, use_tqdm=False, add_generation_prompt=False,
                                continue_final_message=True)
        result = []
        for o in outputs:  # .outputs[0].logprobs: per generated position, {token id: Logprob(logprob, decoded_token)}
            c = o.outputs[0]
            positions = c.logprobs or []
            chosen = [(positions[k].get(t).decoded_token if positions[k].get(t) is not None else "")
                      for k, t in enumerate(list(c.token_ids)[: len(positions)])]
            top = positions[first_content_position(chosen)] if positions else {}
            result.append(match_top_logprobs([(v.decoded_token, v.logprob) for v in top.values()], candidates))
        return result
