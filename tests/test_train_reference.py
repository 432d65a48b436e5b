"""The torch backend on real shards: a ci-preset `study train` whose loss falls and whose files pass
llm.c's checks; exact resume from the last DONE checkpoint; llm.c's loader, lr schedules, eval file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cli import main as study
from pipelines.data.benchmarks import hellaswag_source, read_hellaswag
from pipelines.errors import StudyError
from pipelines.llmc.evalfile import read_eval_file, write_eval_file
from pipelines.llmc.shards import write_shard
from pipelines.model import read_checkpoint, read_checkpoint_header
from pipelines.runs.trainlog import read_log
from pipelines.train.data import DataLoader
from pipelines.train.flags import parse_llmc_args
from pipelines.train.optim import learning_rate
from pipelines.train.reference import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, web_sample):
    """ingest + mix + train of the ci preset, through the CLI, results in a temporary folder."""
    root = tmp_path_factory.mktemp("ci")
    args = ["--preset", "ci", "--run", "ci", "--set", f"results_dir={root}", "--set", f"ingest.path={web_sample}"]
    for stage in ("ingest", "mix", "train"):
        assert study([stage, *args]) == 0
    return {"root": root / "ci", "args": args}


def test_ci_run_loss_falls(ci_run):
    table = read_log(ci_run["root"] / "train" / "web")
    assert table["step"].tolist() == list(range(17))
    train_loss = table["train_loss"].dropna()
    assert len(train_loss) == 16 and train_loss.iloc[0] > 10.5  # ln(50257) = 10.8 at init
    assert train_loss.iloc[-4:].mean() < train_loss.iloc[:4].mean() - 1.0
    val = table.set_index("step")["val_loss"]
    assert val.loc[16] < val.loc[8] < val.loc[0]
    assert table.loc[table.step == 0, "lr"].item() == pytest.approx(0.003)  # warmup: 0.006 * 1/2
    assert table["tokens"].iloc[-1] == 16 * 256
    assert table["hellaswag"].notna().sum() == 2  # steps 8 and 16, not 0 (llm.c's rule)


def test_ci_run_files_pass_llmc_checks(ci_run):
    out = ci_run["root"] / "train" / "web"
    assert sorted(p.name for p in out.glob("DONE_*")) == ["DONE_00000008", "DONE_00000016"]
    assert all((out / f"DONE_{s:08d}").stat().st_size == 0 for s in (8, 16))
    for step in (8, 16):
        path = out / f"model_{step:08d}.bin"
        header = np.fromfile(path, "<i4", 8).tolist()
        assert header == [20240326, 3, 1024, 50257, 2, 2, 64, 50304]  # magic, v3, maxT, V, L, NH, C, Vp
        shape, _ = read_checkpoint_header(path)
        assert path.stat().st_size == 1024 + 4 * shape.num_parameters  # llm.c reads exactly this much
        _, _, tensors = read_checkpoint(path)
        assert torch.count_nonzero(tensors["wte"][50257:]) == 0  # padding rows stay zero through training
        state = np.fromfile(out / f"state_{step:08d}_00000.bin", "<i4", 256)
        assert state[:6].tolist() == [20240527, 1, 1, 0, 0, 1] and state[10] == step
    pattern = re.compile(r"^s:\d+ (trl:\d+\.\d{4} lr:\d+\.\d{6} norm:\d+\.\d{2}|tel:\d+\.\d{4}|eval:\d\.\d{4})$")
    lines = (out / "main.log").read_text().splitlines()
    assert lines and all(pattern.match(line) for line in lines)
    hs = ci_run["root"] / "train" / "dev" / "data" / "hellaswag" / "hellaswag_val.bin"
    assert np.fromfile(hs, "<i4", 3).tolist() == [20240522, 1, 8]
    manifest = json.loads((ci_run["root"] / "train" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["outputs"][0]["path"] == "web/model_00000016.bin"
    assert manifest["runs"]["web"]["last_train_loss"] < manifest["runs"]["web"]["first_train_loss"]


def test_ci_rerun_is_skipped(ci_run, capsys):
    assert study(["train", *ci_run["args"]]) == 0
    assert "[train] done" in capsys.readouterr().out


@pytest.fixture(scope="module")
def shards(ci_run):
    return ci_run["root"] / "mix"


def flags(shards: Path, out: Path, *extra: str) -> list[str]:
    return ["-i", str(shards / "web" / "web_train_*.bin"), "-j", str(shards / "val" / "heldout_val_*.bin"), "-o", str(out),
            "-e", "d2c64", "-b", "2", "-t", "16", "-d", "64", "-x", "10", "-n", "4", "-v", "5", "-m", "1",
            "-s", "0", "-l", "0.004", "-u", "2", "-q", "0.1", "-c", "0.1", "-y", "1", *extra]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_resume_after_crash_continues_exactly(shards, tmp_path, dtype):
    full = tmp_path / "full"
    train(parse_llmc_args(flags(shards, full)), dtype=dtype)

    class Crash(Exception):
        pass

    def crash(step: int, loss: float) -> None:
        if step == 6:
            raise Crash

    part = tmp_path / "part"
    with pytest.raises(Crash):
        train(parse_llmc_args(flags(shards, part)), dtype=dtype, on_step=crash)
    assert sorted(p.name for p in part.glob("DONE_*")) == ["DONE_00000004"]
    result = train(parse_llmc_args(flags(shards, part)), dtype=dtype)  # -y 1: resumes from step 4
    assert result["steps"] == 10
    a, b = read_log(full, 64), read_log(part, 64)
    assert b["step"].tolist() == list(range(11))  # no step skipped or repeated in the table
    log = (part / "main.log").read_text()
    assert log.count("s:4 trl:") == 2 and log.count("s:7 trl:") == 1  # steps 4..6 were redone after the crash
    np.testing.assert_allclose(b["train_loss"].dropna(), a["train_loss"].dropna(), atol=1e-4)
    np.testing.assert_allclose(b["val_loss"].dropna(), a["val_loss"].dropna(), atol=1e-4)
    _, version, ta = read_checkpoint(full / "model_00000010.bin")
    _, _, tb = read_checkpoint(part / "model_00000010.bin")
    assert version == (3 if dtype == "fp32" else 5)
    assert all(torch.allclose(ta[k], tb[k], atol=1e-5) for k in ta)  # same weights as without the crash
    master = np.fromfile(part / "state_00000008_00000.bin", "<i4", 5)[4]
    assert master == (dtype == "bf16")  # a bf16 model file keeps exact fp32 weights in the state


def test_no_resume_flag_starts_over(shards, tmp_path):
    out = tmp_path / "run"
    train(parse_llmc_args(flags(shards, out, "-x", "4")))
    train(parse_llmc_args(flags(shards, out, "-x", "4", "-y", "0")))
    assert (out / "main.log").read_text().count("s:0 trl:") == 1  # -y 0 wipes main.log, like llm.c


def test_lr_schedules_are_llmcs():
    kw = dict(lr=1.0, warmup=10, total_steps=110, final_frac=0.1)
    assert [learning_rate("cosine", s, **kw) for s in (0, 9)] == [0.1, 1.0]
    assert learning_rate("cosine", 10, **kw) == 1.0
    assert learning_rate("cosine", 60, **kw) == pytest.approx(0.1 + 0.5 * 0.9)
    assert learning_rate("cosine", 110, **kw) == pytest.approx(0.1)
    assert learning_rate("linear", 60, **kw) == pytest.approx(0.55) and learning_rate("linear", 110, **kw) == pytest.approx(0.1)
    assert learning_rate("constant", 0, **kw) == 1.0
    assert learning_rate("wsd", 50, **kw) == 1.0  # stable until 80% (step 88)
    assert learning_rate("wsd", 88, **kw) == 1.0 and learning_rate("wsd", 110, **kw) == pytest.approx(0.1)
    assert learning_rate("wsd", 99, **kw) == pytest.approx(0.1 + (1 - math.sqrt(0.5)) * 0.9)
    with pytest.raises(StudyError, match="cosine, linear, constant, wsd"):
        learning_rate("step", 0, **kw)


def test_loader_is_llmcs(tmp_path):
    sizes = [41, 57, 33]  # uneven shards; samples of B*T+1 = 9 tokens, stride 8
    for i, n in enumerate(sizes):
        write_shard(tmp_path / f"d_train_{i:06d}.bin", np.r_[50256, np.arange(1000 * i, 1000 * i + n - 1)])
    starts = lambda batches: [int(x[0, 1]) for x, _ in batches]  # noqa: E731  (unique per sample)
    seq = DataLoader(str(tmp_path / "d_train_*.bin"), 2, 4, shuffle=False)
    assert seq.num_tokens == sum(sizes)
    epoch = [seq.next_batch() for _ in range(5 + 7 + 4)]  # (n - 1) // 8 samples per shard
    x, y = epoch[0]
    assert x.shape == (2, 4) and np.array_equal(y.reshape(-1)[:-1], x.reshape(-1)[1:])
    assert starts(epoch)[:7] == [0, 8, 16, 24, 32, 1000, 1008]
    assert starts([seq.next_batch()]) == [0]  # then a new epoch
    shuf = DataLoader(str(tmp_path / "d_train_*.bin"), 2, 4, shuffle=True)
    one, two = starts([shuf.next_batch() for _ in range(16)]), starts([shuf.next_batch() for _ in range(16)])
    assert sorted(one) == sorted(starts(epoch)) == sorted(two) and one != two  # every sample once per epoch
    again = DataLoader(str(tmp_path / "d_train_*.bin"), 2, 4, shuffle=True)
    assert starts([again.next_batch() for _ in range(16)]) == one  # seeded (42, like llm.c)
    with pytest.raises(StudyError, match="at least P\\*B\\*T\\+1"):
        DataLoader(str(tmp_path / "d_train_*.bin"), 4, 16)


def test_hellaswag_eval_file_in_llmc_format(tmp_path):
    from pipelines.llmc.tokenizer import gpt2

    source = hellaswag_source(None)
    info = write_eval_file(tmp_path / "hs.bin", read_hellaswag(source), source, seq_len=64, max_examples=20)
    assert info["examples"] == 20
    raw = (tmp_path / "hs.bin").read_bytes()
    header = np.frombuffer(raw[:1024], "<i4")
    assert header[:3].tolist() == [20240522, 1, 20]
    stream = np.frombuffer(raw[1024:], "<u2")
    assert stream[0] == 65535 and stream[2] == 0 and header[3] == max(info["longest_bytes"], stream[1])
    examples = read_eval_file(tmp_path / "hs.bin", T=64)
    items = [it for it in read_hellaswag(None)[:40]]
    enc = gpt2()
    first = next(it for it in items if enc.encode_ordinary(it["ctx"]) == examples[0].context)
    assert examples[0].label == int(first["label"])
    assert examples[0].endings == [enc.encode_ordinary(" " + e) for e in first["endings"]]
    assert all(len(e.context) + max(map(len, e.endings)) < 64 for e in examples)


@pytest.mark.parametrize("damage", ["state_half", "state_tail", "model_cut"])
def test_a_damaged_last_checkpoint_falls_back_to_the_one_before(shards, tmp_path, damage, capsys):
    out = tmp_path / "run"
    train(parse_llmc_args(flags(shards, out, "-x", "8")))  # checkpoints at 4 and 8
    target = out / ("model_00000008.bin" if damage == "model_cut" else "state_00000008_00000.bin")
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2] if damage == "state_half" else raw[:-100])
    capsys.readouterr()
    result = train(parse_llmc_args(flags(shards, out, "-x", "10")))  # -y 1
    out_text = capsys.readouterr().out
    assert "checkpoint 8 is damaged" in out_text and "resuming from the one before it" in out_text
    assert result["steps"] == 10
    log = (out / "main.log").read_text()
    assert log.count("s:5 trl:") == 2 and log.count("s:9 trl:") == 1  # steps 4..7 redone from checkpoint 4


def test_no_whole_checkpoint_names_the_done_files(shards, tmp_path):
    out = tmp_path / "run"
    train(parse_llmc_args(flags(shards, out, "-x", "4")))
    (out / "state_00000004_00000.bin").write_bytes(b"\0" * 10)
    with pytest.raises(StudyError, match="no whole checkpoint.*delete the DONE_\\* files"):
        train(parse_llmc_args(flags(shards, out, "-x", "6")))


def test_the_state_file_carries_train_gpt2cus_rng_as_it_would_have_advanced(shards, tmp_path):
    out = tmp_path / "run"
    train(parse_llmc_args(flags(shards, out, "-x", "8")))  # -d 64 / (-b 2 * -t 16): 2 micro-steps per step

    def xorshift(state: int) -> int:  # llmc/sampler.h random_u32's state update, written out again
        state ^= state >> 12
        state ^= (state << 25) % 2**64
        state ^= state >> 27
        return state

    state, draws = 13371337, []
    for _ in range(8):
        for _ in range(2 + 16):  # encoder_backward once per micro-step, then one seed per parameter tensor
            state = xorshift(state)
            draws.append(state)
    words = np.fromfile(out / "state_00000008_00000.bin", "<u8", 16)  # header as 64-bit words
    assert (int(words[10]), int(words[11])) == (draws[-1], draws[-17])  # int32 words 20-21 and 22-23
    # a resumed run carries it on: the same words as one that never stopped
    train(parse_llmc_args(flags(shards, tmp_path / "a", "-x", "10", "-n", "4")))
    cut = tmp_path / "b"
    train(parse_llmc_args(flags(shards, cut, "-x", "4", "-n", "4")))
    train(parse_llmc_args(flags(shards, cut, "-x", "10", "-n", "4")))
    a = np.fromfile(tmp_path / "a" / "state_00000010_00000.bin", "<u8", 12)[10:12]
    b = np.fromfile(cut / "state_00000010_00000.bin", "<u8", 12)[10:12]
    assert a.tolist() == b.tolist()


# ---------------------------------------------------------------------------------------------
# seeds and model sizes (train.seeds, train.models)


def test_seeds_train_in_their_own_folders_and_the_first_is_the_single_seed_run(ci_run, tmp_path):
    """train.seeds=[42, 3] on the ci preset (in a run sharing ci's ingest and mix): train/web/ is the run
    with train.seed (byte for byte the single-seed run's checkpoint), train/web-s3/ the same mix with
    seed 3: another initialisation and data order."""
    from pipelines.files import file_sha256

    root = ci_run["root"].parent
    args = [a for a in ci_run["args"] if a != "ci"] + ["--run", "seeds", "--set", "share_with=[ci]",
                                                       "--set", "train.seeds=[42, 3]"]
    args = ["--preset", "ci", *args[args.index("--set"):]]
    for stage in ("ingest", "mix", "train"):
        assert study([stage, *args]) == 0
    train = root / "seeds" / "train"
    assert (root / "seeds" / "mix").is_symlink()  # upstream stages are not redone for seeds
    assert file_sha256(train / "web" / "model_00000016.bin") == file_sha256(
        ci_run["root"] / "train" / "web" / "model_00000016.bin")
    other = json.loads((train / "web-s3" / "launch.json").read_text())
    assert other["seed"] == 3 and "--seed" in other["command"] and other["command"][other["command"].index("--seed") + 1] == "3"
    assert file_sha256(train / "web-s3" / "model_00000016.bin") != file_sha256(train / "web" / "model_00000016.bin")
    # the initial models differ (another init), and so do the batches (another shuffle)
    log0, log3 = read_log(train / "web"), read_log(train / "web-s3")
    assert log0["val_loss"].iloc[0] != log3["val_loss"].iloc[0]
    m = json.loads((train / "manifest.json").read_text())
    assert [(o["mix"], o["dir"], o["seed"], o["scale"]) for o in m["outputs"]] == [
        ("web", "web", 42, "d2c64"), ("web", "web-s3", 3, "d2c64")]
    assert set(m["runs"]) == {"web", "web-s3"} and m["runs"]["web-s3"]["seed"] == 3


def test_plan_of_seeds_and_model_sizes(tmp_path, web_sample):
    """One run per mix, model size and seed; the folder of train.model and train.seed is the mix's own;
    llm.c keeps seed 42 and varies the data; two runs can never share a folder."""
    from pipelines.config import load_config
    from pipelines.train.train import ShardSet, job_flags, plan, run_folder

    def sets(*names):
        return [ShardSet(n, tmp_path / n / f"{n}_train_*.bin", tmp_path / "val" / "v_val_*.bin", 100_000) for n in names]

    cfg = load_config("ci", ["train.seeds=[42, 1]", "train.models=[d2c32, d2c64]"])
    jobs = [js[0] for js in plan(cfg, sets("web", "edu"))]
    assert [(j.out, j.run, j.seed, j.scale, j.cfg.seed, j.cfg.model) for j in jobs] == [
        ("web-d2c32", "web", 42, "d2c32", 42, "d2c32"), ("edu-d2c32", "edu", 42, "d2c32", 42, "d2c32"),
        ("web-d2c32-s1", "web", 1, "d2c32", 1, "d2c32"), ("edu-d2c32-s1", "edu", 1, "d2c32", 1, "d2c32"),
        ("web", "web", 42, "d2c64", 42, "d2c64"), ("edu", "edu", 42, "d2c64", 42, "d2c64"),
        ("web-s1", "web", 1, "d2c64", 1, "d2c64"), ("edu-s1", "edu", 1, "d2c64", 1, "d2c64")]
    assert all(j.data_seed is None for j in jobs)  # torch: the seed is the trainer's own
    assert run_folder(cfg.train, "web", "d2c64", 42) == "web"
    llmc = load_config("ci", ["train.backend=llmc", "train.model=d12", "train.seeds=[42, 7]", "train.hellaswag=false"])
    jobs = [js[0] for js in plan(llmc, sets("web"))]
    assert [(j.out, j.cfg.seed, j.data_seed) for j in jobs] == [("web", 42, None), ("web-s7", 42, 7)]
    flags = dict(zip(*[iter(job_flags(jobs[1], tmp_path / "train"))] * 2))
    assert flags["-i"] == "seeds/web-s7/web_train_*.bin" and flags["-e"] == "d12"
    with pytest.raises(StudyError, match="distinct"):
        load_config("ci", ["train.seeds=[1, 1]"])
    with pytest.raises(StudyError, match="not a model descriptor"):
        load_config("ci", ["train.models=[x/model.bin]"])


def test_a_changed_run_keeps_the_finished_one_until_it_has_finished(tmp_path, monkeypatch, capsys):
    from pipelines.config import load_config
    from pipelines.runs.manifest import Run
    from pipelines.runs.runner import run_stages
    from pipelines.train import train as train_stage

    cfg = load_config("ci", [f"results_dir={tmp_path / 'results'}", "mix.dedup.near=false", "train.steps=8",
                             "train.hellaswag=false"])
    run_stages(cfg, "r", ["ingest", "mix", "train"])
    web = Run(cfg, "r").dir("train") / "web"
    good = (web / "model_00000008.bin").read_bytes()
    changed = load_config("ci", [f"results_dir={tmp_path / 'results'}", "mix.dedup.near=false", "train.steps=8",
                                 "train.hellaswag=false", "train.lr=0.001"])

    def fails(*a, **kw):  # the new attempt dies before writing any checkpoint
        raise StudyError("planted: the trainer crashed")

    monkeypatch.setattr(train_stage, "train_with_restarts", fails)
    with pytest.raises(StudyError, match="planted"):
        run_stages(changed, "r", ["train"])
    out = capsys.readouterr().out
    assert "previous run is kept in" in out and "the previous run is back in" in out
    assert (web / "model_00000008.bin").read_bytes() == good  # the finished model was never lost
    monkeypatch.undo()
    run_stages(changed, "r", ["train"])  # now it trains; the old run goes once the new one has finished
    assert (web / "model_00000008.bin").read_bytes() != good
    assert not (web.parent / ".previous" / "web").exists()
