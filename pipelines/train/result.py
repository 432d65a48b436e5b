"""The typed result of the `train` stage (its manifest's fields; pipelines/runs/results.py)."""

from __future__ import annotations

from typing import Any

from pipelines.runs.results import Model, Number, StageResult


class ScheduleStage(Model):
    """One stage of a staged schedule (pipelines/train/train.py schedule_record), with its final model."""

    stage: int = 0  # 1-based
    name: str = ""
    dir: str = ""
    mix: str = ""
    steps: int = 0
    tokens: int = 0
    tokens_per_step: int = 0
    seq_len: int = 0
    start_step: int = 0
    start_tokens: int = 0
    init: str | None = None  # the model it starts from (train.model, or the previous stage's checkpoint)
    model: str = ""  # its final model_%08d.bin
    init_sha256: str | None = None


class TrainOutput(Model):
    """One trained run: a mix at one model size and seed, or a schedule."""

    mix: str  # the mix or schedule name
    path: str = ""  # its final checkpoint, relative to train/
    steps: int = 0
    tokens: int | None = None
    log: str = ""
    hf: str | None = None  # the Hugging Face export, when train.export
    dir: str | None = None  # its folder in train/
    seed: int | None = None
    scale: str | None = None  # the model size
    schedule: list[ScheduleStage] | None = None  # a schedule: its stages

    @property
    def folder(self) -> str:
        """Its folder in train/ (manifests written before folders were recorded: the mix)."""
        return self.dir or self.mix


class InitRecord(Model):
    path: str = ""
    sha256: str = ""


class JobSummary(Model):
    """One llm.c run's summary (pipelines/train/train.py train_job: runs/trainlog.py summary and the checkpoint)."""

    steps_logged: int | None = None
    first_train_loss: Number | None = None
    last_train_loss: Number | None = None
    last_val_loss: Number | None = None
    hellaswag: Number | None = None  # accuracy
    steps: int | None = None
    tokens: int | None = None
    model: str | None = None  # model_%08d.bin
    checkpoint_version: int | None = None
    parameters: int | None = None
    log_rows: int | None = None
    init: InitRecord | None = None


class TrainRun(JobSummary):
    """A run's summary in `runs`: a plain run adds its mix, seed and scale; a schedule its stages'."""

    mix: str | None = None
    seed: int | None = None
    scale: str | None = None
    stages: dict[str, JobSummary] | None = None  # a schedule: stage folder name -> its summary


class Reshuffled(Model):
    """A mix's train shards rewritten with another data seed (llmc, train.seeds)."""

    mix: str = ""
    seed: int = 0
    dir: str = ""
    tokens: int = 0


class HellaswagFile(Model):
    """llm.c's HellaSwag eval file (pipelines/llmc/evalfile.py write_eval_file) and what made it."""

    path: str = ""
    source: str = ""
    examples: int = 0
    skipped: int = 0
    longest_bytes: int = 0
    key: dict[str, Any] = {}  # source, seq_len, max_examples


class TrainCounts(Model):
    runs: int = 0
    tokens: int = 0
    steps: int = 0


class TrainResult(StageResult):
    outputs: list[TrainOutput] = []
    counts: TrainCounts = TrainCounts()
    runs: dict[str, TrainRun] = {}  # run folder or schedule -> its summary
    stage_boundaries: dict[str, list[Number]] | list[Number] = {}  # schedule -> tokens where it switches stage
    reshuffled: list[Reshuffled] = []
    hellaswag: HellaswagFile | None = None  # train.hellaswag
