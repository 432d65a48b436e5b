"""What every LLM backend is: `backend.generate(prompts, sampling) -> completions`, and the types it speaks.

A prompt is a user message (str) or a whole chat (list of {"role", "content"}); the backend applies
the model's chat template. Each completion carries its text, finish reason (`stop`, `length`, or
`error` for a request the server refused), prompt and completion token counts. Generation (issue 3)
uses Cosmopedia's sampling; annotation (issue 4) uses the same backends with temperature 0.

The backends, one a file: transformers_backend.py, vllm_backend.py, openai_backend.py; factory.py
picks one from the config. Also here: reading candidate probabilities out of a server's top
alternatives (vllm and openai share it).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence, Union

from pipelines.config import SamplingConfig
from pipelines.errors import StudyError

Messages = list[dict[str, str]]
Prompt = Union[str, Messages]
TOP_LOGPROBS = 20  # the most alternatives OpenAI's API and vLLM's default (--max-logprobs) return


class BackendError(StudyError):
    pass


@dataclass
class Completion:
    text: str
    finish_reason: str  # stop | length | error (| whatever else a server reports, e.g. content_filter)
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # why the request failed (finish_reason == "error")


def to_messages(prompt: Prompt, system_prompt: str | None = None) -> Messages:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and msgs[0].get("role") != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def prompt_seed(seed: int, key: str) -> int:
    """A per-prompt sampling seed from the run seed and the prompt id (stable across resumes)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF


class Backend:
    kind = "base"
    model_name = ""  # recorded as the documents' `generator`

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        raise NotImplementedError

    def candidate_probs(self, prompts: Sequence[Prompt], prefixes: Sequence[str],
                        candidates: Sequence[str]) -> list[list[float]]:
        """For each prompt: the probability of each candidate (e.g. " 0" ... " 5") as the next token after
        the chat with an assistant turn that starts with `prefix` (annotate's distribution scoring).
        Probabilities of the whole vocabulary, not renormalised over the candidates."""
        raise BackendError(f"the {self.kind} backend cannot read next-token probabilities")

    def close(self) -> None:
        pass


def match_top_logprobs(top: Sequence[tuple[str, float]], candidates: Sequence[str]) -> list[float]:
    """Candidate probabilities from one position's top alternatives [(token text, logprob)]: a candidate's
    text matches a token whatever the whitespace around it (" 3", "3"); a candidate absent: 0."""
    want = [c.strip() for c in candidates]
    probs = [0.0] * len(candidates)
    for token, logprob in top:
        t = (token or "").strip()
        if t in want and logprob is not None and math.isfinite(logprob):
            probs[want.index(t)] += math.exp(logprob)
    return probs


def first_content_position(chosen: Sequence[str]) -> int:
    """The first generated position whose token is not whitespace only: after a prefix like "score:" a
    tokenizer that writes the space as its own token (SmolLM2's) puts the digit one position later."""
    return next((i for i, t in enumerate(chosen) if (t or "").strip()), 0)
