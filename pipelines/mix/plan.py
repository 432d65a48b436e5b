"""The mix plan: what every executor of `mix.mixes` shares, so a mix's weights are read here only.

For each mix: its budget (`tokens`, the config's mix.mixes[].tokens), each source's normalised share
and its part of the budget (SourceShare.tokens = round(tokens * w / sum(w))), the seeded generator that
samples and shuffles it (default_rng([seed, crc32(name)])), its shard patterns, and the manifest records
both executors write (per source, per mix, per input source, the stage's result). In those records the
budget sits beside the tokens actually written (`tokens`), so it is stored as `budget_tokens` (a mix)
and `target_tokens` (a source).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.config import MixConfig, MixSource, MixSpec


@dataclass(frozen=True)
class SourceShare:
    name: str
    weight: float  # share of the budget, the mix's weights normalised to sum to 1
    tokens: int  # its part of the mix's budget: round(budget * weight)


@dataclass(frozen=True)
class MixPlan:
    spec: MixSpec
    sources: tuple[SourceShare, ...]
    val_name: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tokens(self) -> int:
        """The mix's budget: mix.mixes[].tokens."""
        return self.spec.tokens

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def train_pattern(self) -> str:
        return f"{self.name}/{self.name}_train_*.bin"

    @property
    def val_pattern(self) -> str:
        return f"val/{self.val_name}_val_*.bin"

    def rng(self, seed: int) -> np.random.Generator:
        """Samples and shuffles this mix: the same for a mix of the same name, whatever else changes."""
        return np.random.default_rng([seed, zlib.crc32(self.name.encode())])

    def entry(self, shards: list[dict], per_source: dict[str, dict]) -> dict:
        """The manifest's record of this mix, from its train shards (paths relative to the mix folder)."""
        return {"name": self.name, "budget_tokens": self.tokens, "tokens": sum(s["tokens"] for s in shards),
                "documents": sum(s["documents"] for s in shards), "per_source": per_source,
                "train_pattern": self.train_pattern, "val_pattern": self.val_pattern,
                "shards": [{**s, "path": f"{self.name}/{s['path']}"} for s in shards]}


def plan(cfg: MixConfig) -> list[MixPlan]:
    out = []
    for spec in cfg.mixes:
        wsum = sum(spec.weights.values())
        shares = tuple(SourceShare(name, w / wsum, round(spec.tokens * w / wsum)) for name, w in spec.weights.items())
        out.append(MixPlan(spec, shares, cfg.val_name))
    return out


def source_record(share: SourceShare, *, tokens: int, documents: int, unique_documents: int,
                  available_documents: int | None, available_tokens: int | None, epochs: float | None) -> dict:
    """One source's part of one mix (None: not known, e.g. a stream that was not read to its end)."""
    return {"weight": share.weight, "target_tokens": share.tokens, "tokens": tokens, "documents": documents,
            "unique_documents": unique_documents, "available_documents": available_documents,
            "available_tokens": available_tokens, "epochs": epochs}


def input_record(src: MixSource, *, documents_in: int, exact_duplicate: int, near_duplicate: int | None,
                 contaminated: dict, documents_kept: int, tokens_kept: int) -> dict:
    """What was read from one source and what survived dedup and decontamination
    (near_duplicate None: no near-duplicate pass ran)."""
    return {"stage": src.stage, "path": src.path, "dataset": src.dataset, "documents_in": documents_in,
            "exact_duplicate": exact_duplicate, "near_duplicate": near_duplicate, "contaminated": contaminated,
            "documents_kept": documents_kept, "tokens_kept": tokens_kept}


def stage_result(cfg: MixConfig, val_shards: list[dict], val: dict, mixes: list[dict], sources: dict[str, dict],
                 too_short: dict, removed: dict, **extra) -> dict:
    """The mix stage's manifest body, the same for both executors."""
    return {
        "outputs": [{"split": "val", "path": f"val/{s['path']}", "tokens": s["tokens"], "documents": s["documents"]}
                    for s in val_shards] + [s for m in mixes for s in m["shards"]],
        "mixes": mixes,
        "val": val,
        "sources": sources,
        "decontamination": {"ngram": cfg.decontaminate.ngram, "benchmarks": list(cfg.decontaminate.benchmarks),
                            "items_too_short": too_short,
                            "per_source": {n: s["contaminated"] for n, s in sources.items()}},
        **extra,
        "counts": {"documents": sum(m["documents"] for m in mixes), "tokens": sum(m["tokens"] for m in mixes),
                   "mixes": len(mixes), "removed": removed},
    }


def mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
