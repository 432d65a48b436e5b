"""DCLM's CORE prompts and tokens, as MosaicML llm-foundry (v0.9.0, the version DCLM pins) builds them;
core.py scores them.

Prompts (llm-foundry's InContextLearningDataset, for every task type):
  - every top-level string field of a row is stripped (`strip_data`); lists (choices, context_options) are not;
  - few-shot: one random.Random(fewshot_random_seed) per task (per category for jeopardy), consumed item by
    item in file order: rng.sample(range(N), k); if the item itself was drawn, it is removed and one
    rng.choice(range(N)) redraw (not the item, not already drawn) replaces it; the shots are used in set order;
  - a shot is `[example_delimiter] query|context + continuation_delimiter + answer` (the delimiter only when
    text precedes it; the answer with no added space); the test item is the same without its answer,
    right-stripped (multiple choice, language modelling) so "\\nAnswer: " ends as "\\nAnswer:";
  - schema (winograd, winogrande): one context per option, `[example_delimiter] option
    [continuation_delimiter.rstrip() when shots precede]`, not stripped, then the shared continuation;
  - the scored continuation gets a leading space when the tokenizer is GPT-2-style BPE (" a" is one token)
    and it has none; the preamble (prompt string + shots) is tokenized with the tokenizer's special tokens
    (a trailing EOS dropped), the test context and continuation without, and the three are concatenated;
  - a context that does not fit is cut from the left to min(max_seq_len, the model's length) minus the
    continuation (llm-foundry's trim_context, per option).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipelines.data.core_tasks import CoreTask, TaskSpec
from pipelines.errors import StudyError
from pipelines.evaluate.models import LM
from pipelines.evaluate.scoring import Encoded

# ---------------------------------------------------------------------------------------------
# prompts (strings), as llm-foundry builds them


def strip_row(row: dict) -> dict:
    """llm-foundry's strip_data: top-level strings stripped, everything else as it is."""
    return {k: v.strip() if isinstance(v, str) else v for k, v in row.items()}


def fewshot_indices(n: int, k: int, idx: int, rng: random.Random) -> set[int]:
    """llm-foundry's get_fewshot_sample_idxs: k distinct rows of n, never `idx`, in a set (its order is used)."""
    k = min(n - 1, k)
    picked = set(rng.sample(range(0, n), k))
    if idx in picked:
        picked.remove(idx)
        if len(picked) >= n - 1:
            return picked
        redraw = rng.choice(range(0, n))
        while redraw in picked or redraw == idx:
            redraw = rng.choice(range(0, n))
        picked.add(redraw)
    return picked


def add_prefix_space(text: str, prefix_space: bool) -> str:
    return f" {text}" if prefix_space and not text.startswith(" ") else text


def shot_text(spec: TaskSpec, row: dict, preceding: str) -> str:
    """One solved example (construct_context with add_answer=True)."""
    t = spec.icl_task_type
    if t == "schema":
        body = row["context_options"][row["gold"]]
        head = spec.example_delimiter if preceding else ""
        return f"{head}{body}{spec.continuation_delimiter}{row['continuation']}"
    body, answer = (row["query"], row["choices"][row["gold"]]) if t == "multiple_choice" else \
        (row["context"], row["continuation"])
    head = spec.example_delimiter if preceding else ""
    return f"{head}{body}{spec.continuation_delimiter}{answer}"


@dataclass(frozen=True)
class CorePrompt:
    """One item: the preamble (prompt string + shots), and per option its context and continuation."""

    row: int  # position in the task file
    category: str | None
    gold: int | None  # None for language_modeling
    preamble: str
    contexts: list[str]
    continuations: list[str]
    shots: tuple[int, ...] = ()  # the few-shot rows (positions in the task file), in preamble order


def item_prompt(spec: TaskSpec, row: dict, row_index: int, preamble: str, prefix_space: bool,
                shots: tuple[int, ...] = ()) -> CorePrompt:
    t = spec.icl_task_type
    head = spec.example_delimiter if preamble else ""
    if t == "schema":
        tail = spec.continuation_delimiter.rstrip() if preamble else ""
        contexts = [f"{head}{c}{tail}" for c in row["context_options"]]
        cont = add_prefix_space(row["continuation"], prefix_space)
        return CorePrompt(row_index, row.get("category"), row["gold"], preamble, contexts, [cont] * len(contexts),
                          shots)
    body = row["query"] if t == "multiple_choice" else row["context"]
    ctxt = f"{head}{body}{spec.continuation_delimiter}".rstrip()
    if t == "multiple_choice":
        conts = [add_prefix_space(c, prefix_space) for c in row["choices"]]
        return CorePrompt(row_index, row.get("category"), row["gold"], preamble, [ctxt] * len(conts), conts, shots)
    return CorePrompt(row_index, row.get("category"), None, preamble, [ctxt],
                      [add_prefix_space(row["continuation"], prefix_space)], shots)


def build_prompts(task: CoreTask, prefix_space: bool, limit: int | None = None) -> list[CorePrompt]:
    """Prompts of the first `limit` rows (all: None), in file order. The few-shot RNG is consumed as for
    the whole file, so an item's prompt never depends on the limit. Jeopardy-style tasks (has_categories):
    each category is its own data set (llm-foundry's partition_dataset_by_category), with its own RNG."""
    spec = task.spec
    rows = [strip_row(r) for r in task.rows]
    keep = len(rows) if limit is None else min(limit, len(rows))
    if spec.has_categories:
        parts: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            parts.setdefault(r["category"], []).append(i)
        groups = [parts[c] for c in sorted(parts)]
    else:
        groups = [list(range(len(rows)))]
    out: dict[int, CorePrompt] = {}
    for members in groups:
        rng = random.Random(spec.fewshot_random_seed)
        for j, i in enumerate(members):
            if i >= keep:
                break  # file order: the rest of this group lies beyond the limit too
            preamble = spec.prompt_string
            shots = tuple(members[s] for s in fewshot_indices(len(members), spec.num_fewshot, j, rng)) \
                if spec.num_fewshot > 0 else ()
            for s in shots:
                preamble += shot_text(spec, rows[s], preamble)
            out[i] = item_prompt(spec, rows[i], i, preamble, prefix_space, shots)
    return [out[i] for i in range(keep)]


# ---------------------------------------------------------------------------------------------
# tokens, as llm-foundry tokenizes


def needs_prefix_space(lm: LM) -> bool:
    """llm-foundry's tokenizer_needs_prefix_space: " a" is one token (GPT-2-style BPE)."""
    return len(lm.encode([" a"], add_special_tokens=False)[0]) == 1


def _encode_unique(lm: LM, texts: list[str], special: bool) -> dict[str, list[int]]:
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, lm.encode(unique, add_special_tokens=special))) if unique else {}


def trim_context(context: list[int], continuation: list[int], max_len: int) -> list[int]:
    """llm-foundry's trim_context: cut from the left so that context + continuation <= max_len."""
    if len(context) + len(continuation) > max_len:
        room = max_len - len(continuation)
        if room <= 0:
            raise StudyError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                             f"{max_len}-token context")
        context = context[-room:]
    return context


def encode_core(lm: LM, prompts: list[CorePrompt], max_len: int) -> tuple[list[Encoded], list[list[tuple[int, int]]]]:
    """Scorer inputs: options of one item that share their (trimmed) context are one Encoded (the context
    is run once); owners[k] = the (item, option) of each continuation of encoded[k]. Also each option's
    token count (the continuation's)."""
    pre = _encode_unique(lm, [p.preamble for p in prompts], special=True)
    ctx = _encode_unique(lm, [c for p in prompts for c in p.contexts], special=False)
    cont = _encode_unique(lm, [c for p in prompts for c in p.continuations], special=False)
    eos = lm.eos_token_id
    encoded, owners = [], []
    for i, p in enumerate(prompts):
        head = pre[p.preamble]
        if eos is not None and len(head) > 1 and head[-1] == eos:  # _fix_eos_on_preamble
            head = head[:-1]
        by_context: dict[tuple[int, ...], int] = {}
        for j, (c, x) in enumerate(zip(p.contexts, p.continuations)):
            toks = cont[x]
            if not toks:
                raise StudyError(f"item {p.row}: continuation {x!r} encodes to no tokens: nothing to score")
            context = trim_context(head + ctx[c], toks, max_len) or [lm.prefix_token_id]
            key = tuple(context)
            if key not in by_context:
                by_context[key] = len(encoded)
                encoded.append(Encoded(list(context), []))
                owners.append([])
            k = by_context[key]
            encoded[k].continuations.append(toks)
            owners[k].append((i, j))
    return encoded, owners
