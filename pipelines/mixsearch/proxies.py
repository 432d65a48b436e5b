"""The search's runs: ordinary runs of the base preset, one mix each, sharing every upstream stage.

  <search>-census     the stages up to `mix`, one mix of all sources: how many tokens each source
                      has after dedup and decontamination (the natural prior, the caps)
  <search>-p00 ...    one proxy per weight vector: its mix, its training (and evaluation for a
                      benchmark target)
  <search>-proposed,  the proposed mix and the prior mix (validate), at the proxy scale or with
  <search>-prior      validate.set's overrides

Each run's config is the base preset with typed updates (config.with_updates), as a sweep point's
(sweep.py): `share_with` names every other run of the search, so a stage whose config and inputs equal a
done stage elsewhere is linked (symlink), never recomputed; ingest, generation and the classifier run once, in the census. A run is only
started when its last stage is not done, so a rerun executes nothing done.

Targets: `val_bpb` is the trainer's last validation loss (nats per token, llm.c's main.log) over the
tokens it was measured on (the first val_max_steps batches of mix/val/, as the val loader reads them)
converted to bits per UTF-8 byte: loss x tokens / (ln 2 x bytes of those tokens; an end-of-text token
has none). `benchmark` is evaluate/table.csv's value of the target metric at the last step.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import StudyConfig, load_config, updates_of, with_updates
from pipelines.errors import StudyError
from pipelines.llmc.tokenizer import EOT, gpt2
from pipelines.mixsearch.spec import MixSearchSpec
from pipelines.runs.manifest import Run, stages_through
from pipelines.runs.runner import run_stages
from pipelines.runs.trainlog import parse_main_log
from pipelines.sweep import shared_with
from pipelines.train.data import DataLoader

MIX = "mix"  # the one mix of every proxy run (one name: the same seeded document draws across runs)


def mix_entry(weights: dict[str, float], tokens: int, name: str = MIX) -> dict:
    """A mix.mixes entry; sources with weight 0 are left out (a mix's weights must be positive). Sources in
    name order: the order the mix samples them in (the order the search's runs have always had)."""
    return {"name": name, "tokens": int(tokens),
            "weights": {s: round(float(w), 6) for s, w in sorted(weights.items()) if w > 0}}


def last_stage(spec: MixSearchSpec) -> str:
    return "evaluate" if spec.target.kind == "benchmark" else "train"


# every run of a search: one mix, no staged schedules, one model and seed
ONE_RUN = {"train.schedules": [], "train.mixes": None, "train.seeds": None, "train.models": None}


class Runs:
    """The configs of every run of a search: the base preset with the spec's and the command line's
    overrides (`extra`, --set text) and the search's own typed updates, in the order a sweep point applies
    them (sweep.py): the spec's set, the search's settings, the proxy scale, proxy.set (validate.set),
    the command line's, then the run's mix and share_with."""

    def __init__(self, name: str, spec: MixSearchSpec, extra: list[str]):
        self.name, self.spec, self.extra = name, spec, list(extra)
        self.preset = load_config(spec.preset)
        self.user = updates_of(spec.set)
        self.user_extra = updates_of(self.extra)
        base = with_updates(self.preset, self.user, self.user_extra)
        tps = with_updates(self.preset, self.user, self.user_extra, updates_of(spec.proxy.set)).train.tokens_per_step
        self.steps = spec.proxy.tokens // tps
        if self.steps < 1:
            raise StudyError(f"proxy.tokens {spec.proxy.tokens:,} is less than one training step of {tps:,} tokens")
        self.proxy_tokens = self.steps * tps
        census = mix_entry(dict.fromkeys(spec.sources, 1.0), spec.mix_tokens, "census")
        full = with_updates(self.preset, self.user, ONE_RUN, self.user_extra, {"mix.mixes": [census], "stages": None})
        self.stages = stages_through(full, last_stage(spec))
        self.census_stages = stages_through(full, "mix")
        self.results_dir = Path(base.results_dir)
        # keep_prepared: the census keeps its deduplicated, decontaminated, tokenized union and every proxy
        # with the same sources reuses it (pipelines/mix/prepared.py), so a proxy's mix only samples and writes
        self.common = {**ONE_RUN, "mix.keep_prepared": True, "stages": self.stages}
        if spec.target.kind == "benchmark":
            self.common |= {"evaluate.models": [], "evaluate.benchmarks": [spec.target.benchmark],
                            "evaluate.checkpoints": "last", "evaluate.average_last": 1}
        self.proxy_scale = {"train.model": spec.proxy.model, "train.steps": self.steps}

    def names(self, n: int) -> dict[str, str]:
        """role -> run name: census, p00 ..., proposed, prior."""
        roles = ["census", *(f"p{i:02d}" for i in range(n)), "proposed", "prior"]
        return {r: f"{self.name}-{r}" for r in roles}

    def config(self, role: str, mix: dict, n: int) -> StudyConfig:
        """The run's config: its mix, and share_with naming every other run of the search (plus the runs
        the overrides share with), so a stage done in another run is linked (sweep.shared_with)."""
        names = self.names(n)
        own = [*self.spec.proxy.set, *(self.spec.validate_runs.set if role in ("proposed", "prior") else [])]
        share = shared_with(names[role], list(names.values()), [*self.spec.set, *own, *self.extra])
        return with_updates(self.preset, self.user, self.common, self.proxy_scale, updates_of(own), self.user_extra,
                            {"mix.mixes": [mix], "share_with": share})

    def done(self, cfg: StudyConfig, run: str, stage: str) -> bool:
        return Run(cfg, run).state(stage).status == "done"

    def execute(self, role: str, mix: dict, n: int, stages: list[str] | None = None) -> str:
        """Run the role's stages unless its last one is done; returns the run name."""
        cfg = self.config(role, mix, n)
        run = self.names(n)[role]
        stages = stages or self.stages
        if not self.done(cfg, run, stages[-1]):
            run_stages(cfg, run, stages)
        return run


def available_tokens(cfg: StudyConfig, run: str, sources: list[str]) -> dict[str, int]:
    """Tokens of each source after dedup and decontamination, from the census's mix manifest."""
    m = Run(cfg, run).read_manifest("mix") or {}
    got = {s: int(m.get("sources", {}).get(s, {}).get("tokens_kept", 0)) for s in sources}
    if not m:
        raise StudyError(f"the census run {run} has no mix manifest: rerun the search")
    return got


# ---------------------------------------------------------------------------------------------
# targets


@lru_cache(maxsize=1)
def _token_bytes() -> np.ndarray:
    """UTF-8 bytes of every GPT-2 token; the end-of-text token has none."""
    enc = gpt2()
    lengths = np.array([len(enc.decode_single_token_bytes(t)) for t in range(enc.n_vocab)], dtype=np.int64)
    lengths[EOT] = 0
    return lengths


def val_tokens_and_bytes(run_root: Path, cfg: StudyConfig) -> tuple[int, int]:
    """(target tokens, their bytes) of the validation batches the trainer measured: the first
    val_max_steps batches of B x T tokens of mix/val/ (the val loader does not shuffle)."""
    t = cfg.train
    pattern = str(run_root / "mix" / "val" / f"{cfg.mix.val_name}_val_*.bin")
    lengths = _token_bytes()
    tokens = nbytes = 0
    for rank in range(t.processes):  # each process measures its slice of every batch; llm.c averages them
        loader = DataLoader(pattern, t.batch_size, t.seq_len, rank=rank, nproc=t.processes, shuffle=False)
        steps = t.val_max_steps if t.val_max_steps != -1 else loader.num_tokens // loader.total
        for _ in range(steps):
            _, y = loader.next_batch()
            tokens += y.size
            nbytes += int(lengths[y].sum())
    return tokens, nbytes


def val_bpb(cfg: StudyConfig, run: str) -> dict:
    """{loss, bpb, tokens, bytes} of the run's final model on the held-out web pages."""
    root = Path(cfg.results_dir) / run
    log = root / "train" / MIX / "main.log"
    rows = parse_main_log(log.read_text() if log.exists() else "")
    losses = {s: r["val_loss"] for s, r in rows.items() if "val_loss" in r}
    steps = cfg.train.steps
    if steps not in losses:
        raise StudyError(f"{log}: no validation loss at the last step {steps}; rerun the search (the run resumes)")
    tokens, nbytes = val_tokens_and_bytes(root, cfg)
    loss = losses[steps]
    return {"loss": loss, "bpb": loss * tokens / (math.log(2) * nbytes), "val_tokens": tokens, "val_bytes": nbytes}


def benchmark_value(cfg: StudyConfig, run: str, spec: MixSearchSpec) -> dict:
    path = Path(cfg.results_dir) / run / "evaluate" / "table.csv"
    if not path.exists():
        raise StudyError(f"{path} is missing: the run's evaluate stage did not finish; rerun the search")
    t = spec.target
    df = pd.read_csv(path)
    rows = df[(df["mix"] == MIX) & (df["benchmark"] == t.benchmark) & (df["form"] == t.form)
              & (df["metric"] == t.metric) & df["subject"].isna()]
    if rows.empty:
        raise StudyError(f"{path}: no row for {t.benchmark} {t.form} {t.metric} of mix {MIX!r}")
    row = rows.sort_values("step").iloc[-1]
    return {"value": float(row["value"]), "ci_low": float(row["ci_low"]), "ci_high": float(row["ci_high"]),
            "n": int(row["n"])}


def target_of(cfg: StudyConfig, run: str, spec: MixSearchSpec) -> tuple[float, dict]:
    """(the target's value, everything read on the way)."""
    if spec.target.kind == "val_bpb":
        got = val_bpb(cfg, run)
        return got["bpb"], got
    got = benchmark_value(cfg, run, spec)
    return got["value"], got
