"""LLM educational annotation: FineWeb-Edu's additive 5-point prompt on the first N characters of pages.

Every annotator (one backend config, or several for a jury) answers each page with a short
justification and a last line `Educational score: <points>`. The last such line wins, the value is
clipped to 0..5; an answer without one is kept with its raw text, counted, and left out of training.
A jury's score is the mean of the annotators that gave a parseable score.

Output, in results/<run>/annotate/:
  parts/<k>-<model>/part-<time>-<pid>.jsonl   raw answers of annotator k, appended batch by batch and
                     fsync'd (generate.py's PartWriter): {"prompt_id": "<doc id>#<prompt sha>", "text",
                     "finish_reason", "prompt_tokens", "completion_tokens", "error", "generator"}; a line
                     torn by `kill -9` is skipped on resume and that page annotated again
  parts/<k>-<model>/state.json   backend + sampling of those parts: if they change, the parts go
  labels/annotated_00000.jsonl.gz ...   pages with a score: the ingest document plus
                     metadata.annotation = {score, int_score, scores, parsed, models, answers, ...}
  unparsed/unparsed_00000.jsonl.gz ...  pages no annotator scored (same record, score null)

The manifest's `outputs` list only labels/ (what the classifier trains on); counts hold the parse
failure rate overall and per annotator, and the label distribution.

Scoring from the distribution (annotate.scoring: distribution | both): the assistant turn is made to
start with `score_prefix` ("Educational score:"; with `both`, after the model's own justification, cut
at its last score line) and the next-token probabilities of " 0" ... " 5" are read (transformers:
logits; vLLM and OpenAI-compatible servers: top_logprobs). Normalised over the six digits they give
the expected score (the page's label: every page that can be scored gets one, whatever the model
writes) and the argmax. Saved like the answers, in
  scores/<k>-<model>/part-*.jsonl   {"prompt_id": "<doc id>#<sha of prompt + prefix>", "probs": [p0..p5]}
and reported per annotator with the parse-failure rate and, for `both`, the agreement of argmax and
expected score with the parsed score. What each mode reads, labels and reports is its class in
scoring.py.

A little over 400 lines as one thing: answers and digit scores are saved, resumed and merged into
one label set per page together.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from tqdm.auto import tqdm

from pipelines.annotate.prompt import (
    DIGITS,
    MAX_SCORE,
    int_score,
    load_template,
    reference_agreement,
    render_prompt,
    score_prefix,
)
from pipelines.annotate.scoring import Reading, Scoring, Tally, scoring_for
from pipelines.config import BackendConfig
from pipelines.data.documents import ShardedWriter, batched, field_value, read_documents
from pipelines.engines.backend import Backend
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

LOG_EVERY_S = 30.0


def annotator_name(k: int, cfg: BackendConfig) -> str:
    """A folder name per annotator: its position and a slug of the model."""
    model = cfg.model or "smollm2-135m-instruct-gguf"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.rstrip("/").split("/")[-1])[:60]
    return f"{k}-{cfg.kind}-{slug}"


# ---------------------------------------------------------------------------------------------
# pages and their prompts


def pages(ctx: StageContext) -> Iterator[dict]:
    """The first `max_documents` pages of ingest's `split`, in order."""
    cfg = ctx.config.annotate
    m = ctx.inputs["ingest"]
    paths = [ctx.run.dir("ingest") / o["path"] for o in m["outputs"] if o.get("split") == cfg.split]
    for i, doc in enumerate(read_documents(paths)):
        if cfg.max_documents is not None and i >= cfg.max_documents:
            return
        yield doc


def prompt_key(doc_id: str, prompt: str) -> str:
    """A saved answer is reused only for the same page AND the same rendered prompt."""
    return f"{doc_id}#{hashlib.sha256(prompt.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# annotation (resumable, one annotator at a time)


class LazyBackend:
    """One annotator's backend, loaded on first use and shared by answering and scoring."""

    def __init__(self, factory: Callable[..., Backend], cfg: BackendConfig, seed: int):
        self.factory, self.cfg, self.seed = factory, cfg, seed
        self.backend: Backend | None = None
        self.load_s: float | None = None

    def get(self) -> Backend:
        if self.backend is None:
            t = time.perf_counter()
            self.backend = self.factory(self.cfg, self.seed)
            self.load_s = round(time.perf_counter() - t, 2)
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def annotate_missing(ctx: StageContext, k: int, backend_cfg: BackendConfig, template: str,
                     backend_factory: Callable[..., Backend] | LazyBackend = make_backend) -> dict:
    """Answer every page that annotator k has no complete saved answer for. -> stats of this call."""
    cfg = ctx.config.annotate
    name = annotator_name(k, backend_cfg)
    parts_dir = ctx.dir / "parts" / name
    key = {"backend": backend_cfg.hashed_dict(), "sampling": cfg.sampling.hashed_dict(), "seed": ctx.config.seed}
    keep_parts_if_same(parts_dir, parts_dir / "state.json", key, f"[annotate] {name}: model or sampling")
    done, scan = scan_parts(parts_dir)
    lazy = backend_factory if isinstance(backend_factory, LazyBackend) else \
        LazyBackend(backend_factory, backend_cfg, ctx.config.seed)

    def prompts() -> Iterator[tuple[str, str]]:  # (key, prompt); streamed, so any number of pages fits
        for d in pages(ctx):
            p = render_prompt(d["text"], cfg.extract_chars, template)
            yield prompt_key(d["id"], p), p

    total = have = 0
    for pk, _ in prompts():
        total += 1
        have += pk in done
    todo = (t for t in prompts() if t[0] not in done)
    stats: dict[str, Any] = {"annotator": name, "pages": total, "answered_before": have,
                             "answered_now": 0, "completion_tokens_now": 0, "wall_s_now": 0.0, **scan}
    if scan["torn_lines"] or scan["duplicate_lines"]:
        print(f"[annotate] {name}: ignoring {scan['torn_lines']} torn and {scan['duplicate_lines']} duplicate line(s)")
    if have == total:
        print(f"[annotate] {name}: all {total:,} pages already answered")
        return stats
    print(f"[annotate] {name}: {total - have:,} of {total:,} pages to go ({have:,} resumed), "
          f"max_new_tokens={cfg.sampling.max_new_tokens}, temperature={cfg.sampling.temperature}")
    if cfg.executor.kind == "datatrove":  # the same requests through datatrove's InferenceRunner (engines/inference.py)
        t0 = time.perf_counter()
        try:
            dt = run_requests(((pk, p, None) for pk, p in todo), parts_dir, backend_cfg, cfg.sampling, cfg.executor,
                              f"annotate-{ctx.run.name}-{k}", "annotate")
        finally:
            stats["wall_s_now"] = round(time.perf_counter() - t0, 3)
        stats.update(answered_now=dt["imported"], completion_tokens_now=dt["completion_tokens"], datatrove=dt)
        return stats
    backend = lazy.get()
    stats["model_load_s"] = lazy.load_s
    writer = PartWriter(parts_dir)
    t0 = last_log = time.perf_counter()
    try:
        with tqdm(total=total, initial=have, desc=f"annotate {k}", unit="page", disable=None) as bar:
            for batch in batched(todo, backend_cfg.batch_size):
                comps = backend.generate([p for _, p in batch], cfg.sampling)
                writer.write([completion_record(pk, c, backend.model_name)
                              for (pk, _), c in zip(batch, comps, strict=True)])
                stats["answered_now"] += len(batch)
                stats["completion_tokens_now"] += sum(c.completion_tokens for c in comps)
                bar.update(len(batch))
                if bar.disable and time.perf_counter() - last_log >= LOG_EVERY_S:
                    last_log = time.perf_counter()
                    print(f"[annotate] {name}: {have + stats['answered_now']:,}/{total:,} pages", flush=True)
    finally:
        writer.close()
        if lazy is not backend_factory:
            lazy.close()
        stats["wall_s_now"] = round(time.perf_counter() - t0, 3)
    return stats


def score_items(ctx: StageContext, k: int, backend_cfg: BackendConfig, template: str,
                handles: dict[Path, IO[bytes]], answers: dict | None = None) -> Iterator[tuple[dict, str, str, str]]:
    """(page, prompt, prefix, key) for each page, where annotator k's digits are read. With scoring
    `both` the prefix holds the page's saved answer, so it needs the answers first."""
    cfg = ctx.config.annotate
    if cfg.scoring == "both" and answers is None:
        answers = scan_parts(ctx.dir / "parts" / annotator_name(k, backend_cfg))[0]
    for d in pages(ctx):
        p = render_prompt(d["text"], cfg.extract_chars, template)
        answer = None
        if cfg.scoring == "both":
            where = answers.get(prompt_key(d["id"], p)) if answers else None
            if where is None:
                raise StudyError(f"[annotate] page {d['id']} has no saved answer to score after: rerun to finish")
            answer = read_row(handles, where).get("text") or ""
        prefix = score_prefix(answer, cfg.score_prefix)
        yield d, p, prefix, prompt_key(d["id"], p + "\x00" + prefix)


def score_missing(ctx: StageContext, k: int, backend_cfg: BackendConfig, template: str, lazy: LazyBackend) -> dict:
    """Read the digits' probabilities for every page annotator k has none saved for. -> stats of this call."""
    name = annotator_name(k, backend_cfg)
    scores_dir = ctx.dir / "scores" / name
    key = {"backend": backend_cfg.hashed_dict(), "candidates": list(DIGITS)}
    keep_parts_if_same(scores_dir, scores_dir / "state.json", key, f"[annotate] {name}: scoring model")
    done, scan = scan_parts(scores_dir)
    handles: dict[Path, IO[bytes]] = {}
    stats: dict[str, Any] = {"scored_before": 0, "scored_now": 0, "score_wall_s_now": 0.0,
                             "score_torn_lines": scan["torn_lines"]}
    writer: PartWriter | None = None
    t0 = time.perf_counter()
    try:
        todo = []
        for _, p, prefix, sk in score_items(ctx, k, backend_cfg, template, handles):
            if sk in done:
                stats["scored_before"] += 1
            else:
                todo.append((sk, p, prefix))
        if not todo:
            return stats
        print(f"[annotate] {name}: reading the digits' probabilities on {len(todo):,} page(s)")
        backend = lazy.get()
        writer = PartWriter(scores_dir)
        for batch in batched(iter(todo), backend_cfg.batch_size):
            probs = backend.candidate_probs([p for _, p, _ in batch], [x for _, _, x in batch], DIGITS)
            writer.write([{"prompt_id": sk, "probs": [round(v, 8) for v in pr], "generator": backend.model_name}
                          for (sk, _, _), pr in zip(batch, probs, strict=True)])
            stats["scored_now"] += len(batch)
    finally:
        for f in handles.values():
            f.close()
        if writer is not None:
            writer.close()
        stats["score_wall_s_now"] = round(time.perf_counter() - t0, 3)
    return stats


# ---------------------------------------------------------------------------------------------
# labels


def saved(handles: dict[Path, IO[bytes]], index: dict, key: str) -> dict | None:
    where = index.get(key)
    return None if where is None else read_row(handles, where)


def readings(ctx: StageContext, template: str, scoring: Scoring) -> Iterator[tuple[dict, list[Reading]]]:
    """Each page, in page order, with every annotator's Reading of it from the saved answers and digits."""
    cfg = ctx.config.annotate
    names = [annotator_name(k, b) for k, b in enumerate(cfg.annotators)]
    answers = [scan_parts(ctx.dir / "parts" / n)[0] if scoring.reads_answers else {} for n in names]
    digits = [scan_parts(ctx.dir / "scores" / n)[0] if scoring.reads_digits else {} for n in names]
    handles: dict[Path, IO[bytes]] = {}
    missing = []
    try:
        streams = [score_items(ctx, a, b, template, handles, answers[a]) if scoring.reads_digits else None
                   for a, b in enumerate(cfg.annotators)]
        for doc in pages(ctx):
            pk = prompt_key(doc["id"], render_prompt(doc["text"], cfg.extract_chars, template))
            found = []
            for a in range(len(names)):
                answer = saved(handles, answers[a], pk) if scoring.reads_answers else {}
                if answer is None:
                    missing.append(doc["id"])
                    break
                digit = saved(handles, digits[a], next(streams[a])[3]) if scoring.reads_digits else {}  # type: ignore[call-overload]
                if digit is None:
                    missing.append(doc["id"])
                    break
                found.append(scoring.read(answer, digit))
            yield doc, found
    finally:
        for f in handles.values():
            f.close()
    if missing:  # cannot happen after annotate_missing; a guard against a corrupted folder
        raise StudyError(f"[annotate] {len(missing)} page(s) have no answer (first: {missing[:3]}): rerun to finish")


def annotator_entry(name: str, b: BackendConfig, t: Tally, n_pages: int, scoring: Scoring) -> dict:
    """One annotator in the manifest: parse counts, finish reasons, labels (and the mode's own fields)."""
    c = t.counts
    return {"name": name, "model": b.model or "bundled SmolLM2-135M-Instruct GGUF", "kind": b.kind,
            "parsed": c["parsed"], "failed": c["failed"], "clipped": c["clipped"],
            "parse_failure_rate": round(c["failed"] / n_pages, 4) if n_pages and scoring.reads_answers else None,
            "finish_reasons": {k[len("finish_"):]: v for k, v in sorted(c.items()) if k.startswith("finish_")},
            "label_distribution": {str(s): t.labels.get(s, 0) for s in range(MAX_SCORE + 1)},
            **scoring.annotator_fields(t, n_pages)}


def finalize(ctx: StageContext, template: str, scoring: Scoring) -> dict:
    """Saved answers (and digit probabilities) -> labels/ (scored pages) and unparsed/, in page order.
    A jury's label is the mean of its annotators' labels. -> manifest fields."""
    cfg = ctx.config.annotate
    for sub in ("labels", "unparsed"):
        shutil.rmtree(ctx.dir / sub, ignore_errors=True)
    labelled = ShardedWriter(ctx.dir / "labels", "annotated", cfg.shard_documents)
    unparsed = ShardedWriter(ctx.dir / "unparsed", "unparsed", cfg.shard_documents)
    tallies = [Tally() for _ in cfg.annotators]
    labels: Counter[int] = Counter()
    n_pages = n_no_parse = 0
    reference_pairs: list[tuple[float, float]] = []  # (label, reference score) of pages that carry one
    for doc, found in readings(ctx, template, scoring):
        n_pages += 1
        for t, r in zip(tallies, found):
            t.add(r, scoring)
        good = [r.label for r in found if r.label is not None]
        score = sum(good) / len(good) if good else None
        ref = field_value(doc.get("metadata") or {}, cfg.reference_field) if cfg.reference_field else None
        if score is not None and isinstance(ref, (int, float)) and not isinstance(ref, bool):
            reference_pairs.append((score, float(ref)))
        n_no_parse += all(r.parsed.score is None for r in found)
        doc["metadata"]["annotation"] = {
            "score": score,
            "int_score": int_score(score) if score is not None else None,
            "scores": [r.label for r in found],  # per annotator; None: unparseable answer
            "raw_values": [r.parsed.raw for r in found],
            "answers": [r.answer for r in found],  # the justification, whole
            "models": [r.model for r in found],
            "extract_chars": cfg.extract_chars,
            **scoring.page_fields(found),
        }
        if score is None:
            unparsed.write(doc)
        else:
            labels[int_score(score)] += 1
            labelled.write(doc)
    shards, bad_shards = labelled.close(), unparsed.close()
    n_labelled = sum(s["documents"] for s in shards)
    n_failed = n_pages - n_labelled
    counts: dict[str, Any] = {
        "documents": n_labelled,
        "pages": n_pages,
        "unparsed": n_failed,
        "parse_failure_rate": round(n_failed / n_pages, 4) if n_pages else None,
        "label_distribution": {str(s): labels.get(s, 0) for s in range(MAX_SCORE + 1)},
    }
    if cfg.reference_field:  # the signal the labels carry, where a reference score exists
        counts["reference"] = reference_agreement(reference_pairs, cfg.reference_field, ctx.config.seed)
    counts.update(scoring.count_fields(counts, n_pages, n_no_parse))
    names = [annotator_name(k, b) for k, b in enumerate(cfg.annotators)]
    return {
        "outputs": [{"path": f"labels/{s['path']}", "documents": s["documents"], "chars": s["chars"]} for s in shards],
        "unparsed": [{"path": f"unparsed/{s['path']}", "documents": s["documents"]} for s in bad_shards],
        "counts": counts,
        "annotators": [annotator_entry(n, b, t, n_pages, scoring) for n, b, t in zip(names, cfg.annotators, tallies)],
        "prompt_sha256": hashlib.sha256(template.encode()).hexdigest(),
    }


def run(ctx: StageContext, backend_factory: Callable[..., Backend] = make_backend) -> dict:
    cfg = ctx.config.annotate
    scoring = scoring_for(cfg.scoring)
    template = load_template(cfg.prompt_path)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    with Lock(ctx.dir / ".lock", f"into {ctx.dir}"):
        # a part folder of an annotator no longer in the config is stale: remove it
        keep = {annotator_name(k, b) for k, b in enumerate(cfg.annotators)}
        for sub in ("parts", "scores"):
            for d in (ctx.dir / sub).glob("*"):
                if d.is_dir() and d.name not in keep:
                    shutil.rmtree(d)
        throughput = []
        for k, b in enumerate(cfg.annotators):
            lazy = LazyBackend(backend_factory, b, ctx.config.seed)
            try:
                t = (annotate_missing(ctx, k, b, template, lazy) if scoring.reads_answers
                     else {"annotator": annotator_name(k, b), "answered_now": 0, "wall_s_now": 0.0})
                if scoring.reads_digits:
                    t.update(score_missing(ctx, k, b, template, lazy))
                    t.setdefault("model_load_s", lazy.load_s)
            finally:
                lazy.close()
            throughput.append(t)
        result = finalize(ctx, template, scoring)
    for t in throughput:
        t["docs_per_s"] = round(t["answered_now"] / t["wall_s_now"], 3) if t.get("wall_s_now") else None
        t["completion_tokens_per_s"] = (round(t["completion_tokens_now"] / t["wall_s_now"], 2)
                                        if t.get("wall_s_now") else None)
    result["throughput"] = throughput
    print(f"[annotate] {scoring.summary(result['counts'])}")
    return result


# ---------------------------------------------------------------------------------------------
# for notebooks


def read_annotations(run_dir: str | Path, unparsed: bool = False) -> list[dict]:
    """The pages of results/<run>/annotate/labels (or unparsed/), in page order."""
    d = Path(run_dir) / "annotate" / ("unparsed" if unparsed else "labels")
    return list(read_documents(sorted(d.glob("*.jsonl.gz"))))


def annotator_table(manifest: dict):
    """One row per annotator: pages parsed / failed / clipped, parse-failure rate, labels 0..5."""
    import pandas as pd

    rows = []
    for a in manifest["annotators"]:
        rows.append({"annotator": a["name"], "model": a["model"], "parsed": a["parsed"], "failed": a["failed"],
                     "clipped": a["clipped"], "parse_failure_rate": a["parse_failure_rate"],
                     **{f"score {k}": v for k, v in a["label_distribution"].items()}})
    return pd.DataFrame(rows)


def examples_per_score(docs: list[dict], per_score: int = 2, chars: int = 300):
    """The first `per_score` pages of each int_score (None: unparsed): extract and the model's answer."""
    import pandas as pd

    seen: Counter = Counter()
    rows = []
    for d in docs:
        a = d["metadata"]["annotation"]
        k = a["int_score"]
        if seen[k] >= per_score:
            continue
        seen[k] += 1
        rows.append({"int_score": k, "score": a["score"], "id": d["id"], "source": d["source"],
                     "extract": d["text"][:chars], "answer": (a["answers"][0] or "")[-chars:]})
    columns = ["int_score", "score", "id", "source", "extract", "answer"]  # also when no page parsed
    return pd.DataFrame(rows, columns=columns).sort_values("int_score", na_position="first", kind="stable").reset_index(drop=True)
