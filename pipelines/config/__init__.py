"""Typed, strict study configuration: one pydantic section per stage, presets in configs/, overrides.

A preset is a YAML file in configs/ (`ci`, `smoke`, `cpu`, `gpu-124m`, `gpu-1.5b`). It may start
from another preset with `extends: <name>`. Command-line overrides are `section.key=value`, the
value parsed as YAML (`3` is an int, `null` is None, `[a, b]` a list); code changes a config with
typed updates (`with_updates`), checked the same way.

Unknown or mistyped keys fail with the file, the key and what is allowed. Derived values are
properties, printed at start (`study config`) and stored in every manifest. A stage's config hash
covers its sections' fields but their `unhashed` ones (speed, logging).

  section.py    Section: the base of every section, and the fields its hash covers (hashed_dict)
  ingest.py     ingest, tokenize
  llm.py        an LLM backend and its sampling (generate, annotate)
  executors.py  Slurm / Ray options, the executor of generate's and annotate's requests
  synthetic.py  prompts, generate
  quality.py    annotate, classifier, filter (the FineWeb-Edu family)
  mix.py        mix: sources, mixes (mix.mixes[].tokens: the token budget), dedup, decontamination
  train.py      train: llm.c's flags, seeds and model sizes, staged schedules
  evaluate.py   evaluate, CORE, reference models
  study.py      StudyConfig: every section, the checks across sections, derived()
  helpers.py    PROJECT_ROOT, read_yaml / read_yaml_mapping / dump_yaml, config_hash
  overrides.py  --set text (parse_override, updates_of), typed updates (with_updates), error messages
  presets.py    finding and reading presets (`extends`), load_config
"""

from pipelines.config.evaluate import CoreConfig, EvalModel, EvaluateConfig
from pipelines.config.executors import InferenceExecutor, RayOptions, SlurmOptions
from pipelines.config.helpers import PROJECT_ROOT, config_hash, dump_yaml, read_yaml, read_yaml_mapping
from pipelines.config.ingest import IngestConfig, TokenizeConfig
from pipelines.config.llm import BackendConfig, SamplingConfig
from pipelines.config.mix import DecontamConfig, DedupConfig, MixConfig, MixSource, MixSpec
from pipelines.config.overrides import (
    SECRET_KEYS,
    _check_override_key,
    _describe,
    _model_at,
    parse_override,
    updates_of,
    with_updates,
)
from pipelines.config.presets import _deep_merge, _preset_path, _read_yaml, list_presets, load_config, presets_dir
from pipelines.config.quality import AnnotateConfig, ClassifierConfig, FilterConfig, LabelFallback, LabelField
from pipelines.config.section import Section
from pipelines.config.study import StudyConfig
from pipelines.config.synthetic import GenerateConfig, PromptsConfig
from pipelines.config.train import TrainConfig, TrainSchedule, TrainStage

__all__ = [
    "PROJECT_ROOT", "SECRET_KEYS", "AnnotateConfig", "BackendConfig", "ClassifierConfig", "CoreConfig",
    "DecontamConfig", "DedupConfig", "EvalModel", "EvaluateConfig", "FilterConfig", "GenerateConfig",
    "InferenceExecutor", "IngestConfig", "LabelFallback", "LabelField", "MixConfig", "MixSource", "MixSpec",
    "PromptsConfig", "RayOptions", "SamplingConfig", "Section", "SlurmOptions", "StudyConfig", "TokenizeConfig",
    "TrainConfig", "TrainSchedule", "TrainStage", "_check_override_key", "_deep_merge", "_describe", "_model_at",
    "_preset_path", "_read_yaml", "config_hash", "dump_yaml", "list_presets", "load_config", "parse_override",
    "presets_dir", "read_yaml", "read_yaml_mapping", "updates_of", "with_updates",
]
