"""Where a datatrove pipeline runs: this machine, a Slurm cluster or a Ray cluster.

One builder for every stage that hands work to datatrove (filter; generate and annotate with
`executor.kind: datatrove`), so a cluster setting means the same thing in each of them.
Slurm's executor returns once the job array is submitted: `wait_for_tasks` polls datatrove's
completion markers (<logging_dir>/completions/<rank>), which it also uses to skip finished tasks.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Literal

from pipelines.config import RayOptions, SlurmOptions
from pipelines.errors import StudyError

Launcher = Literal["local", "slurm", "ray"]


def make_executor(launcher: Launcher, pipeline: list, tasks: int, logging_dir: str | Path, job_name: str, what: str,
                  workers: int = 1, slurm: SlurmOptions | None = None, ray: RayOptions | None = None,
                  gpus_per_task: int = 0, nodes_per_task: int = 1):
    """LocalPipelineExecutor, SlurmPipelineExecutor or RayPipelineExecutor. `what` names the config section
    (e.g. `generate.executor`) in error messages."""
    logging_dir = str(logging_dir)
    if launcher == "local":
        from datatrove.executor import LocalPipelineExecutor

        # spawn: a task never inherits this process's torch threads or open model
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir,
                                     start_method="spawn")
    if launcher == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        s = slurm or SlurmOptions()
        if not s.partition:
            raise StudyError(f"{what}=slurm needs {what.rsplit('.', 1)[0]}.slurm.partition (the Slurm partition "
                             f"to submit to)")
        venv = s.venv_path or (str(Path(sys.prefix) / "bin" / "activate") if sys.prefix != sys.base_prefix else None)
        return SlurmPipelineExecutor(pipeline, tasks=tasks, time=s.time, partition=s.partition,
                                     cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos,
                                     gpus_per_task=gpus_per_task, nodes_per_task=nodes_per_task,
                                     venv_path=venv, sbatch_args=dict(s.sbatch_args) or None, job_name=job_name,
                                     logging_dir=logging_dir, slurm_logs_folder=str(Path(logging_dir) / "slurm"))
    try:
        import ray as ray_module
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError as e:
        raise StudyError(f"{what}=ray needs Ray ({e}): pip install 'ray[default]'") from None
    r = ray or RayOptions()
    if not ray_module.is_initialized():
        ray_module.init(address=r.address or os.environ.get("RAY_ADDRESS"))
    return RayPipelineExecutor(pipeline, tasks=tasks, logging_dir=logging_dir, cpus_per_task=r.cpus_per_task,
                               mem_per_cpu_gb=r.mem_per_cpu_gb, gpus_per_task=gpus_per_task,
                               nodes_per_task=nodes_per_task)


def completed_tasks(logging_dir: str | Path) -> int:
    d = Path(logging_dir) / "completions"
    return len(list(d.glob("*"))) if d.exists() else 0


def wait_for_tasks(logging_dir: str | Path, tasks: int, poll_s: float, tag: str) -> None:
    """Slurm returns at submission: wait for every task's datatrove completion marker."""
    while (done := completed_tasks(logging_dir)) < tasks:
        print(f"[{tag}] {done}/{tasks} Slurm tasks complete; waiting ({logging_dir})", flush=True)
        time.sleep(poll_s)
