"""Staged schedules (train.schedules): a two-stage ci run chained through its checkpoint, a crash in
stage 2 that resumes in stage 2, evaluation and figures over the whole schedule, and the plan
checks (seq_len per stage, errors) without training."""

from __future__ import annotations

import json

import pytest

from pipelines.config import load_config
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run, file_sha256
from pipelines.runs.trainlog import parse_main_log, read_log
from pipelines.train import train as stage_mod
from pipelines.train.launcher import max_done_step
from pipelines.train.train import plan, planned_shard_sets

SCHEDULE = ("train.schedules=[{name: two, stages: ["
            "{mix: web, tokens: 2048, schedule: constant},"  # 8 steps x 256 tokens
            "{mix: late, tokens: 2048, schedule: linear, warmup_steps: 1, final_lr_frac: 0.0, lr: 0.003}]}]")
MIXES = ("mix.mixes=[{name: web, tokens: 100000, weights: {web: 1.0}},"
         "{name: late, tokens: 50000, weights: {web: 1.0}}]")


def overrides(root, web_sample) -> list[str]:
    return [f"results_dir={root}", f"ingest.path={web_sample}", MIXES, SCHEDULE, "train.mixes=[]",
            "train.checkpoint_every=4", "train.val_every=4", "evaluate.limit=4", "evaluate.bootstrap=20",
            "evaluate.progress=false", "evaluate.benchmarks=[arc_easy, hellaswag]", "evaluate.checkpoints=all"]


@pytest.fixture(scope="module")
def staged(tmp_path_factory, web_sample):
    """ingest + mix, then train interrupted in stage 2 after its first checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("staged")
    cfg = load_config("ci", overrides(root, web_sample))
    run = Run(cfg, "staged")
    for s in ("ingest", "mix"):
        run.execute(s)

    real = stage_mod.train_with_restarts
    seen = {}

    def interrupt_stage2(cmd, cwd, out, resume, max_restarts, desc, **kw):
        if out.name != "stage2-late":
            return real(cmd, cwd, out, resume, max_restarts, desc, **kw)

        def on_step(st):
            if st["step"] >= 6 and max_done_step(out) == 4:
                seen["stage1_log"] = (cwd / "two" / "stage1-web" / "main.log").read_text()
                raise KeyboardInterrupt  # the launcher terminates the trainer, as on Ctrl-C or a kill

        return real(cmd, cwd, out, resume, max_restarts, desc, on_step=on_step)

    stage_mod.train_with_restarts = interrupt_stage2
    try:
        with pytest.raises(KeyboardInterrupt):
            run.execute("train")
    finally:
        stage_mod.train_with_restarts = real
    seen["after_crash_done"] = sorted(p.name for p in (run.dir("train") / "two" / "stage2-late").glob("DONE_*"))
    seen["after_crash_manifest"] = run.read_manifest("train")
    manifest = run.execute("train")  # the rerun: stage 1 done, stage 2 resumes from its step-4 checkpoint
    return {"run": run, "manifest": manifest, **seen}


def test_stage2_starts_from_stage1_final_weights(staged):
    run = staged["run"]
    t = run.dir("train")
    s1, s2 = t / "two" / "stage1-web", t / "two" / "stage2-late"
    launch = json.loads((s2 / "launch.json").read_text())
    flags = dict(zip(launch["flags"][::2], launch["flags"][1::2]))
    assert flags["-e"] == "two/stage1-web/model_00000008.bin" and flags["-x"] == "8" and flags["-k"] == "linear"
    assert flags["-i"] == "../mix/late/late_train_*.bin" and flags["-o"] == "two/stage2-late"
    # the chain, through the checkpoint: stage 2 records the hash of stage 1's final model ...
    assert launch["init"] == {"path": "two/stage1-web/model_00000008.bin",
                              "sha256": file_sha256(s1 / "model_00000008.bin")}
    # ... and its step-0 validation loss is stage 1's final one (same weights, same val batches);
    # a fresh model would start near ln(50257) = 10.8
    v1, v2 = parse_main_log((s1 / "main.log").read_text()), parse_main_log((s2 / "main.log").read_text())
    assert v1[0]["val_loss"] > 10.5
    assert v2[0]["val_loss"] == pytest.approx(v1[8]["val_loss"], abs=2e-4)
    assert v2[0]["train_loss"] < 10.0


def test_manifest_chains_the_stages_and_counts_tokens_across_the_run(staged):
    m = staged["manifest"]
    (out,) = m["outputs"]
    assert out["mix"] == "two" and out["path"] == "two/stage2-late/model_00000008.bin"
    assert out["steps"] == 16 and out["tokens"] == 16 * 256 == m["counts"]["tokens"]
    st1, st2 = out["schedule"]
    assert (st1["mix"], st1["start_tokens"], st1["init"]) == ("web", 0, "d2c64")
    assert (st2["mix"], st2["start_step"], st2["start_tokens"]) == ("late", 8, 2048)
    assert st2["init"] == "two/stage1-web/model_00000008.bin"
    assert st2["init_sha256"] == file_sha256(staged["run"].dir("train") / st2["init"])
    assert m["stage_boundaries"] == {"two": [2048]}
    assert m["runs"]["two"]["stages"]["stage2-late"]["init"]["sha256"] == st2["init_sha256"]
    log = read_log(staged["run"].dir("train") / "two")  # the whole schedule as one table
    assert log["step"].max() == 16 and log["tokens"].max() == 16 * 256
    assert sorted(set(log["stage"])) == ["stage1-web", "stage2-late"]
    assert log.loc[log.step == 8, "val_loss"].nunique() == 1  # the boundary: the same weights twice


def test_crash_in_stage2_resumes_in_stage2(staged):
    assert staged["after_crash_manifest"] is None  # an interrupted train stage is not complete
    assert staged["after_crash_done"] == ["DONE_00000004"]
    t = staged["run"].dir("train") / "two"
    assert (t / "stage1-web" / "main.log").read_text() == staged["stage1_log"]  # stage 1 was not rerun
    log = (t / "stage2-late" / "main.log").read_text()
    assert log.count("s:0 trl:") == 1  # stage 2 did not start over ...
    assert log.count("s:4 trl:") == 2 and log.count("s:7 trl:") == 1  # ... it resumed at its checkpoint 4
    stdout = (t / "stage2-late" / "stdout.log").read_text()
    assert "intermediate checkpoint" in stdout  # the reference trainer's banner on resume (-y 1)
    assert read_log(t / "stage2-late")["step"].tolist() == list(range(9))


def test_evaluation_and_figures_treat_the_schedule_as_one_run(staged):
    run = staged["run"]
    run.execute("evaluate")
    import pandas as pd

    table = pd.read_csv(run.dir("evaluate") / "table.csv")
    trained = table[table["mix"] == "two"]
    # every checkpoint of both stages, on one token axis: stage 2's step 4 is 2048 + 4 * 256 tokens
    assert sorted(set(zip(trained["step"], trained["tokens"]))) == [
        (4, 1024), (8, 2048), (12, 3072), (16, 4096)]
    from pipelines.figures import figures as paper

    assert paper.stage_boundaries(run) == {"two": [2048.0]}
    fig = paper.F.training_curves(paper.train_logs(run), paper.stage_boundaries(run), paper.colors(run))
    lines = [l for ax in fig.axes for l in ax.get_lines() if list(l.get_xdata()) == [2048.0, 2048.0]]
    assert lines and lines[0].get_label() == "stage boundary"


def test_plan_takes_each_stage_own_sequence_length_and_checks_it(tmp_path, web_sample):
    base = [f"results_dir={tmp_path}", f"ingest.path={web_sample}", MIXES, "train.mixes=[web]"]
    sched = ("train.schedules=[{name: ctx, stages: [{mix: web, tokens: 2048, seq_len: 16},"
             "{mix: late, tokens: 1024, seq_len: 64, batch_size: 4, total_batch_tokens: 512}]}]")
    cfg = load_config("ci", [*base, sched])
    runs = plan(cfg, planned_shard_sets(cfg, tmp_path / "mix"))
    assert [[j.out for j in r] for r in runs] == [["web"], ["ctx/stage1-web", "ctx/stage2-late"]]
    s1, s2 = runs[1]
    assert (s1.cfg.seq_len, s1.steps, s1.cfg.grad_accum_steps) == (16, 8, 4)
    assert (s2.cfg.seq_len, s2.steps, s2.start_tokens, s2.init) == (64, 2, 2048, "ctx/stage1-web/model_00000008.bin")
    too_long = sched.replace("seq_len: 64", "seq_len: 2048")
    with pytest.raises(StudyError, match="stage 2 .*max_seq_len 1024"):
        plan(load_config("ci", [*base, too_long]), planned_shard_sets(cfg, tmp_path / "mix"))
    no_step = sched.replace("tokens: 1024", "tokens: 100")
    with pytest.raises(StudyError, match="make no step"):
        plan(load_config("ci", [*base, no_step]), planned_shard_sets(cfg, tmp_path / "mix"))


def test_schedule_config_errors_name_the_problem(tmp_path, web_sample):
    base = [f"results_dir={tmp_path}", f"ingest.path={web_sample}", MIXES]
    with pytest.raises(StudyError, match="unknown mix"):
        load_config("ci", [*base, "train.schedules=[{name: s, stages: [{mix: nope, tokens: 10}]}]"])
    with pytest.raises(StudyError, match="also trained alone"):
        load_config("ci", [*base, "train.schedules=[{name: web, stages: [{mix: late, tokens: 10}]}]"])
    with pytest.raises(StudyError, match="unknown key"):
        load_config("ci", [*base, "train.schedules=[{name: s, stages: [{mix: web, tokens: 10, epochs: 2}]}]"])
    cfg = load_config("ci", base)
    assert cfg.train.schedules == [] and len(plan(cfg, planned_shard_sets(cfg, tmp_path))) == 2  # as before


def test_notebook_tables_list_each_stage(staged):
    from pipelines.runs.trainlog import launch_commands, run_table

    t = staged["run"].dir("train")
    table = run_table(t).set_index("mix")
    assert list(table.index) == ["two/stage1-web", "two/stage2-late"]
    assert table.loc["two/stage2-late", "model"] == "two/stage1-web/model_00000008.bin"
    assert table["last_checkpoint"].tolist() == [8, 8]
    cmds = dict((name, cmd) for name, _, cmd in launch_commands(t))
    assert "-e two/stage1-web/model_00000008.bin" in cmds["two/stage2-late"]


def test_a_config_error_stops_train_before_it_touches_the_last_run(staged, monkeypatch):
    run = staged["run"]
    before = (run.manifest_path("train")).read_bytes()
    monkeypatch.delenv("LLMC_DIR", raising=False)
    bad = [run.config.model_copy(update={"train": run.config.train.model_copy(update={"backend": "llmc", "model": "d6"})}),
           run.config.model_copy(update={"train": run.config.train.model_copy(update={"schedules": [
               run.config.train.schedules[0].model_copy(update={"stages": [
                   run.config.train.schedules[0].stages[0].model_copy(update={"seq_len": 4096})]})]})})]
    for cfg, match in zip(bad, ("LLMC_DIR is not set", "max_seq_len")):
        with pytest.raises(StudyError, match=match):
            Run(cfg, "staged").execute("train")
        assert run.manifest_path("train").read_bytes() == before  # still the complete manifest
        assert Run(cfg, "staged").state("train").status == "stale"  # not "incomplete"
