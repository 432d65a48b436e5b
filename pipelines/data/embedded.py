"""The repository's embedded default data (data/README.md): real web pages and benchmark items that the
smoke study and the tests run on with no network and no ../shared: pages, the benchmarks' items
(data/eval) and DCLM's CORE task files (data/core).

Anywhere a config takes a local path of pages (`ingest.path`, a mix or label source's `path`) or a
folder of benchmark files (`evaluate.data_dir`, `mix.decontaminate.eval_dir`), the word `embedded`
names this data; `hub` names the Hugging Face hub datasets instead. `describe` is what manifests
record about the data a stage read.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pipelines.config import PROJECT_ROOT

EMBEDDED = "embedded"
DATA_DIR = PROJECT_ROOT / "data"
WEB_PAGES = DATA_DIR / "web" / "web_pages.jsonl.gz"
EVAL_DIR = DATA_DIR / "eval"
CORE_DIR = DATA_DIR / "core"  # DCLM CORE task files (pipelines/data/core_tasks.py)
README = "data/README.md"


@lru_cache(maxsize=1)
def checksums() -> dict:
    try:
        return json.loads((DATA_DIR / "checksums.json").read_text())
    except (OSError, ValueError):
        return {}


def describe_pages(path: str | None, dataset: str | None = None, dataset_config: str | None = None,
                   split: str | None = None) -> dict:
    """Which pages a stage read: the embedded set (with its sha256), a hub dataset, or a local path."""
    if path == EMBEDDED:
        rel = WEB_PAGES.relative_to(DATA_DIR).as_posix()
        return {"kind": "embedded", "path": f"data/{rel}", "sha256": checksums().get("files", {}).get(rel, {}).get("sha256"),
                "about": README}
    if path:
        return {"kind": "local", "path": str(path)}
    return {"kind": "hub", "dataset": dataset, "config": dataset_config, "split": split,
            "revision": "the hub's latest at run time"}


def describe_benchmarks(data_dir: str | Path | None) -> dict:
    """Which benchmark files a stage read (`data_dir` as resolve_data_dir takes it)."""
    if data_dir in (None, EMBEDDED):
        return {"kind": "embedded", "path": "data/eval", "about": README}
    if str(data_dir) == "hub":
        return {"kind": "hub", "revision": "the hub's latest at run time"}
    return {"kind": "local", "path": str(data_dir)}


def describe_core(core_dir: str | Path | None) -> dict:
    """Which CORE task files a stage read (`evaluate.core.core_dir`)."""
    if core_dir in (None, EMBEDDED):
        return {"kind": "embedded", "path": "data/core", "about": README}
    if str(core_dir).startswith("hf:"):
        return {"kind": "hub", "dataset": str(core_dir)[3:], "revision": "the hub's latest at run time"}
    return {"kind": "local", "path": str(core_dir)}
