"""Batched log-likelihood of answer continuations, from any causal LM.

For one multiple-choice item the model sees a context and 4 continuations. lm-evaluation-harness
runs 4 rows (context + continuation_i), so the context is computed 4 times. We pack the item into
ONE sequence, the context once followed by every continuation but its last token, with a "tree"
attention mask (a continuation sees the context and itself, never another continuation) and
position ids that restart after the context for each continuation:

    context c0 c1 c2; answers a = a0 a1 a2, b = b0 b1, e = e0
    tokens     c0 c1 c2 | a0 a1 | b0
    positions   0  1  2 |  3  4 |  3
    sees       causal   | c, a  | c, b
    c2 predicts a0, b0 and e0; a0 predicts a1, a1 predicts a2; b0 predicts b1
    (the last token of each answer is only a target, never an input)

That is mathematically the same computation as lm-evaluation-harness's rows (equal up to float
rounding), with ctx + sum(len(cont) - 1) tokens instead of 4 * (ctx + len(cont)). The lm head and
the log-softmax run only at the positions that predict a continuation token, not at every position.
Short items share a row (`merge`: each item its own document under the mask, positions its own), and
on a CPU the model's linear layers run through oneDNN (`onednn.linear_mode`: 2.4x MKL's fp32 GEMM on AMD).

Tokenization is lm-evaluation-harness's `_encode_pair`: trailing spaces of the context move to the
continuation; continuation tokens = encode(context + continuation)[len(encode(context)):].
An item whose context + continuation does not fit the model's length is scored as rows, truncated
from the left exactly as lm-evaluation-harness does. A model without custom-mask support
(`CallableLM`) is always scored as rows.

`score_encoded` takes token ids already split into context and continuations (DCLM's CORE tokenizes
as llm-foundry does, pipelines/evaluate/core.py) and also reports, per continuation, its token count
and whether every token is the model's argmax (greedy decoding would reproduce it).
"""

from __future__ import annotations

import bisect
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from pipelines import onednn
from pipelines.data.benchmarks import Prompt
from pipelines.errors import StudyError
from pipelines.llm.backends import load_causal_lm
from pipelines.onednn import available as onednn_available

PAD_SEGMENT = -2  # padding positions
CONTEXT_SEGMENT = -1  # shared context: every token of the sequence may attend to it


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
        model loads through the de-quantized copy the generate backend keeps (pipelines.llm.backends
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
# tokenization (lm-evaluation-harness's _encode_pair, batched)


@dataclass
class Encoded:
    context: list[int]  # context tokens (trailing spaces moved to the continuations)
    continuations: list[list[int]]


def encode_prompts(lm: LM, prompts: Sequence[Prompt]) -> list[Encoded]:
    ctxs, wholes = [], []
    for p in prompts:
        ctx = p.context
        n_spaces = len(ctx) - len(ctx.rstrip())
        moved, ctx = ctx[len(ctx) - n_spaces:], ctx[: len(ctx) - n_spaces]
        ctxs.append(ctx)
        wholes.append([ctx + moved + c for c in p.continuations])
    unique = list(dict.fromkeys(c for c in ctxs if c))
    enc_ctx = dict(zip(unique, lm.encode(unique))) if unique else {}
    flat = [w for ws in wholes for w in ws]
    # empty context: the continuation alone, after the prefix token (as lm-evaluation-harness)
    flat_alone = [p.continuations[i] for p, c in zip(prompts, ctxs) if not c for i in range(len(p.continuations))]
    enc_flat = iter(lm.encode(flat)) if flat else iter(())
    enc_alone = iter(lm.encode(flat_alone)) if flat_alone else iter(())
    out = []
    for p, ctx, ws in zip(prompts, ctxs, wholes):
        if ctx:
            c = enc_ctx[ctx]
            conts = [next(enc_flat)[len(c):] for _ in ws]
        else:
            for _ in ws:
                next(enc_flat)
            c = [lm.prefix_token_id]
            conts = [next(enc_alone) for _ in ws]
        for i, cont in enumerate(conts):
            if not cont:
                raise StudyError(f"continuation {p.continuations[i]!r} encodes to no tokens after context "
                                 f"{p.context[-60:]!r}: nothing to score")
        out.append(Encoded(c, conts))
    return out


# ---------------------------------------------------------------------------------------------
# packing into sequences


@dataclass
class Packed:
    tokens: list[int]
    positions: list[int] | None  # None: 0..len-1
    segments: list[int] | None  # None: plain causal (rows)
    picks: list[tuple[int, int, int, int]]  # (item, choice, position in tokens, target token)
    docs: list[int] | None = None  # several items in one row (merge): each token's item within the row


def pack(encoded: list[Encoded], max_length: int, tree: bool) -> list[Packed]:
    seqs: list[Packed] = []
    for i, e in enumerate(encoded):
        c, conts = e.context, e.continuations
        if any(len(x) > max_length for x in conts):
            raise StudyError(f"item {i}: an answer of {max(map(len, conts))} tokens is longer than the model's "
                             f"context ({max_length} tokens), so it cannot be scored (lm-evaluation-harness "
                             f"refuses it too): leave this benchmark out or use a model with a longer context")
        if tree and len(c) + max(map(len, conts)) <= max_length + 1:
            tokens, positions, segments, picks = list(c), list(range(len(c))), [CONTEXT_SEGMENT] * len(c), []
            for j, cont in enumerate(conts):
                prev = len(c) - 1  # the last context token predicts each continuation's first token
                for k, t in enumerate(cont):
                    picks.append((i, j, prev, t))
                    if k < len(cont) - 1:  # the last token predicts nothing we need
                        tokens.append(t)
                        positions.append(len(c) + k)
                        segments.append(j)
                        prev = len(tokens) - 1
            seqs.append(Packed(tokens, positions, segments, picks))
            continue
        for j, cont in enumerate(conts):  # rows, left-truncated as lm-evaluation-harness
            toks = (c + cont)[-(max_length + 1):][:-1]
            start = len(toks) - len(cont)
            seqs.append(Packed(toks, None, None, [(i, j, start + k, t) for k, t in enumerate(cont)]))
    return seqs


PACK_TOKENS = 256  # tree items are merged into rows of up to this many tokens (merge)


def merge(seqs: list[Packed], capacity: int) -> list[Packed]:
    """Tree items packed best-fit decreasing into rows of at most `capacity` tokens; rows (the
    left-truncated per-choice sequences) and items longer than `capacity` stay alone.

    Each item keeps its positions and is its own document in the row: the mask lets a token see only
    its own item's context and continuation, so the numbers are the item's alone (to float rounding).
    Short items (ARC, MMLU letter: 40-100 tokens) otherwise make many small, padded forwards; rows of
    256 tokens measured ~7% less CPU than one item a row on the benchmark's 56 items, while longer
    rows lose it again to the attention, quadratic in the row length."""
    alone = [s for s in seqs if s.segments is None or len(s.tokens) > capacity]
    tree = sorted((s for s in seqs if s.segments is not None and len(s.tokens) <= capacity),
                  key=lambda s: -len(s.tokens))
    bins: list[list[Packed]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted: the tightest bin that fits
    for s in tree:
        k = bisect.bisect_left(free, (len(s.tokens), -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(s)
        bisect.insort(free, (room - len(s.tokens), b))
    out = []
    for group in bins:
        tokens, positions, segments, docs, picks = [], [], [], [], []
        for d, s in enumerate(group):
            offset = len(tokens)
            tokens += s.tokens
            positions += s.positions
            segments += s.segments
            docs += [d] * len(s.tokens)
            picks += [(item, choice, offset + pos, t) for item, choice, pos, t in s.picks]
        out.append(Packed(tokens, positions, segments, picks, docs))
    return alone + out


MAX_PADDING = 0.1  # a sequence joins a batch only if it is at most 10% shorter than the batch's longest


def batches(seqs: list[Packed], batch_tokens: int, max_batch: int) -> list[list[Packed]]:
    """Longest first; a batch holds at most batch_tokens padded tokens and max_batch sequences, of
    lengths within MAX_PADDING of each other: on a CPU a padded token costs as much as a real one,
    and batching gains less than padding loses."""
    order = sorted(seqs, key=lambda s: -len(s.tokens))
    out, cur = [], []
    for s in order:
        longest = len(cur[0].tokens) if cur else len(s.tokens)
        if cur and (len(cur) + 1 > max_batch or (len(cur) + 1) * longest > batch_tokens
                    or len(s.tokens) < (1 - MAX_PADDING) * longest):
            out.append(cur)
            cur = []
        cur.append(s)
    if cur:
        out.append(cur)
    return out


def collate(batch: list[Packed], pad_id: int = 0):
    """-> input_ids (B, T), position_ids (B, T) or None, mask (B, 1, T, T) additive float32 or None,
    rows, cols, targets (N,), and the (item, choice) of each pick."""
    B, T = len(batch), max(len(s.tokens) for s in batch)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    tree = any(s.segments is not None for s in batch)
    pos = torch.zeros((B, T), dtype=torch.long) if tree else None
    seg = torch.full((B, T), PAD_SEGMENT, dtype=torch.long) if tree else None
    doc = torch.full((B, T), -1, dtype=torch.long) if tree else None  # padding: a document of its own
    rows, cols, targets, owners = [], [], [], []
    for b, s in enumerate(batch):
        n = len(s.tokens)
        ids[b, :n] = torch.tensor(s.tokens)
        if tree:
            pos[b, :n] = torch.tensor(s.positions if s.positions is not None else range(n))
            seg[b, :n] = torch.tensor(s.segments if s.segments is not None else [CONTEXT_SEGMENT] * n)
            doc[b, :n] = torch.tensor(s.docs) if s.docs is not None else 0
        for item, choice, p, t in s.picks:
            rows.append(b)
            cols.append(p)
            targets.append(t)
            owners.append((item, choice))
    mask = None
    if tree:
        # allowed[b, q, k]: causal, key k in the query's item, and k is that item's context or in the
        # query's own continuation; pad queries see the pads before them
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        q, k = seg[:, :, None], seg[:, None, :]
        allowed = causal & (doc[:, :, None] == doc[:, None, :]) & ((k == CONTEXT_SEGMENT) | (k == q))  # (B, T, T)
        mask = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    return ids, pos, mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(targets), owners


def score(lm: LM, prompts: Sequence[Prompt], share_context: bool = True, batch_tokens: int = 4096,
          max_batch: int = 64, progress: bool = False, desc: str = "scoring",
          pack_tokens: int = PACK_TOKENS) -> list[list[float]]:
    """Sum of log-probabilities of each continuation given its context: one list per prompt."""
    return score_encoded(lm, encode_prompts(lm, prompts), share_context, batch_tokens, max_batch, progress,
                         desc, pack_tokens).lls


@dataclass
class Scores:
    lls: list[list[float]]  # per encoded item, per continuation: sum of log-probabilities
    greedy: list[list[bool]]  # every continuation token is the argmax of its position


def score_encoded(lm: LM, encoded: Sequence[Encoded], share_context: bool = True, batch_tokens: int = 4096,
                  max_batch: int = 64, progress: bool = False, desc: str = "scoring",
                  pack_tokens: int = PACK_TOKENS) -> Scores:
    """The scorer on token ids: one forward per packed batch (tree or rows, as `score`); tree items
    merged into rows of up to `pack_tokens` tokens (capped by the model's length; 0: one item a row)."""
    tree = share_context and lm.supports_tree
    seqs = pack(list(encoded), lm.max_length, tree=tree)
    if tree and pack_tokens:
        seqs = merge(seqs, min(pack_tokens, lm.max_length))
    lls = [[0.0] * len(e.continuations) for e in encoded]
    greedy = [[True] * len(e.continuations) for e in encoded]
    groups = batches(seqs, batch_tokens, max_batch)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(s.tokens) for s in seqs), desc=desc, unit="tok", leave=False)
    for batch in groups:
        ids, pos, mask, rows, cols, targets, owners = collate(batch)
        out = lm.logprobs(ids, pos, mask, rows, cols, targets).tolist()
        for (item, choice), (v, top) in zip(owners, out):
            lls[item][choice] += v
            greedy[item][choice] = greedy[item][choice] and top == 1.0
        if bar is not None:
            bar.update(sum(len(s.tokens) for s in batch))
    if bar is not None:
        bar.close()
    return Scores(lls, greedy)


def token_count(lm: LM, prompts: Sequence[Prompt], share_context: bool = True) -> int:
    """Tokens the model runs for these prompts (before padding): for speed reports."""
    seqs = pack(encode_prompts(lm, prompts), lm.max_length, tree=share_context and lm.supports_tree)
    return sum(len(s.tokens) for s in seqs)
