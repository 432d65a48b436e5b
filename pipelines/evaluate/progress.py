"""A target's folder while it is scored, and how a rerun reuses or resumes it (evaluate/<target>/):

  items_<task>.jsonl   per-item records of a finished task (benchmark or CORE), written whole
  progress.json        the tasks finished so far under the target's key, each added after its items file
  done.json            written last for a finished target: its key (settings + model file stamp) and speed

A rerun keeps a finished target whose key is unchanged (TargetFolder.reuse) and, after a stop mid-model,
the tasks progress.json lists (TargetFolder.start). Saved records always go through today's metrics
(rescore): a file saved before a metric was added is rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.config import EvaluateConfig, config_hash
from pipelines.evaluate import core
from pipelines.evaluate.metrics import item_record
from pipelines.evaluate.targets import Target, target_stamp
from pipelines.evaluate.tasks import Task, task_names
from pipelines.files import atomic_open, write_json_atomic

# settings that change what is done with the per-item results, never the results themselves
NOT_PER_ITEM = ("models", "checkpoints", "trained", "average_last", "baseline")


def target_key(cfg: EvaluateConfig, seed: int, t: Target) -> str:
    settings = {k: v for k, v in cfg.hashed_dict().items() if k not in NOT_PER_ITEM}
    if "core" in settings:
        settings["core"] = {k: v for k, v in settings["core"].items() if k != "version"}
    return config_hash({"settings": settings, "seed": seed, "target": target_stamp(t)})


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def rescore(task: Task, saved: list[dict]) -> list[dict] | None:
    """Records of a task from saved per-item records: their log-likelihoods through item_record again (the
    metrics are always today's); None when they are not this task's items."""
    if len(saved) != len(task.items) or any(r.get("id") != it.id or len(r.get("lls", ())) != len(p.answers)
                                             for r, it, p in zip(saved, task.items, task.prompts)):
        return None
    return [item_record(it, p, r["lls"]) for it, p, r in zip(task.items, task.prompts, saved)]


def saved_records(out: Path, names: list[str], tasks: list[Task], suite: "core.CoreSuite | None",
                  prefix_space: bool | None) -> dict[str, list[dict]]:
    """Saved records of these task names that are still these items, through today's metrics (a file
    saved before a metric was added is rewritten); a name whose file is missing or stale is left out."""
    by_name = {task.name: task for task in tasks}
    labels = {core.task_name(x): x for x in (suite.labels if suite else [])}
    kept = {}
    for n in names:
        f = out / f"items_{n}.jsonl"
        if not f.exists() or (n in labels and prefix_space is None) or (n not in by_name and n not in labels):
            continue
        saved = read_jsonl(f)
        if n in by_name:
            records = rescore(by_name[n], saved)
        else:
            label = labels[n]
            records = core.rescore(suite.data.tasks[label].spec, suite.prompts(label, prefix_space), saved)
        if records is not None:
            if records != saved:
                write_jsonl(f, records)
            kept[n] = records
    return kept


class TargetFolder:
    """evaluate/<target>/ under one key: reuse a finished folder, resume a stopped one, record each
    finished task (items file, then progress.json), close with done.json."""

    def __init__(self, out: Path, key: str):
        self.out, self.key = out, key
        self.done, self.progress = out / "done.json", out / "progress.json"
        self.state: dict = {"key": key, "tasks": []}  # progress.json; core_prefix_space once the model is loaded

    def reuse(self, tasks: list[Task], suite: "core.CoreSuite | None") -> tuple[dict, dict] | None:
        """(records per task, speed) of a finished folder whose key is unchanged; None when any task's
        items are missing or are not these items."""
        if not self.done.exists():
            return None
        info = _read_json(self.done)
        if info.get("key") != self.key or (suite and "core_prefix_space" not in info):
            return None
        names = task_names(tasks, suite)
        kept = saved_records(self.out, names, tasks, suite, info.get("core_prefix_space"))
        return (kept, info.get("speed", {})) if len(kept) == len(names) else None

    def start(self, tasks: list[Task], suite: "core.CoreSuite | None", resume: bool = True) -> dict[str, list[dict]]:
        """Scoring begins: done.json goes; with `resume`, the records of the tasks progress.json lists under
        this key (a run stopped mid-model scores only the rest)."""
        self.done.unlink(missing_ok=True)
        kept = {}
        if resume and self.progress.exists():
            before = _read_json(self.progress)
            if before.get("key") == self.key:
                kept = saved_records(self.out, before.get("tasks", []), tasks, suite, before.get("core_prefix_space"))
                self.state = {**before, "tasks": list(kept)}
        self.out.mkdir(parents=True, exist_ok=True)
        return kept

    def finished(self, name: str, records: list[dict]) -> None:
        """A benchmark or CORE task is scored: its items file, then progress.json."""
        write_jsonl(self.out / f"items_{name}.jsonl", records)
        self.state["tasks"].append(name)
        write_json_atomic(self.progress, self.state)

    def close(self, t: Target, speed: dict, extra: dict) -> None:
        write_json_atomic(self.done, {"key": self.key, "target": target_stamp(t), "speed": speed, **extra})
        self.progress.unlink(missing_ok=True)
