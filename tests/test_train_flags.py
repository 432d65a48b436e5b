"""One training config -> one llm.c flag list; commands for 1 GPU, mpirun and Slurm; config checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.errors import StudyError
from pipelines.train.flags import LlmcArgs, check_train_config, flag_dict, llmc_flags, parse_llmc_args
from pipelines.train.launcher import launch_command

# docs/design.md's GPT-2 1.5B recipe ("Formats fixed by others"), and what llm.c's scripts/run_gpt2_1558M.sh adds to it (-s, -g)
RECIPE_15B = "-e d48 -b 16 -t 1024 -d 1048576 -r 0 -z 1 -c 0.1 -k cosine -l 0.0006 -q 0.1 -u 700 -n 2000 " \
             "-x 32000 -ge 1 -y 1 -h 1 -v 250"
SCRIPT_15B_EXTRA = "-s 300000 -g 384"
# scripts/run_gpt2_124M.sh (one epoch: no -x); it leaves -k at its default, cosine
SCRIPT_124M = "-v 250 -s 20000 -g 144 -h 1 -b 64 -t 1024 -d 524288 -r 0 -z 1 -c 0.1 -l 0.0006 -q 0.0 -u 700 " \
              "-n 5000 -y 1 -e d12"
PATHS = ("../tokenize/x_train_*.bin", "../tokenize/x_val_*.bin", "web")


def pairs(text: str) -> dict[str, str]:
    return flag_dict(text.split())


def flags_of(preset: str, *overrides: str) -> dict[str, str]:
    return flag_dict(llmc_flags(load_config(preset, list(overrides)).train, *PATHS))


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """LLMC_DIR with an executable train_gpt2cu, and mpirun / srun on PATH (never run here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("mpirun", "srun"):
        (bindir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bindir / tool).chmod(0o755)
    llmc = tmp_path / "llm.c"
    llmc.mkdir()
    (llmc / "train_gpt2cu").write_text("#!/bin/sh\nexit 0\n")
    (llmc / "train_gpt2cu").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LLMC_DIR", str(llmc))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return {"bin": bindir, "llmc": llmc}


def test_gpu_15b_preset_is_llmc_recipe_flag_for_flag(fake_tools):
    cfg = load_config("gpu-1.5b").train
    flags = llmc_flags(cfg, *PATHS)
    got = flag_dict(flags)
    assert len(flags) == 2 * len(got)  # no flag twice
    assert {k: v for k, v in got.items() if k not in ("-i", "-j", "-o")} == {**pairs(RECIPE_15B), **pairs(SCRIPT_15B_EXTRA)}
    assert (got["-i"], got["-j"], got["-o"]) == PATHS
    cmd = launch_command(cfg, flags)
    assert cmd[:3] == [str(fake_tools["bin"] / "mpirun"), "-np", "8"]
    assert str(fake_tools["llmc"] / "train_gpt2cu") in cmd and cmd[-len(flags):] == flags
    assert (cfg.grad_accum_steps, cfg.tokens_per_step, cfg.total_tokens) == (8, 1_048_576, 32_000 * 1_048_576)


def test_gpu_124m_preset_is_llmc_script_on_one_gpu(fake_tools):
    cfg = load_config("gpu-124m").train
    got = flags_of("gpu-124m")
    extra = {k: v for k, v in got.items() if k not in pairs(SCRIPT_124M) and k not in ("-i", "-j", "-o")}
    assert {k: got[k] for k in pairs(SCRIPT_124M)} == pairs(SCRIPT_124M)
    assert extra == {"-k": "cosine"}  # llm.c's default, written explicitly
    cmd = launch_command(cfg, llmc_flags(cfg, *PATHS))
    assert "mpirun" not in cmd[0] and cmd[-1] == "d12"  # one GPU: the binary itself (maybe under stdbuf)
    assert cfg.grad_accum_steps == 8  # 524288 / (64 * 1024 * 1 GPU)
    cfg8 = load_config("gpu-124m", ["train.num_gpus=8"]).train
    assert cfg8.grad_accum_steps == 1 and launch_command(cfg8, llmc_flags(cfg8, *PATHS))[1:3] == ["-np", "8"]


@pytest.mark.parametrize("preset", ["ci", "smoke", "cpu"])
def test_cpu_presets_parse_back_to_their_config(preset):
    cfg = load_config(preset).train
    args = parse_llmc_args(llmc_flags(cfg, *PATHS))
    assert cfg.backend == "torch"
    assert (args.B, args.T, args.total_batch_size) == (cfg.batch_size, cfg.seq_len, cfg.tokens_per_step)
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_iterations) == (cfg.lr, cfg.schedule, cfg.warmup_steps)
    assert (args.final_learning_rate_frac, args.weight_decay, args.max_steps) == (cfg.final_lr_frac, cfg.weight_decay, cfg.steps)
    assert (args.val_loss_every, args.val_max_steps, args.checkpoint_every) == (cfg.val_every, cfg.val_max_steps, cfg.checkpoint_every)
    assert (args.hellaswag_eval, args.resume, args.load_filename) == (int(cfg.hellaswag), 1, cfg.model)
    assert (args.train_data_pattern, args.val_data_pattern, args.output_log_dir) == PATHS
    cmd = launch_command(cfg, llmc_flags(cfg, *PATHS))
    assert cmd[:3] == [sys.executable, "-m", "pipelines.train.reference"] and "--seed" in cmd


def test_ci_preset_flags():
    assert flags_of("ci") == {"-i": PATHS[0], "-j": PATHS[1], "-o": "web", "-v": "8", "-s": "16", "-g": "8",
                              "-h": "1", "-b": "4", "-t": "32", "-d": "256", "-r": "1", "-z": "0", "-c": "0.1",
                              "-k": "cosine", "-l": "0.006", "-q": "0.1", "-u": "2", "-n": "8", "-x": "16",
                              "-y": "1", "-e": "d2c64", "-m": "2"}
    cfg = load_config("ci").train
    assert (cfg.grad_accum_steps, cfg.tokens_per_step, cfg.total_tokens, cfg.parameters) == (2, 256, 4096, 3_385_088)


def test_parser_is_llmc_argument_loop():
    args = parse_llmc_args("-l 0.001 -lg 5 -s 7 -sl 3.5 -sg 2 -g 10 -ge 2 -n 4 -nk 2 -nm 8 -pn 1".split())
    assert (args.learning_rate, args.log_gpu_every, args.sample_every, args.skip_update_lossz) == (0.001, 5, 7, 3.5)
    assert (args.skip_update_gradz, args.genT, args.gelu_fusion) == (2.0, 10, 2)
    assert (args.checkpoint_every, args.checkpoints_keep, args.major_checkpoint_every) == (4, 2, 8)
    assert parse_llmc_args([]) == LlmcArgs()
    with pytest.raises(StudyError, match="unknown llm.c flag '-zz'"):
        parse_llmc_args(["-zz", "1"])
    with pytest.raises(StudyError, match="pairs"):
        parse_llmc_args(["-b"])
    with pytest.raises(StudyError, match="integer"):
        parse_llmc_args(["-b", "four"])


@pytest.mark.parametrize("overrides, message", [
    (["train.backend=llmc", "train.model=d4c128"], "CPU descriptor of the torch backend"),
    (["train.backend=llmc", "train.model=d12", "train.seed=7"], "no seed flag"),
    (["train.total_batch_tokens=300"], "multiple of batch_size x seq_len"),
    (["train.batch_size=2"], "hellaswag needs batch_size >= 4"),
    (["train.num_gpus=2"], "torch backend is one CPU process"),
    (["train.checkpoint_every=0"], "writes no checkpoint"),
    (["train.seq_len=2048"], "exceeds the model's max_seq_len"),
])
def test_config_checks_say_what_to_change(overrides, message):
    with pytest.raises(StudyError, match=message):
        check_train_config(load_config("ci", overrides).train)


def test_multi_node_under_slurm(fake_tools, monkeypatch):
    cfg = load_config("gpu-1.5b", ["train.nodes=2"]).train
    flags = llmc_flags(cfg, *PATHS)
    assert {k: flag_dict(flags)[k] for k in ("-pn", "-pg", "-pi", "-pf")} == {"-pn": "16", "-pg": "8", "-pi": "fs", "-pf": "web"}
    with pytest.raises(StudyError, match="under Slurm"):
        launch_command(cfg, flags)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    cmd = launch_command(cfg, flags)
    assert cmd[:8] == [str(fake_tools["bin"] / "srun"), "--nodes", "2", "--ntasks", "16", "--ntasks-per-node", "8", "-l"]
    assert cmd[9:12] == [sys.executable, "-m", "pipelines.train.rank"] and cmd[-len(flags):] == flags
    tcp = load_config("gpu-1.5b", ["train.nodes=2", "train.nccl_init=tcp", "train.server_ip=10.0.0.1"]).train
    assert flag_dict(llmc_flags(tcp, *PATHS))["-ps"] == "10.0.0.1"


def test_rank_shim_appends_slurm_rank(tmp_path):
    env = {**os.environ, "SLURM_PROCID": "3"}
    out = subprocess.run([sys.executable, "-m", "pipelines.train.rank", "/bin/echo", "-b", "16"], env=env,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout.split() == ["-b", "16", "-pr", "3"]


def test_missing_binary_says_how_to_build(monkeypatch, tmp_path):
    cfg = load_config("gpu-124m").train
    monkeypatch.delenv("LLMC_DIR", raising=False)
    with pytest.raises(StudyError, match=r"LLMC_DIR is not set.*README.md.*make train_gpt2cu"):
        launch_command(cfg, [])
    monkeypatch.setenv("LLMC_DIR", str(tmp_path))
    with pytest.raises(StudyError, match=r"no train_gpt2cu in LLMC_DIR=.*Training with llm.c"):
        launch_command(cfg, [])
