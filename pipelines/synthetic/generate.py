"""Generate a completion for every prompt (resumable), then clean them into documents.

Output, in results/<run>/generate/:
  parts/part-<time>-<pid>.jsonl   raw completions, one JSON line per prompt, appended batch by batch
                                  and fsync'd: {"prompt_id", "text", "finish_reason", "prompt_tokens",
                                  "completion_tokens", "error", "generator"}. Each invocation writes a
                                  new part file, so a line torn by `kill -9` is always the last line of
                                  an old file; reading skips it and that prompt is generated again.
  state.json                      what the parts were generated with (prompts digest, backend, sampling,
                                  seed): if that changes, the old parts are discarded
  documents/synthetic_00000.jsonl.gz ...   kept documents, in prompt order
  removed/<reason>_00000.jsonl.gz          every dropped output, whole, with metadata.dropped_reason

A rerun skips every prompt that has a complete line, so the stage always ends with exactly one
completion per prompt. Post-processing (openers, length limits) is redone from the parts on every
run; changing only `min_tokens` / `on_length` / `strip_openers` regenerates nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterator

from tqdm.auto import tqdm

from pipelines.config import GenerateConfig
from pipelines.data.documents import ShardedWriter, batched, read_documents
from pipelines.engines.backend import Backend, Completion, prompt_seed
from pipelines.engines.factory import make_backend
from pipelines.engines.inference import run_requests
from pipelines.engines.parts import (
    PartWriter,
    completion_record,
    keep_parts_if_same,
    read_row,
    scan_parts,
)
from pipelines.errors import StudyError
from pipelines.files import Lock
from pipelines.runs.manifest import StageContext
from pipelines.synthetic.prompts import length_summary

LENGTH_BINS = (0, 50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000)
LOG_EVERY_S = 30.0  # without a terminal (tqdm off), a progress line this often
SESSIONS = "sessions.jsonl"  # in parts/: one line per finished (or failed) generation invocation

# ---------------------------------------------------------------------------------------------
# post-processing

# a courtesy word before the content: "Sure! ", "Certainly, "
_COURTESY = re.compile(r"^(?:sure|certainly|of course|absolutely|okay|ok|alright|great)\b[!,.:]*[ \t]*", re.I)
# a first line that announces the text: "Here is a blog post about X:", "Below is a story for kids."
_ANNOUNCE = re.compile(r"^(?:here(?:'s| is| are)|below (?:is|are)|the following is|i(?:'d| would) be (?:happy|glad) to"
                       r"|i'm (?:happy|glad|excited|thrilled) to|i'll (?:write|create)|let me (?:write|create)"
                       r"|let's (?:write|create|dive|explore))\b", re.I)
# a title line: markdown heading, bold-only line, "Title: ...", "Chapter 3: ...", "Unit 2.1 ..."
# ... and names what it announces
_GENRE = re.compile(r"\b(?:story|stories|blog|post|article|section|textbook|unit|chapter|guide|wikihow|tutorial|essay"
                    r"|lesson|version|text|response|piece|narrative|sample|example|how-to)\b", re.I)
_TITLE = re.compile(r"^(?:#{1,6}\s+\S.*|\*\*[^*\n]{1,150}\*\*:?|(?:title|chapter|unit|section|lesson|course unit)\b"
                    r"\s*[\d.:IVX-]*\s*[:.\-]?.{0,150})$", re.I)
# a first line that only offers help: "I'd be happy to help you with that." (no colon, no genre word)
_OFFER = re.compile(r"^(?:i(?:'d| would) be (?:happy|glad|delighted) to help|i'm (?:happy|glad) to help|happy to help)"
                    r"(?: you)?(?: with (?:that|this|it|your request))?[.!]*$", re.I)
_SENTENCE_END = re.compile(r"[.!?][\"')\]*]*(?=\s|$)")


def _is_bare_title(line: str, rest: str) -> bool:
    """A short line without end punctuation, followed by a blank line, most words capitalised."""
    words = line.split()
    if not (1 <= len(words) <= 12) or len(line) > 90 or line[-1] in ".!?:;,\"”)" or not rest.startswith("\n"):
        return False
    caps = sum(w[0].isupper() or not w[0].isalpha() for w in words)
    return caps >= max(1, (len(words) + 1) // 2)


def strip_openers(text: str) -> tuple[str, str]:
    """Remove boilerplate before the content -> (text, what was removed). Up to 3 passes, so
    "Sure! Here's a story:\\n\\nTitle: X\\n\\nOnce ..." loses all three."""
    text = text.strip()
    removed = []
    for _ in range(3):
        m = _COURTESY.match(text)
        if m and m.end() < len(text):
            removed.append(text[: m.end()])
            text = text[m.end():].lstrip()
        first, _, rest = text.partition("\n")
        line = first.strip()
        if not rest.strip():  # a one-line output: nothing left to strip it from
            break
        announces = _ANNOUNCE.match(line) and ((line.endswith(":") and ":" not in line[:-1])
                                               or (len(line) <= 200 and _GENRE.search(line)))
        if announces or _OFFER.match(line) or _TITLE.match(line) or _is_bare_title(line, rest):
            removed.append(first)
            text = rest.lstrip()
            continue
        if not m:
            break
    return text, "\n".join(r.strip() for r in removed)


def trim_to_sentence(text: str) -> str:
    """Cut an output that hit the length limit back to its last complete sentence ('' if none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


def postprocess(row: dict, cfg: GenerateConfig) -> tuple[str, dict, str | None]:
    """A raw completion -> (text, metadata about the cleaning, drop reason or None)."""
    raw = (row.get("text") or "").strip()
    info: dict[str, Any] = {"stripped_opener": "", "trimmed": False}
    if row.get("finish_reason") == "error":
        return raw, {**info, "error": row.get("error")}, "backend_error"
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a server's JSON ("\ud800"): no valid text to train on
        return raw, info, "undecodable"
    text = raw
    if cfg.strip_openers:
        text, info["stripped_opener"] = strip_openers(text)
    if row.get("finish_reason") == "length":
        if cfg.on_length == "drop":
            return text, info, "truncated"
        if cfg.on_length == "trim":
            text, info["trimmed"] = trim_to_sentence(text), True
            if not text:  # not one complete sentence
                return raw, info, "truncated"
    # tokens of what is kept: the generator's count, scaled by the share of characters kept
    tokens = row.get("completion_tokens") or 0
    info["tokens"] = round(tokens * len(text) / len(raw)) if raw and text != raw else tokens
    if not text:
        return text, info, "empty"
    if info["tokens"] < cfg.min_tokens:
        return text, info, "too_short"
    return text, info, None


# ---------------------------------------------------------------------------------------------
# generation


def generation_key(ctx: StageContext) -> dict:
    """Everything that decides the raw completions (not the post-processing)."""
    cfg = ctx.config.generate
    return {
        "prompts_sha256": ctx.inputs["prompts"].get("prompts_sha256"),
        "seed": ctx.config.seed,
        "backend": cfg.backend.hashed_dict(),
        "sampling": cfg.sampling.hashed_dict(),
    }


def _prompts(ctx: StageContext) -> Iterator[dict]:
    m = ctx.inputs["prompts"]
    yield from read_documents(ctx.run.dir("prompts") / o["path"] for o in m["outputs"])


def generate_missing(ctx: StageContext, backend_factory=make_backend) -> dict:
    """Complete every prompt without a saved completion. -> throughput of this invocation."""
    cfg = ctx.config.generate
    parts_dir = ctx.dir / "parts"
    state_path = ctx.dir / "state.json"
    keep_parts_if_same(parts_dir, state_path, generation_key(ctx), "[generate] prompts, model or sampling")
    done, scan = scan_parts(parts_dir)
    total = ctx.inputs["prompts"]["counts"]["prompts"]
    have = sum(1 for p in _prompts(ctx) if p["id"] in done)
    todo = total - have
    stats = {"prompts_total": total, "completed_before": have, "generated_now": 0, "completion_tokens_now": 0,
             "wall_s_now": 0.0, **scan}
    if scan["torn_lines"] or scan["duplicate_lines"]:
        print(f"[generate] ignoring {scan['torn_lines']} torn and {scan['duplicate_lines']} duplicate line(s) "
              f"in {parts_dir}")
    if todo == 0:
        print(f"[generate] all {total:,} prompts already have a completion")
        return stats
    if cfg.executor.kind == "datatrove":
        return _generate_with_datatrove(ctx, done, stats)
    print(f"[generate] {todo:,} of {total:,} prompts to go ({have:,} resumed) with {cfg.backend.kind}, "
          f"max_new_tokens={cfg.sampling.max_new_tokens}, batch {cfg.backend.batch_size}")
    t_load = time.perf_counter()
    backend: Backend = backend_factory(cfg.backend, ctx.config.seed)
    stats["model_load_s"] = round(time.perf_counter() - t_load, 2)
    writer = PartWriter(parts_dir)
    t0 = last_log = time.perf_counter()
    try:
        with tqdm(total=total, initial=have, desc="generate", unit="doc", disable=None, dynamic_ncols=True) as bar:
            for batch in batched((p for p in _prompts(ctx) if p["id"] not in done), cfg.backend.batch_size):
                seeds = [prompt_seed(ctx.config.seed, p["id"]) for p in batch]
                comps: list[Completion] = backend.generate([p["text"] for p in batch], cfg.sampling, seeds)
                writer.write([completion_record(p["id"], c, backend.model_name)
                              for p, c in zip(batch, comps, strict=True)])
                stats["generated_now"] += len(batch)
                stats["completion_tokens_now"] += sum(c.completion_tokens for c in comps)
                wall = time.perf_counter() - t0
                rate = stats["completion_tokens_now"] / max(wall, 1e-9)
                bar.update(len(batch))
                bar.set_postfix_str(f"{rate:,.0f} tok/s")
                if bar.disable and time.perf_counter() - last_log >= LOG_EVERY_S:
                    last_log = time.perf_counter()
                    print(f"[generate] {have + stats['generated_now']:,}/{total:,} docs, {rate:,.1f} tok/s", flush=True)
    finally:
        writer.close()
        backend.close()
        stats["wall_s_now"] = round(time.perf_counter() - t0, 3)
        # one line per invocation that got here (a kill -9 skips it): throughput across resumes
        session = {"part": writer.path.name, "generated": stats["generated_now"],
                   "completion_tokens": stats["completion_tokens_now"], "wall_s": stats["wall_s_now"],
                   "model_load_s": stats["model_load_s"]}
        with open(parts_dir / SESSIONS, "a") as f:
            f.write(json.dumps(session) + "\n")
    return stats


def _generate_with_datatrove(ctx: StageContext, done: dict, stats: dict) -> dict:
    """The same requests (and per-prompt seeds) through datatrove's InferenceRunner (engines/inference.py)."""
    cfg = ctx.config.generate
    t0 = time.perf_counter()
    todo = ((p["id"], p["text"], prompt_seed(ctx.config.seed, p["id"])) for p in _prompts(ctx) if p["id"] not in done)
    try:
        dt = run_requests(todo, ctx.dir / "parts", cfg.backend, cfg.sampling, cfg.executor,
                          f"generate-{ctx.run.name}", "generate")
    finally:
        stats["wall_s_now"] = round(time.perf_counter() - t0, 3)
    stats.update(generated_now=dt["imported"], completion_tokens_now=dt["completion_tokens"], model_load_s=None,
                 datatrove=dt)
    session = {"part": "datatrove", "generated": dt["imported"], "completion_tokens": dt["completion_tokens"],
               "wall_s": stats["wall_s_now"], "model_load_s": None}
    with open(ctx.dir / "parts" / SESSIONS, "a") as f:
        f.write(json.dumps(session) + "\n")
    return stats


# ---------------------------------------------------------------------------------------------
# the stage


def _histogram(values: list[int]) -> dict:
    edges = [*LENGTH_BINS, None]
    counts = [0] * len(LENGTH_BINS)
    for x in values:
        i = max(k for k, e in enumerate(LENGTH_BINS) if x >= e)
        counts[i] += 1
    return {"edges": edges, "counts": counts}  # bin k: edges[k] <= tokens < edges[k+1] (None: no upper end)


def saved_completions(ctx: StageContext, done: dict) -> Iterator[tuple[dict, dict]]:
    """(prompt, its saved completion row) in prompt order."""
    handles: dict[Path, IO[bytes]] = {}
    missing = []
    try:
        for prompt in _prompts(ctx):
            where = done.get(prompt["id"])
            if where is None:
                missing.append(prompt["id"])
                continue
            yield prompt, read_row(handles, where)
    finally:
        for f in handles.values():
            f.close()
    if missing:  # cannot happen after generate_missing; a guard against a corrupted folder
        raise StudyError(f"[generate] {len(missing)} prompt(s) have no completion (first: {missing[:3]}): rerun to finish")


def synthetic_document(prompt: dict, row: dict, text: str, info: dict, cfg: GenerateConfig) -> dict:
    """The documents record of one cleaned completion: its prompt's metadata, the generator's, the cleaning's."""
    return {
        "id": f"{cfg.source}/{prompt['id']}",
        "text": text,
        "source": cfg.source,
        "metadata": {
            "prompt_id": prompt["id"], **prompt["metadata"],
            "generator": row.get("generator"), "backend": cfg.backend.kind,
            "finish_reason": row.get("finish_reason"), "prompt_tokens": row.get("prompt_tokens"),
            "completion_tokens": row.get("completion_tokens"), **info,
            "sampling": {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p,
                         "max_new_tokens": cfg.sampling.max_new_tokens},
        },
    }


def write_removed(doc: dict, row: dict, reason: str, removed: dict[str, ShardedWriter], folder: Path,
                  shard_documents: int) -> None:
    """A dropped output, whole, into removed/<reason>_*.jsonl.gz (one writer per reason, opened when first used)."""
    doc["metadata"]["dropped_reason"] = reason
    if not doc["text"]:
        doc["text"] = row.get("text") or ""  # keep what the model said, even if only an opener
    w = removed.get(reason)
    if w is None:
        w = removed[reason] = ShardedWriter(folder, reason, shard_documents)
    w.write(doc)


def finalize(ctx: StageContext) -> dict:
    """Saved completions -> documents/ and removed/, in prompt order. -> manifest fields."""
    cfg = ctx.config.generate
    for sub in ("documents", "removed"):
        shutil.rmtree(ctx.dir / sub, ignore_errors=True)
    done, _ = scan_parts(ctx.dir / "parts")
    kept = ShardedWriter(ctx.dir / "documents", "synthetic", cfg.shard_documents)
    removed: dict[str, ShardedWriter] = {}
    counts, dropped, finish, generators = Counter(), Counter(), Counter(), Counter()
    per = {"audience": Counter(), "style": Counter(), "cell": Counter()}  # kept documents
    tokens: list[int] = []
    chars: list[int] = []
    for prompt, row in saved_completions(ctx, done):
        finish[row.get("finish_reason") or "?"] += 1
        generators[row.get("generator") or "?"] += 1
        text, info, reason = postprocess(row, cfg)
        doc = synthetic_document(prompt, row, text, info, cfg)
        if reason:
            dropped[reason] += 1
            write_removed(doc, row, reason, removed, ctx.dir / "removed", cfg.shard_documents)
            continue
        kept.write(doc)
        counts["documents"] += 1
        counts["stripped_openers"] += bool(info["stripped_opener"])
        counts["trimmed"] += info["trimmed"]
        tokens.append(info["tokens"])
        chars.append(len(text))
        pm = prompt["metadata"]
        per["audience"][pm["audience"]] += 1
        per["style"][pm["style"]] += 1
        per["cell"][f"{pm['audience']}/{pm['style']}"] += 1
    shards = kept.close()
    removed_shards = {r: w.close() for r, w in sorted(removed.items())}
    return {
        "outputs": [{"path": f"documents/{s['path']}", "documents": s["documents"], "chars": s["chars"]} for s in shards],
        "removed": {r: [f"removed/{s['path']}" for s in ss] for r, ss in removed_shards.items()},
        "counts": {
            "documents": counts["documents"],
            "tokens": sum(tokens),
            "completions": len(done),
            "dropped": dict(sorted(dropped.items())),
            "per_audience": dict(sorted(per["audience"].items())),
            "per_style": dict(sorted(per["style"].items())),
            "per_cell": dict(sorted(per["cell"].items())),
            "finish_reasons": dict(sorted(finish.items())),
            "stripped_openers": counts["stripped_openers"],
            "trimmed": counts["trimmed"],
        },
        "lengths": {"tokens": length_summary(tokens), "chars": length_summary(chars), "tokens_histogram": _histogram(tokens)},
        "generator": {"backend": cfg.backend.kind, "models": dict(generators)},
    }


def run(ctx: StageContext, backend_factory=make_backend) -> dict:
    ctx.dir.mkdir(parents=True, exist_ok=True)
    with Lock(ctx.dir / ".lock", f"into {ctx.dir}"):
        gen = generate_missing(ctx, backend_factory)
        result = finalize(ctx)
    c = result["counts"]
    rate = gen["completion_tokens_now"] / gen["wall_s_now"] if gen.get("wall_s_now") else None
    sessions_path = ctx.dir / "parts" / SESSIONS
    sessions = [json.loads(line) for line in sessions_path.read_text().splitlines()] if sessions_path.exists() else []
    wall = sum(x["wall_s"] for x in sessions)
    result["throughput"] = {
        **gen,
        "completion_tokens_per_s": round(rate, 2) if rate else None,
        "docs_per_s": round(gen["generated_now"] / gen["wall_s_now"], 3) if gen.get("wall_s_now") else None,
        # every invocation that was not killed: a killed one's completions count, its time does not
        "sessions": sessions,
        "all_sessions_completion_tokens_per_s": round(sum(x["completion_tokens"] for x in sessions) / wall, 2) if wall else None,
    }
    result["parts"] = sorted(p.name for p in (ctx.dir / "parts").glob("part-*.jsonl"))
    print(f"[generate] {c['documents']:,} documents, {c['tokens']:,} tokens kept of {c['completions']:,} completions; "
          f"dropped: {c['dropped'] or 'none'}"
          + (f"; this run {gen['generated_now']:,} docs at {rate:,.1f} tok/s" if rate else ""))
    return result


# ---------------------------------------------------------------------------------------------
# for notebooks


def read_generated(run_dir: str | Path, removed: bool = False) -> list[dict]:
    """The documents of results/<run>/generate (or its removed/ ones), in prompt order."""
    d = Path(run_dir) / "generate" / ("removed" if removed else "documents")
    return list(read_documents(sorted(d.glob("*.jsonl.gz"))))


def samples_table(run_dir: str | Path, per_cell: int = 1, chars: int = 400):
    """A pandas table of the first `per_cell` documents of each (audience, style), text shortened."""
    import pandas as pd

    rows, seen = [], Counter()
    for d in read_generated(run_dir):
        md = d["metadata"]
        cell = (md["audience"], md["style"])
        if seen[cell] < per_cell:
            seen[cell] += 1
            text = d["text"] if len(d["text"]) <= chars else d["text"][:chars] + " …"
            rows.append({"audience": cell[0], "style": cell[1], "tokens": md["tokens"],
                         "finish": md["finish_reason"], "seed": md["seed_id"], "text": text})
    return pd.DataFrame(rows).sort_values(["audience", "style"]).reset_index(drop=True) if rows else pd.DataFrame()


def stats_tables(manifest: dict) -> dict:
    """The generate manifest's statistics as pandas tables: kept documents per audience x style,
    drops per reason, the token-length summary and histogram, and throughput."""
    import pandas as pd

    c = manifest["counts"]
    cells = pd.Series({tuple(k.split("/")): v for k, v in c["per_cell"].items()}, dtype="int64")
    per_cell = cells.unstack(fill_value=0) if len(cells) else pd.DataFrame()
    hist = manifest["lengths"]["tokens_histogram"]
    edges = hist["edges"]
    bins = [f"{edges[i]}–{edges[i + 1] if edges[i + 1] is not None else '∞'}" for i in range(len(hist["counts"]))]
    return {
        "documents_per_audience_style": per_cell,
        "dropped": pd.Series(c["dropped"], name="documents", dtype="int64"),
        "token_lengths": pd.Series(manifest["lengths"]["tokens"], name="tokens"),
        "token_histogram": pd.Series(hist["counts"], index=bins, name="documents"),
        "throughput": pd.Series({k: v for k, v in manifest["throughput"].items() if v is not None}, name="value"),
    }
