"""The torch backend: train_gpt2cu's main loop in PyTorch on CPU, taking the same flag list.

    python -m pipelines.train.reference [--seed 42] [--dtype fp32|bf16] [--threads N] <llm.c flags>

It follows train_gpt2.cu step by step, so its output folder (`-o`) cannot be told apart from
llm.c's: main.log (`s:%d trl:%.4f lr:%.6f norm:%.2f`, `s:%d tel:%.4f`, `s:%d eval:%.4f`),
model_%08d.bin (v3 fp32, or v5 bf16 with --dtype bf16), state_%08d_00000.bin in llm.c's state
layout (AdamW m and v, fp32 master weights when the model file is bf16, the loader's position
and shuffle state) and an empty DONE_%08d once a checkpoint is complete. stdout prints llm.c's
step lines (`step 1/20 | loss ... | 123 tok/s`), which the launcher turns into a progress bar.

The loop, for step = first .. steps (the last pass only evaluates and checkpoints):
  val loss every -v steps and at the end (-m batches of the val shards, from their start);
  HellaSwag every -v steps (not at 0) and at the end, when -h 1 and the eval file exists;
  a sample every -s steps (not at 0); a checkpoint every -n steps (not at 0) and at the end;
  then grad_accum = -d / (B*T) micro-batches, grad norm, clip to 1.0, AdamW with llm.c's lr.

Computation is fp32 on CPU; a step is GPT2.loss (lm head + cross-entropy in chunks of rows), backward,
the fp32 grad norm and llm.c's AdamW on torch's fused kernel (optim.py). The closing line says where
the time went (train steps, val loss, HellaSwag, samples, checkpoints). GPU-only flags (-r recompute,
-z ZeRO, -ge GELU fusion, -f TF32, -lg) are accepted and change nothing here; -pn > 1 (several
processes) is refused.

One file, like llm.c's train_gpt2.py, read top to bottom: the output folder, evaluation and sampling,
then Run (the setup, and one method per part of a step: evaluate, checkpoint, update) and train(), the loop.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipelines import onednn
from pipelines.errors import StudyError
from pipelines.files import atomic_open
from pipelines.llmc.evalfile import LLMC_RELATIVE_PATH, read_eval_file
from pipelines.llmc.shapes import DECAYED
from pipelines.llmc.tokenizer import _valid, cached_bpe_path, gpt2
from pipelines.model import GPT2, build_model, load_checkpoint, read_checkpoint_header, write_checkpoint
from pipelines.train.data import MT19937, MT_STATE_BYTES, DataLoader
from pipelines.train.flags import LlmcArgs, parse_llmc_args
from pipelines.train.optim import (
    AdamW,
    OutlierDetector,
    clip_scale,
    grad_norm,
    learning_rate,
)

STATE_MAGIC = 20240527
EOT = 50256


# ---------------------------------------------------------------------------------------------
# output folder: main.log, checkpoints, DONE files (llmc/logger.h, write_checkpoint)


class Logger:
    """main.log, appended line by line; wiped at start unless resuming (llm.c's logger_init)."""

    def __init__(self, out: Path | None, resume: bool):
        self.path = None if out is None else out / "main.log"
        if self.path is not None and not resume:
            self.path.write_text("")

    def _write(self, line: str) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def train(self, step: int, loss: float, lr: float, norm: float) -> None:
        self._write(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")

    def val(self, step: int, loss: float) -> None:
        self._write(f"s:{step} tel:{loss:.4f}")

    def eval(self, step: int, acc: float) -> None:
        self._write(f"s:{step} eval:{acc:.4f}")


class LlmcRng:
    """train_gpt2cu's stochastic-rounding RNG (xorshift, seeded 13371337 + rank), advanced exactly as
    it advances it: one draw per micro-step's backward (encoder_backward) and, for an update that is
    not skipped, one per parameter tensor (16), with the state before them kept as `last_update`.
    The torch backend rounds nothing stochastically; it keeps this count so that train_gpt2cu, resuming
    from our state file (words 20-23), rounds as if it had run the whole time."""

    def __init__(self, rank: int = 0):
        self.state, self.last_update = 13371337 + rank, 0

    def draw(self, n: int = 1) -> None:
        for _ in range(n):
            _, self.state = random_u32(self.state)

    def step(self, micro_steps: int, updated: bool) -> None:
        self.draw(micro_steps)
        if updated:
            self.last_update = self.state
            self.draw(16)  # NUM_PARAMETER_TENSORS


def save_state(path: Path, step: int, opt: AdamW, loader: DataLoader, master: bool, rng: LlmcRng) -> None:
    """llm.c's save_state layout for one process: header, m, v, [master weights], loader state."""
    h = np.zeros(256, dtype="<i4")
    h[:6] = (STATE_MAGIC, 1, 1, 0, int(master), int(loader.shuffle))
    h[10] = step
    h[20:24] = np.array([rng.state, rng.last_update], dtype="<u8").view("<i4")
    h[30:34] = np.array([loader.shard_idx, loader.sample_idx], dtype="<u8").view("<i4")
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts]).numpy().astype("<f4").tobytes()  # noqa: E731
    chunks = [h.tobytes(), flat(opt.m), flat(opt.v)]
    if master:
        chunks.append(flat([p.detach() for p in opt.params]))
    if loader.shuffle:
        chunks += [np.array([len(loader.shard_indices)], "<u8").tobytes(),  # shards, their (shuffled) order
                   np.array(loader.shard_indices, "<i4").tobytes(),
                   np.array([len(loader.intra)], "<u8").tobytes(),  # samples of the current shard, their order
                   np.array(loader.intra, "<i4").tobytes(),
                   loader.rng.to_bytes()]
    with atomic_open(path, "wb") as f:
        for c in chunks:
            f.write(c)


def state_problem(path: Path, num_parameters: int) -> str | None:
    """Why a state file cannot be whole (None: its size is exactly what its header announces)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        return f"cannot read {path.name}: {e.strerror}"
    if len(raw) < 1024:
        return f"{path.name} is {len(raw)} bytes, shorter than its 1024-byte header"
    h = np.frombuffer(raw[:1024], dtype="<i4")
    if h[0] != STATE_MAGIC:
        return f"{path.name} is not an llm.c state file (magic {h[0]})"
    expected = 1024 + 4 * num_parameters * (3 if h[4] else 2)
    if h[5]:  # shuffle state: shard order, sample order, Mersenne Twister
        for _ in range(2):
            if len(raw) < expected + 8:
                return f"{path.name} is truncated ({len(raw):,} bytes)"
            count = int(np.frombuffer(raw, "<u8", 1, expected)[0])
            expected += 8 + 4 * count
        expected += MT_STATE_BYTES
    if len(raw) != expected:
        return f"{path.name} is {len(raw):,} bytes, its header announces {expected:,}: truncated or corrupt"
    return None


def resume_step(out: Path) -> int:
    """The newest checkpoint whose model and state files are whole (llm.c's find_max_step, plus the
    check): a damaged one is reported and the one before it used; -1 when there is none."""
    steps = sorted((int(p.name[5:]) for p in out.glob("DONE_*") if p.name[5:].isdigit()), reverse=True)
    for step in steps:
        model = out / f"model_{step:08d}.bin"
        try:
            shape, _ = read_checkpoint_header(model)
            problem = state_problem(out / f"state_{step:08d}_00000.bin", shape.num_parameters)
        except StudyError as e:
            problem = str(e)
        if problem is None:
            return step
        print(f"checkpoint {step} is damaged ({problem}); resuming from the one before it. "
              f"(Its DONE_{step:08d} stays; delete it, and the checkpoint's files, to silence this.)", flush=True)
    if steps:
        raise StudyError(f"no whole checkpoint in {out} (DONE files for steps {steps}); delete the DONE_* files "
                         f"there to train from the start")
    return -1


def load_state(path: Path, opt: AdamW, loader: DataLoader, rng: LlmcRng) -> int:
    """Restore AdamW, (master) weights, the train loader and the RNG from a state file; returns its step."""
    n = sum(p.numel() for p in opt.params)
    problem = state_problem(path, n)
    if problem is not None:
        raise StudyError(f"{path.parent}: {problem}")
    raw = path.read_bytes()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    if h[0] != STATE_MAGIC or h[1] != 1:
        raise StudyError(f"{path}: not an llm.c state file (magic {h[0]}, version {h[1]})")
    if h[2] != 1 or h[3] != 0:
        raise StudyError(f"{path}: written by {h[2]} processes (rank {h[3]}); the torch backend resumes 1-process runs")
    master, shuffle = bool(h[4]), bool(h[5])
    if shuffle != loader.shuffle:
        raise StudyError(f"{path}: loader shuffle={shuffle} in the state, {loader.shuffle} now (-a changed?)")
    pos = 1024

    def floats(count: int) -> torch.Tensor:
        nonlocal pos
        t = torch.from_numpy(np.frombuffer(raw, "<f4", count, pos).copy())
        pos += 4 * count
        return t

    def unflatten(flat: torch.Tensor, into: list[torch.Tensor]) -> None:
        i = 0
        for t in into:
            t.copy_(flat[i : i + t.numel()].view_as(t))
            i += t.numel()

    with torch.no_grad():
        unflatten(floats(n), opt.m)
        unflatten(floats(n), opt.v)
        if master:
            unflatten(floats(n), [p.data for p in opt.params])
    if shuffle:
        nshards = int(np.frombuffer(raw, "<u8", 1, pos)[0])
        if nshards != len(loader.files):
            raise StudyError(f"{path}: {nshards} train shards in the state, {len(loader.files)} now: "
                             f"the shards changed; start over (remove the output folder)")
        loader.shard_indices = np.frombuffer(raw, "<i4", nshards, pos + 8).tolist()
        pos += 8 + 4 * nshards
        nsamples = int(np.frombuffer(raw, "<u8", 1, pos)[0])
        loader.intra = np.frombuffer(raw, "<i4", nsamples, pos + 8).tolist()
        pos += 8 + 4 * nsamples
        loader.rng = MT19937.from_bytes(raw[pos : pos + MT_STATE_BYTES])
    rng.state, rng.last_update = (int(x) for x in h[20:24].view("<u8"))
    shard_idx, sample_idx = (int(x) for x in h[30:34].view("<u8"))
    loader.resume(shard_idx, sample_idx)
    return int(h[10])


def write_llmc_checkpoint(out: Path, step: int, model: GPT2, opt: AdamW, loader: DataLoader, dtype: str,
                          master: bool, rng: LlmcRng) -> None:
    """model_%08d.bin, state_%08d_00000.bin, then the empty DONE_%08d (the checkpoint is complete)."""
    print(f"Writing checkpoint at step {step}", flush=True)
    write_checkpoint(model, out / f"model_{step:08d}.bin", dtype=dtype)
    save_state(out / f"state_{step:08d}_00000.bin", step, opt, loader, master, rng)
    (out / f"DONE_{step:08d}").touch()


def delete_checkpoint(out: Path, step: int) -> None:
    print(f"Deleting checkpoint at step {step}", flush=True)
    for name in (f"model_{step:08d}.bin", f"state_{step:08d}_00000.bin", f"DONE_{step:08d}"):
        (out / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# evaluation and sampling


@torch.no_grad()
def val_loss(model: GPT2, loader: DataLoader, steps: int) -> float:
    loader.reset()
    total = 0.0
    for _ in range(steps):
        x, y = loader.next_batch()
        total += float(model.loss(torch.from_numpy(x), torch.from_numpy(y)))
    return total / steps


@torch.no_grad()
def hellaswag_correct(model: GPT2, examples, B: int) -> int:
    """llm.c's EvalLoader + evalloader_stat_losses: B // 4 examples per batch; an ending's score is
    its mean token loss; the lowest wins (the first on ties). Rows are cut to the longest row of the
    batch instead of T: attention is causal, so the losses are the same."""
    per_batch, correct = B // 4, 0
    for i in range(0, len(examples), per_batch):
        chunk = examples[i : i + per_batch]
        rows = [ex.context + e for ex in chunk for e in ex.endings]
        idx = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for r, row in enumerate(rows):
            idx[r, : len(row)] = torch.tensor(row)
        h = model.hidden(idx)  # (rows, L, C)
        # ending token j of a row is predicted at position len(context) - 1 + j
        pos = [(r, len(ex.context) - 1 + j) for k, ex in enumerate(chunk) for c, e in enumerate(ex.endings)
               for r in [4 * k + c] for j in range(len(e))]
        rr, pp = torch.tensor(pos).T
        losses = F.cross_entropy(model.logits(h[rr, pp]), idx[rr, pp + 1], reduction="none")
        row_loss = torch.zeros(len(rows)).index_add_(0, rr, losses) / torch.bincount(rr, minlength=len(rows))
        pred = row_loss.view(len(chunk), 4).argmin(dim=1)
        correct += sum(int(p) == ex.label for p, ex in zip(pred.tolist(), chunk))
    return correct


def random_u32(state: int) -> tuple[int, int]:
    """llm.c's random_u32 (llmc/sampler.h, xorshift*): a 32-bit draw and the next 64-bit state."""
    m = (1 << 64) - 1
    state ^= state >> 12
    state = (state ^ (state << 25)) & m
    state ^= state >> 27
    return ((state * 0x2545F4914F6CDD1D) & m) >> 32, state


def _xorshift_f32(state: int) -> tuple[float, int]:
    """llm.c's random_f32 (llmc/sampler.h): a float in [0, 1) and the next xorshift state."""
    u32, state = random_u32(state)
    return (u32 >> 8) / 16777216.0, state


@torch.no_grad()
def sample_text(model: GPT2, gen_tokens: int) -> str:
    """Sample from <|endoftext|> like train_gpt2cu (rng state 1337, inverse-CDF sampling)."""
    tokens, state = [EOT], 1337
    for _ in range(1, min(gen_tokens, model.shape.max_seq_len)):
        probs = torch.softmax(model(torch.tensor([tokens]))[0, -1].double(), dim=-1)
        coin, state = _xorshift_f32(state)
        tokens.append(min(int(torch.searchsorted(probs.cumsum(0), torch.tensor([coin], dtype=torch.float64))),
                          len(probs) - 1))

    if _valid(cached_bpe_path()):  # decode only when the BPE file is at hand (never download here)

        return gpt2().decode(tokens[1:])
    return " ".join(map(str, tokens[1:]))


def measure_peak_flops(seconds: float = 0.3, n: int = 1024) -> float:
    """fp32 matmul FLOP/s of this CPU (torch's threads): the MFU denominator on CPU. The better of ATen's
    matmul (MKL) and oneDNN's, where torch has it: the trainer's lm head runs on oneDNN."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels = [lambda: a @ b] + ([lambda: onednn.linear(a, b)] if onednn.available() else [])
    best = 0.0
    for mm in kernels:
        mm()
        t_end = time.perf_counter() + seconds / len(kernels)
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            mm()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------------------------------------
# training: Run is set up once, in train_gpt2cu's order; train() at the end is the loop


def train_step(model: GPT2, opt: AdamW, batches, lr: float, t: int, skip: Callable[[float, float], str] | None = None
               ) -> tuple[float, float, str]:
    """One optimizer step over the micro-batches: (mean loss, grad norm before clipping, skip reason).
    The loss is GPT2.loss (the lm head and cross-entropy in chunks of rows, gradients in the forward
    pass), the norm fp32, AdamW torch's fused kernel: llm.c's step, in fewer passes over memory."""
    n = len(batches)
    loss_sum = 0.0
    for x, y in batches:
        loss = model.loss(torch.from_numpy(x), torch.from_numpy(y))
        (loss / n if n > 1 else loss).backward()  # accumulate the mean over micro-batches, like llm.c's grad_accum
        loss_sum += float(loss.detach())
    mean_loss = loss_sum / n
    norm = grad_norm(opt.params)
    reason = skip(mean_loss, norm) if skip else ""
    if not reason:
        opt.step(lr, t, clip_scale(norm))
    for p in opt.params:
        p.grad = None
    return mean_loss, norm, reason


class SkipRule:
    """llm.c's -sl / -sg: skip the update when the loss's (or grad norm's) z-score against the previous
    128 steps is above the limit (0: never). Called once a step; keeps the step's z-scores for its line."""

    def __init__(self, loss_limit: float, grad_limit: float):
        self.loss_limit, self.grad_limit = loss_limit, grad_limit
        self.loss_detector, self.grad_detector = OutlierDetector(), OutlierDetector()
        self.loss_z = self.grad_z = math.nan

    def __call__(self, loss: float, norm: float) -> str:
        self.loss_z, self.grad_z = self.loss_detector.update(loss), self.grad_detector.update(norm)
        if math.isfinite(self.loss_z) and self.loss_limit and self.loss_z > self.loss_limit:
            return f"skipping update due to loss z-score of {self.loss_z:f}"
        if math.isfinite(self.grad_z) and self.grad_limit and self.grad_z > self.grad_limit:
            return f"skipping update due to grad z-score of {self.grad_z:f}"
        return ""


def batch_sizes(args: LlmcArgs) -> tuple[int, int]:
    """(tokens per step, micro-batches per step): -d tokens in micro-batches of B*T (-d -1: one of them)."""
    tokens_per_fwdbwd = args.B * args.T
    total_batch = tokens_per_fwdbwd if args.total_batch_size == -1 else args.total_batch_size
    if total_batch % tokens_per_fwdbwd:
        raise StudyError(f"-d {total_batch} is not a multiple of B*T = {tokens_per_fwdbwd}")
    return total_batch, total_batch // tokens_per_fwdbwd


class Run:
    """One train_gpt2cu run. Set up in llm.c's order: the flags, the model (a fresh one, or the newest
    whole checkpoint with -y 1), the loaders, HellaSwag, the config table, AdamW and the resumed state.
    Then train() calls, for each step, evaluate, checkpoint and update; spent[] gathers the seconds."""

    def __init__(self, args: LlmcArgs, seed: int, dtype: str, threads: int, wd: Path):
        if args.num_processes != 1:
            raise StudyError("the torch backend runs one process; drop the multi-node flags (-pn)")
        if threads:
            torch.set_num_threads(threads)
        onednn.keep_heap()
        self.args, self.dtype = args, dtype
        self.out = None if args.output_log_dir is None else wd / args.output_log_dir
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self.total_batch, self.grad_accum = batch_sizes(args)
        self.overfit = args.overfit_single_batch == 1
        self.train_pattern = args.val_data_pattern if self.overfit else args.train_data_pattern

        resume_at = resume_step(self.out) if args.resume == 1 else -1  # the highest whole DONE checkpoint
        self.resuming = resume_at != -1
        self.model = self._load_model(wd, seed, resume_at)
        self.train_loader = DataLoader(str(wd / self.train_pattern), args.B, args.T, shuffle=not self.overfit, seed=seed)
        self.val_loader = DataLoader(str(wd / args.val_data_pattern), args.B, args.T, shuffle=False)
        self.steps = args.max_steps if args.max_steps != -1 else self.train_loader.num_tokens // self.total_batch
        self.val_steps = (args.val_max_steps if args.val_max_steps != -1
                          else self.val_loader.num_tokens // (args.B * args.T))
        if self.steps < 1 or self.val_steps < 1:
            raise StudyError(f"nothing to do: {self.steps} train steps, {self.val_steps} val batches "
                             f"(too little data for -d / -b / -t)")
        self.examples = self._hellaswag_examples(wd)
        self.peak = measure_peak_flops()
        self._print_config()

        self.logger = Logger(self.out, resume=args.resume == 1)
        named = self.model.llmc_parameters()
        self.opt = AdamW([p for _, _, p in named], [n in DECAYED for n, _, _ in named], args.weight_decay)
        self.master = dtype == "bf16" and args.use_master_weights == 1  # bf16 model file: keep exact fp32 weights
        self.rng = LlmcRng()
        self.first_step = 0
        if self.resuming:
            self.first_step = load_state(self.out / f"state_{resume_at:08d}_00000.bin", self.opt, self.train_loader,
                                         self.rng)
        self.skip = SkipRule(args.skip_update_lossz, args.skip_update_gradz)
        self.flops_per_step = self.model.shape.flops_per_token(args.T) * self.total_batch
        self.ema, self.total_time = 0.0, 0.0  # tok/s, and the seconds of the steps after the first (warmup)
        self.result = {"last_val_loss": None, "hellaswag": None, "last_train_loss": None}
        self.spent = dict.fromkeys(("train steps", "val loss", "HellaSwag", "samples", "checkpoints"), 0.0)  # seconds

    def _load_model(self, wd: Path, seed: int, resume_at: int) -> GPT2:
        if self.resuming:
            model = load_checkpoint(self.out / f"model_{resume_at:08d}.bin")
        else:
            load = self.args.load_filename
            model = build_model(str(wd / load) if load.endswith(".bin") else load, seed=seed)
        if self.args.T > model.shape.max_seq_len:
            raise StudyError(f"-t {self.args.T} exceeds the model's max_seq_len {model.shape.max_seq_len}")
        model.train()
        return model

    def _hellaswag_examples(self, wd: Path) -> list | None:
        """The eval file's examples when -h 1 and it exists (None: no HellaSwag in this run)."""
        hs_path = wd / LLMC_RELATIVE_PATH
        if not (self.args.hellaswag_eval and hs_path.exists()):
            return None
        if self.args.B < 4:
            raise StudyError(f"HellaSwag EvalLoader: batch size {self.args.B} is < 4; disable HellaSwag with -h 0 "
                             f"or raise -b")
        return read_eval_file(hs_path, self.args.T)

    def _print_config(self) -> None:
        """train_gpt2cu's table of the run's settings."""
        args, shape = self.args, self.model.shape
        for k, v in [("train data pattern", self.train_pattern), ("val data pattern", args.val_data_pattern),
                     ("output log dir", args.output_log_dir or "NULL"), ("micro batch size B", args.B),
                     ("sequence length T", args.T), ("total batch size", self.total_batch),
                     ("LR scheduler", args.lr_scheduler_type),
                     ("learning rate (LR)", f"{args.learning_rate:e}"), ("warmup iterations", args.warmup_iterations),
                     ("final LR fraction", f"{args.final_learning_rate_frac:e}"),
                     ("weight decay", f"{args.weight_decay:e}"),
                     ("max_steps", args.max_steps),
                     ("device", f"CPU (torch {torch.__version__}, {torch.get_num_threads()} threads)"),
                     ("peak TFlops", f"{self.peak / 1e12:.3f} (measured fp32 matmul)"), ("precision", "FP32"),
                     ("weight init method", "intermediate checkpoint" if self.resuming else args.load_filename),
                     ("num_layers L", shape.num_layers), ("num_heads NH", shape.num_heads),
                     ("channels C", shape.channels), ("num_parameters", shape.num_parameters),
                     ("train_num_batches", self.steps), ("val_num_batches", self.val_steps),
                     ("run hellaswag", "yes" if self.examples is not None else "no")]:
            print(f"| {k:<21} | {str(v):<50} |")
        if args.hellaswag_eval and self.examples is None:
            print(f"HellaSwag eval not found at {LLMC_RELATIVE_PATH}, skipping its evaluation")
        print(f"=> setting grad_accum_steps={self.grad_accum}", flush=True)

    def evaluate(self, step: int, last: bool) -> None:
        """Val loss every -v steps; HellaSwag every -v steps and a sample every -s steps, both not at 0;
        all three at the last step (the model in eval mode for each)."""
        args, model, t0 = self.args, self.model, time.perf_counter()
        if step % args.val_loss_every == 0 or last:
            model.eval()
            vl = val_loss(model, self.val_loader, self.val_steps)
            model.train()
            print(f"val loss {vl:f}", flush=True)
            self.logger.val(step, vl)
            self.result["last_val_loss"] = vl
        t0 = _lap(self.spent, "val loss", t0)
        if self.examples is not None and ((step > 0 and step % args.val_loss_every == 0) or last):
            model.eval()
            correct = hellaswag_correct(model, self.examples, args.B)
            model.train()
            acc = correct / len(self.examples)
            print(f"HellaSwag: {correct}/{len(self.examples)} = {acc:f}", flush=True)
            self.logger.eval(step, acc)
            self.result["hellaswag"] = acc
        t0 = _lap(self.spent, "HellaSwag", t0)
        if args.sample_every > 0 and ((step > 0 and step % args.sample_every == 0) or last):
            model.eval()
            print(f"generating:\n---\n{sample_text(model, args.genT)}\n---", flush=True)
            model.train()
        _lap(self.spent, "samples", t0)

    def checkpoint(self, step: int, last: bool) -> None:
        """A checkpoint every -n steps (not at 0) and at the end, but not the one just resumed from; then
        the one -nk checkpoints back is deleted, unless it is a major one (every -nm steps)."""
        args, t0 = self.args, time.perf_counter()
        if (args.checkpoint_every > 0 and self.out is not None and not self.resuming
                and ((step > 0 and step % args.checkpoint_every == 0) or last)):
            write_llmc_checkpoint(self.out, step, self.model, self.opt, self.train_loader, self.dtype, self.master,
                                  self.rng)
            old = step - args.checkpoints_keep * args.checkpoint_every
            if args.checkpoints_keep > 0 and old > 0 and (args.major_checkpoint_every == 0
                                                          or old % args.major_checkpoint_every):
                delete_checkpoint(self.out, old)
        self.resuming = False
        _lap(self.spent, "checkpoints", t0)

    def update(self, step: int) -> float:
        """Step `step + 1` of -x: grad_accum micro-batches (the same one again with -a 1), llm.c's lr,
        the skip rule, AdamW; prints llm.c's step line and logs it. Returns the mean loss."""
        args, t0 = self.args, time.perf_counter()
        if self.overfit:
            self.train_loader.reset()
        batches = [self.train_loader.next_batch() for _ in range(self.grad_accum)]
        lr = learning_rate(args.lr_scheduler_type, step, args.learning_rate, args.warmup_iterations, self.steps,
                           args.final_learning_rate_frac)
        loss, norm, reason = train_step(self.model, self.opt, batches, lr, step + 1, self.skip)
        self.rng.step(self.grad_accum, updated=not reason)
        if reason:
            print(reason)
        dt = time.perf_counter() - t0
        self.spent["train steps"] += dt
        mfu = self.flops_per_step / dt / self.peak
        print(f"step {step + 1:4d}/{self.steps} | loss {loss:7.6f} ({self.skip.loss_z:+.2f}z)"
              f"| norm {norm:6.4f} ({self.skip.grad_z:+.2f}z)| lr {lr:.2e} | {dt * 1000:.2f} ms "
              f"| {100 * mfu:.1f}% fp32 MFU | {self._tokens_per_second(step, dt):.0f} tok/s", flush=True)
        self.logger.train(step, loss, lr, norm)
        self.result["last_train_loss"] = loss
        return loss

    def _tokens_per_second(self, step: int, dt: float) -> float:
        """This step's tok/s; after the process's first step (warmup, as in llm.c) an EMA of it, bias-corrected."""
        tok_s = self.total_batch / dt
        if step == self.first_step:
            return tok_s
        self.total_time += dt
        self.ema = 0.95 * self.ema + 0.05 * tok_s
        return self.ema / (1 - 0.95 ** (step - self.first_step))

    def report(self) -> None:
        """The closing lines: the mean step time after warmup, and where the time went."""
        if self.steps - self.first_step > 1:
            print(f"total average iteration time: {self.total_time / (self.steps - self.first_step - 1) * 1000:f} ms")
        print("time spent: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.spent.items()), flush=True)


def _lap(spent: dict[str, float], what: str, t0: float) -> float:
    """Add the seconds since t0 to spent[what]; returns now (the next lap's start)."""
    now = time.perf_counter()
    spent[what] += now - t0
    return now


def train(args: LlmcArgs, seed: int = 42, dtype: str = "fp32", threads: int = 0, workdir: str | Path = ".",
          on_step: Callable[[int, float], None] | None = None) -> dict:
    """Run train_gpt2cu's loop with these flags; paths are relative to `workdir` (llm.c's cwd).
    on_step(step, loss) after each update. Returns {"steps", "last_train_loss", "last_val_loss", "hellaswag"}."""
    run = Run(args, seed, dtype, threads, Path(workdir))
    for step in range(run.first_step, run.steps + 1):
        last = step == run.steps  # the last pass only evaluates and checkpoints
        run.evaluate(step, last)
        run.checkpoint(step, last)
        if last:
            break
        loss = run.update(step)
        if on_step is not None:
            on_step(step, loss)
    run.report()
    return {"steps": run.steps, **run.result}


def split_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Our long options (llm.c has no flag for them) out of an argument list; the rest are llm.c's."""
    opts: dict = {}
    rest = []
    it = iter(argv)
    for a in it:
        if a in ("--seed", "--threads"):
            opts[a[2:]] = int(next(it))
        elif a == "--dtype":
            opts["dtype"] = next(it)
            if opts["dtype"] not in ("fp32", "bf16"):
                raise StudyError(f"--dtype {opts['dtype']}: fp32 (v3 checkpoints) or bf16 (v5)")
        else:
            rest.append(a)
    return opts, rest


def main(argv: list[str] | None = None) -> int:
    try:
        opts, rest = split_options(list(sys.argv[1:] if argv is None else argv))
        train(parse_llmc_args(rest), **opts)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted: resume with -y 1 from the last DONE checkpoint", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
