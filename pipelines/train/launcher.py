"""Start a training process and watch it: llm.c's train_gpt2cu, or the torch backend with the same flags.

- The command is an argument list (never a shell): `train_gpt2cu <flags>` on one GPU,
  `mpirun -np N train_gpt2cu <flags>` on N GPUs of one machine, and under Slurm for several nodes
  `srun --nodes M --ntasks M*N --ntasks-per-node N python -m pipelines.train.rank train_gpt2cu
  <flags>`, where the tiny rank shim adds llm.c's `-pr $SLURM_PROCID` (with -pn/-pg/-pi/-pf in the
  flags). The torch backend is `python -m pipelines.train.reference --seed S --dtype D <flags>`.
- Its stdout (stderr merged) is appended to <out>/stdout.log and parsed line by line: llm.c's
  step lines drive a tqdm bar (step, loss, tok/s, MFU); other lines are echoed (step lines too when
  there is no terminal). C stdio buffers a pipe, so train_gpt2cu runs under `stdbuf -oL` when
  coreutils has it.
- A crash (non-zero exit) that wrote a new DONE checkpoint is relaunched (the flags carry -y 1, so
  it resumes there), up to max_restarts times; otherwise a StudyError says what happened and how
  to resume. Ctrl-C terminates the child (SIGTERM, then SIGKILL after a grace period) and waits for it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from pipelines.errors import StudyError
from pipelines.files import atomic_open
from pipelines.llmc.tokenizer import _valid, cached_bpe_path, gpt2
from pipelines.runs.trainlog import parse_step_line

LLMC_BINARY = "train_gpt2cu"
BUILD_HINT = ("build llm.c yourself (README.md, section \"Training with llm.c\": `git clone "
              "https://github.com/karpathy/llm.c && cd llm.c && make train_gpt2cu USE_CUDNN=1`) and set "
              "LLMC_DIR to that folder; or train on CPU with --set train.backend=torch")
_TOTAL = re.compile(r"train_num_batches\s*\|\s*(\d+)")


def find_llmc_binary(env: dict | None = None) -> Path:
    """$LLMC_DIR/train_gpt2cu, executable; a StudyError saying how to get it otherwise."""
    env = os.environ if env is None else env
    d = env.get("LLMC_DIR")
    if not d:
        raise StudyError(f"llm.c backend: LLMC_DIR is not set, so {LLMC_BINARY} cannot be found; {BUILD_HINT}")
    binary = Path(d).expanduser() / LLMC_BINARY
    if not binary.is_file():
        raise StudyError(f"llm.c backend: no {LLMC_BINARY} in LLMC_DIR={d}; {BUILD_HINT}")
    if not os.access(binary, os.X_OK):
        raise StudyError(f"llm.c backend: {binary} is not executable (chmod +x it, or rebuild: {BUILD_HINT})")
    return binary


def _which(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StudyError(f"`{tool}` not found on PATH: {why}")
    return path


def launch_command(cfg, flags: list[str], env: dict | None = None, resolve: bool = True) -> list[str]:
    """The full argument list for one run of `cfg` (the `train` config section) with `flags`.
    resolve=False (a dry run): no checks; $LLMC_DIR/train_gpt2cu, mpirun and srun stand as names."""
    env = os.environ if env is None else env
    if cfg.backend == "torch":
        opts = ["--seed", str(cfg.seed), "--dtype", cfg.dtype]
        opts += ["--threads", str(cfg.threads)] if cfg.threads else []
        return [sys.executable, "-m", "pipelines.train.reference", *opts, *flags]
    if resolve:
        binary = str(find_llmc_binary(env))
    else:
        binary = str(Path(env["LLMC_DIR"]).expanduser() / LLMC_BINARY) if env.get("LLMC_DIR") else f"$LLMC_DIR/{LLMC_BINARY}"
    stdbuf = shutil.which("stdbuf")
    prog = [stdbuf, "-oL", binary] if stdbuf else [binary]  # line-buffered stdout through the pipe
    if cfg.nodes > 1:
        if resolve and not env.get("SLURM_JOB_ID"):
            raise StudyError(f"train.nodes={cfg.nodes}: multi-node runs start under Slurm (inside `sbatch` or "
                             f"`salloc`, which set SLURM_JOB_ID); see README.md \"Training with llm.c\"")
        srun = _which("srun", "multi-node training runs one task per GPU through Slurm's srun") if resolve else "srun"
        return [srun, "--nodes", str(cfg.nodes), "--ntasks", str(cfg.processes), "--ntasks-per-node",
                str(cfg.num_gpus), "-l", "-u", sys.executable, "-m", "pipelines.train.rank", *prog, *flags]
    if cfg.num_gpus > 1:
        mpirun = (_which("mpirun", "several GPUs need OpenMPI (`sudo apt install openmpi-bin openmpi-doc "
                                   "libopenmpi-dev`) and NCCL, and llm.c built with them")
                  if resolve else shutil.which("mpirun") or "mpirun")
        return [mpirun, "-np", str(cfg.num_gpus), *prog, *flags]
    return [*prog, *flags]


def write_llmc_tokenizer(path: Path) -> bool:
    """llm.c's gpt2_tokenizer.bin (train_gpt2.py's write_tokenizer), so train_gpt2cu's samples print
    text: header [20240328, 2, 50257, 50256], then each token as a length byte and its bytes.
    Returns False when the GPT-2 BPE file is not at hand (llm.c then prints token ids)."""
    if not _valid(cached_bpe_path()):
        return False
    enc = gpt2()
    header = np.zeros(256, dtype="<u4")
    header[:4] = (20240328, 2, enc.n_vocab, enc.eot_token)
    chunks = [header.tobytes()]
    for i in range(enc.n_vocab):
        b = enc.decode_single_token_bytes(i)
        chunks.append(bytes([len(b)]) + b)
    with atomic_open(path, "wb") as f:
        f.write(b"".join(chunks))
    return True


@dataclass
class RunResult:
    returncode: int
    last_step: int = 0  # steps done, from the last step line
    total_steps: int | None = None
    tail: list[str] = field(default_factory=list)


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Terminate the child (mpirun forwards SIGTERM to its ranks) and wait; SIGKILL after grace_s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_process(cmd: list[str], cwd: Path, log_path: Path, desc: str = "train",
                on_step: Callable[[dict], None] | None = None, echo: Callable[[str], None] | None = None,
                grace_s: float = 30.0) -> RunResult:
    """Run `cmd` in `cwd`, append its output to `log_path`, show progress; returns when it exits."""
    # OpenMP threads that spin while waiting steal the cores other processes need: on a shared 2-core
    # machine the torch backend ran 2-3x faster with passive waiting (the user's setting wins)
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1"}
    res = RunResult(returncode=-1)
    tail: deque[str] = deque(maxlen=30)
    bar = tqdm(desc=desc, unit="step", disable=None, dynamic_ncols=True)
    write = echo or bar.write
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    except OSError as e:
        bar.close()
        raise StudyError(f"cannot start {cmd[0]}: {e}") from None
    try:
        with open(log_path, "ab") as raw_log:
            for raw in proc.stdout:
                raw_log.write(raw)
                raw_log.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\n").split("\r")[-1]
                tail.append(line)
                st = parse_step_line(line)
                if st is not None:
                    res.last_step, res.total_steps = st["step"], st["steps"]
                    bar.total = st["steps"]
                    bar.n = st["step"]
                    bar.set_postfix(loss=f"{st['loss']:.4f}", tok_s=f"{st['tok_s']:.0f}", mfu=f"{st['mfu']:.1f}%",
                                    refresh=False)
                    bar.refresh()
                    if bar.disable:  # no terminal (a batch job, a pipe): keep the step lines in the log
                        write(line)
                    if on_step is not None:
                        on_step(st)
                    continue
                m = _TOTAL.search(line)
                if m:
                    bar.total = int(m.group(1))
                if line.strip():
                    write(line)
        res.returncode = proc.wait()
    finally:  # Ctrl-C, or an exception in on_step: never leave the trainer running
        stop(proc, grace_s)
        bar.close()
    res.tail = list(tail)
    return res


def max_done_step(out: Path) -> int:
    steps = [int(p.name[5:]) for p in Path(out).glob("DONE_*") if p.name[5:].isdigit()]
    return max(steps, default=-1)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def train_with_restarts(cmd: list[str], cwd: Path, out: Path, resume: bool, max_restarts: int, desc: str,
                        on_step: Callable[[dict], None] | None = None, echo: Callable[[str], None] | None = None,
                        grace_s: float = 30.0) -> RunResult:
    """run_process, relaunched after a crash that wrote a new DONE checkpoint (flags carry -y 1)."""
    out.mkdir(parents=True, exist_ok=True)
    restarts = 0
    while True:
        before = max_done_step(out)
        res = run_process(cmd, cwd, out / "stdout.log", desc, on_step, echo, grace_s)
        if res.returncode == 0:
            return res
        after = max_done_step(out)
        name = ("the torch backend" if "pipelines.train.reference" in cmd
                else next((Path(c).name for c in cmd if Path(c).name == LLMC_BINARY), Path(cmd[0]).name))
        where = f"at step {res.last_step}/{res.total_steps}" if res.total_steps else "before its first step"
        ckpt = f"step {after} ({out}/model_{after:08d}.bin)" if after >= 0 else "none yet"
        progressed = after > before
        if resume and progressed and restarts < max_restarts:
            restarts += 1
            (echo or print)(f"[train] {name} {describe_exit(res.returncode)} {where}; resuming from checkpoint "
                            f"{ckpt} (-y 1), restart {restarts}/{max_restarts}")
            continue
        why = ("no new checkpoint since it started, so it was not relaunched" if not progressed
               else f"gave up after {restarts} restart(s) (train.max_restarts)" if resume
               else "train.resume is false, so it was not relaunched")
        raise StudyError(
            f"{name} {describe_exit(res.returncode)} {where}; last checkpoint: {ckpt}; {why}.\n"
            f"Command (in {cwd}): {' '.join(cmd)}\nLast output lines ({out}/stdout.log has all):\n  "
            + "\n  ".join(res.tail[-15:])
            + "\nFix the cause, then rerun the same `study train` command: it resumes from the last checkpoint (-y 1).")
