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
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from tqdm.auto import tqdm

from pipelines.config import BackendConfig
from pipelines.data.documents import ShardedWriter, batched, read_documents
from pipelines.errors import StudyError
from pipelines.files import Lock
from pipelines.llm.backends import Backend, make_backend
from pipelines.llm.parts import (
    PartWriter,
    completion_record,
    keep_parts_if_same,
    read_row,
    scan_parts,
)
from pipelines.runs.manifest import StageContext

MAX_SCORE = 5
LOG_EVERY_S = 30.0

# Our wording of FineWeb-Edu's additive prompt: the same five criteria and closing line. The page
# comes first and the instructions last, which small instruct models follow far better.
PROMPT_TEMPLATE = """\
Below is an extract from a web page.

<extract>
{extract}
</extract>

Judge how useful this extract would be for teaching, from primary school up to grade school, with the \
additive 5-point scale below. Points add up: the extract earns one point for each criterion it meets.

- 1 point if it gives some basic information related to an educational topic, even if it also \
contains irrelevant or non-academic material such as advertisements or promotion.
- A 2nd point if it touches on elements that matter for education but does not follow educational \
standards closely: it may mix educational content with other material, give only a superficial \
overview, or be written in a disorganised way.
- A 3rd point if it is suitable for educational use and introduces key concepts of school \
curricula: coherent though maybe not complete, possibly with some extra material, like the \
introductory section of a textbook or a basic tutorial, even if some concepts are too complex for \
grade school students.
- A 4th point if it is highly relevant and useful for teaching at a level no higher than grade \
school, in a clear and consistent style: like a textbook chapter or a tutorial with substantial \
educational content, exercises or solutions, little irrelevant material, and concepts not too \
advanced for grade school students.
- A 5th point if its educational value is outstanding and it is perfectly suited to teaching at \
primary or grade school: detailed reasoning, a style that is easy to follow, and deep, thorough \
insight into the subject, with no non-educational or overly complex content.

After reading the extract:
- Justify your total in at most 100 words.
- End with the score on a line of its own, in exactly this format: "Educational score: <points>"
"""

# "Educational score: 3", "**Educational Score:** 4/5", "educational score = 2.5", "Educational score: three"
_NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_SCORE_LINE = re.compile(
    r"educational\s+score\s*\**\s*[:=]\s*\**\s*(?P<value>[-+]?\d+(?:\.\d+)?|zero|one|two|three|four|five)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParsedScore:
    score: float | None  # 0..5, None when the answer has no parseable score line
    raw: str | None  # the value as written ("7", "3.5", "three")
    clipped: bool  # the written value was outside 0..5


def render_prompt(text: str, extract_chars: int = 1000, template: str = PROMPT_TEMPLATE) -> str:
    """The annotation prompt for a page: its first `extract_chars` characters in the template."""
    return template.replace("{extract}", text[:extract_chars].strip())


def parse_score(answer: str) -> ParsedScore:
    """The LAST `Educational score: N` of an answer (a model may restate it), clipped to 0..5."""
    matches = list(_SCORE_LINE.finditer(answer or ""))
    if not matches:
        return ParsedScore(None, None, False)
    raw = matches[-1].group("value")
    value = float(_NUMBER_WORDS[raw.lower()]) if raw.lower() in _NUMBER_WORDS else float(raw)
    if not math.isfinite(value):
        return ParsedScore(None, raw, False)
    clipped = min(max(value, 0.0), float(MAX_SCORE))
    return ParsedScore(clipped, raw, clipped != value)


def int_score(score: float) -> int:
    """Round half up and clip to 0..5 (FineWeb-Edu's `int_score`)."""
    return int(min(max(math.floor(score + 0.5), 0), MAX_SCORE))


def load_template(path: str | None) -> str:
    if path is None:
        return PROMPT_TEMPLATE
    p = Path(path)
    if not p.is_file():
        raise StudyError(f"annotate.prompt_path={path!r}: no such file (a text file with an {{extract}} placeholder)")
    template = p.read_text()
    if "{extract}" not in template:
        raise StudyError(f"annotate.prompt_path={path!r} has no {{extract}} placeholder for the page text")
    return template


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


def annotate_missing(ctx: StageContext, k: int, backend_cfg: BackendConfig, template: str,
                     backend_factory: Callable[..., Backend] = make_backend) -> dict:
    """Answer every page that annotator k has no complete saved answer for. -> stats of this call."""
    cfg = ctx.config.annotate
    name = annotator_name(k, backend_cfg)
    parts_dir = ctx.dir / "parts" / name
    key = {"backend": backend_cfg.hashed_dict(), "sampling": cfg.sampling.hashed_dict(), "seed": ctx.config.seed}
    keep_parts_if_same(parts_dir, parts_dir / "state.json", key, f"[annotate] {name}: model or sampling")
    done, scan = scan_parts(parts_dir)

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
    t_load = time.perf_counter()
    backend = backend_factory(backend_cfg, ctx.config.seed)
    stats["model_load_s"] = round(time.perf_counter() - t_load, 2)
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
        backend.close()
        stats["wall_s_now"] = round(time.perf_counter() - t0, 3)
    return stats


# ---------------------------------------------------------------------------------------------
# labels


def finalize(ctx: StageContext, template: str) -> dict:
    """Saved answers -> labels/ (scored pages) and unparsed/, in page order. -> manifest fields."""
    cfg = ctx.config.annotate
    for sub in ("labels", "unparsed"):
        shutil.rmtree(ctx.dir / sub, ignore_errors=True)
    names = [annotator_name(k, b) for k, b in enumerate(cfg.annotators)]
    indexes = [scan_parts(ctx.dir / "parts" / n)[0] for n in names]
    labelled = ShardedWriter(ctx.dir / "labels", "annotated", cfg.shard_documents)
    unparsed = ShardedWriter(ctx.dir / "unparsed", "unparsed", cfg.shard_documents)
    handles: dict[Path, IO[bytes]] = {}
    per_annotator = [Counter() for _ in names]  # parsed / failed / clipped / finish reasons
    annotator_labels = [Counter() for _ in names]  # int score -> pages, per annotator
    labels: Counter[int] = Counter()
    n_pages = 0
    missing = []
    try:
        for doc in pages(ctx):
            n_pages += 1
            pk = prompt_key(doc["id"], render_prompt(doc["text"], cfg.extract_chars, template))
            scores, answers, models, parsed_raw = [], [], [], []
            for a, index in enumerate(indexes):
                where = index.get(pk)
                if where is None:
                    missing.append(doc["id"])
                    break
                row = read_row(handles, where)
                p = parse_score(row.get("text") or "")
                c = per_annotator[a]
                c["finish_" + (row.get("finish_reason") or "?")] += 1
                c["parsed" if p.score is not None else "failed"] += 1
                c["clipped"] += p.clipped
                if p.score is not None:
                    annotator_labels[a][int_score(p.score)] += 1
                scores.append(p.score)
                parsed_raw.append(p.raw)
                answers.append(row.get("text") or "")
                models.append(row.get("generator"))
            good = [s for s in scores if s is not None]
            score = sum(good) / len(good) if good else None
            doc["metadata"]["annotation"] = {
                "score": score,
                "int_score": int_score(score) if score is not None else None,
                "scores": scores,  # per annotator; None: unparseable answer
                "raw_values": parsed_raw,
                "answers": answers,  # the justification, whole
                "models": models,
                "extract_chars": cfg.extract_chars,
            }
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
    return {
        "outputs": [{"path": f"labels/{s['path']}", "documents": s["documents"], "chars": s["chars"]} for s in shards],
        "unparsed": [{"path": f"unparsed/{s['path']}", "documents": s["documents"]} for s in bad_shards],
        "counts": {
            "documents": n_labelled,
            "pages": n_pages,
            "unparsed": n_failed,
            "parse_failure_rate": round(n_failed / n_pages, 4) if n_pages else None,
            "label_distribution": {str(s): labels.get(s, 0) for s in range(MAX_SCORE + 1)},
        },
        "annotators": [
            {"name": n, "model": b.model or "bundled SmolLM2-135M-Instruct GGUF", "kind": b.kind,
             "parsed": c["parsed"], "failed": c["failed"], "clipped": c["clipped"],
             "parse_failure_rate": round(c["failed"] / n_pages, 4) if n_pages else None,
             "finish_reasons": {k[len("finish_"):]: v for k, v in sorted(c.items()) if k.startswith("finish_")},
             "label_distribution": {str(s): al.get(s, 0) for s in range(MAX_SCORE + 1)}}
            for n, b, c, al in zip(names, cfg.annotators, per_annotator, annotator_labels)
        ],
        "prompt_sha256": hashlib.sha256(template.encode()).hexdigest(),
    }


def run(ctx: StageContext, backend_factory: Callable[..., Backend] = make_backend) -> dict:
    cfg = ctx.config.annotate
    template = load_template(cfg.prompt_path)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    with Lock(ctx.dir / ".lock", f"into {ctx.dir}"):
        # a part folder of an annotator no longer in the config is stale: remove it
        keep = {annotator_name(k, b) for k, b in enumerate(cfg.annotators)}
        for d in (ctx.dir / "parts").glob("*"):
            if d.is_dir() and d.name not in keep:
                shutil.rmtree(d)
        throughput = [annotate_missing(ctx, k, b, template, backend_factory) for k, b in enumerate(cfg.annotators)]
        result = finalize(ctx, template)
    for t in throughput:
        t["docs_per_s"] = round(t["answered_now"] / t["wall_s_now"], 3) if t.get("wall_s_now") else None
        t["completion_tokens_per_s"] = (round(t["completion_tokens_now"] / t["wall_s_now"], 2)
                                        if t.get("wall_s_now") else None)
    result["throughput"] = throughput
    c = result["counts"]
    print(f"[annotate] {c['documents']:,} of {c['pages']:,} pages scored, parse failure rate "
          f"{c['parse_failure_rate']:.1%}; labels {c['label_distribution']}")
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
