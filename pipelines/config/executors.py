"""Who runs a stage's work: Slurm and Ray settings (filter; generate / annotate through datatrove) and the
executor of generate's / annotate's requests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipelines.config.section import Section


class SlurmOptions(Section):
    """datatrove SlurmPipelineExecutor settings (filter.executor=slurm; generate/annotate executor.launcher=slurm)."""

    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = Field(4, ge=1)
    mem_per_cpu_gb: int = Field(2, ge=1)
    qos: str = "normal"
    venv_path: str | None = None  # activate script used on the nodes; None: this interpreter's venv
    sbatch_args: dict[str, str] = {}  # extra #SBATCH options, e.g. {account: myproj}
    wait: bool = True  # block until every task is done, then write the manifest; false: submit and return
    poll_s: float = Field(60.0, gt=0)


class RayOptions(Section):
    """datatrove RayPipelineExecutor settings (filter.executor=ray; generate/annotate executor.launcher=ray)."""

    address: str | None = None  # ray.init(address=...); None: RAY_ADDRESS or a new local Ray
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2.0, gt=0)


class InferenceExecutor(Section):
    """Who sends generate's / annotate's requests (pipelines/engines/inference.py).

    inprocess: the backend, in this process (transformers, vllm or openai: pipelines/engines/).
    datatrove: datatrove's InferenceRunner, `tasks` tasks on this machine, a Slurm cluster or Ray, each
    against `server`: `endpoint` (an OpenAI-compatible server that already runs: the backend's base_url),
    or a `vllm` / `sglang` server the task starts on its GPUs (tp x dp x pp of them) with the backend's model.
    Answers land in the same part files either way, so the outputs and the config hash do not depend on it.
    """

    kind: Literal["inprocess", "datatrove"] = "inprocess"
    launcher: Literal["local", "slurm", "ray"] = "local"
    server: Literal["endpoint", "vllm", "sglang"] = "endpoint"
    endpoints: list[str] = []  # endpoint: servers that already run (e.g. `vllm serve` replicas), task i uses
    #   endpoints[i % n]; empty: the backend's base_url
    tasks: int = Field(1, ge=1)  # requests are split into this many datatrove tasks (one server each)
    workers: int = Field(1, ge=1)  # local: tasks at once
    tp: int = Field(1, ge=1)  # tensor parallel GPUs per server
    dp: int = Field(1, ge=1)  # data parallel replicas per server
    pp: int = Field(1, ge=1)  # pipeline parallel stages
    gpus_per_task: int = Field(0, ge=0)  # slurm / ray; 0: tp x dp x pp for vllm / sglang servers, else 0
    nodes_per_task: int = Field(1, ge=1)
    max_concurrent_generations: int = Field(64, ge=1)  # requests in flight per task
    records_per_chunk: int = Field(500, ge=1)  # checkpoint granularity: a killed task redoes at most one chunk
    model_max_context: int = Field(8192, ge=1)
    skip_bad_requests: bool = False  # a request the server rejects (400): skipped and counted, asked again on a rerun
    # server knobs (vllm / sglang servers started by the tasks): recorded in the manifest
    prefix_caching: bool = True  # the annotation prompt's long shared prefix is computed once
    max_batched_tokens: int | None = Field(None, ge=1)  # vllm --max-num-batched-tokens / sglang --chunked-prefill-size
    speculative: dict[str, Any] | None = None  # vllm --speculative-config, e.g. {method: ngram, num_speculative_tokens: 4}
    server_args: dict[str, str | int | float | bool] = {}  # any other server flag, e.g. {enforce-eager: true}
    slurm: SlurmOptions = SlurmOptions()
    ray: RayOptions = RayOptions()

    @property
    def task_gpus(self) -> int:
        return self.gpus_per_task or (self.tp * self.dp * self.pp if self.server != "endpoint" else 0)
