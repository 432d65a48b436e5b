"""Shared fixtures: the real offline data in ../shared beside the checkout, and ci-preset configs
whose results go to a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, load_config

SHARED = Path(os.environ.get("STUDY_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
WEB_SAMPLE = SHARED / "data" / "web" / "web_sample.jsonl.gz"
EVAL_DIR = SHARED / "data" / "eval"


@pytest.fixture(scope="session")
def web_sample() -> Path:
    if not WEB_SAMPLE.exists():
        pytest.fail(f"the shared web sample is missing at {WEB_SAMPLE}: clone with shared/ beside the "
                    f"checkout or set STUDY_SHARED_DIR")
    return WEB_SAMPLE


@pytest.fixture
def ci_config(tmp_path, web_sample):
    """load_config('ci', ...) with results under tmp_path and the shared sample as input."""

    def make(*overrides: str):
        return load_config("ci", [f"results_dir={tmp_path / 'results'}", f"ingest.path={web_sample}", *overrides])

    return make
