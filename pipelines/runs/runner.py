"""The stage runner that `study run --direct`, sweeps, notebooks and tests call."""

from __future__ import annotations

from pipelines.config import StudyConfig
from pipelines.runs.manifest import Run, format_table, study_stages


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
