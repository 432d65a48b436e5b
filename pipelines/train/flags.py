"""One training config -> one llm.c flag list, and llm.c's own flag parser (used by the torch backend).

train_gpt2cu takes `-x value` pairs (one dash, one or two letters). `llmc_flags` always writes the
flags of llm.c's recipe scripts (scripts/run_gpt2_1558M.sh: -i -j -o -e -b -t -d -r -z -c -k -l -q
-u -n -x -y -h -v -s -g, and -ge when set) and every other flag only when it differs from
train_gpt2cu's default, so the gpu-1.5b preset gives that script's command flag for flag.

Two things are not flags because llm.c has none: the initialisation seed (train_gpt2cu always
seeds 42, loader 42 + rank) and the precision (a build option: `make train_gpt2cu` is bf16 and
writes v5 checkpoints, `PRECISION=FP32` writes v3). The torch backend takes them as --seed / --dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from pipelines.config import TrainConfig
from pipelines.errors import StudyError
from pipelines.llmc.shapes import is_llmc_descriptor, parse_descriptor

LLMC_SEED = 42


@dataclass
class LlmcArgs:
    """train_gpt2cu's options with its defaults (train_gpt2.cu main())."""

    train_data_pattern: str = "dev/data/tinyshakespeare/tiny_shakespeare_train.bin"  # -i
    val_data_pattern: str = "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"  # -j
    load_filename: str = "gpt2_124M_bf16.bin"  # -e: a .bin checkpoint or a descriptor
    output_log_dir: str | None = None  # -o
    checkpoint_every: int = 0  # -n
    checkpoints_keep: int = 0  # -nk
    major_checkpoint_every: int = 0  # -nm
    resume: int = 0  # -y
    B: int = 4  # -b
    T: int = 1024  # -t
    total_batch_size: int = -1  # -d; -1: B*T*processes
    learning_rate: float = 3e-4  # -l
    log_gpu_every: int = -1  # -lg
    warmup_iterations: int = 0  # -u
    final_learning_rate_frac: float = 1.0  # -q
    weight_decay: float = 0.0  # -c
    skip_update_lossz: float = 0.0  # -sl
    skip_update_gradz: float = 0.0  # -sg
    max_steps: int = -1  # -x; -1: one epoch
    val_loss_every: int = 20  # -v
    val_max_steps: int = 20  # -m
    sample_every: int = 20  # -s
    genT: int = 64  # -g
    overfit_single_batch: int = 0  # -a
    override_enable_tf32: int = 1  # -f
    use_master_weights: int = 1  # -w
    gelu_fusion: int = -1  # -ge
    recompute: int = 1  # -r
    zero_stage: int = 0  # -z
    hellaswag_eval: int = 0  # -h
    lr_scheduler_type: str = "cosine"  # -k
    num_processes: int = 1  # -pn
    process_rank: int = 0  # -pr
    gpus_per_node: int = 8  # -pg
    nccl_init_method: str = "mpi"  # -pi
    server_ip: str = ""  # -ps
    fs_path: str = ""  # -pf


# flag -> LlmcArgs field, exactly the flags train_gpt2cu's argument loop accepts
FLAGS = {
    "-i": "train_data_pattern", "-j": "val_data_pattern", "-e": "load_filename", "-o": "output_log_dir",
    "-n": "checkpoint_every", "-nk": "checkpoints_keep", "-nm": "major_checkpoint_every", "-y": "resume",
    "-b": "B", "-t": "T", "-d": "total_batch_size", "-l": "learning_rate", "-lg": "log_gpu_every",
    "-u": "warmup_iterations", "-q": "final_learning_rate_frac", "-c": "weight_decay",
    "-sl": "skip_update_lossz", "-sg": "skip_update_gradz", "-x": "max_steps", "-v": "val_loss_every",
    "-m": "val_max_steps", "-s": "sample_every", "-g": "genT", "-a": "overfit_single_batch",
    "-f": "override_enable_tf32", "-w": "use_master_weights", "-ge": "gelu_fusion", "-r": "recompute",
    "-z": "zero_stage", "-h": "hellaswag_eval", "-k": "lr_scheduler_type", "-pn": "num_processes",
    "-pr": "process_rank", "-pg": "gpus_per_node", "-pi": "nccl_init_method", "-ps": "server_ip", "-pf": "fs_path",
}
_TYPES = {f.name: f.type for f in fields(LlmcArgs)}


def parse_llmc_args(argv: list[str]) -> LlmcArgs:
    """Parse a train_gpt2cu argument list (flag value pairs) like llm.c does, with clear errors."""
    if len(argv) % 2:
        raise StudyError(f"llm.c flags come in `-flag value` pairs; got an odd list: {' '.join(argv)}")
    args = LlmcArgs()
    for flag, value in zip(argv[::2], argv[1::2]):
        name = FLAGS.get(flag)
        if name is None:
            raise StudyError(f"unknown llm.c flag {flag!r} (train_gpt2cu accepts {' '.join(FLAGS)})")
        kind = _TYPES[name]
        try:
            parsed = int(value) if "int" in str(kind) else float(value) if "float" in str(kind) else value
        except ValueError:
            expected = "an integer" if "int" in str(kind) else "a number"
            raise StudyError(f"llm.c flag {flag} {value!r}: expected {expected}") from None
        setattr(args, name, parsed)
    return args


def _num(x: float) -> str:
    """Shortest text that parses back to the same float: 0.0006, 0.1, 0.0 (as llm.c's scripts write them)."""
    return repr(float(x))


def check_train_config(cfg: "TrainConfig") -> None:
    """Cross-field checks of the `train` section, with what to change (StudyError)."""
    where = "train"
    if cfg.backend == "torch" and cfg.processes > 1:
        raise StudyError(f"{where}: the torch backend is one CPU process; set train.num_gpus=1 and train.nodes=1 "
                         f"(or train.backend=llmc for GPUs)")
    if cfg.backend == "llmc":
        if not cfg.model.endswith(".bin") and not is_llmc_descriptor(cfg.model):
            raise StudyError(f"{where}.model={cfg.model}: train_gpt2cu builds d6/d12/d24/d36/d48 (or loads a .bin "
                             f"checkpoint); {cfg.model} is a CPU descriptor of the torch backend")
        if cfg.seed != LLMC_SEED:
            raise StudyError(f"{where}.seed={cfg.seed}: train_gpt2cu has no seed flag and always initialises with "
                             f"seed {LLMC_SEED}; set train.seed=42 or use train.backend=torch")
    if not cfg.model.endswith(".bin"):
        shape = parse_descriptor(cfg.model)
        if cfg.seq_len > shape.max_seq_len:
            raise StudyError(f"{where}.seq_len={cfg.seq_len} exceeds the model's max_seq_len {shape.max_seq_len}")
    if cfg.tokens_per_step % cfg.tokens_per_micro_step:
        raise StudyError(f"{where}.total_batch_tokens={cfg.total_batch_tokens} must be a multiple of batch_size x "
                         f"seq_len x processes = {cfg.tokens_per_micro_step} (llm.c asserts it)")
    if cfg.steps is not None and cfg.warmup_steps > cfg.steps:
        raise StudyError(f"{where}.warmup_steps={cfg.warmup_steps} exceeds train.steps={cfg.steps}")
    if cfg.hellaswag and cfg.batch_size < 4:
        raise StudyError(f"{where}.hellaswag needs batch_size >= 4 (4 endings per example fill 4 rows; llm.c "
                         f"exits otherwise): raise train.batch_size or set train.hellaswag=false")
    if cfg.checkpoint_every < 1:
        raise StudyError(f"{where}.checkpoint_every must be >= 1: llm.c writes no checkpoint (not even the final "
                         f"model) with -n 0, and resume needs one")
    if cfg.nodes > 1 and cfg.nccl_init == "tcp" and not cfg.server_ip:
        raise StudyError(f"{where}.nccl_init=tcp needs train.server_ip (the address of the node running rank 0)")


def llmc_flags(cfg: "TrainConfig", train_pattern: str, val_pattern: str, out_dir: str | Path) -> list[str]:
    """The train_gpt2cu argument list for one run. Paths are used as given (the launcher passes
    them relative to the folder it starts the process in)."""
    check_train_config(cfg)
    pairs = [
        ("-i", train_pattern), ("-j", val_pattern), ("-o", str(out_dir)),
        ("-v", cfg.val_every), ("-s", cfg.sample_every), ("-g", cfg.gen_tokens),
        ("-h", int(cfg.hellaswag)),
        ("-b", cfg.batch_size), ("-t", cfg.seq_len), ("-d", cfg.tokens_per_step),
        ("-r", cfg.recompute), ("-z", cfg.zero_stage), ("-c", _num(cfg.weight_decay)),
        ("-k", cfg.schedule), ("-l", _num(cfg.lr)), ("-q", _num(cfg.final_lr_frac)),
        ("-u", cfg.warmup_steps), ("-n", cfg.checkpoint_every),
    ]
    if cfg.steps is not None:
        pairs.append(("-x", cfg.steps))
    if cfg.gelu_fusion is not None:
        pairs.append(("-ge", cfg.gelu_fusion))
    pairs += [("-y", int(cfg.resume)), ("-e", cfg.model)]
    # the rest only when not train_gpt2cu's default
    defaults = LlmcArgs()
    for flag, value, default in (("-m", cfg.val_max_steps, defaults.val_max_steps),
                                 ("-nk", cfg.checkpoints_keep, defaults.checkpoints_keep),
                                 ("-sl", cfg.skip_loss_z, defaults.skip_update_lossz),
                                 ("-sg", cfg.skip_grad_z, defaults.skip_update_gradz)):
        if value != default:
            pairs.append((flag, _num(value) if isinstance(value, float) else value))
    if cfg.nodes > 1:  # llm.c's multi-node flags; -pr (the rank) is added per process by the launcher
        pairs += [("-pn", cfg.processes), ("-pg", cfg.num_gpus), ("-pi", cfg.nccl_init)]
        if cfg.nccl_init == "fs":
            pairs.append(("-pf", str(out_dir)))
        if cfg.nccl_init == "tcp":
            pairs.append(("-ps", cfg.server_ip))
    return [str(x) for pair in pairs for x in pair]


def flag_dict(argv: list[str]) -> dict[str, str]:
    """{flag: value} of a flag list (for comparisons and display)."""
    return dict(zip(argv[::2], argv[1::2]))
