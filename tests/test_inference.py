"""The datatrove executor of generate and annotate at its boundaries: the vLLM / SGLang command lines
its tasks would start (a GPU engine is not reachable here; tests/test_server.py runs the endpoint path
against a real `transformers serve`), endpoint URLs, replicas, keys and config errors."""

from __future__ import annotations

import asyncio

import pytest
from datatrove.pipeline.inference.servers import sglang_server, vllm_server

from pipelines.config import BackendConfig, InferenceExecutor, load_config
from pipelines.engines.inference import Runner, endpoint_url, inference_config, rollout, server_kwargs
from pipelines.errors import StudyError


def _command(server_cls, module, cfg, monkeypatch) -> list[str]:
    """The argv a datatrove server would exec, captured at create_subprocess_exec."""
    seen = []

    async def fake_exec(*cmd, **kw):
        seen.append(list(cmd))
        return None

    monkeypatch.setattr(module, "check_required_dependencies", lambda *a, **k: None)
    monkeypatch.setattr(module.asyncio, "create_subprocess_exec", fake_exec)

    async def main():  # a datatrove server is built inside the task's event loop
        srv = server_cls(cfg, rank=0)
        srv._port = 8123
        await (srv._start_vllm_task() if server_cls is vllm_server.VLLMServer else srv.create_sglang_task())

    asyncio.run(main())
    return seen[0]


def test_vllm_server_started_by_a_task_carries_parallelism_and_throughput_knobs(tmp_path, monkeypatch):
    ex = InferenceExecutor(kind="datatrove", server="vllm", tp=4, dp=2, max_concurrent_generations=512,
                           max_batched_tokens=16384, speculative={"method": "ngram", "num_speculative_tokens": 4},
                           server_args={"enforce-eager": True})
    cfg = inference_config(BackendConfig(model="Qwen/Qwen2.5-7B-Instruct"), ex, tmp_path)
    cmd = _command(vllm_server.VLLMServer, vllm_server, cfg, monkeypatch)
    assert cmd[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    for flag in ("--tensor-parallel-size=4", "--data-parallel-size=2", "--max-num-seqs=512",
                 "--max-num-batched-tokens=16384", "--enable-prefix-caching", "--enforce-eager",
                 '--speculative-config={"method": "ngram", "num_speculative_tokens": 4}'):
        assert flag in cmd, (flag, cmd)
    assert ex.task_gpus == 8  # Slurm / Ray reserve tp x dp GPUs per task


def test_sglang_server_started_by_a_task(tmp_path, monkeypatch):
    ex = InferenceExecutor(kind="datatrove", server="sglang", tp=2, prefix_caching=False, max_batched_tokens=8192)
    cfg = inference_config(BackendConfig(model="m/x"), ex, tmp_path)
    cmd = " ".join(_command(sglang_server.SGLangServer, sglang_server, cfg, monkeypatch))
    for flag in ("-m sglang.launch_server", "--model-path m/x", "--tp-size=2", "--disable-radix-cache",
                 "--chunked-prefill-size=8192", "--max-running-requests=64"):
        assert flag in cmd, (flag, cmd)
    with pytest.raises(StudyError, match="vLLM setting"):
        server_kwargs(InferenceExecutor(server="sglang", speculative={"method": "ngram"}))


def test_endpoint_urls_replicas_and_keys(tmp_path):
    # datatrove posts to <url>/v1/... on a local http server but hands remote urls to the OpenAI client
    assert endpoint_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000"
    assert endpoint_url("https://api.example.com/v1/") == "https://api.example.com/v1"
    ex = InferenceExecutor(kind="datatrove", endpoints=["http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"])
    cfg = inference_config(BackendConfig(kind="openai", model="m"), ex, tmp_path)
    assert cfg.api_key is None  # never in the config Slurm pickles to disk
    runner = Runner(rollout, cfg, output_writer=None, endpoints=[endpoint_url(u) for u in ex.endpoints])

    async def urls_by_rank():
        return [runner._init_server(rank).endpoint_url for rank in range(4)]

    urls = asyncio.run(urls_by_rank())
    assert urls == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"] * 2
    with pytest.raises(StudyError, match="OPENAI_API_KEY"):
        inference_config(BackendConfig(kind="openai", model="m", api_key_env="MY_KEY"), ex, tmp_path)
    with pytest.raises(StudyError, match="needs the backend's `model`"):
        inference_config(BackendConfig(), ex, tmp_path)


def test_datatrove_executor_does_not_change_the_hash_and_refuses_digit_scoring():
    a = load_config("ci")
    b = load_config("ci", ["generate.executor.kind=datatrove", "generate.executor.tasks=8",
                           "annotate.executor.kind=datatrove"])
    assert a.generate.hashed_dict() == b.generate.hashed_dict()
    assert a.annotate.hashed_dict() == b.annotate.hashed_dict()
    with pytest.raises(Exception, match="digits' probabilities"):
        load_config("ci", ["annotate.executor.kind=datatrove", "annotate.scoring=distribution"])
