"""The openai backend: any OpenAI-compatible /v1/chat/completions server (`vllm serve`, TGI, llama.cpp's
server): bounded concurrency, retries with backoff, timeouts; the API key is read from the environment
variable NAMED in the config, and never stored.

chat_body is also the request that datatrove's runner sends (inference.py): greedy through either path
gives the same text.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException
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

NO_SCORING = ("Distribution scoring (annotate.scoring=distribution|both) needs a server that continues an "
              "assistant turn (continue_final_message) and returns top_logprobs: vLLM or SGLang. `transformers "
              "serve` does neither: with it use annotate.scoring=parse, or the transformers / vllm backend.")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
FATAL_STATUS = {401: "the server refused the API key", 403: "the API key may not use this model",
                404: "no such endpoint or model"}


def chat_body(cfg: BackendConfig, prompt: Prompt, sampling: SamplingConfig, seed: int | None) -> dict:
    """The /chat/completions request for one prompt (the openai backend and datatrove's runner send the same)."""
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": to_messages(prompt, cfg.system_prompt),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "n": 1,
    }
    if seed is not None:
        body["seed"] = seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.top_k:
        body["top_k"] = sampling.top_k  # an extension that vLLM, TGI and llama.cpp accept
    if sampling.repetition_penalty:
        body["repetition_penalty"] = sampling.repetition_penalty
    return body


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, never followed: following it would send the API key to another address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise BackendError(f"{req.full_url}: HTTP {code} redirects to {newurl}; not followed, so the API key is never "
                           f"sent to another address. Set backend.base_url to the address that serves the API.")


class OpenAIBackend(Backend):
    """POST {base_url}/chat/completions, one request per prompt, `concurrency` in flight."""

    kind = "openai"

    def __init__(self, cfg: BackendConfig):
        if not cfg.model:
            raise StudyError("the openai backend needs generate.backend.model: the model name the server serves "
                             "(for `vllm serve <model>` that <model>; GET <base_url>/models lists them)")
        self.cfg = cfg
        self.model_name = cfg.model
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if cfg.api_key_env:  # the key is held in memory for the requests only: never logged, never written
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise StudyError(f"backend.api_key_env names ${cfg.api_key_env}, which is not set: export it, or set "
                                 f"api_key_env: null for a server that needs no key")
            self._headers["Authorization"] = f"Bearer {key}"
        host = urllib.parse.urlsplit(cfg.base_url).hostname or ""
        # a server on this machine is never reached through an http_proxy from the environment
        local = host in ("127.0.0.1", "localhost", "::1")
        handlers = [_RefuseRedirects(), *([urllib.request.ProxyHandler({})] if local else [])]
        self._opener = urllib.request.build_opener(*handlers)

    def request_body(self, prompt: Prompt, sampling: SamplingConfig, seed: int | None) -> dict:
        return chat_body(self.cfg, prompt, sampling, seed)

    @staticmethod
    def parse(payload: Any) -> Completion:
        try:
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ValueError(f"not a chat completion: {str(payload)[:300]}") from None
        usage = payload.get("usage") or {}
        tokens = usage.get("completion_tokens")
        if tokens is None:  # no usage block: ~4 characters per token, so length filters still work
            tokens = round(len(text) / 4)
        return Completion(text, choice.get("finish_reason") or "stop", int(usage.get("prompt_tokens") or 0), int(tokens))

    def _post(self, body: dict, parse: Any = None) -> Any:
        scoring, parse = parse is not None, parse or self.parse
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            wait = min(60.0, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
            try:
                req = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
                with self._opener.open(req, timeout=self.cfg.timeout_s) as r:
                    return parse(json.loads(r.read()))
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode("utf-8", "replace")
                if e.code in FATAL_STATUS:
                    raise BackendError(
                        f"{self.url}: HTTP {e.code} ({FATAL_STATUS[e.code]}): {detail}\nCheck generate.backend.model="
                        f"{self.cfg.model!r}, generate.backend.base_url and the key in ${self.cfg.api_key_env}") from None
                if e.code not in RETRY_STATUS:  # e.g. 400 prompt too long: this prompt fails, the run goes on
                    if scoring:  # no error completion to keep: the page's scoring fails loudly
                        raise BackendError(f"{self.url} refused a scoring request: HTTP {e.code}: {detail}\n"
                                           f"{NO_SCORING}") from None
                    return Completion("", "error", 0, 0, error=f"HTTP {e.code}: {detail}")
                last = f"HTTP {e.code}: {detail[:200]}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = min(60.0, float(retry_after))
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, HTTPException) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except ValueError as e:  # a body that is not a chat completion (a proxy's HTML page, ...)
                last = str(e)
            if attempt < self.cfg.max_retries:
                time.sleep(wait)
        raise BackendError(
            f"{self.url}: {self.cfg.max_retries + 1} attempts failed; last: {last}\n"
            f"Is the server up (`curl {self.cfg.base_url.rstrip('/')}/models`)? Completions already written are "
            f"kept: rerun the same command to resume.")

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        bodies = [self.request_body(p, sampling, None if seeds is None else seeds[i]) for i, p in enumerate(prompts)]
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(bodies))) as pool:
            return list(pool.map(self._post, bodies))

    def score_body(self, prompt: Prompt, prefix: str) -> dict:
        """Two greedy tokens after the assistant turn's `prefix` (vLLM's and SGLang's continue_final_message),
        with the top alternatives at each position."""
        return {"model": self.cfg.model,
                "messages": [*to_messages(prompt, self.cfg.system_prompt), {"role": "assistant", "content": prefix}],
                "add_generation_prompt": False, "continue_final_message": True,
                "temperature": 0.0, "max_tokens": 2, "n": 1, "logprobs": True, "top_logprobs": TOP_LOGPROBS}

    def parse_logprobs(self, payload: Any) -> list[tuple[str, float]]:
        """The top alternatives at the first non-whitespace generated position of a chat completion."""
        try:
            content = (payload["choices"][0].get("logprobs") or {}).get("content") or []
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ValueError(f"not a chat completion: {str(payload)[:300]}") from None
        if not content:
            raise BackendError(f"{self.url} answered without logprobs.\n{NO_SCORING}")
        pos = first_content_position([c.get("token") or "" for c in content])
        return [(t.get("token") or "", t.get("logprob")) for t in content[pos].get("top_logprobs") or []]

    def candidate_probs(self, prompts: Sequence[Prompt], prefixes: Sequence[str],
                        candidates: Sequence[str]) -> list[list[float]]:
        bodies = [self.score_body(p, x) for p, x in zip(prompts, prefixes, strict=True)]
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(bodies))) as pool:
            tops = list(pool.map(lambda b: self._post(b, self.parse_logprobs), bodies))
        return [match_top_logprobs(t, candidates) for t in tops]
