"""What the config's readers share: the project root, YAML in and out, and the config hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.errors import StudyError

if TYPE_CHECKING:
    from pipelines.config.study import StudyConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def read_yaml(path: Path) -> Any:
    """A YAML file's data (safe_load: no Python objects); a clear error for broken YAML."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML: {e}") from None


def read_yaml_mapping(path: Path, of: str) -> dict:
    """A YAML file whose top level is a mapping (of `of`: sections, keys); a clear error otherwise."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of {of} at the top level")
    return data


def config_hash(payload: Any) -> str:
    """16 hex digits of the sha256 of `payload` as canonical JSON (sorted keys): a stage's config hash."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(cfg: StudyConfig) -> str:
    """The whole config as YAML (results/<run>/config.yaml, `study config`), keys in schema order."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
