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
expected score with the parsed score.

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
    DigitScore,
    ParsedScore,
    digit_score,
    int_score,
    load_template,
    parse_score,
    reference_agreement,
    render_prompt,
    score_prefix,
    spearman,
)
from pipelines.config import BackendConfig
from pipelines.data.documents import ShardedWriter, batched, field_value, read_documents
from pipelines.errors import StudyError
from pipelines.files import Lock
from pipelines.llm.backends import Backend, make_backend
from pipelines.llm.inference import run_requests
from pipelines.llm.parts import (
    PartWriter,
    completion_record,
    keep_parts_if_same,
    read_row,
    scan_parts,
)
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
    if cfg.executor.kind == "datatrove":  # the same requests through datatrove's InferenceRunner (llm/inference.py)
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


def _agreement(parsed: list[float | None], dist: list[DigitScore | None]) -> dict:
    pairs = [(p, d) for p, d in zip(parsed, dist) if p is not None and d is not None]
    return {
        "pages": len(pairs),
        "argmax_equals_parsed": round(sum(d.argmax == int_score(p) for p, d in pairs) / len(pairs), 4) if pairs else None,
        "mean_abs_diff_expected_parsed": round(sum(abs(d.expected - p) for p, d in pairs) / len(pairs), 4) if pairs else None,
        "spearman_expected_parsed": spearman([d.expected for _, d in pairs], [p for p, _ in pairs]),
    }


def finalize(ctx: StageContext, template: str) -> dict:
    """Saved answers (and digit probabilities) -> labels/ (scored pages) and unparsed/, in page order.
    -> manifest fields."""
    cfg = ctx.config.annotate
    mode = cfg.scoring
    for sub in ("labels", "unparsed"):
        shutil.rmtree(ctx.dir / sub, ignore_errors=True)
    names = [annotator_name(k, b) for k, b in enumerate(cfg.annotators)]
    indexes = [scan_parts(ctx.dir / "parts" / n)[0] if mode != "distribution" else {} for n in names]
    score_indexes = [scan_parts(ctx.dir / "scores" / n)[0] if mode != "parse" else {} for n in names]
    labelled = ShardedWriter(ctx.dir / "labels", "annotated", cfg.shard_documents)
    unparsed = ShardedWriter(ctx.dir / "unparsed", "unparsed", cfg.shard_documents)
    handles: dict[Path, IO[bytes]] = {}
    per_annotator = [Counter() for _ in names]  # parsed / failed / clipped / finish reasons
    annotator_labels = [Counter() for _ in names]  # int score -> pages, per annotator
    argmaxes = [Counter() for _ in names]
    parsed_all: list[list[float | None]] = [[] for _ in names]
    dist_all: list[list[DigitScore | None]] = [[] for _ in names]
    labels: Counter[int] = Counter()
    n_pages = n_no_parse = 0
    missing = []
    reference_pairs: list[tuple[float, float]] = []  # (label, reference score) of pages that carry one
    try:
        streams = [score_items(ctx, a, b, template, handles, indexes[a]) if mode != "parse" else None
                   for a, b in enumerate(cfg.annotators)]
        for doc in pages(ctx):
            n_pages += 1
            pk = prompt_key(doc["id"], render_prompt(doc["text"], cfg.extract_chars, template))
            scores, answers, models, parsed_raw, parsed_scores, dists = [], [], [], [], [], []
            for a, index in enumerate(indexes):
                c = per_annotator[a]
                p, row = ParsedScore(None, None, False), {}
                if mode != "distribution":
                    where = index.get(pk)
                    if where is None:
                        missing.append(doc["id"])
                        break
                    row = read_row(handles, where)
                    p = parse_score(row.get("text") or "")
                    c["finish_" + (row.get("finish_reason") or "?")] += 1
                    c["parsed" if p.score is not None else "failed"] += 1
                    c["clipped"] += p.clipped
                ds = None
                if mode != "parse":
                    _, _, _, sk = next(streams[a])  # type: ignore[call-overload]
                    where = score_indexes[a].get(sk)
                    if where is None:
                        missing.append(doc["id"])
                        break
                    srow = read_row(handles, where)
                    ds = digit_score(srow.get("probs"))
                    c["scored" if ds is not None else "unscored"] += 1
                    c["mass"] += ds.mass if ds is not None else 0.0
                    if ds is not None:
                        argmaxes[a][ds.argmax] += 1
                    row = row or {"generator": srow.get("generator")}
                    parsed_all[a].append(p.score)
                    dist_all[a].append(ds)
                label = p.score if mode == "parse" else (ds.expected if ds is not None else None)
                if label is not None:
                    annotator_labels[a][int_score(label)] += 1
                scores.append(label)
                parsed_raw.append(p.raw)
                parsed_scores.append(p.score)
                dists.append(ds)
                answers.append(row.get("text") if mode != "distribution" else None)
                models.append(row.get("generator"))
            good = [s for s in scores if s is not None]
            score = sum(good) / len(good) if good else None
            ref = field_value(doc.get("metadata") or {}, cfg.reference_field) if cfg.reference_field else None
            if score is not None and isinstance(ref, (int, float)) and not isinstance(ref, bool):
                reference_pairs.append((score, float(ref)))
            n_no_parse += all(s is None for s in parsed_scores)
            doc["metadata"]["annotation"] = {
                "score": score,
                "int_score": int_score(score) if score is not None else None,
                "scores": scores,  # per annotator; None: unparseable answer
                "raw_values": parsed_raw,
                "answers": answers,  # the justification, whole
                "models": models,
                "extract_chars": cfg.extract_chars,
            }
            if mode != "parse":
                doc["metadata"]["annotation"].update({
                    "scoring": mode,  # `scores` are the expected scores from the digits' probabilities
                    "parsed_scores": parsed_scores,
                    "expected_scores": [round(d.expected, 6) if d else None for d in dists],
                    "argmax_scores": [d.argmax if d else None for d in dists],
                    "digit_probs": [list(d.probs) if d else None for d in dists],
                    "digit_mass": [round(d.mass, 6) if d else None for d in dists],
                })
            if score is None:
                unparsed.write(doc)
            else:
                labels[int_score(score)] += 1
                labelled.write(doc)
    finally:
        for f in handles.values():
            f.close()
    if missing:  # cannot happen after annotate_missing; a guard against a corrupted folder
        raise StudyError(f"[annotate] {len(missing)} page(s) have no answer (first: {missing[:3]}): rerun to finish")
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
    if mode != "parse":  # `unparsed`: pages with no label; parse failures counted apart
        counts.update({"scoring": mode, "label_from": "expected score of the digits 0..5 at the score position",
                       "unlabelled_rate": counts["parse_failure_rate"],
                       "parse_failure_rate": (round(n_no_parse / n_pages, 4) if n_pages else None)
                       if mode == "both" else None})
    annotators = []
    for a, (n, b, c, al) in enumerate(zip(names, cfg.annotators, per_annotator, annotator_labels)):
        entry = {"name": n, "model": b.model or "bundled SmolLM2-135M-Instruct GGUF", "kind": b.kind,
                 "parsed": c["parsed"], "failed": c["failed"], "clipped": c["clipped"],
                 "parse_failure_rate": round(c["failed"] / n_pages, 4) if n_pages and mode != "distribution" else None,
                 "finish_reasons": {k[len("finish_"):]: v for k, v in sorted(c.items()) if k.startswith("finish_")},
                 "label_distribution": {str(s): al.get(s, 0) for s in range(MAX_SCORE + 1)}}
        if mode != "parse":
            scored = [d for d in dist_all[a] if d is not None]
            entry["distribution"] = {
                "scored": c["scored"], "unscored": c["unscored"],
                "mean_digit_mass": round(c["mass"] / n_pages, 4) if n_pages else None,
                "mean_expected_score": round(sum(d.expected for d in scored) / len(scored), 4) if scored else None,
                "argmax_distribution": {str(s): argmaxes[a].get(s, 0) for s in range(MAX_SCORE + 1)},
            }
            if mode == "both":
                entry["agreement"] = _agreement(parsed_all[a], dist_all[a])
        annotators.append(entry)
    return {
        "outputs": [{"path": f"labels/{s['path']}", "documents": s["documents"], "chars": s["chars"]} for s in shards],
        "unparsed": [{"path": f"unparsed/{s['path']}", "documents": s["documents"]} for s in bad_shards],
        "counts": counts,
        "annotators": annotators,
        "prompt_sha256": hashlib.sha256(template.encode()).hexdigest(),
    }


def run(ctx: StageContext, backend_factory: Callable[..., Backend] = make_backend) -> dict:
    cfg = ctx.config.annotate
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
                t = (annotate_missing(ctx, k, b, template, lazy) if cfg.scoring != "distribution"
                     else {"annotator": annotator_name(k, b), "answered_now": 0, "wall_s_now": 0.0})
                if cfg.scoring != "parse":
                    t.update(score_missing(ctx, k, b, template, lazy))
                    t.setdefault("model_load_s", lazy.load_s)
            finally:
                lazy.close()
            throughput.append(t)
        result = finalize(ctx, template)
    for t in throughput:
        t["docs_per_s"] = round(t["answered_now"] / t["wall_s_now"], 3) if t.get("wall_s_now") else None
        t["completion_tokens_per_s"] = (round(t["completion_tokens_now"] / t["wall_s_now"], 2)
                                        if t.get("wall_s_now") else None)
    result["throughput"] = throughput
    c = result["counts"]
    if cfg.scoring == "parse":
        print(f"[annotate] {c['documents']:,} of {c['pages']:,} pages scored, parse failure rate "
              f"{c['parse_failure_rate']:.1%}; labels {c['label_distribution']}")
    else:
        pf = c["parse_failure_rate"]
        print(f"[annotate] {c['documents']:,} of {c['pages']:,} pages labelled from the digits' distribution"
              + (f" (parse failure rate {pf:.1%})" if pf is not None else "") + f"; labels {c['label_distribution']}")
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
