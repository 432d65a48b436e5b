"""What every benchmark script shares: a passive OpenMP wait policy (set before torch loads), the
machine's load, and `record`, which writes a script's numbers as JSON next to what it prints.

    from benchmarks.common import record            # first, before torch (with the repo root on sys.path)
    record("train", {"models": rows, ...})           # -> results/benchmarks/train.json

A record holds the numbers and, from `machine()`, the load average and CPU count when this module was
imported (the script's start) and when the numbers were recorded: numbers from a shared machine are
only comparable with their load next to them (the scripts time ours and the reference interleaved
in the same run for the same reason).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# spinning OpenMP threads slow every torch process on a busy machine; a value the user set wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "benchmarks"


def machine() -> dict:
    """Load average (1, 5, 15 min), CPU count, torch threads if torch is loaded, and the time."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    torch = sys.modules.get("torch")
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": [round(x, 2) for x in load],
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads() if torch else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


START = machine()  # the load when the script started (it imports this module first)


def record(name: str, numbers: dict, folder: Path | None = None) -> Path:
    """Write {"benchmark", "argv", "numbers", "machine_before", "machine_after"} to
    results/benchmarks/<name>.json (or folder/<name>.json) atomically: a temporary name, then rename."""
    folder = RESULTS if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    doc = {"benchmark": name, "argv": sys.argv, "numbers": numbers, "machine_before": START,
           "machine_after": machine()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    print(f"-> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"(load {START['loadavg'][0]:.1f} before, {doc['machine_after']['loadavg'][0]:.1f} after, "
          f"{os.cpu_count()} CPUs)")
    return path
