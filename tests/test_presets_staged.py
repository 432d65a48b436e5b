"""The DCLM-Baseline vs FineWeb-Edu preset (flag lists, mix definitions, dry run, scaled-down
overrides), the annealing sweep and the smoke schedule, the study's `stages` list: all built
without the network."""

from __future__ import annotations

import json
import shlex

import pytest

from pipelines.cli import main as study
from pipelines.config import PROJECT_ROOT, load_config
from pipelines.errors import StudyError
from pipelines.notebooks import NOTEBOOK_STAGES, stage_notebooks, wanted
from pipelines.runs.manifest import Run, study_stages
from pipelines.sweep import load_sweep, point_overrides, points
from pipelines.train.flags import flag_dict
from tests.test_train_flags import RECIPE_15B, SCRIPT_15B_EXTRA

PRESET = "gpu-1.5b-dclm-vs-fwe"
# README.md, "DCLM-Baseline vs FineWeb-Edu": the scaled-down run on one GPU
SCALED = ["train.model=d12", "train.num_gpus=1", "train.batch_size=64", "train.total_batch_tokens=524288",
          "train.steps=572", "train.warmup_steps=57", "train.zero_stage=0", "train.checkpoint_every=100",
          "train.val_every=50",
          "mix.mixes=[{name: dclm, tokens: 300000000, weights: {dclm: 1.0}}, "
          "{name: fwe, tokens: 300000000, weights: {fwe: 1.0}}]"]


def dry_run_lines(capsys, *args: str) -> list[str]:
    assert study(["train", "--preset", PRESET, "--dry-run", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_comparison_preset_mixes_are_the_two_hub_sources_with_equal_budgets():
    cfg = load_config(PRESET)
    assert [m.name for m in cfg.mix.mixes] == ["dclm", "fwe"]
    assert cfg.mix.sources["dclm"].dataset == "mlfoundations/dclm-baseline-1.0-parquet"
    assert (cfg.mix.sources["fwe"].dataset, cfg.mix.sources["fwe"].dataset_config) == (
        "HuggingFaceFW/fineweb-edu", "sample-100BT")
    assert {m.name: m.weights for m in cfg.mix.mixes} == {"dclm": {"dclm": 1.0}, "fwe": {"fwe": 1.0}}
    budgets = {m.tokens for m in cfg.mix.mixes}
    assert budgets == {32000 * 1048576}  # equal, and exactly the recipe's steps x tokens per step
    assert cfg.mix.streaming and cfg.mix.on_short == "fail"
    assert cfg.train.mixes == ["dclm", "fwe"] and cfg.train.schedules == []
    assert cfg.mix.source_stages == ("ingest",)  # hub sources: no generation, no classifier
    assert study_stages(cfg) == ["ingest", "mix", "train", "evaluate", "figures"]


def test_comparison_preset_dry_run_prints_llmcs_15b_recipe_for_each_source(capsys, monkeypatch):
    monkeypatch.delenv("LLMC_DIR", raising=False)
    lines = dry_run_lines(capsys)
    commands = [line for line in lines if "train_gpt2cu" in line]
    assert len(commands) == 2
    for mix, line in zip(("dclm", "fwe"), commands):
        argv = shlex.split(line)
        assert argv[:3] == ["mpirun", "-np", "8"] or argv[1:3] == ["-np", "8"]
        assert argv[argv.index("$LLMC_DIR/train_gpt2cu") - 1] in ("-oL", "8")  # under stdbuf -oL when present
        flags = flag_dict(argv[argv.index("$LLMC_DIR/train_gpt2cu") + 1:])
        expected = flag_dict((RECIPE_15B + " " + SCRIPT_15B_EXTRA).split())
        assert {k: flags[k] for k in expected} == expected
        assert set(flags) - set(expected) == {"-i", "-j", "-o"}
        assert (flags["-i"], flags["-j"], flags["-o"]) == (f"../mix/{mix}/{mix}_train_*.bin",
                                                           "../mix/val/heldout_val_*.bin", mix)
    assert any("33,554,432,000 tokens" in line for line in lines)


def test_comparison_preset_scaled_down_to_d12_on_one_gpu(capsys, monkeypatch):
    monkeypatch.setenv("LLMC_DIR", "/opt/llm.c")
    args = [x for item in SCALED for x in ("--set", item)]
    commands = [shlex.split(line) for line in dry_run_lines(capsys, *args) if "train_gpt2cu" in line]
    assert len(commands) == 2
    for argv in commands:
        assert "mpirun" not in argv[0] and "/opt/llm.c/train_gpt2cu" in argv  # one GPU: no mpirun
        flags = flag_dict(argv[argv.index("/opt/llm.c/train_gpt2cu") + 1:])
        assert {k: flags[k] for k in ("-e", "-b", "-t", "-d", "-x", "-u", "-z")} == {
            "-e": "d12", "-b": "64", "-t": "1024", "-d": "524288", "-x": "572", "-u": "57", "-z": "0"}
    cfg = load_config(PRESET, SCALED)
    assert cfg.train.total_tokens == 572 * 524288 <= min(m.tokens for m in cfg.mix.mixes)  # under one epoch


def test_study_run_executes_only_the_listed_stages(tmp_path, capsys):
    cfg = load_config(PRESET, [f"results_dir={tmp_path}"])
    from pipelines.runs.runner import run_stages

    out = run_stages(cfg, "x", ["prompts", "generate"])  # what notebook 01 asks for: left out, not run
    assert out == {} and "not among this study's stages" in capsys.readouterr().out
    assert not (tmp_path / "x" / "generate").exists()
    assert Run(cfg, "x").inputs("figures") == ("ingest", "mix", "train", "evaluate")
    names = {nb.stem: wanted(nb, cfg) for nb in stage_notebooks()}
    assert names == {"01_synthetic": False, "02_annotate": False, "03_classifier": False, "04_mixes": True,
                     "05_train": True, "06_evaluate": True, "07_figures": True}
    assert set(NOTEBOOK_STAGES) == set(names)
    with pytest.raises(StudyError, match="`train` reads \\['mix'\\]"):
        study_stages(load_config(PRESET, ["stages=[ingest, train]"]))
    with pytest.raises(StudyError, match="unknown stage"):
        study_stages(load_config(PRESET, ["stages=[ingest, mixes]"]))


def test_every_sweep_point_loads_and_the_annealing_points_train_equal_tokens():
    for path in sorted((PROJECT_ROOT / "sweeps").glob("*.yaml")):
        name, spec = load_sweep(path)
        cfgs = []
        for i, p in enumerate(points(spec)):
            ov = point_overrides(spec, f"{name}-{i:02d}", p, [], ["ingest.path=embedded"])
            cfgs.append(load_config(spec.preset, ov))
        if name == "annealing":
            schedules = [c.train.schedules[0] for c in cfgs]
            assert len({s.tokens for s in schedules}) == 1  # same total tokens
            assert len({s.stages[0].model_dump_json() for s in schedules}) == 1  # same first stage
            last = {s.stages[-1].mix for s in schedules}
            assert last == {"web-late", "web-edu", "synthetic", "edu85-syn15"}  # control + high-quality stages
            assert all(c.train.mixes == [] for c in cfgs)


def test_smoke_preset_trains_a_two_stage_schedule_web_then_filtered_web():
    cfg = load_config("smoke")
    (sch,) = cfg.train.schedules
    assert [st.mix for st in sch.stages] == ["web", "web-edu"]
    assert cfg.mix.sources["web-edu"].stage == "filter"
    assert sch.tokens == cfg.train.total_tokens  # as long as each mix trained alone


def test_sweep_points_also_share_with_runs_named_on_the_command_line():
    name, spec = load_sweep(PROJECT_ROOT / "sweeps" / "annealing.yaml")
    names = [f"{name}-{i:02d}" for i in range(len(points(spec)))]
    ov = point_overrides(spec, names[1], points(spec)[1], names, ["share_with=[smoke]"])
    cfg = load_config(spec.preset, ov)
    assert cfg.share_with == [names[0], *names[2:], "smoke"]  # the other points, then the finished run
    from pipelines.sweep import _short

    assert _short(points(spec)[1]["train.schedules"]) == "anneal-edu" and _short(3) == "3"


def test_study_run_runs_every_stage_through_some_notebook():
    # `study run` executes notebooks; a stage no notebook runs would stay "missing" after a full run
    from pipelines.runs.manifest import STAGES

    covered = {s for stages in NOTEBOOK_STAGES.values() for s in stages}
    assert covered | {"ingest"} == set(STAGES)
    for nb in stage_notebooks():
        code = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        for stage in NOTEBOOK_STAGES[nb.stem]:  # named to run_stages, or the figures stage's own make()
            assert f'"{stage}"' in code or (stage == "figures" and "paper.make(" in code), f"{nb.name}: `{stage}`?"
