"""Changes to a config after its preset, and the messages when they are wrong.

  --set text       `section.key=value`, the value parsed as YAML (`3` an int, `null` None, `[a, b]` a
                   list): the command line's and the spec files' overrides (parse_override, updates_of)
  typed updates    with_updates(config, {"mix.mixes": [...]}, {"train": {"steps": 20}}): what code
                   changes (the mixture search), with the same key checks and validation as --set

Either way a key must name a field; a dotted key descends through sections only (a value replaces the
field's whole value: `mix.mixes=[...]`), and the result is validated once, after every change.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.config.study import StudyConfig
from pipelines.errors import StudyError

SECRET_KEYS = frozenset({"api_key_env"})


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


def _section(ann: Any) -> type[BaseModel] | None:
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _describe(errors: list[dict], origin: str) -> str:
    lines = []
    for err in errors:
        loc = tuple(str(x) for x in err["loc"])
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = ", ".join(model.model_fields) if model else "?"
            lines.append(f"{origin}: unknown key `{key}`; allowed here: {allowed}")
        elif not loc or isinstance(err.get("input"), dict):  # a check across keys: the message says which
            lines.append(f"{origin}: {key + ': ' if key else ''}{err['msg'].removeprefix('Value error, ')}")
        elif loc[-1] in SECRET_KEYS:  # never echo what may be a secret
            lines.append(f"{origin}: `{key}`: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{origin}: `{key}` = {err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)


def validate(data: dict, origin: str) -> StudyConfig:
    """StudyConfig of `data`; what is wrong, key by key, prefixed with `origin` (a file, the --set list)."""
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise StudyError(_describe(e.errors(), origin)) from None


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


def _check_override_key(parts: list[str], item: str, origin: str | None = None) -> None:
    """Every part but the last names a section, the last a field of it (origin: how errors start)."""
    origin = origin or f"--set {item}"
    model: Any = StudyConfig
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            raise StudyError(f"{origin}: `{'.'.join(parts[:i])}` is a value, not a section")
        if part not in fields:
            where = ".".join(parts[:i]) or "the top level"
            raise StudyError(f"{origin}: unknown key `{'.'.join(parts)}`; allowed in {where}: {', '.join(fields)}")
        model = _section(fields[part].annotation)
        if model is None and i < len(parts) - 1:
            raise StudyError(f"{origin}: `{'.'.join(parts[: i + 1])}` is a value, not a section")


def set_at(data: dict, parts: Sequence[str], value: Any) -> None:
    """data[parts[0]][parts[1]]... = value, creating the sections on the way."""
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def shown(overrides: Sequence[str]) -> str:
    """The --set list for an error message, values of secret keys left out."""
    return " ".join(o.split("=", 1)[0] + "=..." if o.split("=", 1)[0].rsplit(".", 1)[-1] in SECRET_KEYS else o
                    for o in overrides)


def updates_of(overrides: Sequence[str]) -> dict[str, Any]:
    """--set text as one update for with_updates: {"section.key": value}. A key given again moves to the
    end (its earlier value is overwritten either way), so the order of the text is kept."""
    out: dict[str, Any] = {}
    for item in overrides:
        parts, value = parse_override(item)
        _check_override_key(parts, item)
        key = ".".join(parts)
        out.pop(key, None)
        out[key] = value
    return out


def _flatten(update: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[list[str], Any]]:
    """(key parts, value) of an update: dotted keys split, nested mappings followed into sections."""
    for key, value in update.items():
        parts = [*prefix, *(p for p in key.split(".") if p)]
        if isinstance(value, Mapping) and _section_of(parts) is not None:
            yield from _flatten(value, tuple(parts))
        else:
            yield parts, value.model_dump() if isinstance(value, BaseModel) else value


def _section_of(parts: Sequence[str]) -> type[BaseModel] | None:
    """The section model that `parts` names, or None (a value, or not a key)."""
    model: Any = StudyConfig
    for part in parts:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = _section(field.annotation)
    return model


def with_updates(config: StudyConfig, *updates: Mapping[str, Any]) -> StudyConfig:
    """`config` with `updates` applied in order, as `--set` applies its overrides: keys are dotted
    ({"train.steps": 20}) or nested ({"train": {"steps": 20}}), values typed (a list of mix dicts, not its
    YAML text). Unknown keys fail with --set's messages; the result is validated once, at the end."""
    data = config.model_dump()
    keys = []
    for update in updates:
        for parts, value in _flatten(update):
            key = ".".join(parts)
            _check_override_key(parts, key, origin=f"update {key}")
            set_at(data, parts, value)
            keys.append(key)
    return validate(data, f"updates {', '.join(dict.fromkeys(keys))}")
