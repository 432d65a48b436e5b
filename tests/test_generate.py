"""Generation: post-processing, the three backends (openai against a local HTTP server, vllm with a
fake engine at the import boundary, transformers for real with the bundled SmolLM2), and resume
after kill -9."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.config import BackendConfig, GenerateConfig, SamplingConfig
from pipelines.engines.backend import BackendError, Completion
from pipelines.engines.factory import make_backend
from pipelines.engines.openai_backend import OpenAIBackend
from pipelines.errors import StudyError
from pipelines.files import Lock
from pipelines.runs.manifest import Run
from pipelines.runs.runner import run_stages
from pipelines.synthetic import generate

# ---------------------------------------------------------------------------------------------
# post-processing


@pytest.mark.parametrize("raw, kept, removed", [
    ("Sure! Here's a blog post about volcanoes:\n\nMagma rises.\nIt cools.", "Magma rises.\nIt cools.",
     "Sure!\nHere's a blog post about volcanoes:"),
    ("Certainly, photosynthesis turns light into sugar.\nMore.", "photosynthesis turns light into sugar.\nMore.",
     "Certainly,"),
    ("# Chapter 3: Fractions\n\nA fraction is a part.", "A fraction is a part.", "# Chapter 3: Fractions"),
    ("Title: The Little Seed\n\nOnce upon a time.", "Once upon a time.", "Title: The Little Seed"),
    ("The Brave Little Seed\n\nOnce upon a time, a seed grew.", "Once upon a time, a seed grew.", "The Brave Little Seed"),
    ("**Understanding Tides**\nThe moon pulls the sea.", "The moon pulls the sea.", "**Understanding Tides**"),
    ("Here is how plants make food: they use sunlight, water and carbon dioxide to build sugars in their leaves.\nNext.",
     "Here is how plants make food: they use sunlight, water and carbon dioxide to build sugars in their leaves.\nNext.", ""),
    ("Tides rise twice a day.\nThe moon pulls.", "Tides rise twice a day.\nThe moon pulls.", ""),
    # an offer alone on the first line (seen in the smoke study), then an announcement
    ("I'd be happy to help you with that.\n\nHere's a rewritten version:\n\nThe cell divides.",
     "The cell divides.", "I'd be happy to help you with that.\nHere's a rewritten version:"),
    # an offer that goes on with content in the same line is content, kept
    ("I'd be happy to help you with that, because cells divide.\nMore.",
     "I'd be happy to help you with that, because cells divide.\nMore.", ""),
])
def test_strip_openers(raw, kept, removed):
    assert generate.strip_openers(raw) == (kept, removed)


def _row(text, reason="stop", tokens=200):
    return {"prompt_id": "p", "text": text, "finish_reason": reason, "completion_tokens": tokens, "prompt_tokens": 10}


def test_postprocess_drops_short_truncated_and_failed_outputs():
    cfg = GenerateConfig(min_tokens=150)
    text, info, reason = generate.postprocess(_row("A long text. " * 40), cfg)
    assert reason is None and info["tokens"] == 200
    assert generate.postprocess(_row("Too short.", tokens=20), cfg)[2] == "too_short"
    assert generate.postprocess(_row("Cut off in the mid", "length"), cfg)[2] == "truncated"
    assert generate.postprocess({**_row(""), "finish_reason": "error", "error": "HTTP 400"}, cfg)[2] == "backend_error"
    assert generate.postprocess(_row("   "), cfg)[2] == "empty"
    # an opener removed: the token count shrinks with the text
    _, info, _ = generate.postprocess(_row("Sure! Here is a story:\n" + "Word " * 60, tokens=200), cfg)
    assert info["stripped_opener"] and info["tokens"] < 200
    trim = GenerateConfig(min_tokens=1, on_length="trim")
    text, info, reason = generate.postprocess(_row("One sentence. Two sentences! And a third that never en", "length"), trim)
    assert (text, info["trimmed"], reason) == ("One sentence. Two sentences!", True, None)
    assert generate.postprocess(_row("no sentence end at all", "length"), trim)[2] == "truncated"
    keep = GenerateConfig(min_tokens=1, on_length="keep")
    assert generate.postprocess(_row("Cut off in the mid", "length"), keep)[:3:2] == ("Cut off in the mid", None)


# ---------------------------------------------------------------------------------------------
# openai-compatible backend against a local server


class FakeServer:
    """A /v1/chat/completions server on 127.0.0.1 whose replies a test scripts: `script` is a list of
    actions consumed one per request ("500", "429", "400", "401", "sleep", "ok"); when empty, "ok"."""

    def __init__(self, script=(), barrier: threading.Barrier | None = None):
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.barrier = barrier
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    action = server.script.pop(0) if server.script else "ok"
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.barrier is not None:
                        server.barrier.wait(timeout=10)  # only passes once `parties` requests are in flight
                    if action == "sleep":
                        time.sleep(1.5)
                    if action in ("500", "429", "400", "401"):
                        self.send_response(int(action))
                        if action == "429":
                            self.send_header("Retry-After", "0")
                        self.end_headers()
                        self.wfile.write(b'{"error": "scripted"}')
                        return
                    user = body["messages"][-1]["content"]
                    reply = {"id": "x", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "length" if "LONG" in user else "stop",
                                          "message": {"role": "assistant", "content": f"echo: {user}"}}],
                             "usage": {"prompt_tokens": len(user.split()), "completion_tokens": 3 + len(user.split())}}
                    data = json.dumps(reply).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(*a, **kw):
        servers.append(FakeServer(*a, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _openai(url, **kw):
    return OpenAIBackend(BackendConfig(kind="openai", model="test-model", base_url=url, backoff_s=0.01, **kw))


def test_openai_request_body_parsing_and_key_from_env(server_factory, monkeypatch):
    srv = server_factory()
    monkeypatch.setenv("STUDY_TEST_KEY", "sk-secret-123")
    b = _openai(srv.url, api_key_env="STUDY_TEST_KEY", system_prompt="Be brief.")
    sampling = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=77, stop=["END"])
    out = b.generate(["hello there", "make it LONG"], sampling, seeds=[11, 12])
    assert [c.text for c in out] == ["echo: hello there", "echo: make it LONG"]
    assert [c.finish_reason for c in out] == ["stop", "length"]
    assert [(c.prompt_tokens, c.completion_tokens) for c in out] == [(2, 5), (3, 6)]
    body = sorted(srv.requests, key=lambda r: r["seed"])[0]
    assert body["model"] == "test-model" and body["max_tokens"] == 77 and body["temperature"] == 0.6
    assert body["top_p"] == 0.95 and body["stop"] == ["END"] and body["seed"] == 11
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert all(h.get("Authorization") == "Bearer sk-secret-123" for h in srv.headers)
    _openai(srv.url).generate(["x"], sampling)  # no api_key_env: no key sent
    assert "Authorization" not in srv.headers[-1]
    monkeypatch.delenv("STUDY_TEST_KEY")
    with pytest.raises(StudyError, match=r"names \$STUDY_TEST_KEY, which is not set"):
        _openai(srv.url, api_key_env="STUDY_TEST_KEY")
    # a reply without a usage block: tokens estimated from the characters
    c = OpenAIBackend.parse({"choices": [{"message": {"content": "a" * 40}, "finish_reason": "stop"}]})
    assert c.completion_tokens == 10
    with pytest.raises(ValueError, match="not a chat completion"):
        OpenAIBackend.parse({"error": "nope"})


def test_openai_retries_500_429_and_timeouts_then_succeeds(server_factory):
    srv = server_factory(["500", "429", "sleep"])
    b = _openai(srv.url, concurrency=1, max_retries=3, timeout_s=0.5)
    [c] = b.generate(["retry me"], SamplingConfig())
    assert c.text == "echo: retry me" and c.finish_reason == "stop"
    assert len(srv.requests) == 4  # 500, 429, a timed-out request, then the answer


def test_openai_gives_up_clearly_and_separates_bad_prompts_from_bad_config(server_factory):
    srv = server_factory(["500"] * 10)
    with pytest.raises(BackendError, match=r"(?s)3 attempts failed.*HTTP 500.*rerun the same command to resume"):
        _openai(srv.url, concurrency=1, max_retries=2).generate(["x"], SamplingConfig())
    srv400 = server_factory(["400"])
    [c] = _openai(srv400.url).generate(["too long"], SamplingConfig())
    assert c.finish_reason == "error" and "HTTP 400" in c.error  # this prompt fails; the run goes on
    srv401 = server_factory(["401"])
    with pytest.raises(BackendError, match=r"(?s)HTTP 401.*refused the API key"):
        _openai(srv401.url).generate(["x"], SamplingConfig())
    with pytest.raises(BackendError, match=r"(?s)attempts failed.*curl"):  # nothing listens there
        _openai("http://127.0.0.1:9/v1", max_retries=1).generate(["x"], SamplingConfig())


def test_openai_concurrency_is_used_and_bounded(server_factory):
    srv = server_factory(barrier=threading.Barrier(3))  # every request waits until 3 are in flight
    out = _openai(srv.url, concurrency=3, max_retries=0).generate([f"p{i}" for i in range(9)], SamplingConfig())
    assert [c.text for c in out] == [f"echo: p{i}" for i in range(9)]  # in the caller's order
    assert srv.max_in_flight == 3


# ---------------------------------------------------------------------------------------------
# vllm with its engine replaced at the import boundary


def fake_vllm(calls: dict) -> types.ModuleType:
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            calls["init"] = kw

        def chat(self, messages, sampling_params=None, use_tqdm=True):
            calls.setdefault("chat", []).append((messages, sampling_params, use_tqdm))
            outs = []
            for conv, sp in zip(messages, sampling_params):
                text = f"answer to {conv[-1]['content']}"
                comp = types.SimpleNamespace(text=text, token_ids=list(range(sp.kw["max_tokens"] if "LONG" in text else 4)),
                                             finish_reason="length" if "LONG" in text else "stop")
                outs.append(types.SimpleNamespace(prompt_token_ids=[1] * len(conv[-1]["content"]), outputs=[comp]))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod


def test_vllm_backend_builds_engine_sampling_params_and_parses(monkeypatch):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls))
    cfg = BackendConfig(kind="vllm", model="org/Some-Instruct", tensor_parallel_size=4, gpu_memory_utilization=0.8,
                        max_model_len=4096)
    b = make_backend(cfg, seed=5)
    assert calls["init"] == {"model": "org/Some-Instruct", "tensor_parallel_size": 4, "gpu_memory_utilization": 0.8,
                             "dtype": "auto", "seed": 5, "max_model_len": 4096}
    sampling = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=50, top_k=40)
    out = b.generate(["short", [{"role": "user", "content": "LONG one"}]], sampling, seeds=[1, 2])
    [(convs, params, use_tqdm)] = calls["chat"]
    assert convs == [[{"role": "user", "content": "short"}], [{"role": "user", "content": "LONG one"}]]
    assert [p.kw for p in params] == [
        {"n": 1, "temperature": 0.6, "top_p": 0.95, "max_tokens": 50, "seed": s, "top_k": 40} for s in (1, 2)]
    assert use_tqdm is False
    assert [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in out] == [
        ("answer to short", "stop", 5, 4), ("answer to LONG one", "length", 8, 50)]
    # greedy, for annotation
    b.generate(["x"], SamplingConfig(temperature=0.0, max_new_tokens=8))
    assert calls["chat"][-1][1][0].kw["temperature"] == 0.0


def test_vllm_missing_or_failing_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(StudyError, match=r"needs vLLM on a machine with NVIDIA GPUs.*kind=transformers"):
        make_backend(BackendConfig(kind="vllm", model="m"))
    broken = fake_vllm({})

    def no_gpu(**kw):
        raise RuntimeError("No CUDA GPUs are available")

    broken.LLM = no_gpu
    monkeypatch.setitem(sys.modules, "vllm", broken)
    with pytest.raises(StudyError, match=r"(?s)could not start m with tensor_parallel_size=1.*No CUDA GPUs.*NVIDIA GPUs"):
        make_backend(BackendConfig(kind="vllm", model="m"))
    with pytest.raises(StudyError, match="needs generate.backend.model"):
        make_backend(BackendConfig(kind="vllm"))


# ---------------------------------------------------------------------------------------------
# the stage


def _docs(d: Path) -> list[dict]:
    out = []
    for p in sorted(d.glob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            out.extend(json.loads(line) for line in f)
    return out


def test_generate_stage_with_openai_backend_never_writes_the_key(ci_config, server_factory, monkeypatch):
    srv = server_factory(["400"])  # the first request fails for good: one backend_error drop
    monkeypatch.setenv("STUDY_TEST_KEY", "sk-do-not-leak-42")
    cfg = ci_config("prompts.n_prompts=5", "generate.backend.kind=openai", "generate.backend.model=served-model",
                    f"generate.backend.base_url={srv.url}", "generate.backend.api_key_env=STUDY_TEST_KEY",
                    "generate.min_tokens=1")
    run_stages(cfg, "o", ["ingest", "prompts", "generate"])
    run = Run(cfg, "o")
    m = run.read_manifest("generate")
    assert m["counts"]["completions"] == 5
    assert m["counts"]["documents"] == 4 and m["counts"]["dropped"] == {"backend_error": 1}
    assert m["generator"]["models"] == {"served-model": 5}
    docs = _docs(run.dir("generate") / "documents")
    assert all(d["text"].startswith("echo: ") and d["metadata"]["generator"] == "served-model" for d in docs)
    [bad] = _docs(run.dir("generate") / "removed")
    assert bad["metadata"]["dropped_reason"] == "backend_error" and "HTTP 400" in bad["metadata"]["error"]
    for p in run.root.rglob("*"):
        if p.is_file():
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            assert b"sk-do-not-leak-42" not in raw, p
    assert m["config"]["generate"]["backend"]["api_key_env"] == "STUDY_TEST_KEY"  # the NAME only


def test_real_generation_with_bundled_smollm2(ci_config):
    cfg = ci_config()
    run_stages(cfg, "real", ["ingest", "prompts", "generate"])
    run = Run(cfg, "real")
    m = run.read_manifest("generate")
    n = cfg.prompts.n_prompts
    c = m["counts"]
    assert c["completions"] == n and c["documents"] + sum(c["dropped"].values()) == n
    assert c["documents"] >= 1 and c["tokens"] > 0
    assert m["generator"]["models"] == {"SmolLM2-135M-Instruct.Q4_1.gguf": n}
    assert m["throughput"]["generated_now"] == n and m["throughput"]["completion_tokens_per_s"] > 0
    prompts = {p["id"]: p for p in _docs(run.dir("prompts"))}
    for d in _docs(run.dir("generate") / "documents"):
        md = d["metadata"]
        assert d["text"].strip() and d["source"] == "synthetic"
        assert 1 <= md["completion_tokens"] <= cfg.generate.sampling.max_new_tokens
        assert md["finish_reason"] in ("stop", "length")
        p = prompts[md["prompt_id"]]["metadata"]
        assert (md["audience"], md["style"], md["template_id"], md["seed_id"]) == (
            p["audience"], p["style"], p["template_id"], p["seed_id"])
    assert sum(m["counts"]["per_audience"].values()) == c["documents"]
    assert sum(m["lengths"]["tokens_histogram"]["counts"]) == c["documents"]


class EchoBackend:
    """A stand-in model: answers instantly and records which prompts it was asked."""

    kind, model_name = "fake", "echo-1"

    def __init__(self):
        self.asked: list[str] = []

    def generate(self, prompts, sampling, seeds=None):
        self.asked.extend(prompts)
        return [Completion("Sentence one. " * 30, "stop", 10, 60) for _ in prompts]

    def close(self):
        pass


CRASH_SCRIPT = textwrap.dedent("""
    import sys, time
    from pipelines.synthetic import generate
    from pipelines.engines.backend import Completion
    from pipelines.config import load_config
    from pipelines.runs.manifest import Run

    class Stuck:
        kind, model_name, calls = "fake", "echo-1", 0
        def generate(self, prompts, sampling, seeds=None):
            Stuck.calls += 1
            if Stuck.calls > 2:
                time.sleep(600)  # the third batch never ends: the test kills us here
            return [Completion("Sentence one. " * 30, "stop", 10, 60) for _ in prompts]
        def close(self):
            pass

    cfg = load_config("ci", sys.argv[1:])
    Run(cfg, "crash").execute("generate", fn=lambda ctx: generate.run(ctx, backend_factory=lambda c, s: Stuck()))
""")


def test_resume_after_kill_9_ends_with_exactly_one_completion_per_prompt(ci_config, tmp_path):
    overrides = ["prompts.n_prompts=10", "generate.backend.batch_size=2", "generate.min_tokens=1"]
    cfg = ci_config(*overrides)
    run_stages(cfg, "crash", ["ingest", "prompts"])
    run = Run(cfg, "crash")
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    args = [f"results_dir={cfg.results_dir}", f"ingest.path={cfg.ingest.path}", *overrides]
    proc = subprocess.Popen([sys.executable, str(script), *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = run.dir("generate") / "parts"
    try:
        deadline = time.monotonic() + 120
        lines = 0
        while lines < 4:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the generate subprocess never wrote 2 batches"
            time.sleep(0.05)
            lines = sum(p.read_bytes().count(b"\n") for p in parts.glob("part-*.jsonl")) if parts.exists() else 0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert run.state("generate").status == "incomplete"
    [part] = parts.glob("part-*.jsonl")
    assert part.read_bytes().count(b"\n") == 4
    # a write torn by the kill (half a line) and a duplicate of a finished prompt in another file
    first = json.loads(part.read_bytes().splitlines()[0])
    with open(part, "ab") as f:
        f.write(b'{"prompt_id": "prompt-000009", "text": "half a li')
    (parts / "part-zzzz-dup.jsonl").write_text(json.dumps({**first, "text": "a second answer"}) + "\n")

    echo = EchoBackend()
    Run(cfg, "crash").execute("generate", fn=lambda ctx: generate.run(ctx, backend_factory=lambda c, s: echo))
    m = run.read_manifest("generate")
    prompts = _docs(run.dir("prompts"))
    done_before = {json.loads(l)["prompt_id"] for l in part.read_bytes().splitlines()[:4]}
    assert len(done_before) == 4
    # only the missing prompts were generated again (the torn one included)
    assert sorted(echo.asked) == sorted(p["text"] for p in prompts if p["id"] not in done_before)
    docs = _docs(run.dir("generate") / "documents")
    ids = [d["metadata"]["prompt_id"] for d in docs]
    assert ids == [p["id"] for p in prompts]  # exactly one per prompt, in prompt order
    assert next(d for d in docs if d["metadata"]["prompt_id"] == first["prompt_id"])["text"] != "a second answer"
    t = m["throughput"]
    assert (t["completed_before"], t["generated_now"], t["torn_lines"], t["duplicate_lines"]) == (4, 6, 1, 1)
    assert [x["generated"] for x in t["sessions"]] == [6]  # the killed invocation left no session line
    assert m["counts"]["completions"] == 10 == m["counts"]["documents"]

    # a rerun with the stage done does nothing; changed sampling discards the saved completions
    echo2 = EchoBackend()
    Run(cfg, "crash").execute("generate", fn=lambda ctx: generate.run(ctx, backend_factory=lambda c, s: echo2))
    assert echo2.asked == []
    cfg_t = ci_config(*overrides, "generate.sampling.temperature=0.2")
    Run(cfg_t, "crash").execute("generate", fn=lambda ctx: generate.run(ctx, backend_factory=lambda c, s: echo2))
    assert len(echo2.asked) == 10
    # post-processing only: nothing regenerated
    cfg_p = ci_config(*overrides, "generate.sampling.temperature=0.2", "generate.min_tokens=100")
    echo3 = EchoBackend()
    Run(cfg_p, "crash").execute("generate", fn=lambda ctx: generate.run(ctx, backend_factory=lambda c, s: echo3))
    assert echo3.asked == [] and run.read_manifest("generate")["counts"]["dropped"] == {"too_short": 10}


def test_a_second_writer_is_refused(ci_config):
    cfg = ci_config("prompts.n_prompts=2")
    run_stages(cfg, "lock", ["ingest", "prompts"])
    d = Run(cfg, "lock").dir("generate")
    d.mkdir(parents=True)
    with Lock(d / ".lock", "held by this test"):
        with pytest.raises(StudyError, match=r"another process \(pid \d+\) is writing into"):
            Run(cfg, "lock").execute("generate", fn=lambda ctx: generate.run(ctx, backend_factory=lambda c, s: EchoBackend()))


# ---------------------------------------------------------------------------------------------
# the notebook


NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_synthetic.ipynb"


def test_notebook_is_thin_clean_and_runs(tmp_path, web_sample, server_factory):
    import ast

    import nbformat
    import papermill as pm

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # committed without outputs
    [params] = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    values = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(params.source).body}
    assert set(values) == {"run", "preset", "results_dir", "overrides", "n_prompts", "backend", "model"}
    # the backend and model parameters at work: an OpenAI-compatible server (the real model runs above)
    srv = server_factory()
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), cwd=str(NOTEBOOK.parent.parent), progress_bar=False, parameters={
        "run": "nb", "preset": "ci", "results_dir": str(tmp_path / "results"), "n_prompts": 3,
        "backend": "openai", "model": "served-model",
        "overrides": [f"ingest.path={web_sample}", f"generate.backend.base_url={srv.url}", "generate.min_tokens=1"]})
    m = json.loads((tmp_path / "results" / "nb" / "generate" / "manifest.json").read_text())
    assert m["counts"]["completions"] == 3 == len(srv.requests)
    assert m["generator"]["models"] == {"served-model": 3}
    shown = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                    for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code" for o in c.outputs)
    assert "documents_per_audience_style" in shown and "evenness" in shown


def test_a_key_given_instead_of_a_variable_name_is_refused_without_echoing_it(tmp_path):
    from pipelines.config import load_config

    with pytest.raises(StudyError) as e:
        load_config("ci", [f"results_dir={tmp_path}", "generate.backend.api_key_env=sk-live-abc123"])
    assert "NAME of an environment variable" in str(e.value) and "sk-live-abc123" not in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_redirect_is_reported_and_the_key_never_reaches_another_address(monkeypatch):
    import http.server
    import threading

    seen = []

    class Other(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    class Redirect(Other):
        def do_POST(self):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{other.server_port}/v1/chat/completions")
            self.end_headers()

    other = http.server.HTTPServer(("127.0.0.1", 0), Other)
    first = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    for s in (other, first):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STUDY_TEST_KEY", "sk-secret-123")
        b = _openai(f"http://127.0.0.1:{first.server_port}/v1", api_key_env="STUDY_TEST_KEY", max_retries=0)
        with pytest.raises(StudyError, match=r"HTTP 307 redirects to .*not followed"):
            b.generate(["hello"], SamplingConfig(max_new_tokens=4))
        assert seen == []  # the other address got no request, so never the key
    finally:
        for s in (other, first):
            s.shutdown()
            s.server_close()
