"""Readers of what a stage wrote, for the stages after it, the notebooks and the paper.

A stage reads another stage's outputs only through its typed result (pipelines/runs/results.py
read_result); these functions are that reading in one place (documents of a stage, the mix tables,
the annotation, filter and evaluation tables). Each takes the stage's result, or its manifest as a dict.
"""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from pipelines.data.documents import read_documents
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run
from pipelines.runs.results import DocumentFile, StageResult, as_result, read_result


def stage_documents(run: Run, stage: str, split: str = "train") -> Iterator[dict]:
    """Documents a stage wrote: its result's .jsonl(.gz) outputs of `split` (or with no split)."""
    paths = [run.dir(stage) / o.path for o in read_result(run, stage).outputs
             if isinstance(o, DocumentFile) and (o.split or split) == split and ".jsonl" in o.path]
    if not paths:
        raise StudyError(f"stage `{stage}` lists no document outputs of split {split!r} in its manifest")
    return read_documents(paths)


def composition_table(mix: StageResult | dict) -> pd.DataFrame:
    """Tidy table of a mix result: one row per (mix, source) with tokens, documents and epochs."""
    rows = [{"mix": m.name, "source": s, "weight": v.weight, "tokens": v.tokens, "documents": v.documents,
             "unique_documents": v.unique_documents, "epochs": v.epochs}
            for m in as_result("mix", mix).mixes for s, v in m.per_source.items()]
    return pd.DataFrame(rows)


def removals_table(mix: StageResult | dict) -> pd.DataFrame:
    """One row per source: documents read, exact / near duplicates, contaminated per benchmark, kept.
    A streaming mix has no near-duplicate pass (near_duplicate None in its manifest): 0 removed."""
    mix = as_result("mix", mix)
    rows = []
    for name, s in mix.sources.items():
        row = {"source": name, "documents_in": s.documents_in, "exact_duplicate": s.exact_duplicate,
               "near_duplicate": s.near_duplicate or 0}
        row.update({f"contaminated_{b}": s.contaminated.get(b, 0) for b in mix.decontamination.benchmarks})
        row.update({"documents_kept": s.documents_kept, "tokens_kept": s.tokens_kept})
        rows.append(row)
    return pd.DataFrame(rows)


def label_distribution(annotate: StageResult | dict) -> pd.Series:
    """Pages per int_score of an annotate stage (pages whose answer parsed)."""
    dist = as_result("annotate", annotate).counts.label_distribution
    return pd.Series(dist, name="pages").rename_axis("int_score")


def kept_per_source(filtered: StageResult | dict) -> pd.DataFrame:
    """Pages scored and kept by the filter stage, per source."""
    counts = as_result("filter", filtered).counts
    return pd.DataFrame({"scored": counts.scored_per_source, "kept": counts.kept_per_source}).fillna(0).astype(int)


def eval_table(evaluate: StageResult | dict) -> pd.DataFrame:
    """The evaluate stage's rows, as in results/<run>/evaluate/table.csv."""
    return pd.DataFrame(as_result("evaluate", evaluate).table)


def eval_speed(evaluate: StageResult | dict) -> pd.DataFrame:
    """Items per second of each evaluated model (loading excluded); a nested suite (CORE: {items,
    seconds, items_per_s}) becomes columns of its own (core_items, core_seconds, ...)."""
    rows = {}
    for model, speed in as_result("evaluate", evaluate).speed.items():
        flat = {}
        for key, value in speed.items():
            if isinstance(value, dict):
                flat.update({f"{key}_{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        rows[model] = flat
    return pd.DataFrame(rows).T


def mmlu_subjects(table: pd.DataFrame, shown: int = 10) -> pd.DataFrame:
    """MMLU per subject (one column per mix, form and metric), the `shown` hardest and easiest by the
    first column."""
    subj = table[table["subject"].notna()]
    wide = subj.pivot_table(index="subject", columns=["mix", "form", "metric"], values="value")
    if wide.empty:
        return wide
    ranked = wide.sort_values(wide.columns[0])
    return pd.concat([ranked.head(shown), ranked.tail(shown)]) if len(ranked) > 2 * shown else ranked
