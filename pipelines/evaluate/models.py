"""The models the scorer calls (LM: encode texts, log-probabilities at chosen positions): HFCausalLM (a
transformers causal LM or GGUF file; tree masks, the lm head only where an answer is predicted, linear
layers through oneDNN on a CPU) and CallableLM (any logits function, scored as rows); and loading a
target's model: an llm.c checkpoint as a GPT-2 in memory (load_llmc), or a hub id, folder or GGUF (load_lm)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from pipelines import onednn
from pipelines.engines.transformers_backend import load_causal_lm
from pipelines.errors import StudyError
from pipelines.evaluate.targets import Target
from pipelines.llmc.tokenizer import EOT, gpt2
from pipelines.model import hf_state_dict, load_checkpoint
from pipelines.onednn import available as onednn_available


class LM:
    """What the scorer needs from a model. Subclasses: HFCausalLM (tree or rows), CallableLM (rows)."""

    max_length: int  # longest input the model takes (lm-evaluation-harness's max_length)
    prefix_token_id: int  # stands in for an empty context
    supports_tree: bool = False  # takes a 4D additive attention mask and position ids
    eos_token_id: int | None = None  # the tokenizer's end-of-sequence token, when it has one

    def encode(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids; `add_special_tokens` as transformers' tokenizers (a BOS for Llama-style ones);
        a plain encode function (tiktoken's GPT-2 BPE) adds none either way."""
        raise NotImplementedError

    def logprobs(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, mask: torch.Tensor | None,
                 rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T); position_ids (B, T) or None (0..T-1); mask (B, 1, T, T) additive or None
        (causal); rows, cols, targets (N,) -> (N, 2) float64 on the CPU: [:, 0] log p(targets[n] | prefix
        ending at (rows[n], cols[n])), [:, 1] 1.0 where targets[n] is the argmax there (first on ties)."""
        raise NotImplementedError


HEAD_CHUNK = 128  # positions per lm-head call: (128, V) float32 logits, ~25 MB. glibc maps blocks over 32 MB
# afresh on every call: 1,024 rows took 4.2 s of page faults and zeroing for 25k positions, 128 rows 1.8 s


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (N, V), targets (N,) -> (N, 2) float64 on the CPU: log p(target), log-softmax in float32
    then gather (as lm-evaluation-harness; torch's fused log_softmax beats logsumexp on CPU); and
    whether the target is the argmax (llm-foundry's greedy check)."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None])[:, 0]
    greedy = logits.argmax(dim=-1) == targets
    return torch.stack([lp.double(), greedy.double()], dim=1).cpu()


def _full_logits_logprobs(logits: torch.Tensor, rows, cols, targets) -> torch.Tensor:
    # logits (B, T, V) -> the N selected positions only, in chunks
    return torch.cat([target_logprobs(logits[rows[i : i + HEAD_CHUNK], cols[i : i + HEAD_CHUNK]],
                                      targets[i : i + HEAD_CHUNK]) for i in range(0, len(targets), HEAD_CHUNK)])


class CallableLM(LM):
    """Any torch causal LM as a function input_ids (B, T) -> logits (B, T, V), plus its tokenizer.
    Scored as right-padded causal rows (no custom masks needed)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], encode: Callable[[list[str]], list[list[int]]],
                 max_length: int, prefix_token_id: int, device: str | torch.device = "cpu"):
        self.forward, self._encode, self.max_length = forward, encode, max_length
        self.prefix_token_id, self.device = prefix_token_id, torch.device(device)

    def encode(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return self._encode(texts)

    @torch.inference_mode()
    def logprobs(self, input_ids, position_ids, mask, rows, cols, targets):
        if mask is not None or position_ids is not None:
            raise StudyError("CallableLM scores plain causal rows only (share_context must be off for it)")
        logits = self.forward(input_ids.to(self.device))
        return _full_logits_logprobs(logits, rows.to(logits.device), cols.to(logits.device), targets.to(logits.device))


class HFCausalLM(LM):
    """A transformers causal LM (`AutoModelForCausalLM`), a GGUF file included.

    The body runs with our 4D mask and position ids; the lm head runs on the selected positions only
    (unless the model post-processes its logits: soft-capping or a logit scale, then full logits)."""

    supports_tree = True

    def __init__(self, model, tokenizer=None, encode: Callable[[list[str]], list[list[int]]] | None = None,
                 max_length: int | None = None, prefix_token_id: int | None = None, onednn: bool | None = None):
        if tokenizer is None and encode is None:
            raise StudyError("HFCausalLM needs a tokenizer or an encode function")
        self.model = model.eval()
        self.tokenizer, self._encode = tokenizer, encode
        self.device = next(model.parameters()).device
        # linear layers through oneDNN (onednn.linear_mode); None: on a CPU where torch has it
        self.onednn = (self.device.type == "cpu" and onednn_available()) if onednn is None else onednn
        self.max_length = max_length or resolve_max_length(model.config, tokenizer)
        if prefix_token_id is None and tokenizer is not None:
            prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix_token_id is None:
            prefix_token_id = getattr(model.config, "bos_token_id", None) or 0
        self.prefix_token_id = int(prefix_token_id)
        self.eos_token_id = tokenizer.eos_token_id if tokenizer is not None else prefix_token_id
        cfg = model.config
        self.head = model.get_output_embeddings()
        self.body = getattr(model, "base_model", None)
        self.head_only = (self.head is not None and self.body is not None and self.body is not model
                          and getattr(cfg, "final_logit_softcapping", None) is None
                          and getattr(cfg, "logit_scale", None) is None)

    @classmethod
    def from_pretrained(cls, path: str, gguf_file: str | None = None, dtype: str = "float32",
                        device: str = "cpu", gguf_cache: bool = True) -> "HFCausalLM":
        """A hub id or local folder (with `gguf_file`: a GGUF file inside it), or a .gguf path. A GGUF
        model loads through the de-quantized copy the generate backend keeps (pipelines.engines.transformers_backend
        .load_causal_lm: one cache, converted once for every stage), unless `gguf_cache` is off."""
        p = Path(path)
        if gguf_file is None and p.suffix == ".gguf":
            path, gguf_file = str(p.parent), p.name
        try:
            model, tok = load_causal_lm(path, gguf_file, dtype, cache=gguf_cache, attn_implementation="sdpa")
        except (OSError, ValueError) as e:
            raise StudyError(f"could not load the model {path!r}{' (' + gguf_file + ')' if gguf_file else ''}: {e}\n"
                             f"give a hub id, a local folder with config.json, or a .gguf file "
                             f"(GGUF needs the `gguf` package)") from None
        return cls(model.to(device), tok)

    def encode(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        if self._encode is not None:
            return self._encode(texts)
        # default: the tokenizer's own defaults for special tokens, as lm-evaluation-harness's tok_encode
        return self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]

    @torch.inference_mode()
    def logprobs(self, input_ids, position_ids, mask, rows, cols, targets):
        dev = self.device
        kw = {"input_ids": input_ids.to(dev), "use_cache": False}
        if mask is not None:
            kw["attention_mask"] = mask.to(dev, self.model.dtype)
        if position_ids is not None:
            kw["position_ids"] = position_ids.to(dev)
        rows, cols, targets = rows.to(dev), cols.to(dev), targets.to(dev)
        with onednn.linear_mode() if self.onednn else nullcontext():
            if not self.head_only:
                return _full_logits_logprobs(self.model(**kw).logits, rows, cols, targets)
            hidden = self.body(**kw).last_hidden_state[rows, cols]  # (N, C): positions that predict an answer
            return torch.cat([target_logprobs(self.head(hidden[i : i + HEAD_CHUNK]), targets[i : i + HEAD_CHUNK])
                              for i in range(0, len(targets), HEAD_CHUNK)])


def resolve_max_length(config, tokenizer=None, default: int = 2048) -> int:
    """lm-evaluation-harness's rule: n_positions / max_position_embeddings / n_ctx, else the
    tokenizer's model_max_length when it is set, else 2048."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(getattr(config, "text_config", None) or config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 10**12:
        return n
    return default


# ---------------------------------------------------------------------------------------------
# a target's model


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_llmc(path: str, dtype: str = "float32", device: str = "cpu") -> HFCausalLM:
    """An llm.c checkpoint (pipelines.model) as a GPT2LMHeadModel in memory, GPT-2 BPE (tiktoken)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = load_checkpoint(path)
    s = model.shape
    # the same config as pipelines.model.export_hf (llm.c's GPT-2: tanh GELU, eps 1e-5, tied head)
    config = GPT2Config(vocab_size=s.vocab_size, n_positions=s.max_seq_len, n_embd=s.channels, n_layer=s.num_layers,
                        n_head=s.num_heads, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOT, eos_token_id=EOT,
                        tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = GPT2LMHeadModel(config)
    hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    hf.tie_weights()
    hf = hf.to(device=device, dtype=getattr(torch, dtype))
    enc = gpt2()
    return HFCausalLM(hf, encode=enc.encode_ordinary_batch, max_length=s.max_seq_len, prefix_token_id=EOT)


def load_lm(t: Target, dtype: str = "float32", device: str = "cpu") -> LM:
    if t.kind == "llmc":
        return load_llmc(t.path, dtype, device)
    return HFCausalLM.from_pretrained(t.path, t.gguf_file, dtype, device)
