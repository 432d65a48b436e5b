"""What every model is scored on: the benchmarks' items and prompts, one Task per (benchmark, form)
(MMLU in cloze and letter form, the others cloze), and DCLM's CORE suite when evaluate.benchmarks lists `core`."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import EvaluateConfig
from pipelines.data.benchmarks import Benchmark, Item, Prompt, fewshot_examples, load_benchmark, load_fewshot_pool, prompt
from pipelines.errors import StudyError
from pipelines.evaluate import core


@dataclass
class Task:
    benchmark: str
    form: str
    items: list[Item]
    prompts: list[Prompt]

    @property
    def name(self) -> str:
        return f"{self.benchmark}_{self.form}"


def load_benchmarks(cfg: EvaluateConfig, seed: int) -> dict[str, Benchmark]:
    return {b: load_benchmark(b, cfg.data_dir, cfg.limit, cfg.sample, seed) for b in cfg.benchmarks if b != "core"}


def build_tasks(cfg: EvaluateConfig, benches: dict[str, Benchmark], seed: int) -> list[Task]:
    tasks = []
    for name, bench in benches.items():
        pool = load_fewshot_pool(name, cfg.data_dir) if cfg.num_fewshot else None
        for form in (cfg.mmlu_forms if name == "mmlu" else ["cloze"]):
            prompts = [prompt(it, form, fewshot_examples(it, cfg.num_fewshot, pool, bench.items, seed))
                       for it in bench.items]
            tasks.append(Task(name, form, bench.items, prompts))
    return tasks


def load_core_suite(cfg: EvaluateConfig, log=print) -> "core.CoreSuite | None":
    """The CORE tasks when evaluate.benchmarks lists `core` (evaluate.core), else None."""
    if "core" not in cfg.benchmarks:
        return None
    c = cfg.core
    suite = core.load_suite(c.tasks, c.limit, c.version, c.core_dir, cfg.data_dir, c.verify)
    for label, task in suite.data.tasks.items():
        n = len(task.rows) if c.limit is None else min(c.limit, len(task.rows))
        log(f"[evaluate] core {label}: {n:,} of {len(task.rows):,} items from {task.source} ({task.verified})")
    for label, why in suite.data.missing.items():
        log(f"[evaluate] core {label}: not scored ({why})")
    if not suite.labels:
        raise StudyError(f"[evaluate] core: no CORE task file found in {suite.data.folder}")
    log(f"[evaluate] core: {len(suite.labels)} of {core.CORE_SIZE} tasks -> reported as {suite.title!r}")
    return suite


def task_names(tasks: list[Task], suite: "core.CoreSuite | None") -> list[str]:
    """Every task's name in scoring order: the benchmarks' (arc_easy_cloze ...), then CORE's (core_<label>)."""
    return [task.name for task in tasks] + ([core.task_name(x) for x in suite.labels] if suite else [])
