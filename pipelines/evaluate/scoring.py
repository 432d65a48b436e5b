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
(`CallableLM`) is always scored as rows. The models (LM and its subclasses) are models.py's.

`score_encoded` takes token ids already split into context and continuations (DCLM's CORE tokenizes
as llm-foundry does, pipelines/evaluate/core_prompts.py) and also reports, per continuation, its token
count and whether every token is the model's argmax (greedy decoding would reproduce it).

How it batches (share_context, batch_tokens, max_batch, progress) is one argument: the stage's
EvaluateConfig (evaluate.batch_tokens ... in the YAML), or a Batching for any other caller; the numbers
are read once, where they are used (score_encoded -> batches).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import torch

from pipelines.config import EvaluateConfig
from pipelines.data.benchmarks import Prompt
from pipelines.errors import StudyError
from pipelines.evaluate.models import LM

PAD_SEGMENT = -2  # padding positions
CONTEXT_SEGMENT = -1  # shared context: every token of the sequence may attend to it


@dataclass(frozen=True)
class Batching:
    """How the scorer runs, for callers outside a study (tests, lm-eval checks, benchmarks). The evaluate
    stage passes its EvaluateConfig instead, which has these four fields under the same names."""

    share_context: bool = True  # one forward per item (context once, tree mask); False: one row per choice
    batch_tokens: int = 4096  # padded tokens per forward pass
    max_batch: int = 64  # sequences per forward pass
    progress: bool = False  # a tqdm bar per task


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
    """Longest first; a batch holds at most batch_tokens padded tokens and max_batch sequences (evaluate.
    batch_tokens, max_batch), of lengths within MAX_PADDING of each other: on a CPU a padded token costs as
    much as a real one, and batching gains less than padding loses."""
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


def score(lm: LM, prompts: Sequence[Prompt], batching: Batching | EvaluateConfig = Batching(),
          desc: str = "scoring", pack_tokens: int = PACK_TOKENS) -> list[list[float]]:
    """Sum of log-probabilities of each continuation given its context: one list per prompt."""
    return score_encoded(lm, encode_prompts(lm, prompts), batching, desc, pack_tokens).lls


@dataclass
class Scores:
    lls: list[list[float]]  # per encoded item, per continuation: sum of log-probabilities
    greedy: list[list[bool]]  # every continuation token is the argmax of its position


def score_encoded(lm: LM, encoded: Sequence[Encoded], batching: Batching | EvaluateConfig = Batching(),
                  desc: str = "scoring", pack_tokens: int = PACK_TOKENS) -> Scores:
    """The scorer on token ids: one forward per packed batch (tree or rows, as `score`); tree items
    merged into rows of up to `pack_tokens` tokens (capped by the model's length; 0: one item a row)."""
    tree = batching.share_context and lm.supports_tree
    seqs = pack(list(encoded), lm.max_length, tree=tree)
    if tree and pack_tokens:
        seqs = merge(seqs, min(pack_tokens, lm.max_length))
    lls = [[0.0] * len(e.continuations) for e in encoded]
    greedy = [[True] * len(e.continuations) for e in encoded]
    groups = batches(seqs, batching.batch_tokens, batching.max_batch)
    bar = None
    if batching.progress:
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
