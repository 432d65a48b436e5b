"""`study sweep sweeps/<name>.yaml`: a grid of overrides, one run per point, sharing upstream stages.

  preset: smoke                      # the base preset
  set: [ingest.max_documents=1000]   # overrides common to every point (optional)
  grid:                              # section.key -> values; the points are the cartesian product
    filter.threshold: [2, 3, 4]
    train.model: [d2c64, d4c128]
  jobs: 1                            # points run at a time (the first point always runs alone)

Point i runs as results/<sweep>-<i:02d>/ with `share_with` naming every other point, so a stage
whose config and inputs equal those of a done stage in another point is linked, not recomputed
(generation and annotation run once). The sweep writes results/sweeps/<sweep>/points.json and,
when the points have evaluation tables (evaluate/table.csv), table.csv (every point's rows with its grid values) and a
comparison figure.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config import StudyConfig, load_config, parse_override
from pipelines.errors import StudyError
from pipelines.figures.plots import benchmark_comparison, save
from pipelines.files import write_json_atomic
from pipelines.notebooks import run_notebooks
from pipelines.runs.manifest import STAGES
from pipelines.runs.runner import run_stages


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: str = "smoke"
    set: list[str] = []
    grid: dict[str, list] = Field(min_length=1)
    jobs: int = Field(1, ge=1)
    notebooks: bool = True  # execute the stage notebooks (as `study run`); false: the stages directly


def load_sweep(path: str | Path) -> tuple[str, SweepSpec]:
    p = Path(path)
    if not p.exists():
        raise StudyError(f"no sweep file {p}; sweeps live in sweeps/*.yaml")
    try:
        spec = SweepSpec.model_validate(yaml.safe_load(p.read_text()) or {})
    except ValidationError as e:
        raise StudyError(f"{p}: {e}") from None
    if any(not v for v in spec.grid.values()):
        raise StudyError(f"{p}: every grid key needs at least one value")
    return p.stem, spec


def points(spec: SweepSpec) -> list[dict]:
    keys = list(spec.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]


def shared_with(run: str, names: list[str], overrides: list[str]) -> list[str]:
    """share_with of one of several runs `names`: the others, then the runs that the overrides' share_with
    items name (`--set share_with=[smoke]`: a sweep on top of a finished run reuses its done stages)."""
    given = [r for item in overrides for parts, value in [parse_override(item)] if parts == ["share_with"]
             for r in (value or [])]
    return [n for n in names if n != run] + [r for r in given if r not in names]


def override(key: str, value) -> str:
    """One `--set key=value` with the value as flow YAML (one line, however long; mapping keys sorted, so a
    grid mix's sources are sampled in name order)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix('...').strip()}"


def point_overrides(spec: SweepSpec, name: str, point: dict, names: list[str], extra: list[str]) -> list[str]:
    """The point's --set list, the text the notebooks take (papermill's `overrides`) and the point's config is
    loaded from: the sweep's, the command line's, its grid values, and share_with (shared_with)."""
    shared = shared_with(name, names, [*spec.set, *extra])
    return [*spec.set, *extra, *(override(k, v) for k, v in point.items()), override("share_with", shared)]


def _short(v) -> str:
    """A grid value as a label: the names of named entries (mixes, schedules), else the value."""
    items = v if isinstance(v, list) else [v]
    if items and all(isinstance(x, dict) and "name" in x for x in items):
        return "+".join(str(x["name"]) for x in items)
    return str(v)


def _run_point(cfg: StudyConfig, name: str, overrides: list[str], notebooks: bool, preset: str) -> str:
    """The point's stages: through the notebooks (which load its config from the --set text), or directly."""
    if notebooks:
        run_notebooks(cfg, name, overrides, preset=preset)
    else:
        run_stages(cfg, name, list(STAGES))
    return name


def run_sweep(path: str | Path, extra: list[str] = (), jobs: int | None = None, notebooks: bool | None = None) -> dict:
    sweep, spec = load_sweep(path)
    pts = points(spec)
    names = [f"{sweep}-{i:02d}" for i in range(len(pts))]
    overrides = [point_overrides(spec, n, p, names, list(extra)) for n, p in zip(names, pts)]
    cfgs = [load_config(spec.preset, o) for o in overrides]  # every point checked before anything runs
    out = Path(cfgs[0].results_dir) / "sweeps" / sweep
    record = {"sweep": sweep, "preset": spec.preset, "grid": spec.grid,
              "points": [{"run": n, "values": p} for n, p in zip(names, pts)]}
    write_json_atomic(out / "points.json", record)
    use_nb = spec.notebooks if notebooks is None else notebooks
    print(f"[sweep] {sweep}: {len(pts)} point(s) -> {', '.join(names)}")
    # the first point alone: it computes what the others can share
    _run_point(cfgs[0], names[0], overrides[0], use_nb, spec.preset)
    rest = list(zip(cfgs[1:], names[1:], overrides[1:]))
    workers = jobs or spec.jobs
    if workers > 1 and len(rest) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for f in [pool.submit(_run_point, c, n, o, use_nb, spec.preset) for c, n, o in rest]:
                f.result()
    else:
        for c, n, o in rest:
            _run_point(c, n, o, use_nb, spec.preset)
    record["table"] = gather(cfgs[0].results_dir, record, out)
    write_json_atomic(out / "points.json", record)
    return record


def gather(results_dir: str, record: dict, out: Path) -> str | None:
    """Every point's evaluation table with its grid values as columns -> table.csv (+ a figure)."""
    import pandas as pd

    frames = []
    for p in record["points"]:
        csv = Path(results_dir) / p["run"] / "evaluate" / "table.csv"
        if csv.exists():
            df = pd.read_csv(csv)
            for k, v in p["values"].items():
                df[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
            df["run"] = p["run"]
            frames.append(df)
    if not frames:
        print("[sweep] no evaluation tables yet (results/<run>/evaluate/table.csv): nothing to gather")
        return None
    table = pd.concat(frames, ignore_index=True)
    path = out / "table.csv"
    table.to_csv(path, index=False)
    print(f"[sweep] {len(table)} rows -> {path}")

    # one bar per (point, mix), labelled by the point's grid values
    label = {p["run"]: ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in p["values"].items())
             for p in record["points"]}
    ref = table["reference"].astype(str).str.lower().isin(["true", "1"]) if "reference" in table else [False] * len(table)
    # a point named by its only grid value (a schedule, a mix) is labelled once
    by_point = table.assign(mix=[m if is_ref or label[r].split("=", 1)[-1] == str(m) else f"{label[r]} / {m}"
                                 for r, m, is_ref in zip(table["run"], table["mix"], ref)])
    if "reference" in table:  # the same reference model in every point: one bar
        by_point = by_point.drop_duplicates(subset=[c for c in by_point.columns if c not in ("run", *record["grid"])])
    try:
        figs = save(benchmark_comparison(by_point, title=f"sweep {record['sweep']}"), out, "comparison")
        print(f"[sweep] comparison figure -> {figs[0]}")
    except (KeyError, ValueError) as e:  # a table without the columns the figure needs
        print(f"[sweep] no comparison figure: {type(e).__name__}: {e}")
    return str(path)
