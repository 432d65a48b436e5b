"""The llm.c launcher at its process boundary, with a small fake `train_gpt2cu` (a Python script that
takes llm.c's flags, prints llm.c's step lines, writes main.log / model / DONE files, and crashes on
request): streaming and parsing, crash messages, resume with -y 1, Ctrl-C, and the whole stage."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main as study
from pipelines.config import load_config
from pipelines.errors import StudyError
from pipelines.runs.trainlog import read_log
from pipelines.train.flags import flag_dict, llmc_flags
from pipelines.train.launcher import launch_command, run_process, train_with_restarts

FAKE = r'''#!{python}
# stands in for llm.c's train_gpt2cu: same flags, same step lines and output folder
import os, shutil, sys, time
a = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out, steps, every, v = a["-o"], int(a["-x"]), int(a["-n"]), int(a["-v"])
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "argv.log"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
attempt = sum(1 for _ in open(os.path.join(out, "argv.log")))
open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
if a.get("-h") == "1" and not os.path.exists("dev/data/hellaswag/hellaswag_val.bin"):
    sys.exit("fake: no dev/data/hellaswag/hellaswag_val.bin in " + os.getcwd())
dones = [int(n[5:]) for n in os.listdir(out) if n.startswith("DONE_")]
resuming = a.get("-y") == "1" and bool(dones)
start = max(dones) if resuming else 0
log = os.path.join(out, "main.log")
if a.get("-y") != "1":
    open(log, "w").close()
crash_at = int(os.environ.get("FAKE_CRASH_AT", "-1"))
crash_always = os.environ.get("FAKE_CRASH_ALWAYS") == "1"
print("| train_num_batches     | %-50d |" % steps, flush=True)
for step in range(start, steps + 1):
    last = step == steps
    if step % v == 0 or last:
        print("val loss 9.5", flush=True)
        open(log, "a").write("s:%d tel:%.4f\n" % (step, 10 - 0.1 * step))
    if every and not (resuming and step == start) and ((step > 0 and step % every == 0) or last):
        print("Writing checkpoint at step %d" % step, flush=True)
        src = a["-e"]
        shutil.copy(src, os.path.join(out, "model_%08d.bin" % step))
        open(os.path.join(out, "DONE_%08d" % step), "w").close()
    if last:
        break
    if (step == crash_at and attempt == 1) or (crash_always and step == start + 3):
        print("fake: Segmentation fault at step %d" % step, flush=True)
        sys.exit(1)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    loss = 10 - 0.1 * step + 0.001 * attempt
    print("step %4d/%d | loss %7.6f (+nanz)| norm 1.0000 (+nanz)| lr 6.00e-04 | 12.00 ms | 40.0%% bf16 MFU | "
          "400000 tok/s" % (step + 1, steps, loss), flush=True)
    open(log, "a").write("s:%d trl:%.4f lr:%.6f norm:%.2f\n" % (step, loss, 0.0006, 1.0))
'''


@pytest.fixture
def llmc(tmp_path, monkeypatch):
    """LLMC_DIR holding the fake train_gpt2cu, and a tiny valid llm.c checkpoint for -e."""
    d = tmp_path / "llm.c"
    d.mkdir()
    binary = d / "train_gpt2cu"
    binary.write_text(FAKE.replace("{python}", sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("LLMC_DIR", str(d))
    for var in ("FAKE_CRASH_AT", "FAKE_CRASH_ALWAYS", "FAKE_SLEEP"):
        monkeypatch.delenv(var, raising=False)
    from pipelines.llmc.shapes import GPT2Shape
    from pipelines.model import GPT2, write_checkpoint

    init = write_checkpoint(GPT2(GPT2Shape(1, 32, 1, max_seq_len=64), seed=1), tmp_path / "init.bin", dtype="bf16")
    return {"dir": d, "init": init, "work": tmp_path / "work"}


def setup_run(llmc, *overrides: str) -> tuple[list[str], Path, Path, object]:
    cfg = load_config("ci", ["train.backend=llmc", f"train.model={llmc['init']}", "train.hellaswag=false",
                             "train.dtype=bf16", *overrides]).train
    work = llmc["work"]
    work.mkdir(exist_ok=True)
    flags = llmc_flags(cfg, "x_train_*.bin", "x_val_*.bin", "web")
    return launch_command(cfg, flags), work, work / "web", cfg


def test_streams_step_lines_into_progress(llmc):
    cmd, work, out, cfg = setup_run(llmc)
    out.mkdir()
    seen = []
    res = run_process(cmd, work, out / "stdout.log", on_step=seen.append, echo=lambda _: None)
    assert res.returncode == 0 and (res.last_step, res.total_steps) == (16, 16)
    assert [s["step"] for s in seen] == list(range(1, 17))
    assert seen[0] == {"step": 1, "steps": 16, "loss": 10.001, "norm": 1.0, "lr": 6e-4, "ms": 12.0, "mfu": 40.0,
                       "tok_s": 400000.0, "precision": "bf16"}
    assert "Writing checkpoint at step 16" in (out / "stdout.log").read_text()
    table = read_log(out, cfg.tokens_per_step)
    assert table["step"].tolist() == list(range(17)) and table["tokens"].iloc[-1] == 16 * 256


def test_crash_resumes_from_last_done_checkpoint(llmc, monkeypatch):
    cmd, work, out, cfg = setup_run(llmc, "train.checkpoint_every=4")
    monkeypatch.setenv("FAKE_CRASH_AT", "6")  # first launch dies at step 6; DONE_00000004 exists then
    lines = []
    train_with_restarts(cmd, work, out, resume=True, max_restarts=2, desc="t", echo=lines.append)
    launches = (out / "argv.log").read_text().splitlines()
    assert len(launches) == 2 and all(flag_dict(x.split())["-y"] == "1" for x in launches)
    assert any("resuming from checkpoint step 4" in x for x in lines)
    log = (out / "main.log").read_text()
    assert log.count("s:4 trl:") == 2 and log.count("s:5 trl:") == 2  # steps 4, 5 ran twice ...
    table = read_log(out)
    assert table["step"].tolist() == list(range(17))  # ... but the table has every step once
    assert table.loc[table.step == 5, "train_loss"].item() == pytest.approx(10 - 0.5 + 0.002)  # the resumed value
    assert table.loc[table.step == 3, "train_loss"].item() == pytest.approx(10 - 0.3 + 0.001)
    assert sorted(p.name for p in out.glob("DONE_*")) == [f"DONE_{s:08d}" for s in (4, 8, 12, 16)]


def test_crash_without_new_checkpoint_is_reported(llmc, monkeypatch):
    cmd, work, out, cfg = setup_run(llmc)
    monkeypatch.setenv("FAKE_CRASH_AT", "1")
    with pytest.raises(StudyError) as e:
        train_with_restarts(cmd, work, out, resume=True, max_restarts=3, desc="t", echo=lambda _: None)
    msg = str(e.value)
    assert "train_gpt2cu exited with code 1 at step 1/16" in msg
    assert "last checkpoint: none yet" in msg and "fake: Segmentation fault at step 1" in msg
    assert "not relaunched" in msg and "rerun the same `study train` command" in msg
    assert len((out / "argv.log").read_text().splitlines()) == 1


def test_repeated_crashes_give_up(llmc, monkeypatch):
    cmd, work, out, cfg = setup_run(llmc, "train.checkpoint_every=2")
    monkeypatch.setenv("FAKE_CRASH_ALWAYS", "1")  # dies 3 steps after each start, having checkpointed
    with pytest.raises(StudyError, match=r"last checkpoint: step 4 .*gave up after 1 restart"):
        train_with_restarts(cmd, work, out, resume=True, max_restarts=1, desc="t", echo=lambda _: None)


def test_ctrl_c_terminates_the_trainer(llmc, monkeypatch):
    cmd, work, out, cfg = setup_run(llmc)
    out.mkdir()
    monkeypatch.setenv("FAKE_SLEEP", "0.5")

    def interrupt(st: dict) -> None:
        if st["step"] == 2:
            raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_process(cmd, work, out / "stdout.log", on_step=interrupt, echo=lambda _: None, grace_s=5)
    pid = int((out / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(pid, 0)
    assert time.perf_counter() - t0 < 5  # it did not run on to its 16 steps
    assert "s:15 trl" not in (out / "main.log").read_text()


def test_study_train_with_llmc_backend(llmc, tmp_path, web_sample):
    common = ["--preset", "ci", "--run", "fake", "--set", f"results_dir={tmp_path / 'results'}",
              "--set", f"ingest.path={web_sample}"]
    train_set = ["--set", "train.backend=llmc", "--set", f"train.model={llmc['init']}", "--set", "train.dtype=bf16",
                 "--set", "train.export_hf=false"]
    assert study(["mix", *common]) == 2  # needs ingest first: a clear error, not a traceback
    assert study(["ingest", *common]) == 0 and study(["mix", *common]) == 0
    assert study(["train", *common, *train_set]) == 0
    stage = tmp_path / "results" / "fake" / "train"
    launch = json.loads((stage / "web" / "launch.json").read_text())
    got = flag_dict(launch["flags"])
    assert got["-i"] == "../mix/web/web_train_*.bin" and got["-o"] == "web" and got["-h"] == "1"
    assert got["-j"] == "../mix/val/heldout_val_*.bin"
    assert (stage / "web" / "argv.log").read_text().split() == launch["flags"]  # what the binary received
    assert launch["command"][-len(launch["flags"]):] == launch["flags"]
    assert np.fromfile(stage / "gpt2_tokenizer.bin", "<u4", 4).tolist() == [20240328, 2, 50257, 50256]
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["outputs"][0]["path"] == "web/model_00000016.bin"
    assert manifest["runs"]["web"]["checkpoint_version"] == 5
    # rerun: complete, skipped; a changed flag starts the run over in an emptied folder
    assert study(["train", *common, *train_set]) == 0
    assert len((stage / "web" / "argv.log").read_text().splitlines()) == 1
    assert study(["train", *common, *train_set, "--set", "train.lr=0.001"]) == 0
    assert len((stage / "web" / "argv.log").read_text().splitlines()) == 1
    assert flag_dict((stage / "web" / "argv.log").read_text().split())["-l"] == "0.001"
    shutil.rmtree(tmp_path / "results")


def test_llmc_seeds_train_on_reshuffled_documents(llmc, tmp_path, web_sample):
    """train_gpt2cu always initialises with 42: another seed trains on the mix's documents reshuffled with
    it, written once into train/seeds/<mix>-s<seed>/ and reused."""
    from pipelines.llmc.shards import read_shard, split_documents

    common = ["--preset", "ci", "--run", "fake", "--set", f"results_dir={tmp_path / 'results'}",
              "--set", f"ingest.path={web_sample}"]
    train_set = ["--set", "train.backend=llmc", "--set", f"train.model={llmc['init']}", "--set", "train.dtype=bf16",
                 "--set", "train.export_hf=false", "--set", "train.seeds=[42, 7]"]
    assert study(["ingest", *common]) == 0 and study(["mix", *common]) == 0
    assert study(["train", *common, *train_set]) == 0
    stage = tmp_path / "results" / "fake" / "train"
    base = flag_dict(json.loads((stage / "web" / "launch.json").read_text())["flags"])
    seeded = json.loads((stage / "web-s7" / "launch.json").read_text())
    assert base["-i"] == "../mix/web/web_train_*.bin"
    assert flag_dict(seeded["flags"])["-i"] == "seeds/web-s7/web_train_*.bin" and seeded["data_seed"] == 7
    assert flag_dict((stage / "web-s7" / "argv.log").read_text().split())["-i"] == "seeds/web-s7/web_train_*.bin"
    original = split_documents(read_shard(tmp_path / "results" / "fake" / "mix" / "web" / "web_train_000000.bin"))
    shuffled = split_documents(read_shard(stage / "seeds" / "web-s7" / "web_train_000000.bin"))
    key = [d.tobytes() for d in original]
    assert sorted(key) == sorted(d.tobytes() for d in shuffled)  # the same documents ...
    assert key != [d.tobytes() for d in shuffled]  # ... in another order
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["reshuffled"] == [{"mix": "web", "seed": 7, "dir": "seeds/web-s7", "tokens": sum(len(d) + 1 for d in original)}]
    stamp = (stage / "seeds" / "web-s7" / "web_train_000000.bin").stat().st_mtime_ns
    assert study(["train", *common, *train_set, "--set", "train.lr=0.001", "--force"]) == 0
    assert (stage / "seeds" / "web-s7" / "web_train_000000.bin").stat().st_mtime_ns == stamp  # written once
    shutil.rmtree(tmp_path / "results")
