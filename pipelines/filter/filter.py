"""The `filter` stage: score pages with the classifier the `classify` stage saved (pipelines/classifier.py)
and keep `int_score >= threshold`, as datatrove pipeline steps, so one config runs on this machine
(LocalPipelineExecutor) or on a cluster (SlurmPipelineExecutor, RayPipelineExecutor) by `filter.executor`.

  JsonlReader / ParquetReader  ->  EduScoreFilter (batches through the classifier, writes
  metadata.score / int_score / edu_classifier, drops the rest with metadata.dropped_reason)  ->  JsonlWriter

Stage `filter` (`study classifier apply`), output in results/<run>/filter/:
  kept/edu_<rank>.jsonl.gz      kept pages, in the documents record (the manifest lists them as
                                `outputs` with split "train": what mixes read as `{stage: filter}`)
  removed/removed_<rank>.jsonl.gz   every other page, whole, with dropped_reason and its score
  stats/hist_<rank>.json        per task: score histograms before / after, counts per source
  logs/                         datatrove's logs, stats and completion markers (a rerun skips
                                the tasks already complete: the stage is resumable)
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter

from pipelines.classifier import MAX_SCORE, int_scores, load_classifier
from pipelines.config import FilterConfig, config_hash
from pipelines.data.documents import read_documents
from pipelines.data.executors import make_executor, wait_for_tasks
from pipelines.errors import StudyError
from pipelines.files import write_json_atomic
from pipelines.runs.manifest import StageContext

SCORE_BINS = np.linspace(0.0, MAX_SCORE, 21)  # 0.25 wide; scores outside 0..5 land in the end bins
_SOURCE = "_study_source"  # where a page's `source` rides through datatrove (Document has no such field)


# ---------------------------------------------------------------------------------------------
# records <-> datatrove Documents (module-level functions: executors ship them to other machines)


def read_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """A study document ({id, text, source, metadata}) or any raw page (text + other fields)."""
    if isinstance(data.get("metadata"), dict):
        meta = dict(data["metadata"])
        extra = {k: v for k, v in data.items() if k not in ("id", "text", "source", "metadata")}
        meta.update(extra)
    else:
        meta = {k: v for k, v in data.items() if k not in ("id", "text", "source")}
    source = data.get("source") or (self.default_metadata or {}).get(_SOURCE)
    meta[_SOURCE] = source or Path(str(path)).parent.name or "web"
    doc_id = data.get("id")
    return {"text": data.get("text") or "", "id": str(doc_id) if doc_id not in (None, "") else f"{path}/{id_in_file}",
            "media": [], "metadata": meta}


def write_adapter(self, document: Document) -> dict:
    """Back to the study's record: {"id", "text", "source", "metadata"}."""
    meta = dict(document.metadata)
    source = meta.pop(_SOURCE, None)
    meta.pop("filter_reason", None)  # datatrove's copy of dropped_reason
    meta.pop("file_path", None)
    return {"id": document.id, "text": document.text, "source": source, "metadata": meta}


# ---------------------------------------------------------------------------------------------
# the step


class EduScoreFilter(BaseFilter):
    """Scores batches of pages with a saved classifier; keeps int_score >= threshold.

    Holds only paths and numbers until `run` (the model loads inside each task), so executors can
    copy it to other processes and machines. Writes stats/hist_<rank>.json when its task finishes.
    """

    name = "🎓 edu classifier"

    def __init__(self, model_dir: str, threshold: int, stats_dir: str, batch_size: int = 64, threads: int = 0,
                 exclusion_writer: JsonlWriter | None = None):
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.model_dir, self.threshold, self.stats_dir, self.threads = model_dir, threshold, stats_dir, threads
        self.model = None
        self.hist: dict[str, Any] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        scores = self.model.predict([d.text for d in batch])  # (batch,) float
        ints = int_scores(scores)
        out: list[bool | tuple[bool, str]] = []
        for d, s, k in zip(batch, scores, ints):
            d.metadata["score"] = round(float(s), 4)
            d.metadata["int_score"] = int(k)
            d.metadata["edu_classifier"] = self.model.kind
            src = d.metadata.get(_SOURCE) or "?"
            self._count("before", s, k, src)
            if k >= self.threshold:
                self._count("after", s, k, src)
                out.append(True)
            else:
                d.metadata["dropped_reason"] = f"edu_score_below_{self.threshold}"
                out.append((False, f"edu_score_below_{self.threshold}"))
        return out

    def _count(self, which: str, score: float, k: int, source: str) -> None:
        h = self.hist[which]
        h["documents"] += 1
        h["int_score"][int(k)] += 1
        h["bins"][int(np.clip(np.searchsorted(SCORE_BINS, score, side="right") - 1, 0, len(SCORE_BINS) - 2))] += 1
        h["per_source"][source] = h["per_source"].get(source, 0) + 1
        h["score_sum"] += float(score)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.model = load_classifier(self.model_dir)
        self.hist = {w: {"documents": 0, "int_score": [0] * (MAX_SCORE + 1), "bins": [0] * (len(SCORE_BINS) - 1),
                         "per_source": {}, "score_sum": 0.0} for w in ("before", "after")}
        t0 = time.perf_counter()
        yield from super().run(data, rank, world_size)
        # only reached when the task's input is exhausted: a killed task leaves no stats file
        self.hist["rank"], self.hist["wall_s"] = rank, round(time.perf_counter() - t0, 3)
        write_json_atomic(Path(self.stats_dir) / f"hist_{rank:05d}.json", self.hist)


# ---------------------------------------------------------------------------------------------
# building and running the pipeline


def input_files(ctx: StageContext) -> tuple[str, list[str], str]:
    """(data folder, file paths relative to it, format: jsonl | parquet)."""
    cfg: FilterConfig = ctx.config.filter
    if cfg.input_path is None:
        m = ctx.inputs[cfg.source_stage]
        files = [o["path"] for o in m.get("outputs", []) if o.get("split", cfg.split) == cfg.split
                 and ".jsonl" in o["path"]]
        if not files:
            raise StudyError(f"[filter] stage {cfg.source_stage!r} lists no document outputs of split {cfg.split!r}")
        return str(ctx.run.dir(cfg.source_stage).resolve()), files, "jsonl"
    from datatrove.io import get_datafolder

    # a folder (every JSONL / Parquet file under it), one file, or a glob in the last component
    folder, pattern = cfg.input_path.rstrip("/"), None
    last = folder.rsplit("/", 1)[-1]
    if any(ch in last for ch in "*?[") or (Path(folder).is_file()):
        folder, pattern = folder.rsplit("/", 1) if "/" in folder else (".", folder)
    files = get_datafolder(folder).list_files(recursive=True, glob_pattern=pattern)
    files = [f for f in files if f.endswith((".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz"))]
    if not files:
        raise StudyError(f"[filter] no .jsonl(.gz/.zst) or .parquet files at filter.input_path={cfg.input_path!r}")
    fmt = "parquet" if all(f.endswith(".parquet") for f in files) else "jsonl"
    if fmt == "jsonl" and any(f.endswith(".parquet") for f in files):
        raise StudyError(f"[filter] {cfg.input_path!r} mixes Parquet and JSONL files: point it at one kind")
    return folder, files, fmt


def build_pipeline(ctx: StageContext) -> tuple[list, int]:
    """The datatrove steps and the number of tasks."""
    cfg: FilterConfig = ctx.config.filter
    d = ctx.dir.resolve()
    folder, files, fmt = input_files(ctx)
    default_meta = {_SOURCE: cfg.input_source} if cfg.input_source else None
    paths_file = d / "inputs.txt"  # one input file per line, relative to `folder`; tasks split them
    paths_file.write_text("".join(f + "\n" for f in files))
    reader_cls = ParquetReader if fmt == "parquet" else JsonlReader
    extra = {"add_file_path": False} if reader_cls is JsonlReader else {}  # (the writer drops file_path anyway)
    reader = reader_cls(folder, paths_file=str(paths_file), adapter=read_adapter, default_metadata=default_meta,
                        **extra)
    tasks = cfg.tasks or len(files)
    step = EduScoreFilter(
        model_dir=str((ctx.run.dir("classify") / cfg.model).resolve()), threshold=cfg.threshold,
        stats_dir=str(d / "stats"), batch_size=cfg.batch_size, threads=cfg.threads,
        exclusion_writer=JsonlWriter(str(d / "removed"), output_filename="removed_${rank}.jsonl.gz",
                                     adapter=write_adapter))
    writer = JsonlWriter(str(d / "kept"), output_filename="edu_${rank}.jsonl.gz", adapter=write_adapter)
    return [reader, step, writer], tasks


def _merge_hist(parts: list[dict]) -> dict:
    out = {}
    for which in ("before", "after"):
        n = sum(p[which]["documents"] for p in parts)
        per_source: Counter[str] = Counter()
        for p in parts:
            per_source.update(p[which]["per_source"])
        out[which] = {
            "documents": n,
            "int_score": {str(k): sum(p[which]["int_score"][k] for p in parts) for k in range(MAX_SCORE + 1)},
            "score_bins": {"edges": [round(float(e), 2) for e in SCORE_BINS],
                           "counts": [sum(p[which]["bins"][i] for p in parts) for i in range(len(SCORE_BINS) - 1)]},
            "mean_score": round(sum(p[which]["score_sum"] for p in parts) / n, 4) if n else None,
            "per_source": dict(sorted(per_source.items())),
        }
    return out


def _count_lines(path: Path) -> int:
    with gzip.open(path, "rb") as f:
        return sum(1 for _ in f)


def run(ctx: StageContext) -> dict:
    cfg: FilterConfig = ctx.config.filter
    kinds = ctx.inputs["classify"]["config"]["classifier"]["kinds"]
    if cfg.model not in kinds:
        raise StudyError(f"filter.model={cfg.model!r} was not trained (classifier.kinds={kinds}): add it there "
                         f"and rerun `study classifier train`, or pick one of {kinds}")
    d = ctx.dir
    # what decides the output files; anything else changed -> start over (datatrove would skip tasks)
    key = {"filter": cfg.hashed_dict(), "tasks": cfg.tasks, "inputs": {k: v.get("config_hash") for k, v in
                                                                      ctx.inputs.items()},
           "classifier": ctx.inputs["classify"].get("timings", {}).get("finished")}
    state = d / "state.json"
    try:
        old = json.loads(state.read_text())
    except (OSError, ValueError):
        old = None
    if (old or {}).get("key_hash") != config_hash(key):
        for sub in ("kept", "removed", "stats", "logs"):
            shutil.rmtree(d / sub, ignore_errors=True)
    write_json_atomic(state, {"key_hash": config_hash(key), "key": key})
    pipeline, tasks = build_pipeline(ctx)
    logging_dir = d / "logs"
    print(f"[filter] scoring with the {cfg.model} classifier, keeping int_score >= {cfg.threshold}: "
          f"{tasks} task(s) on the {cfg.executor} executor")
    t0 = time.perf_counter()
    executor = make_executor(cfg.executor, pipeline, tasks, logging_dir, f"edu-filter-{ctx.run.name}", "filter.executor",
                             workers=cfg.workers, slurm=cfg.slurm, ray=cfg.ray)
    executor.run()
    if cfg.executor == "slurm":
        if not cfg.slurm.wait:
            raise StudyError(f"[filter] {tasks} Slurm task(s) submitted (logs: {logging_dir}); rerun the same "
                             f"command when they are done to collect them into the manifest")
        wait_for_tasks(logging_dir, tasks, cfg.slurm.poll_s, "filter")
    wall = time.perf_counter() - t0
    parts = [json.loads(p.read_text()) for p in sorted((d / "stats").glob("hist_*.json"))]
    if len(parts) != tasks:
        raise StudyError(f"[filter] {len(parts)} of {tasks} task(s) finished (see {logging_dir}/logs): rerun to "
                         f"finish the rest (completed tasks are skipped)")
    hist = _merge_hist(parts)
    kept_files = sorted((d / "kept").glob("edu_*.jsonl.gz"))
    removed_files = sorted((d / "removed").glob("removed_*.jsonl.gz"))
    outputs = [{"split": "train", "path": f"kept/{p.name}", "documents": _count_lines(p)} for p in kept_files]
    before, after = hist["before"]["documents"], hist["after"]["documents"]
    if sum(o["documents"] for o in outputs) != after:  # the writer and the step disagree: a corrupted folder
        raise StudyError(f"[filter] kept files hold {sum(o['documents'] for o in outputs)} pages but the tasks "
                         f"kept {after}: rerun with --force")
    task_s = sum(p["wall_s"] for p in parts)
    print(f"[filter] kept {after:,} of {before:,} pages ({after / max(before, 1):.1%}); "
          f"int_score before {hist['before']['int_score']}, {before / max(task_s, 1e-9):,.1f} pages/s per task")
    return {
        "outputs": outputs,
        "removed": {f"edu_score_below_{cfg.threshold}": [f"removed/{p.name}" for p in removed_files]},
        "histograms": hist,
        "counts": {"documents": after, "scored": before, "removed": before - after,
                   "keep_rate": round(after / before, 4) if before else None,
                   "kept_per_source": hist["after"]["per_source"], "scored_per_source": hist["before"]["per_source"]},
        "classifier": {"kind": cfg.model, "path": str(ctx.run.dir("classify") / cfg.model),
                       "threshold": cfg.threshold},
        "throughput": {"tasks": tasks, "executor": cfg.executor, "wall_s": round(wall, 3),
                       "task_s": round(task_s, 3), "pages_per_task_s": round(before / task_s, 2) if task_s else None},
    }


# ---------------------------------------------------------------------------------------------
# for notebooks


def read_filtered(run_dir: str | Path, removed: bool = False) -> list[dict]:
    """The kept pages of results/<run>/filter (or the removed ones)."""
    d = Path(run_dir) / "filter" / ("removed" if removed else "kept")
    return list(read_documents(sorted(d.glob("*.jsonl.gz"))))


def examples_per_score(run_dir: str | Path, per_score: int = 2, chars: int = 300):
    """The first `per_score` scored pages of each int_score 0..5 (kept and removed), with their extract."""
    import pandas as pd


    seen: Counter = Counter()
    rows = []
    for sub in ("kept", "removed"):  # streamed: stops reading once every score has its examples
        for d in read_documents(sorted((Path(run_dir) / "filter" / sub).glob("*.jsonl.gz"))):
            if len(seen) == MAX_SCORE + 1 and min(seen.values()) >= per_score:
                break
            removed = sub == "removed"
            k = d["metadata"]["int_score"]
            if seen[k] >= per_score:
                continue
            seen[k] += 1
            rows.append({"int_score": k, "score": d["metadata"]["score"], "kept": not removed, "id": d["id"],
                         "source": d["source"], "extract": d["text"][:chars]})
    return pd.DataFrame(rows).sort_values("int_score", kind="stable").reset_index(drop=True)

