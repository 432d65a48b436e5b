"""The train section: llm.c's train_gpt2cu flags (or the torch reference trainer), mixes trained alone
at several model sizes and seeds, and staged schedules; tokens per step and the like as properties."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.config.section import Section
from pipelines.errors import StudyError
from pipelines.llmc.shapes import parse_descriptor


class TrainStage(Section):
    """One stage of a schedule: an llm.c run on one mix, started from the previous stage's last
    checkpoint (-e) with its own flags. Unset keys take the `train` section's values."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # folder; None: stage<k>-<mix>
    mix: str  # a mix of mix.mixes
    tokens: int = Field(ge=1)  # this stage's training tokens: -x = tokens // tokens per step
    lr: float | None = Field(None, gt=0)  # -l
    schedule: Literal["cosine", "linear", "constant", "wsd"] | None = None  # -k
    warmup_steps: int | None = Field(None, ge=0)  # -u (AdamW's moments start at zero in every stage)
    final_lr_frac: float | None = Field(None, ge=0.0, le=1.0)  # -q
    weight_decay: float | None = Field(None, ge=0.0)  # -c
    seq_len: int | None = Field(None, ge=2)  # -t, up to the model's max_seq_len (1024 for llm.c's GPT-2)
    batch_size: int | None = Field(None, ge=1)  # -b
    total_batch_tokens: int | None = Field(None, ge=1)  # -d

    OVERRIDES: ClassVar[tuple[str, ...]] = ("lr", "schedule", "warmup_steps", "final_lr_frac", "weight_decay",
                                            "seq_len", "batch_size", "total_batch_tokens")


class TrainSchedule(Section):
    """Stages trained one after the other as one model (SmolLM's annealing, AFM's continued pretraining)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # results/<run>/train/<name>/
    stages: list[TrainStage] = Field(min_length=1)

    @model_validator(mode="after")
    def _stage_names(self) -> "TrainSchedule":
        names = self.stage_names
        if len(set(names)) != len(names):
            raise ValueError(f"schedule {self.name!r}: stage names must be unique: {names}")
        return self

    @property
    def stage_names(self) -> list[str]:
        return [s.name or f"stage{k}-{s.mix}" for k, s in enumerate(self.stages, 1)]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.stages)


class TrainConfig(Section):
    """GPT-2 pretraining: llm.c's train_gpt2cu on GPUs (`llmc`) or the PyTorch reference trainer on
    CPU (`torch`). Each key is one train_gpt2cu flag (pipelines/train/flags.py); both backends take
    that flag list and write llm.c's output folder to results/<run>/train/<mix>/."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"max_restarts", "threads"})

    backend: Literal["torch", "llmc"] = "torch"
    model: str = "d12"  # -e: d12 124M, d24 350M, d36 774M, d48 1.5B; CPU: d<L>c<C> (d2c64, d4c128); or a .bin
    batch_size: int = Field(4, ge=1)  # -b: micro-batch per process (GPU)
    seq_len: int = Field(1024, ge=2)  # -t
    total_batch_tokens: int | None = Field(None, ge=1)  # -d: tokens per step; None: batch_size*seq_len*processes
    lr: float = Field(3e-4, gt=0)  # -l: peak learning rate
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # -k
    warmup_steps: int = Field(0, ge=0)  # -u
    final_lr_frac: float = Field(1.0, ge=0.0, le=1.0)  # -q: final lr = lr * this
    weight_decay: float = Field(0.0, ge=0.0)  # -c: on 2D weights only
    steps: int | None = Field(None, ge=1)  # -x; None: one epoch of the train shards
    val_every: int = Field(20, ge=1)  # -v: val loss (and HellaSwag) every this many steps
    val_max_steps: int = Field(20, ge=-1)  # -m: val batches per estimate; -1: the whole val split
    sample_every: int = Field(20, ge=0)  # -s: print a generated sample; 0: never
    gen_tokens: int = Field(64, ge=1)  # -g: tokens per sample
    hellaswag: bool = False  # -h 1: HellaSwag accuracy at each val step (needs batch_size >= 4)
    hellaswag_path: str | None = None  # local JSONL(.gz) or hub id; None / `embedded`: data/eval; `hub`
    hellaswag_examples: int | None = Field(None, ge=1)  # the first N that fit seq_len; None: all 10,042
    checkpoint_every: int = Field(1000, ge=0)  # -n: model/state/DONE every N steps and at the last step
    checkpoints_keep: int = Field(0, ge=0)  # -nk: keep the last N checkpoints; 0: all
    resume: bool = True  # -y 1: continue from the last DONE checkpoint of the output folder
    zero_stage: int = Field(0, ge=0, le=3)  # -z
    recompute: int = Field(1, ge=0, le=2)  # -r: 0 none, 1 GELU, 2 GELU + LayerNorm
    gelu_fusion: int | None = Field(None, ge=0, le=2)  # -ge; None: train_gpt2cu's default
    skip_loss_z: float = Field(0.0, ge=0.0)  # -sl: skip an update whose loss z-score exceeds this; 0: off
    skip_grad_z: float = Field(0.0, ge=0.0)  # -sg: the same for the gradient norm
    num_gpus: int = Field(1, ge=1)  # processes per node: mpirun -np N (srun across nodes)
    nodes: int = Field(1, ge=1)  # > 1: under Slurm, srun with llm.c's -pn/-pr/-pg/-pi flags
    nccl_init: Literal["mpi", "fs", "tcp"] = "fs"  # multi-node NCCL init (-pi); fs syncs through the output folder
    server_ip: str | None = None  # -ps, for nccl_init=tcp: the address of rank 0
    dtype: Literal["fp32", "bf16"] = "fp32"  # checkpoints v3 / v5; llmc: must match the build (default bf16)
    seed: int = 42  # torch backend init and loader seed; train_gpt2cu always uses 42
    max_restarts: int = Field(3, ge=0)  # relaunch with -y 1 after a crash that wrote a new checkpoint
    threads: int = Field(0, ge=0)  # torch backend CPU threads; 0: torch's default
    export_hf: bool = True  # also write each final model as a Hugging Face folder <mix>/hf/
    mixes: list[str] | None = None  # mixes trained alone, one run each; None: every mix; []: none
    schedules: list[TrainSchedule] = []  # staged runs (train/<schedule>/<stage>/), besides the mixes
    # each mix trained alone is trained once per seed and model size (train/<mix>[-<model>][-s<seed>]/;
    # the run with train.model and train.seed keeps train/<mix>/). torch: the seed sets initialisation and
    # data order; llmc (always initialised with 42): a seed other than train.seed trains on the mix's
    # documents reshuffled with it (train/seeds/<mix>-s<seed>/). None: [train.seed] / [train.model]
    seeds: list[int] | None = None
    models: list[str] | None = None  # model sizes (d2c64, d4c128, d12, ...): the scales of a decision study

    @model_validator(mode="after")
    def _schedule_names(self) -> "TrainConfig":
        names = [s.name for s in self.schedules]
        if len(set(names)) != len(names):
            raise ValueError(f"schedule names must be unique: {names}")
        if "dev" in names:
            raise ValueError("a schedule may not be named `dev` (llm.c's HellaSwag file lives in train/dev/)")
        for key in ("seeds", "models"):
            v = getattr(self, key)
            if v is not None and (not v or len(set(v)) != len(v)):
                raise ValueError(f"train.{key} must list distinct values (or be null): {v}")
        for m in self.models or []:
            if m.endswith(".bin") or not m[:1].isalnum() or any(not (c.isalnum() or c in "._-") for c in m):
                raise ValueError(f"train.models: {m!r} is not a model descriptor (d2c64, d4c128, d12, ...); a "
                                 f"checkpoint to start from is train.model")
        return self

    def hashed_dict(self) -> dict:
        """Unset seeds / models are left out, so configs from before they existed keep their hash."""
        out = super().hashed_dict()
        for key in ("seeds", "models"):
            if out.get(key) is None:
                out.pop(key, None)
        return out

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @property
    def run_models(self) -> list[str]:
        return list(self.models) if self.models is not None else [self.model]

    @property
    def processes(self) -> int:
        return self.num_gpus * self.nodes

    @property
    def tokens_per_micro_step(self) -> int:
        return self.batch_size * self.seq_len * self.processes

    @property
    def tokens_per_step(self) -> int:
        return self.total_batch_tokens or self.tokens_per_micro_step

    @property
    def grad_accum_steps(self) -> int:
        return max(1, self.tokens_per_step // self.tokens_per_micro_step)

    @property
    def total_tokens(self) -> int | None:
        return None if self.steps is None else self.steps * self.tokens_per_step

    @property
    def parameters(self) -> int | None:
        try:
            return parse_descriptor(self.model).num_parameters
        except StudyError:
            return None  # a .bin checkpoint (read at train time) or a bad descriptor (reported then)
