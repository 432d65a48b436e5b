"""The notebook suite: thin, output-free notebooks with one parameters cell; `study run` executes them
in order with papermill; a failure names the notebook and cell; sweeps share upstream stages."""

import ast
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.errors import StudyError
from pipelines.notebooks import run_notebooks, stage_notebooks
from pipelines.runs.manifest import STAGES, Run
from pipelines.sweep import run_sweep

NOTEBOOKS = stage_notebooks()
PARAMS = ["run", "preset", "results_dir", "overrides"]


def test_the_suite_covers_the_stages_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]
    names = " ".join(p.stem for p in NOTEBOOKS)
    for word in ("synthetic", "annotate", "classifier", "mixes", "train", "evaluate", "figures"):
        assert word in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    assigned = []
    for stmt in ast.parse(tagged[0].source).body:  # primitives only: names bound to literals
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.dump(stmt)
        ast.literal_eval(stmt.value)
        assigned.append(stmt.targets[0].id)
    assert assigned[:4] == PARAMS
    from papermill import inspect_notebook

    assert set(PARAMS) <= set(inspect_notebook(str(path)))  # papermill itself sees them
    body = "\n".join(c.source for c in code[1:])
    assert "setup(run, preset, results_dir, overrides" in body and "from pipelines" in body
    assert "def " not in body and "class " not in body  # logic lives in the package


def test_setup_works_from_the_project_root_and_applies_only_the_knobs_given(tmp_path, monkeypatch):
    from pipelines.config import PROJECT_ROOT
    from pipelines.notebooks import setup

    monkeypatch.chdir(tmp_path)
    cfg, run_dir = setup("r", "ci", str(tmp_path / "res"), ["ingest.max_documents=7"],
                         {"evaluate.limit": 3, "evaluate.trained": False, "evaluate.checkpoints": None})
    assert Path.cwd() == PROJECT_ROOT and run_dir == tmp_path / "res" / "r"
    assert (cfg.ingest.max_documents, cfg.evaluate.limit, cfg.evaluate.trained) == (7, 3, False)
    assert cfg.evaluate.checkpoints == load_config("ci").evaluate.checkpoints  # None: the preset's


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, web_sample):
    """`study run --preset ci`: every notebook through papermill, once for the module."""
    results = tmp_path_factory.mktemp("results")
    args = ["run", "--preset", "ci", "--run", "nb", "--set", f"results_dir={results}",
            "--set", f"ingest.path={web_sample}"]
    assert main(args) == 0
    return results / "nb", args


def test_study_run_executes_every_notebook_and_writes_every_manifest(ci_run):
    root, _ = ci_run
    for path in NOTEBOOKS:
        out = nbformat.read(root / "notebooks" / path.name, as_version=4)
        pm = out.metadata["papermill"]
        assert pm["parameters"]["run"] == "nb" and pm["parameters"]["preset"] == "ci"
        assert "ingest.path=" in " ".join(pm["parameters"]["overrides"])
        assert pm["exception"] is None or pm["exception"] is False
        injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and "run = \"nb\"" in injected[0].source
    for stage in STAGES:
        if stage == "tokenize":  # standalone shards of the ingest stage; no notebook needs them
            continue
        m = json.loads((root / stage / "manifest.json").read_text())
        assert m["status"] == "complete", stage


# sha256 of the llm.c files the ci preset writes, recorded before the code moved into stage packages
# (issue 14): the token shards are tokenization alone, the same everywhere. The checkpoints come from the
# torch trainer: float32 GEMMs on oneDNN (issue 20), whose kernels and blocking follow the CPU's
# instruction set and caches, so their bytes hold for this torch build on the CPU they were recorded on
# (GOLDEN_CPU); elsewhere the run's losses must match the recorded ones to float-rounding drift.
GOLDEN_SHARDS = {
    "mix/val/heldout_val_000000.bin": "418f413d042f33ab515d3f36d4fb59599ce46992fadf4bbb052ba4befee128eb",
    "mix/web/web_train_000000.bin": "1365d4c88e41ccb9f3dc00f9e5ef179dd991c0595eb97fc5f137996249446c9c",
    "train/dev/data/hellaswag/hellaswag_val.bin": "079272d88773870e474f878c08f2904c438a6e91084d8656bdbb1e981643dd6e",
}
GOLDEN_CHECKPOINTS = {  # recorded again after the lm head and block GEMMs moved to oneDNN (issue 20)
    "train/web/model_00000008.bin": "63e8c8c35fae630851535effef2f503d78711804ee6cec25216c054f16e485e4",
    "train/web/model_00000016.bin": "b22d78257c6019e694e765433ffde99d3c1e106ac2fe1ee307950054e83d3cb6",
    "train/web/state_00000008_00000.bin": "9a51a50491963008b171a9da6917955c4621eca2965ce5d841de778aa5ca732e",
    "train/web/state_00000016_00000.bin": "664ec59ca460363fff8f6cce6eb0dffcc22fadd31d20f4f991fe2371cdea1cf2",
}
# torch, machine, model, cores, AVX-512, AMX, L2 and L3 cache sizes (oneDNN's blocking follows the caches)
GOLDEN_CPU = ("2.13.0", "x86_64", "AMD EPYC", 2, True, False, "1024K", "32768K")
GOLDEN_LOSSES = [10.8281, 10.7835, 10.6302, 10.3553, 10.1121, 9.8251, 9.7311, 9.5705, 9.2453, 9.1835, 9.0881,
                 8.9013, 8.8811, 8.4704, 8.7573, 8.1843]  # train/web/main.log's trl, steps 0-15


def cpu_signature() -> tuple:
    import platform

    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    caches = Path("/sys/devices/system/cpu/cpu0/cache")
    size = {(caches / f"index{i}/level").read_text().strip(): (caches / f"index{i}/size").read_text().strip()
            for i in (2, 3) if (caches / f"index{i}/size").exists()}
    return (torch.__version__.split("+")[0], platform.machine(), model, os.cpu_count(), "avx512f" in flags,
            "amx_tile" in flags, size.get("2"), size.get("3"))


def test_the_ci_preset_writes_the_recorded_bytes(ci_run):
    from pipelines.files import file_sha256
    from pipelines.runs.trainlog import parse_main_log

    root, _ = ci_run
    assert {p: file_sha256(root / p) for p in GOLDEN_SHARDS} == GOLDEN_SHARDS
    log = parse_main_log((root / "train/web/main.log").read_text())
    losses = [log[s]["train_loss"] for s in sorted(log) if "train_loss" in log[s]]
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=0.01)  # any CPU: rounding drift only (measured < 2e-3)
    if cpu_signature() == GOLDEN_CPU:
        assert {p: file_sha256(root / p) for p in GOLDEN_CHECKPOINTS} == GOLDEN_CHECKPOINTS


def test_a_rerun_executes_nothing_already_complete(ci_run, capsys):
    root, args = ci_run
    before = {p: p.stat().st_mtime_ns for p in [*root.glob("*/manifest.json"), *root.glob("notebooks/*.ipynb")]}
    capsys.readouterr()
    assert main(args) == 0
    after = {p: p.stat().st_mtime_ns for p in [*root.glob("*/manifest.json"), *root.glob("notebooks/*.ipynb")]}
    assert after == before  # no stage reran, and each notebook's record of the run that made it is kept
    assert capsys.readouterr().out.count("the record of the run that made them is kept") == len(NOTEBOOKS)


def test_a_failing_notebook_names_itself_and_its_cell(tmp_path, ci_config):
    books = tmp_path / "books"
    books.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('run = "x"\npreset = "ci"\nresults_dir = "results"\noverrides = []')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('planted')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, books / "01_broken.ipynb")
    cfg = ci_config()
    with pytest.raises(StudyError) as e:
        run_notebooks(cfg, "broken", [], notebooks=stage_notebooks(books))
    msg = str(e.value)
    assert "01_broken.ipynb" in msg and "ValueError: planted" in msg and "cell" in msg
    partial = Path(cfg.results_dir) / "broken" / "notebooks" / "01_broken.ipynb"
    assert partial.exists()  # the partial output stays for reading


def test_two_point_sweep_shares_upstream_stages(tmp_path, web_sample):
    sweep = tmp_path / "lr.yaml"
    sweep.write_text(yaml.safe_dump({
        "preset": "ci", "notebooks": False,
        "set": [f"results_dir={tmp_path / 'results'}", f"ingest.path={web_sample}"],
        "grid": {"train.lr": [0.006, 0.003]},
    }))
    record = run_sweep(sweep)
    a, b = (tmp_path / "results" / p["run"] for p in record["points"])
    assert [p["values"] for p in record["points"]] == [{"train.lr": 0.006}, {"train.lr": 0.003}]
    for stage in ("ingest", "generate", "mix"):
        assert (b / stage).is_symlink() and (b / stage).resolve() == (a / stage).resolve(), stage
    assert not (b / "train").is_symlink()  # the point's own training
    la = (a / "train" / "web" / "launch.json").read_text()
    lb = (b / "train" / "web" / "launch.json").read_text()
    assert '"0.006"' in la and '"0.003"' in lb
    cfg_b = load_config("ci", [f"results_dir={tmp_path / 'results'}", f"ingest.path={web_sample}",
                               "train.lr=0.003"])
    assert Run(cfg_b, b.name).state("train").status == "done"
    # a rerun executes nothing already complete
    stamp = (b / "train" / "manifest.json").stat().st_mtime_ns
    run_sweep(sweep)
    assert (b / "train" / "manifest.json").stat().st_mtime_ns == stamp
    import pandas as pd

    table = pd.read_csv(record["table"])  # both points' evaluation rows, with their grid value
    assert set(table["run"]) == {a.name, b.name} and set(table["train.lr"]) == {0.006, 0.003}
    assert (Path(record["table"]).parent / "comparison.png").exists()


def test_a_notebook_opened_on_a_finished_run_attaches_to_its_config(ci_run, capsys):
    """Run All with the notebook's defaults on an existing run changes no stage (its saved config wins)."""
    from pipelines.notebooks import setup

    root, _ = ci_run
    run = Run(load_config(str(root / "config.yaml"), [f"results_dir={root.parent}"]), "nb")
    before = {s: run.state(s).status for s in STAGES}
    cfg, run_dir = setup("nb", "smoke", str(root.parent), [])  # the committed defaults: another preset
    assert "attached to run `nb`'s saved config" in capsys.readouterr().out
    assert cfg.preset == "ci" and run_dir == root
    assert {s: Run(cfg, "nb").state(s).status for s in STAGES} == before
    cfg2, _ = setup("nb", "ci", str(root.parent), ["evaluate.limit=5"])  # overrides: on purpose
    assert cfg2.evaluate.limit == 5 and "evaluate.limit" in capsys.readouterr().out


def test_a_copied_and_renamed_run_reports_the_same_status(ci_run, tmp_path, capsys):
    import shutil

    root, _ = ci_run
    copy = tmp_path / "elsewhere" / "results"
    shutil.copytree(root, copy / "nb-copy", symlinks=True)
    assert main(["status", "nb", "--results-dir", str(root.parent)]) == 0
    original = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[3:]]
    assert main(["status", "nb-copy", "--results-dir", str(copy)]) == 0
    copied = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[3:]]
    assert copied == original
    assert [stage for stage, status in copied if status != "done"] == []  # notebook 04 runs tokenize too


def _outputs(nb):
    """(cell index, output) of every code cell output of an executed notebook."""
    return [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(o) -> str:
    return o.get("text", "") if o.output_type == "stream" else str(o.get("data", {}).get("text/plain", ""))


def test_the_executed_records_read_well(ci_run):
    """The records `study run` wrote: no warnings or stderr, every figure an image, progress bars as widgets,
    the derived config once, training and evaluation summarised (not their raw logs), the report in 07."""
    root, _ = ci_run
    for path in NOTEBOOKS:
        nb = nbformat.read(root / "notebooks" / path.name, as_version=4)
        outs = _outputs(nb)
        for i, o in outs:
            text = _text(o)
            assert not (o.output_type == "stream" and o.name == "stderr"), (path.name, i, text[:300])
            assert "warning" not in text.lower(), (path.name, i, text[:300])
            assert o.output_type != "error", (path.name, i, o.get("evalue"))
            if text.startswith("<Figure size"):  # a figure that rendered as text only
                assert "image/png" in o.get("data", {}), (path.name, i)
            if o.output_type == "stream":  # tqdm printed as text lines, not a widget
                assert "it/s]" not in text and "doc/s]" not in text, (path.name, i, text[:200])
            assert "Series([]" not in text and "dtype:" not in text, (path.name, i, text[:200])  # raw Series dumps
            assert "{'items'" not in text, (path.name, i, text[:200])  # a nested dict in a table cell
        printed = "".join(_text(o) for _, o in outs if o.output_type == "stream")
        assert printed.count("study: preset") <= 1, path.name  # the derived config, once
        if path.name.startswith("05"):
            assert printed.count("\n") < 40, printed[-2000:]  # a summary, not the trainer's log
            assert any("image/png" in o.get("data", {}) for _, o in outs)  # the training curves
        if path.name.startswith("06"):  # the CORE suite's per-task lines stay in the log, its summary shows
            assert "core: " in printed and not re.search(r"\] (\S+ )?core [a-z_]+: ", printed), printed[-2000:]
        if path.name.startswith("07"):
            md = "".join(str(o.get("data", {}).get("text/markdown", "")) for _, o in outs)
            assert "# Run report: `nb`" in md and "## Flags" in md
            assert "CORE v1 (all available tasks, the first 2 items of each)" in md  # what the CORE rows rest on


def _snapshot(root: Path) -> dict:
    """Every stage's files (size, mtime) of a run, the notebooks' records and the report left out."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in ("notebooks", ".locks", "report.md")}


def test_run_all_on_a_finished_run_changes_nothing(ci_run, tmp_path):
    """Run All on each committed notebook, as it is committed (its preset is smoke, no overrides), on the
    existing ci run: every stage's status and every output stay as they were."""
    import papermill as pm

    from pipelines.config import PROJECT_ROOT

    root, _ = ci_run
    run = Run(load_config(str(root / "config.yaml"), [f"results_dir={root.parent}"]), "nb")
    status = {s: run.state(s).status for s in STAGES}
    files = _snapshot(root)
    for path in NOTEBOOKS:
        out = tmp_path / path.name
        pm.execute_notebook(str(path), str(out), parameters={"run": "nb", "results_dir": str(root.parent)},
                            cwd=str(PROJECT_ROOT), progress_bar=False, log_output=False)
        nb = nbformat.read(out, as_version=4)
        assert "attached to run `nb`'s saved config" in "".join(_text(o) for _, o in _outputs(nb)), path.name
    assert {s: run.state(s).status for s in STAGES} == status
    assert _snapshot(root) == files
