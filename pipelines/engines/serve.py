"""OpenAI-compatible servers on this machine: the command line each engine is started with, and a
process that is started, waited for (GET /health) and stopped by its pid.

  transformers  `transformers serve MODEL` (CPU or GPU; needs fastapi + uvicorn, the `serving` extra):
                /v1/chat/completions and /v1/completions, greedy at temperature 0; it IGNORES
                `logprobs` / `top_logprobs`, so distribution scoring needs vLLM or SGLang
  vllm          `vllm serve MODEL` (GPUs): tensor / data / pipeline parallel, prefix caching,
                max batched tokens, speculative decoding
  sglang        `python -m sglang.launch_server --model-path MODEL` (GPUs)

The tests start the bundled SmolLM2 with `transformers serve` on 127.0.0.1; the vLLM and SGLang
command lines are checked as built, and run only where a GPU is lent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipelines.errors import StudyError

Engine = Literal["transformers", "vllm", "sglang"]


@dataclass
class ServerOptions:
    """What an engine is started with: the throughput knobs that matter on GPUs."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_concurrent_requests: int | None = None  # vLLM --max-num-seqs, SGLang --max-running-requests
    max_batched_tokens: int | None = None  # vLLM --max-num-batched-tokens, SGLang --chunked-prefill-size
    prefix_caching: bool = True  # the annotation prompt's shared instructions are computed once
    speculative: dict | None = None  # vLLM --speculative-config (e.g. {"method": "ngram", "num_speculative_tokens": 4})
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str = "auto"
    device: str = "auto"  # transformers only
    continuous_batching: bool = False  # transformers only (paged attention; a GPU feature in practice)
    extra_args: list[str] = field(default_factory=list)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _executable(name: str) -> str:
    here = Path(sys.executable).with_name(name)  # this interpreter's venv first
    return str(here) if here.exists() else (shutil.which(name) or name)


def server_command(engine: Engine, model: str, host: str, port: int, opts: ServerOptions | None = None) -> list[str]:
    """The command line that starts `engine` serving `model` on host:port."""
    o = opts or ServerOptions()
    if engine == "transformers":
        cmd = [_executable("transformers"), "serve", model, "--host", host, "--port", str(port),
               "--device", o.device, "--dtype", o.dtype]
        cmd.append("--continuous-batching" if o.continuous_batching else "--no-continuous-batching")
        if o.max_batched_tokens:
            cmd += ["--cb-max-batch-tokens", str(o.max_batched_tokens)]
    elif engine == "vllm":
        cmd = [_executable("vllm"), "serve", model, "--host", host, "--port", str(port), "--dtype", o.dtype,
               "--tensor-parallel-size", str(o.tensor_parallel_size),
               "--data-parallel-size", str(o.data_parallel_size),
               "--pipeline-parallel-size", str(o.pipeline_parallel_size),
               "--enable-prefix-caching" if o.prefix_caching else "--no-enable-prefix-caching"]
        if o.max_concurrent_requests:
            cmd += ["--max-num-seqs", str(o.max_concurrent_requests)]
        if o.max_batched_tokens:
            cmd += ["--max-num-batched-tokens", str(o.max_batched_tokens)]
        if o.max_model_len:
            cmd += ["--max-model-len", str(o.max_model_len)]
        if o.gpu_memory_utilization:
            cmd += ["--gpu-memory-utilization", str(o.gpu_memory_utilization)]
        if o.speculative:
            cmd += ["--speculative-config", json.dumps(o.speculative, sort_keys=True)]
    elif engine == "sglang":
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", host, "--port", str(port),
               "--dtype", o.dtype, "--tp-size", str(o.tensor_parallel_size), "--dp-size", str(o.data_parallel_size)]
        if o.pipeline_parallel_size > 1:
            cmd += ["--pp-size", str(o.pipeline_parallel_size)]
        if not o.prefix_caching:
            cmd.append("--disable-radix-cache")  # SGLang's prefix cache (RadixAttention) is on by default
        if o.max_concurrent_requests:
            cmd += ["--max-running-requests", str(o.max_concurrent_requests)]
        if o.max_batched_tokens:
            cmd += ["--chunked-prefill-size", str(o.max_batched_tokens)]
        if o.max_model_len:
            cmd += ["--context-length", str(o.max_model_len)]
        if o.gpu_memory_utilization:
            cmd += ["--mem-fraction-static", str(o.gpu_memory_utilization)]
        if o.speculative:
            cmd += [f"--speculative-{k.replace('_', '-')}={v}" for k, v in sorted(o.speculative.items())]
    else:
        raise StudyError(f"unknown server engine {engine!r} (transformers | vllm | sglang)")
    return [*cmd, *o.extra_args]


class LocalServer:
    """A server process on this machine: started in its own session, ready when GET /health answers 200,
    stopped by its pid (SIGTERM, then SIGKILL). Use as a context manager."""

    def __init__(self, engine: Engine, model: str, host: str = "127.0.0.1", port: int | None = None,
                 opts: ServerOptions | None = None, env: dict[str, str] | None = None, log_path: Path | None = None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise StudyError(f"LocalServer listens on this machine only, not on {host!r}")
        self.engine, self.model, self.host = engine, model, host
        self.port = port or free_port(host)
        self.cmd = server_command(engine, model, host, self.port, opts)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 300.0) -> "LocalServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
                raise StudyError(f"{self.cmd[0]} exited with {self.proc.returncode} before it was ready:\n{tail}")
            try:
                with opener.open(f"http://{self.host}:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise StudyError(f"{' '.join(self.cmd)}: no answer on /health within {timeout_s:.0f} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and any workers it forked
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> "LocalServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

