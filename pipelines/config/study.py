"""StudyConfig: every section of a study, the checks across sections, and the derived values printed at
start (`study config`) and stored in every manifest."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from pipelines.config.evaluate import EvaluateConfig
from pipelines.config.ingest import IngestConfig, TokenizeConfig
from pipelines.config.mix import MixConfig
from pipelines.config.quality import AnnotateConfig, ClassifierConfig, FilterConfig
from pipelines.config.section import Section
from pipelines.config.synthetic import GenerateConfig, PromptsConfig
from pipelines.config.train import TrainConfig


class StudyConfig(Section):
    preset: str = "custom"
    description: str = ""
    seed: int = 1337
    results_dir: str = "results"
    share_with: list[str] = []  # runs (in results_dir) whose done stages this run may share (sweeps)
    # the stages `study run` (and its notebooks) executes, each with its inputs; None: every stage.
    # A study of hub mixes, e.g. [ingest, mix, train, evaluate, figures], never starts generation
    stages: list[str] | None = None
    ingest: IngestConfig = IngestConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    prompts: PromptsConfig = PromptsConfig()
    generate: GenerateConfig = GenerateConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    filter: FilterConfig = FilterConfig()
    mix: MixConfig = MixConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _train_mixes(self) -> "StudyConfig":
        mixes = [m.name for m in self.mix.mixes]
        alone = self.train.mixes if self.train.mixes is not None else mixes
        unknown = sorted(set(alone) - set(mixes))
        if unknown:
            raise ValueError(f"train.mixes names unknown mix(es) {unknown}; mix.mixes has {mixes}")
        for sch in self.train.schedules:
            bad = sorted({st.mix for st in sch.stages} - set(mixes))
            if bad:
                raise ValueError(f"train.schedules {sch.name!r}: unknown mix(es) {bad}; mix.mixes has {mixes}")
            if sch.name in alone:
                raise ValueError(f"train.schedules {sch.name!r}: the mix of that name is also trained alone in "
                                 f"train/{sch.name}/; rename the schedule or leave the mix out of train.mixes")
        return self

    def derived(self) -> dict[str, Any]:
        """Values computed from the config, printed at start and stored in manifests."""
        return {
            "ingest.documents": self.ingest.max_documents,
            "ingest.expected_val_documents": self.ingest.expected_val_documents,
            "ingest.source": ("embedded: data/web/web_pages.jsonl.gz (real web pages, data/README.md)"
                              if self.ingest.path == "embedded" else
                              self.ingest.path or f"hub:{self.ingest.dataset}/{self.ingest.dataset_config}"),
            "classifier.labels": self.classifier.label_source.path or self.classifier.label_source.stage
                                 or f"hub:{self.classifier.label_source.dataset}",
            "benchmarks": {"evaluate": self.evaluate.data_dir or "embedded",
                           "decontaminate": self.mix.decontaminate.eval_dir or "embedded"},
            "tokenize.shard_tokens": self.tokenize.shard_tokens,
            "tokenize.workers": self.tokenize.num_workers,
            "train.parameters": self.train.parameters,
            "train.runs": (f"{len(self.train.mixes if self.train.mixes is not None else self.mix.mixes)} mix(es) x "
                           f"{len(self.train.run_models)} model size(s) {self.train.run_models} x "
                           f"{len(self.train.run_seeds)} seed(s) {self.train.run_seeds}"
                           + (f" + {len(self.train.schedules)} schedule(s)" if self.train.schedules else "")),
            "train.grad_accum_steps": self.train.grad_accum_steps,
            "train.tokens_per_step": self.train.tokens_per_step,
            "train.total_tokens": self.train.total_tokens,
            "train.schedules": {s.name: " -> ".join(f"{st.mix} {st.tokens:,}" for st in s.stages)
                                for s in self.train.schedules} or None,
            "prompts.n_prompts": self.prompts.n_prompts,
            "annotate.annotators": [f"{b.kind}:{b.model or 'bundled SmolLM2-135M-Instruct GGUF'}"
                                    for b in self.annotate.annotators],
            "classifier.kinds": list(self.classifier.kinds),
            "filter.keeps": f"{self.filter.model} int_score >= {self.filter.threshold}",
            "mix.names": [m.name for m in self.mix.mixes],
            "mix.tokens": sum(m.tokens for m in self.mix.mixes),
            "generate.backend": f"{self.generate.backend.kind}:{self.generate.backend.model or 'bundled SmolLM2-135M-Instruct GGUF'}",
            "evaluate.items_per_benchmark": self.evaluate.limit or "all",
            "evaluate.references": [m.name for m in self.evaluate.models],
        }
