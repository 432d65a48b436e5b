"""benchmarks/bench_train.py and benchmarks/common.py: the three training steps it times do real work
on a tiny model, and a benchmark's record carries the machine's load before and after (no timing is
asserted: only that the numbers are there and consistent)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", PROJECT_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_bench_train_times_ours_and_the_minimal_loops():
    bench = load("bench_train")
    rows = bench.bench_model("d2c32", B=2, T=8, steps=1, warmup=0)
    assert [r["variant"] for r in rows] == ["ours", "minimal, AdamW", "minimal, fused AdamW"]
    assert all(r["tok_s"] > 0 and r["step_ms"] > 0 and r["page_faults_per_step"] >= 0 for r in rows)
    assert {r["model"] for r in rows} == {"d2c32"} and rows[0]["params_M"] == 1.67  # 50304 x 32 + 1024 x 32 + 2 layers


def test_record_writes_numbers_and_the_load_before_and_after(tmp_path):
    common = load("common")
    path = common.record("unit", {"tok_s": 123.4}, folder=tmp_path)
    assert path == tmp_path / "unit.json" and not list(tmp_path.glob(".*tmp*"))
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "unit" and doc["numbers"] == {"tok_s": 123.4}
    for when in ("machine_before", "machine_after"):
        assert len(doc[when]["loadavg"]) == 3 and doc[when]["cpu_count"] >= 1
    assert doc["machine_after"]["omp_wait_policy"]  # set by common (or by the user) before torch loads
    assert Path(common.RESULTS) == PROJECT_ROOT / "results" / "benchmarks"


def test_every_benchmark_sets_the_wait_policy_before_torch_loads():
    """Each script imports benchmarks.common (OMP_WAIT_POLICY=PASSIVE unless set) before torch or the
    package (a spinning OpenMP runtime reads the variable once, when torch loads it) and records its numbers."""
    import ast

    for path in sorted((PROJECT_ROOT / "benchmarks").glob("bench_*.py")):
        if path.name == "bench_core.py":  # another issue's script
            continue
        tree = ast.parse(path.read_text())
        order = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
                 for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        first_heavy = next(i for i, m in enumerate(order) if m and m.split(".")[0] in ("torch", "pipelines", "numpy"))
        assert "benchmarks.common" in order[:first_heavy], path.name
        assert "record(" in path.read_text(), path.name
