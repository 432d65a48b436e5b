"""datatrove's InferenceRunner as the executor of generate and annotate (`<stage>.executor.kind: datatrove`).

The stage hands over the requests its part files do not answer yet; this module
  1. writes them once as datatrove input, round-robin over `tasks` files
       <parts>/datatrove/input/requests_<task>.jsonl     {"id": request key, "text": prompt, "body": {...}}
     (kept while it covers every missing request, so a rerun resumes the same tasks)
  2. runs InferenceRunner over them: here (LocalPipelineExecutor), on Slurm or on Ray; each task talks
     to an OpenAI-compatible endpoint that already runs, or starts a vLLM / SGLang server on its GPUs.
     Chunk checkpoints (<parts>/datatrove/checkpoints/) let a killed task resume after its last chunk;
     datatrove's completion markers let a rerun skip finished tasks.
  3. imports every answer into a new part file (parts.py), the stage's only record; once every
     request is answered the datatrove folder goes.
scan_parts keeps the first line per request, so an import that is interrupted and redone can not
duplicate an answer, and a request no task answered is asked again by the next run. A request the
server refuses (skip_bad_requests) is saved as an error, as the openai backend saves an HTTP 4xx.

The request bodies are those of the openai backend (openai_backend.chat_body): greedy through either path
gives the same text. An API key is never put into the runner's config (Slurm pickles the pipeline to
disk): for a remote endpoint the OpenAI client reads OPENAI_API_KEY from the task's environment.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from pipelines.config import BackendConfig, InferenceExecutor, SamplingConfig
from pipelines.data.executors import completed_tasks, make_executor, wait_for_tasks
from pipelines.engines.backend import Completion, Prompt
from pipelines.engines.openai_backend import chat_body
from pipelines.engines.parts import PartWriter, completion_record, scan_parts
from pipelines.errors import StudyError
from pipelines.files import atomic_path, write_json_atomic

WORK = "datatrove"  # inside the stage's part folder, so a changed key (keep_parts_if_same) removes it too
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


async def rollout(document, generate) -> dict:
    """One request per document: the body the stage built. -> what is saved in the document's metadata."""
    r = await generate(dict(document.metadata["body"]))
    return {"text": r.text, "finish_reason": r.finish_reason, "usage": r.usage}


def endpoint_url(base_url: str) -> str:
    """datatrove posts to <url>/v1/chat/completions on a local http server, but hands a remote url to the
    OpenAI client, which appends only /chat/completions: our base_url ends in /v1 in both cases."""
    u = urlsplit(base_url)
    local = u.scheme == "http" and u.hostname in LOCAL_HOSTS
    return base_url.rstrip("/").removesuffix("/v1") if local else base_url.rstrip("/")


def server_kwargs(ex: InferenceExecutor) -> dict[str, Any]:
    """The vLLM / SGLang flags the runner adds to the server it starts (tp / dp / pp it sets itself)."""
    kw: dict[str, Any] = {}
    if ex.server == "vllm":
        kw["enable-prefix-caching" if ex.prefix_caching else "no-enable-prefix-caching"] = True
        if ex.max_batched_tokens:
            kw["max-num-batched-tokens"] = ex.max_batched_tokens
        kw["max-num-seqs"] = ex.max_concurrent_generations
        if ex.speculative:
            kw["speculative-config"] = json.dumps(ex.speculative, sort_keys=True)
    elif ex.server == "sglang":
        if not ex.prefix_caching:
            kw["disable-radix-cache"] = True
        if ex.max_batched_tokens:
            kw["chunked-prefill-size"] = ex.max_batched_tokens
        kw["max-running-requests"] = ex.max_concurrent_generations
        if ex.speculative:
            raise StudyError("executor.speculative is a vLLM setting: give SGLang's speculative flags in "
                             "executor.server_args (e.g. speculative-algorithm: NGRAM)")
    kw.update(ex.server_args)
    return kw


class Runner(InferenceRunner):
    """InferenceRunner whose task `rank` talks to endpoints[rank % n]: several `vllm serve` replicas
    that already run share the tasks without a load balancer."""

    def __init__(self, *args, endpoints: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.endpoints = endpoints or []

    def _init_server(self, rank: int):
        if self.endpoints:
            self.config.endpoint_url = self.endpoints[rank % len(self.endpoints)]
        return super()._init_server(rank)


def inference_config(backend: BackendConfig, ex: InferenceExecutor, log_dir: Path) -> InferenceConfig:
    if not backend.model:
        raise StudyError("executor.kind=datatrove needs the backend's `model`: the served model name for an endpoint, "
                         "a hub id or local folder for a vllm / sglang server (the bundled GGUF runs in-process only)")
    if ex.server == "endpoint" and backend.api_key_env and backend.api_key_env != "OPENAI_API_KEY":
        raise StudyError(f"executor.kind=datatrove reads the endpoint's key from OPENAI_API_KEY in each task's "
                         f"environment (never from its pickled config): export OPENAI_API_KEY=\"${backend.api_key_env}\" "
                         f"and set api_key_env: OPENAI_API_KEY")
    return InferenceConfig(
        server_type=ex.server, model_name_or_path=backend.model, model_max_context=ex.model_max_context,
        use_chat=True, endpoint_url=endpoint_url(backend.base_url) if ex.server == "endpoint" else None,
        api_key=None, tp=ex.tp, dp=ex.dp, pp=ex.pp, max_concurrent_generations=ex.max_concurrent_generations,
        request_timeout=backend.timeout_s, model_kwargs=server_kwargs(ex) or None,
        server_log_folder=str(log_dir / "servers"), metric_interval=60)


def _write_input(work: Path, requests: list[tuple[str, dict]], tasks: int) -> None:
    d = work / "input"
    d.mkdir(parents=True)
    with ExitStack() as files_open:  # every file renamed into place once all are written and closed
        paths = [files_open.enter_context(atomic_path(d / f"requests_{t:05d}.jsonl")) for t in range(tasks)]
        files = [files_open.enter_context(open(p, "w", encoding="utf-8")) for p in paths]
        for i, (key, body) in enumerate(requests):
            # datatrove's readers skip a document without text: the prompt's last message is its text
            text = body["messages"][-1]["content"] or key
            files[i % tasks].write(json.dumps({"id": key, "text": text, "body": body}, ensure_ascii=False) + "\n")
    write_json_atomic(work / "input.json", {"requests": len(requests), "tasks": tasks})


def _input_keys(work: Path) -> set[str] | None:
    if not (work / "input.json").exists():
        return None
    keys = set()
    for p in sorted((work / "input").glob("requests_*.jsonl")):
        with open(p, encoding="utf-8") as f:
            keys.update(json.loads(line)["id"] for line in f)
    return keys


def import_answers(work: Path, parts_dir: Path, generator: str) -> dict:
    """Every answer in the runner's output that the part files lack -> a new part file."""
    done, _ = scan_parts(parts_dir)
    stats = {"imported": 0, "bad_requests": 0, "completion_tokens": 0}
    writer = PartWriter(parts_dir)
    try:
        for p in sorted((work / "output").glob("*.jsonl")):
            rows = []
            with open(p, encoding="utf-8") as f:
                for line in f:
                    if not line.endswith("\n"):
                        continue  # the torn last line of a killed task: asked again
                    doc = json.loads(line)
                    key, results = doc["id"], (doc.get("metadata") or {}).get("rollout_results") or []
                    if key in done:
                        continue
                    if not results:  # skip_bad_requests: the server refused it (as the openai backend records a 4xx)
                        stats["bad_requests"] += 1
                        c = Completion("", "error", 0, 0, error="refused by the server (executor.skip_bad_requests)")
                    else:
                        r, usage = results[0], results[0].get("usage") or {}
                        c = Completion(r["text"], r.get("finish_reason") or "stop", int(usage.get("prompt_tokens") or 0),
                                       int(usage.get("completion_tokens") or round(len(r["text"]) / 4)))
                    rows.append(completion_record(key, c, generator))
                    done[key] = (p, 0)
                    stats["completion_tokens"] += c.completion_tokens
            if rows:
                writer.write(rows)
                stats["imported"] += len(rows)
    finally:
        writer.close()
    return stats


def run_requests(requests: Iterable[tuple[str, Prompt, int | None]], parts_dir: Path, backend: BackendConfig,
                 sampling: SamplingConfig, ex: InferenceExecutor, job_name: str, tag: str) -> dict:
    """Answer every (key, prompt, seed) whose key no part file holds, through datatrove. -> stats."""
    missing_deps = [m for m in ("aiosqlite", "aiofiles", "httpx") if importlib.util.find_spec(m) is None]
    if missing_deps:
        raise StudyError(f"executor.kind=datatrove needs {', '.join(missing_deps)} for datatrove's InferenceRunner: "
                         f"pip install -e '.[inference]'")
    work = parts_dir / WORK
    done, _ = scan_parts(parts_dir) if parts_dir.exists() else ({}, {})
    missing = [(k, chat_body(backend, p, sampling, s)) for k, p, s in requests if k not in done]
    stats: dict[str, Any] = {"executor": f"datatrove/{ex.launcher}/{ex.server}", "requests": len(missing),
                             "imported": 0, "bad_requests": 0, "completion_tokens": 0}
    if not missing:
        shutil.rmtree(work, ignore_errors=True)
        return stats
    have = _input_keys(work)
    if have is None or not {k for k, _ in missing} <= have:  # new requests: start the runner's tasks over
        shutil.rmtree(work, ignore_errors=True)
        _write_input(work, missing, min(ex.tasks, len(missing)))
    tasks = json.loads((work / "input.json").read_text())["tasks"]
    cfg = inference_config(backend, ex, work)
    runner = Runner(
        endpoints=[endpoint_url(u) for u in ex.endpoints] if ex.server == "endpoint" else None, rollout_fn=rollout, config=cfg,
        output_writer=JsonlWriter(str(work / "output"), output_filename="${rank}_chunk_${chunk_index}.jsonl",
                                  compression=None),
        checkpoints_local_dir=str(work / "checkpoints"), records_per_chunk=ex.records_per_chunk,
        skip_bad_requests=ex.skip_bad_requests)
    reader = JsonlReader(str(work / "input"), glob_pattern="requests_*.jsonl", text_key="text", id_key="id")
    logs = work / "logs"
    print(f"[{tag}] {len(missing):,} requests to datatrove's InferenceRunner: {tasks} task(s) on {ex.launcher}, "
          f"server {ex.server} ({backend.model}), {ex.max_concurrent_generations} in flight per task")
    executor = make_executor(ex.launcher, [reader, runner], tasks, logs, job_name, f"{tag}.executor",
                             workers=ex.workers, slurm=ex.slurm, ray=ex.ray, gpus_per_task=ex.task_gpus,
                             nodes_per_task=ex.nodes_per_task)
    try:
        executor.run()
    except Exception as e:  # a failed task: keep what the others answered, say how to go on
        print(f"[{tag}] datatrove run failed: {type(e).__name__}: {e}")
    if ex.launcher == "slurm":
        if not ex.slurm.wait:
            raise StudyError(f"[{tag}] {tasks} Slurm task(s) submitted (logs: {logs}); rerun the same command when "
                             f"they are done to import their answers")
        wait_for_tasks(logs, tasks, ex.slurm.poll_s, tag)
    stats.update(import_answers(work, parts_dir, backend.model))
    finished = completed_tasks(logs)
    stats["tasks"], stats["tasks_finished"] = tasks, finished
    if finished < tasks:
        raise StudyError(f"[{tag}] {finished} of {tasks} datatrove task(s) finished ({stats['imported']:,} answers "
                         f"saved; task logs in {logs / 'logs'}): rerun to resume the rest from their checkpoints")
    if stats["bad_requests"]:
        print(f"[{tag}] {stats['bad_requests']:,} request(s) refused by the server (skip_bad_requests): saved as "
              f"errors, counted where the stage drops them")
    shutil.rmtree(work, ignore_errors=True)
    return stats
