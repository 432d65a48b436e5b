import json
import os
import signal
import subprocess
import sys

import pytest

from pipelines.cli import main
from pipelines.errors import StudyError
from pipelines.runs.manifest import Run
from pipelines.runs.runner import run_stages


def test_complete_stages_are_skipped_and_changes_propagate_downstream(ci_config, capsys):
    cfg = ci_config()
    run_stages(cfg, "r", ["ingest", "tokenize"])
    run = Run(cfg, "r")
    assert [run.state(s).status for s in ("ingest", "tokenize")] == ["done", "done"]
    m_ingest = run.manifest_path("ingest").stat().st_mtime_ns
    m_tok = run.manifest_path("tokenize").stat().st_mtime_ns

    capsys.readouterr()
    run_stages(cfg, "r", ["ingest", "tokenize"])
    out = capsys.readouterr().out
    assert "[ingest] done" in out and "skipped" in out
    assert run.manifest_path("ingest").stat().st_mtime_ns == m_ingest
    assert run.manifest_path("tokenize").stat().st_mtime_ns == m_tok

    # a change to tokenize leaves ingest done
    cfg_tok = ci_config("tokenize.shard_tokens=50000")
    r2 = Run(cfg_tok, "r")
    assert r2.state("ingest").status == "done"
    assert (r2.state("tokenize").status, r2.state("tokenize").reason) == ("stale", "config changed (tokenize.shard_tokens)")

    # a change to ingest makes everything downstream stale
    cfg_ing = ci_config("ingest.max_documents=120")
    r3 = Run(cfg_ing, "r")
    assert r3.state("ingest").status == "stale"
    assert r3.state("tokenize").status == "stale"
    assert "upstream `ingest`" in r3.state("tokenize").reason
    with pytest.raises(StudyError, match="needs `ingest`.*study ingest"):
        r3.execute("tokenize")

    # rerunning ingest alone: tokenize's recorded input no longer matches
    r3.execute("ingest")
    assert r3.state("ingest").status == "done"
    assert r3.state("tokenize").reason == "upstream `ingest` was rerun"
    r3.execute("tokenize")
    assert r3.state("tokenize").status == "done"
    m = json.loads(r3.manifest_path("tokenize").read_text())
    assert m["counts"]["documents"] == 120
    assert m["inputs"]["ingest"]["config_hash"] == r3.stage_hash("ingest")


def test_manifest_is_an_id_card(ci_config):
    cfg = ci_config()
    run_stages(cfg, "r", ["ingest", "tokenize"])
    m = json.loads(Run(cfg, "r").manifest_path("tokenize").read_text())
    for key in ("stage", "config", "config_hash", "inputs", "outputs", "counts", "timings", "versions", "git", "derived"):
        assert key in m, key
    assert m["status"] == "complete"
    assert m["config"]["tokenize"]["shard_tokens"] == cfg.tokenize.shard_tokens
    assert m["inputs"]["ingest"]["path"].endswith("ingest/manifest.json")
    assert m["versions"]["tiktoken"]
    assert m["derived"]["ingest.documents"] == cfg.ingest.max_documents


def test_stage_killed_before_its_manifest_is_not_complete(ci_config):
    cfg = ci_config()
    run = Run(cfg, "r")

    def dies_halfway(ctx):
        (ctx.dir / "train").mkdir()
        (ctx.dir / "train" / "train_00000.jsonl.gz").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.execute("ingest", dies_halfway)
    st = run.state("ingest")
    assert st.status == "incomplete"
    # a temporary manifest left by a kill during the write is not a manifest either
    (run.dir("ingest") / ".manifest.json.tmp-999").write_text('{"status": "complete"}')
    assert run.state("ingest").status == "incomplete"
    run.execute("ingest")
    assert run.state("ingest").status == "done"
    assert not (run.dir("ingest") / ".manifest.json.tmp-999").exists()  # fresh folder


def test_sigkill_mid_stage_then_rerun(ci_config, tmp_path):
    """A real kill -9 of `study ingest` in the middle of writing: the rerun starts clean."""
    cfg = ci_config()
    code = (
        "import os, signal, sys\n"
        "import pipelines.data.documents as d\n"
        "orig = d.ShardedWriter._close_shard\n"
        "def die(self):\n"
        "    orig(self)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "d.ShardedWriter._close_shard = die\n"
        "from pipelines.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["ingest", "--preset", "ci", "--run", "k", "--set", f"results_dir={cfg.results_dir}",
            "--set", f"ingest.path={cfg.ingest.path}"]
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert p.returncode == -9
    run = Run(cfg, "k")
    assert any(run.dir("ingest").rglob("*.jsonl.gz"))  # it had written a shard
    assert run.state("ingest").status == "incomplete"
    assert main(args) == 0
    m = run.read_manifest("ingest")
    assert m["counts"]["documents"] == cfg.ingest.max_documents
    assert sum(o["documents"] for o in m["outputs"]) == cfg.ingest.max_documents


def test_status_command_prints_a_table(ci_config, capsys):
    cfg = ci_config()
    run_stages(cfg, "r", ["ingest"])
    capsys.readouterr()
    assert main(["status", "r", "--results-dir", cfg.results_dir]) == 0
    out = capsys.readouterr().out
    lines = {l.split()[0]: l.split()[1] for l in out.splitlines()[2:] if l and not l.startswith("-")}
    assert lines["ingest"] == "done" and lines["tokenize"] == "missing"
    # against a changed config, ingest shows as stale
    assert main(["status", "r", "--results-dir", cfg.results_dir, "--preset", "ci",
                 "--set", f"ingest.path={cfg.ingest.path}", "--set", "ingest.max_documents=5"]) == 0
    assert "stale" in capsys.readouterr().out
    assert main(["status", "nope", "--results-dir", cfg.results_dir]) == 2


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/tmp/x", ".hidden", "", "a b", "x\n"])
def test_a_run_name_is_a_plain_folder_name(ci_config, tmp_path, name, capsys):
    outside = tmp_path / "victim"
    (outside / "ingest").mkdir(parents=True)
    (outside / "ingest" / "important.txt").write_text("x")
    with pytest.raises(StudyError, match="run name"):
        Run(ci_config(), name)
    argv = ["ingest", "--preset", "ci", "--run", name, "--set", f"results_dir={tmp_path / 'results'}"]
    assert main(argv if name != "/tmp/x" else [*argv[:4], str(outside), *argv[5:]]) == 2
    assert "run name" in capsys.readouterr().err
    assert (outside / "ingest" / "important.txt").read_text() == "x"  # nothing outside the results folder
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_stage_never_deletes_outside_its_run(ci_config, tmp_path):
    run = Run(ci_config(), "r")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(StudyError, match="not inside this run's folder"):
        run._remove(elsewhere)
    assert elsewhere.exists()


def test_one_writer_per_run_and_stage(ci_config, capsys):
    cfg = ci_config()
    run = Run(cfg, "r")
    calls = []
    with run.lock("ingest"):  # another process's `study ingest` on this run, still running
        with pytest.raises(StudyError, match=r"another process \(pid \d+\) is writing stage `ingest` of run `r`"):
            run.execute("ingest", fn=lambda ctx: calls.append(1) or {})
    assert calls == [] and not run.manifest_path("ingest").exists()
    run.execute("ingest")  # the lock is gone with its holder
    assert run.state("ingest").status == "done"


def test_a_killed_writer_leaves_no_lock(ci_config, tmp_path):
    cfg = ci_config()
    run = Run(cfg, "r")
    code = ("import os, sys; from pipelines.files import Lock\n"
            f"Lock({str(run.root / '.locks' / 'ingest.lock')!r}, 'x').__enter__(); os._exit(9)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with run.lock("ingest"):  # the kernel released the dead process's lock
        pass


def test_a_forked_child_does_not_keep_a_killed_writers_lock(ci_config):
    """datatrove's local executor forks a Manager process while the stage holds its lock: when the writer
    is killed, the lock must go with it even though the child lives on."""
    run = Run(ci_config(), "r")
    code = ("import os, sys, time; from pipelines.files import Lock\n"
            f"Lock({str(run.root / '.locks' / 'ingest.lock')!r}, 'x').__enter__()\n"
            "r, w = os.pipe()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.close(1); os.close(2); os.read(r, 1)  # blocks (it holds the write end too) until killed\n"
            "print(pid, flush=True); os._exit(9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 9, proc.stderr
    child = int(proc.stdout.split()[0])
    try:
        os.kill(child, 0)  # the forked child still runs ...
        with run.lock("ingest"):  # ... and the lock is free
            pass
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("code, words", [(28, "No space left on device"), (30, "Read-only file system")])
def test_a_full_or_read_only_disk_is_reported_with_the_path_and_how_to_resume(ci_config, code, words):
    import errno as errno_

    run = Run(ci_config(), "r")
    path = run.dir("ingest") / "train" / "train_00000.jsonl.gz"

    def fail(ctx):
        raise OSError(code, words, str(path))

    assert code in (errno_.ENOSPC, errno_.EROFS)
    with pytest.raises(StudyError) as e:
        run.execute("ingest", fn=fail)
    msg = str(e.value)
    assert words in msg and str(path) in msg and "incomplete" in msg and "rerun the same command" in msg
    assert run.state("ingest").status in ("incomplete", "missing")


def test_status_verify_finds_a_deleted_checkpoint_and_a_cut_shard(tmp_path, capsys):
    from pipelines.config import load_config

    cfg = load_config("ci", [f"results_dir={tmp_path / 'results'}", "mix.dedup.near=false"])
    run_stages(cfg, "v", ["ingest", "mix", "train"])
    args = ["status", "v", "--results-dir", str(tmp_path / "results"), "--verify"]
    assert main(args) == 0
    run = Run(cfg, "v")
    train = run.read_manifest("train")["outputs"][0]["path"]
    (run.dir("train") / train).unlink()
    shard = run.dir("mix") / run.read_manifest("mix")["outputs"][-1]["path"]
    shard.write_bytes(shard.read_bytes()[:-100])
    assert main(["status", "v", "--results-dir", str(tmp_path / "results")]) == 0  # manifests alone say done
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"{train} is missing" in out and "truncated or corrupt" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith(("mix ", "train "))] == ["damaged"] * 2


def test_status_names_changed_keys_unused_stages_and_survives_a_closed_pipe(ci_config, tmp_path):
    cfg = ci_config("stages=[ingest, tokenize]")
    run_stages(cfg, "r", ["ingest"])
    run = Run(ci_config("stages=[ingest, tokenize]", "ingest.max_documents=50", "ingest.val_fraction=0.2"), "r")
    st = run.state("ingest")
    assert st.status == "stale" and "ingest.max_documents" in st.reason and "ingest.val_fraction" in st.reason
    rows = {r["stage"]: r["status"] for r in run.status_rows()}
    assert rows["tokenize"] == "missing" and rows["mix"] == "not used"
    # stdout is a pipe whose reader has gone (`study status r | head -1` once head has exited)
    code = ("import os, sys; from pipelines.cli import main\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            f"sys.exit(main(['status', 'r', '--results-dir', {str(cfg.results_dir)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and "BrokenPipe" not in p.stderr and "Traceback" not in p.stderr
