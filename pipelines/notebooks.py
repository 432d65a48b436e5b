"""`study run`: the stage notebooks, executed in order with papermill.

Each notebook in notebooks/ (01_synthetic ... 07_figures) has one `parameters` cell of primitives;
papermill injects `run`, `preset`, `results_dir` and `overrides` (the --set strings) and writes the
executed copy to results/<run>/notebooks/, the readable record of its stage. The notebooks call the
same stage functions as the CLI, so complete stages are skipped by their manifests. A failing
notebook stops the run; its partial output stays, and the error names the notebook and the cell.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pipelines.config import PROJECT_ROOT, StudyConfig, load_config
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run, changed_keys, check_run_name

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
_STAGE_NOTEBOOK = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")


def stage_notebooks(directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    books = sorted(p for p in directory.glob("*.ipynb") if _STAGE_NOTEBOOK.match(p.name))
    if not books:
        raise StudyError(f"no stage notebooks (NN_name.ipynb) in {directory}")
    return books


def parameters(cfg: StudyConfig, run: str, overrides: list[str], preset: str | None = None) -> dict:
    """What papermill injects: primitives only. Notebooks run in the project root, so paths inside it
    are given relative to it (an executed record stays valid when the checkout moves)."""
    p = Path(preset) if preset else None
    preset = _portable(p) if p is not None and p.suffix in (".yaml", ".yml") else (preset or cfg.preset)
    return {"run": run, "preset": preset, "results_dir": _portable(Path(cfg.results_dir)),
            "overrides": list(overrides)}


def _portable(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(PROJECT_ROOT)) if p.is_relative_to(PROJECT_ROOT) else str(p)


# the stages each notebook is about (it may also run their inputs): a study whose `stages` has none
# of them skips the notebook
NOTEBOOK_STAGES = {"01_synthetic": ("prompts", "generate"), "02_annotate": ("annotate",),
                   "03_classifier": ("classify", "filter"), "04_mixes": ("mix",), "05_train": ("train",),
                   "06_evaluate": ("evaluate",), "07_figures": ("figures",)}


def wanted(nb: Path, cfg: StudyConfig) -> bool:
    stages = NOTEBOOK_STAGES.get(nb.stem)
    return cfg.stages is None or stages is None or any(s in cfg.stages for s in stages)


def run_notebooks(cfg: StudyConfig, run: str, overrides: list[str], preset: str | None = None,
                  notebooks: list[Path] | None = None, kernel: str | None = None, log=print) -> list[dict]:
    """Execute the stage notebooks in order; returns one record per notebook (path, seconds)."""
    try:
        import papermill as pm
        from papermill.exceptions import PapermillExecutionError
    except ImportError:
        raise StudyError("`study run` executes the notebooks with papermill: pip install -e '.[notebooks]'") from None
    out_dir = Path(cfg.results_dir) / run / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = parameters(cfg, run, overrides, preset)
    state = Run(cfg, run)
    records = []
    for nb in notebooks or stage_notebooks():
        out = out_dir / nb.name
        if not wanted(nb, cfg):
            log(f"[run] {nb.name}: none of its stages ({', '.join(NOTEBOOK_STAGES[nb.stem])}) is among this "
                f"study's stages; skipped")
            continue
        ours = [s for s in NOTEBOOK_STAGES.get(nb.stem, ()) if cfg.stages is None or s in cfg.stages]
        if out.exists() and ours and all(state.state(s).status == "done" for s in ours):
            log(f"[run] {nb.name}: its stages are done; the record of the run that made them is kept ({out})")
            continue
        log(f"[run] {nb.name} -> {out}")
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(PROJECT_ROOT),
                                kernel_name=kernel, progress_bar=False, log_output=False)
        except PapermillExecutionError as e:
            raise StudyError(
                f"notebook {nb.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                f"{e.ename}: {e.evalue}\nthe partial output is in {out}"
            ) from None
        records.append({"notebook": nb.name, "output": str(out), "seconds": round(time.perf_counter() - t0, 1)})
    return records


def setup(run: str, preset: str, results_dir: str, overrides: list[str], knobs: dict | None = None
          ) -> tuple[StudyConfig, Path]:
    """The first cell of every stage notebook, after its `parameters` cell: work from the project
    root (config paths are relative to it), draw figures inline, and load the config with the
    notebook's knobs ({"section.key": value}, None: the preset's). Returns (config, run folder).

    On a run that exists, a notebook opened with no overrides and no knobs attaches to the run's saved
    config (results/<run>/config.yaml) and says how it differs from the preset, so Run All never
    reruns, empties or restales a finished stage; given overrides or knobs are applied on purpose."""
    os.chdir(PROJECT_ROOT)
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    extra = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in (knobs or {}).items() if v is not None]
    cfg = load_config(preset, [f"results_dir={results_dir}", *overrides, *extra])
    saved = Path(results_dir) / check_run_name(run) / "config.yaml"
    if saved.exists():
        theirs = load_config(str(saved), [f"results_dir={results_dir}"])
        keys = changed_keys(theirs.model_dump(mode="json"), cfg.model_dump(mode="json"))
        if keys and not overrides and not extra:
            print(f"attached to run `{run}`'s saved config ({saved}); it differs from preset `{preset}` in "
                  f"{', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}. To rerun on purpose, give overrides.")
            cfg = theirs
        elif keys:
            print(f"run `{run}`: your overrides change {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}; "
                  f"stages they touch will rerun")
    return cfg, Path(cfg.results_dir) / run
