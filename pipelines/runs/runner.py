"""The stage runner that `study run --direct`, sweeps, notebooks and tests call."""

from __future__ import annotations

from typing import Any

from pipelines.config import StudyConfig
from pipelines.runs.manifest import Run, study_stages


def print_start(cfg: StudyConfig, run: Run) -> None:
    print(f"study: preset {cfg.preset}, run {run.name} -> {run.root}")
    for k, v in cfg.derived().items():
        print(f"  {k} = {v}")



def run_stages(cfg: StudyConfig, run_name: str | None, stages: list[str], force: bool = False) -> dict[str, dict]:
    """Execute `stages` in order (done ones are skipped); a stage outside the study's `stages` is left out."""
    run = Run(cfg, run_name)
    print_start(cfg, run)
    ours = study_stages(cfg)
    out = {}
    for stage in stages:
        if stage not in ours:
            print(f"[{stage}] not among this study's stages ({', '.join(ours)}); left out")
            continue
        out[stage] = run.execute(stage, force=force)
    print(format_table(run.status_rows()))
    return out


def format_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])
