"""The OpenMP wait policy: every entry point that runs torch sets OMP_WAIT_POLICY=PASSIVE before torch
loads (spinning OpenMP threads slow every process on a shared machine), and keeps a value the user set.

Each entry is run in a fresh interpreter whose import system stops at `import torch`, recording the
variable at that moment (torch reads it once, when its OpenMP runtime starts): no torch is loaded, so
checking every entry costs one interpreter start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the entry points: the study CLI, the notebooks' first import (their kernels also inherit the variable
# from the `study` process that starts them), the train subprocess, the lm-eval bridge, the scripts
ENTRY_MODULES = ["pipelines.cli", "pipelines.notebooks", "pipelines.train.reference", "pipelines.sweep"]
ENTRY_SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("benchmarks/bench_*.py"),
                                                           *ROOT.glob("scripts/*.py")])

PROBE = textwrap.dedent('''
    import json, os, runpy, sys

    class StopAtTorch:
        """A meta path finder: records the variable when torch is first imported, then stops there."""
        seen = []

        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                self.seen.append(os.environ.get("OMP_WAIT_POLICY"))
                raise ImportError("stopped at torch")
            return None

    probe = StopAtTorch()
    sys.meta_path.insert(0, probe)
    user, entries, out = sys.argv[1], json.loads(sys.argv[2]), {}
    for kind, entry in entries:  # each from a clean start: the project's modules unloaded, the variable reset
        for name in [m for m in sys.modules if m.split(".")[0] in ("pipelines", "benchmarks")]:
            del sys.modules[name]
        os.environ.pop("OMP_WAIT_POLICY", None)
        if user:
            os.environ["OMP_WAIT_POLICY"] = user
        probe.seen.clear()
        sys.argv = [entry, "--help"]
        try:
            if kind == "module":
                __import__(entry)
            else:
                runpy.run_path(entry, run_name="__main__")
        except (ImportError, SystemExit):
            pass
        out[entry] = {"torch_imported": bool(probe.seen), "policy_at_torch": probe.seen[:1],
                      "policy_now": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps(out))
''')


def probe(entries: list[tuple[str, str]], policy: str | None) -> dict:
    """{entry: {torch_imported, policy_at_torch, policy_now}}, all entries in one fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, policy or "", json.dumps(entries)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_pipelines_sets_passive_waiting_and_keeps_the_users_value():
    assert probe([("module", "pipelines")], None)["pipelines"]["policy_now"] == "PASSIVE"
    assert probe([("module", "pipelines")], "ACTIVE")["pipelines"]["policy_now"] == "ACTIVE"


def test_every_entry_point_sets_the_policy_before_torch_loads():
    entries = [("module", m) for m in ENTRY_MODULES] + [("script", s) for s in ENTRY_SCRIPTS]
    unset, user = probe(entries, None), probe(entries, "ACTIVE")
    assert unset["pipelines.cli"]["torch_imported"]  # the probe sees torch being imported
    for _, entry in entries:
        if unset[entry]["torch_imported"]:  # an entry that never loads torch needs no policy
            assert unset[entry]["policy_at_torch"] == ["PASSIVE"], (entry, unset[entry])
        assert user[entry]["policy_at_torch"] in ([], ["ACTIVE"]), (entry, user[entry])


def test_the_train_subprocess_gets_passive_waiting_unless_the_user_chose(monkeypatch, tmp_path):
    from pipelines.train.launcher import run_process

    script = "import json, os; print(json.dumps(os.environ.get('OMP_WAIT_POLICY')))"
    for user, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        if user is None:
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("OMP_WAIT_POLICY", user)
        lines = []
        res = run_process([sys.executable, "-c", script], tmp_path, tmp_path / "log.txt", echo=lines.append)
        assert res.returncode == 0
        assert json.dumps(want) in (tmp_path / "log.txt").read_text(), (user, lines)
