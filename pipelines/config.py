"""Typed, strict study configuration.

A preset is a YAML file in configs/ (`ci`, `smoke`, `cpu`, `gpu-124m`, `gpu-1.5b`). It may start
from another preset with `extends: <name>`. Command-line overrides are `section.key=value`, the
value parsed as YAML (`3` is an int, `null` is None, `[a, b]` a list).

Unknown or mistyped keys fail with the file, the key and what is allowed. Derived values are
properties, printed at start (`study config`) and stored in every manifest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.errors import StudyError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # fields that change speed or logging but never a stage's output: left out of the config hash
    unhashed: ClassVar[frozenset[str]] = frozenset()

    def hashed_dict(self) -> dict:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.unhashed}


class IngestConfig(Section):
    """Real web documents, from the hub (streaming) or a local JSONL / JSONL.gz / JSONL.zst / Parquet."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"removed_examples"})

    dataset: str = "HuggingFaceFW/fineweb"  # or HuggingFaceFW/fineweb-edu
    dataset_config: str | None = "sample-10BT"
    split: str = "train"
    path: str | None = None  # a local file, directory or glob; when set, the hub is not used
    max_documents: int | None = Field(2000, ge=1)  # None: every document
    sample: Literal["first", "random"] = "first"  # random: seeded (reservoir locally, shuffle buffer on the hub)
    shuffle_buffer: int = Field(10_000, ge=1)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # held out by a seeded hash of the document id
    exclude_sources: list[str] = []
    max_chars: int | None = Field(None, ge=1)  # longer documents are dropped as `too_long`
    shard_documents: int = Field(10_000, ge=1)
    removed_examples: int = Field(100, ge=0)  # first examples kept per drop reason in removed/

    @property
    def expected_val_documents(self) -> int | None:
        return None if self.max_documents is None else round(self.max_documents * self.val_fraction)


class TokenizeConfig(Section):
    """GPT-2 BPE (tiktoken) into llm.c uint16 shards."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"workers", "batch_documents"})

    name: str = Field("web", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # shard file prefix
    shard_tokens: int = Field(100_000_000, ge=1024, le=2**31 - 1)
    workers: int = Field(0, ge=0)  # 0: one process per core
    batch_documents: int = Field(64, ge=1)

    @property
    def num_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)


class StudyConfig(Section):
    preset: str = "custom"
    description: str = ""
    seed: int = 1337
    results_dir: str = "results"
    ingest: IngestConfig = IngestConfig()
    tokenize: TokenizeConfig = TokenizeConfig()

    def derived(self) -> dict[str, Any]:
        """Values computed from the config, printed at start and stored in manifests."""
        return {
            "ingest.documents": self.ingest.max_documents,
            "ingest.expected_val_documents": self.ingest.expected_val_documents,
            "ingest.source": self.ingest.path or f"hub:{self.ingest.dataset}/{self.ingest.dataset_config}",
            "tokenize.shard_tokens": self.tokenize.shard_tokens,
            "tokenize.workers": self.tokenize.num_workers,
        }


def config_hash(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# loading


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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of sections at the top level")
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


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = StudyConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return model
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return model
    return model


def _describe(errors: list[dict], origin: str) -> str:
    lines = []
    for err in errors:
        loc = tuple(str(x) for x in err["loc"])
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = ", ".join(model.model_fields) if model else "?"
            lines.append(f"{origin}: unknown key `{key}`; allowed here: {allowed}")
        else:
            lines.append(f"{origin}: `{key}` = {err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise StudyError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise StudyError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _check_override_key(parts: list[str], item: str) -> None:
    model: Any = StudyConfig
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            raise StudyError(f"--set {item}: `{'.'.join(parts[:i])}` is a value, not a section")
        if part not in fields:
            where = ".".join(parts[:i]) or "the top level"
            raise StudyError(
                f"--set {item}: unknown key `{'.'.join(parts)}`; allowed in {where}: {', '.join(fields)}"
            )
        ann = fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None and i < len(parts) - 1:
            raise StudyError(f"--set {item}: `{'.'.join(parts[: i + 1])}` is a value, not a section")


def load_config(preset: str = "smoke", overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Load a preset (name in configs/ or a YAML path) and apply `section.key=value` overrides."""
    path = _preset_path(preset)
    data = _read_yaml(path)
    data.setdefault("preset", path.stem)
    try:
        StudyConfig.model_validate(data)
    except ValidationError as e:
        raise StudyError(_describe(e.errors(), str(path))) from None
    for item in overrides:
        parts, value = parse_override(item)
        _check_override_key(parts, item)
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise StudyError(_describe(e.errors(), "--set " + " ".join(overrides))) from None


def dump_yaml(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
