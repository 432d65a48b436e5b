"""Presets: YAML files in configs/ (`ci`, `smoke`, `cpu`, `gpu-124m`, `gpu-1.5b`, ...), each may start from
another with `extends: <name>`; load_config reads one and applies the command line's `--set` overrides."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from pipelines.config.helpers import PROJECT_ROOT, read_yaml_mapping
from pipelines.config.overrides import _check_override_key, parse_override, set_at, shown, validate
from pipelines.config.study import StudyConfig
from pipelines.errors import StudyError


def presets_dir() -> Path:
    return Path(os.environ.get("STUDY_CONFIGS", PROJECT_ROOT / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = presets_dir() / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise StudyError(
        f"unknown preset {name_or_path!r}: no file {candidate}; presets: {', '.join(list_presets())}"
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise StudyError(f"{path}: `extends` loops back to itself")
    data = read_yaml_mapping(path, "sections")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml(_preset_path(parent), seen + (path,))
    return _deep_merge(base, data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(preset: str = "smoke", overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Load a preset (name in configs/ or a YAML path) and apply `section.key=value` overrides."""
    path = _preset_path(preset)
    data = _read_yaml(path)
    data.setdefault("preset", path.stem)
    validate(data, str(path))
    for item in overrides:
        parts, value = parse_override(item)
        _check_override_key(parts, item)
        set_at(data, parts, value)
    return validate(data, "--set " + shown(overrides))  # never echo what may be a secret
