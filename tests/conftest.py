"""Shared fixtures: real offline data, and ci-preset configs whose results go to a temporary folder.

The data is the team's larger copy in ../shared (or $STUDY_SHARED_DIR) when it is there, else the
repository's embedded data (data/README.md), so the suite runs from a plain clone. The ci preset
leaves out the one source that only the larger copy has, so both give the same pages.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, load_config
from pipelines.data.embedded import EVAL_DIR as EMBEDDED_EVAL
from pipelines.data.embedded import WEB_PAGES

SHARED = Path(os.environ.get("STUDY_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
HAS_SHARED = (SHARED / "data" / "web" / "web_sample.jsonl.gz").exists()
WEB_SAMPLE = SHARED / "data" / "web" / "web_sample.jsonl.gz" if HAS_SHARED else WEB_PAGES
EVAL_DIR = SHARED / "data" / "eval" if HAS_SHARED else EMBEDDED_EVAL


@pytest.fixture(scope="session")
def web_sample() -> Path:
    if not WEB_SAMPLE.exists():
        pytest.fail(f"the web pages are missing at {WEB_SAMPLE}: the repository's data/ folder is incomplete")
    return WEB_SAMPLE


@pytest.fixture
def ci_config(tmp_path, web_sample):
    """load_config('ci', ...) with results under tmp_path and the shared sample as input."""

    def make(*overrides: str):
        return load_config("ci", [f"results_dir={tmp_path / 'results'}", f"ingest.path={web_sample}", *overrides])

    return make


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (tiny models: more threads only add overhead), then restored."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
