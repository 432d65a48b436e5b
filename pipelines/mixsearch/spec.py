"""The search's spec: a YAML file (configs/mixsearch/<name>.yaml), strict like the presets.

  preset: smoke                       # the base preset (name in configs/ or a YAML path) ...
  set: [train.threads=1]              # ... and overrides of every run of the search
  sources: [web, web-edu, synthetic]  # names in the preset's mix.sources: the weight vector's coordinates
  prior: natural                      # natural token shares (after dedup), or {web: 0.6, ...}
  proxies: 16                         # N proxy runs
  proxy: {model: d2c64, tokens: 20480, set: [...]}   # each proxy's model, training tokens and overrides
  target_tokens: 100000               # the budget the proposed mix is meant for ...
  caps: {synthetic: 4}                # ... and the most epochs a source may see at that budget
  target: {kind: val_bpb}             # or {kind: benchmark, benchmark: hellaswag, metric: bpb, form: cloze}

Everything else has RegMix's defaults (sampling: the prior to the power `temperature`, Dirichlet
concentrations log-spaced over `strength`; search: `simulations` vectors, the mean of the `top_k` best
predicted). `load_spec` turns every mistake into a StudyError naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.config import PROJECT_ROOT, load_config, read_yaml_mapping
from pipelines.errors import StudyError
from pipelines.evaluate.decisions import METRICS

SPEC_DIR = PROJECT_ROOT / "configs" / "mixsearch"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProxySpec(Strict):
    model: str = "d2c64"  # train.model of every proxy (d<L>c<C> on CPU, d12 ... with llm.c)
    tokens: int = Field(20_480, ge=1)  # training tokens per proxy: train.steps = tokens // tokens per step
    mix_tokens: int | None = Field(None, ge=1)  # each proxy mix's budget; None: `tokens`
    set: list[str] = []  # overrides of the proxy runs only (lr, batch, val batches, ...)


class TargetSpec(Strict):
    # val_bpb: bits per byte of the held-out web pages (ingest's val split, as the mix stage writes it:
    # mix/val/), from the trainer's last validation loss; benchmark: a metric of evaluate's table.csv
    kind: Literal["val_bpb", "benchmark"] = "val_bpb"
    benchmark: Literal["arc_easy", "arc_challenge", "hellaswag", "mmlu"] = "hellaswag"
    form: Literal["cloze", "letter"] = "cloze"
    metric: str = "bpb"  # a continuous metric of evaluate (bpb, prob_norm, margin) or acc / acc_norm

    @model_validator(mode="after")
    def _known_metric(self) -> "TargetSpec":
        if self.metric not in METRICS:
            raise ValueError(f"target.metric {self.metric!r}: one of {', '.join(METRICS)}")
        if self.form == "letter" and self.benchmark != "mmlu":
            raise ValueError("target.form letter exists for mmlu only")
        return self

    @property
    def lower_is_better(self) -> bool:
        return True if self.kind == "val_bpb" else not METRICS[self.metric]["higher_is_better"]

    @property
    def label(self) -> str:
        if self.kind == "val_bpb":
            return "held-out web bits per byte"
        return f"{self.benchmark} {self.form} {self.metric}"


class RegressionSpec(Strict):
    propose_with: Literal["lightgbm", "linear"] = "lightgbm"  # the regressor whose optimum is proposed
    folds: int = Field(5, ge=2)  # k-fold held-out rank correlation (at most one fold per proxy)
    simulations: int = Field(100_000, ge=100)  # simulated weight vectors searched (RegMix: 100k)
    top_k: int = Field(100, ge=1)  # their best predicted, averaged (RegMix: 128)
    bootstrap: int = Field(100, ge=2)  # refits on resampled proxies for the interval of the proposal
    ci: float = Field(0.9, gt=0.0, lt=1.0)
    # LightGBM for a few dozen rows: tiny trees, no minimum leaf size of 20 (LightGBM's default would
    # leave 16 proxies unsplit: a constant prediction)
    lightgbm: dict[str, float | int | str] = {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 4,
                                              "min_child_samples": 2, "min_data_in_bin": 1, "subsample": 1.0}


class ValidateSpec(Strict):
    proposed: bool = True  # train the proposed mix ...
    prior: bool = True  # ... and the prior mix, and report predicted vs actual
    set: list[str] = []  # overrides of these two runs (a larger model, more tokens); empty: the proxy scale


class MixSearchSpec(Strict):
    description: str = ""
    preset: str = "smoke"
    set: list[str] = []
    sources: list[str] = Field(min_length=2)
    prior: Literal["natural", "uniform"] | dict[str, float] = "natural"
    temperature: float = Field(0.5, gt=0.0, le=1.0)  # RegMix: prior ** 0.5, renormalised
    strength: tuple[float, float] = (0.1, 5.0)  # RegMix: Dirichlet(prior * s), s one of 15 log-spaced values
    minimum: float = Field(0.001, gt=0.0, lt=0.5)  # weights below are 0 (source left out); others on this grid
    proxies: int = Field(16, ge=3)
    seed: int = 0
    proxy: ProxySpec = ProxySpec()
    target_tokens: int = Field(ge=1)
    caps: dict[str, float] = {}  # source -> most epochs at target_tokens
    target: TargetSpec = TargetSpec()
    regression: RegressionSpec = RegressionSpec()
    validate_runs: ValidateSpec = Field(ValidateSpec(), alias="validate")
    jobs: int = Field(1, ge=1)  # proxies trained at a time

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> "MixSearchSpec":
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources must be distinct: {self.sources}")
        for what, keys in (("caps", self.caps), ("prior", self.prior if isinstance(self.prior, dict) else {})):
            unknown = sorted(set(keys) - set(self.sources))
            if unknown:
                raise ValueError(f"{what} names {unknown}, which are not among sources {self.sources}")
        if isinstance(self.prior, dict):
            if set(self.prior) != set(self.sources) or any(v <= 0 for v in self.prior.values()):
                raise ValueError(f"prior: a positive share for every source {self.sources} (got {self.prior})")
        if any(c <= 0 for c in self.caps.values()):
            raise ValueError(f"caps are epochs at target_tokens and must be positive: {self.caps}")
        lo, hi = self.strength
        if not 0 < lo <= hi:
            raise ValueError(f"strength: 0 < low <= high (got {list(self.strength)})")
        if self.regression.top_k > self.regression.simulations:
            raise ValueError(f"regression.top_k {self.regression.top_k} > regression.simulations "
                             f"{self.regression.simulations}")
        k = min(self.regression.folds, self.proxies)
        if self.proxies - -(-self.proxies // k) < 2:  # a fold's regressor needs 2 proxies to fit on
            raise ValueError(f"regression.folds {self.regression.folds} with {self.proxies} proxies leaves a fold "
                             f"fitted on fewer than 2 proxies: raise folds or proxies")
        if self.minimum * self.mix_tokens < 1:
            raise ValueError(f"minimum {self.minimum} x the proxy mix budget {self.mix_tokens:,} is under one token: "
                             f"raise minimum or proxy.tokens")
        return self

    @property
    def mix_tokens(self) -> int:
        return self.proxy.mix_tokens or self.proxy.tokens


def spec_path(name_or_path: str | Path) -> Path:
    """A YAML path, or a name in configs/mixsearch/."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise StudyError(f"no mixsearch spec {p}; specs live in {SPEC_DIR.relative_to(PROJECT_ROOT)}/*.yaml")
        return p
    candidate = SPEC_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(q.stem for q in SPEC_DIR.glob("*.yaml"))) or "none"
        raise StudyError(f"unknown mixsearch spec {name_or_path!r}: no file {candidate}; specs: {known}")
    return candidate


def _describe(e: ValidationError, origin: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key `{key}`")
        elif not err["loc"] or isinstance(err.get("input"), dict):
            lines.append(f"{origin}: {key + ': ' if key else ''}{msg}")
        else:
            lines.append(f"{origin}: `{key}` = {err.get('input')!r}: {msg}")
    return "\n".join(lines)


def load_spec(name_or_path: str | Path, extra: list[str] | tuple[str, ...] = ()) -> tuple[str, MixSearchSpec]:
    """(search name = the file's stem, spec), checked against the base preset: its sources exist, the
    preset with the search's overrides (and the command line's `extra`) loads."""
    p = spec_path(name_or_path)
    raw = read_yaml_mapping(p, "keys")
    try:
        spec = MixSearchSpec.model_validate(raw)
    except ValidationError as e:
        allowed = ", ".join(MixSearchSpec.model_fields["validate_runs"].alias if k == "validate_runs" else k
                            for k in MixSearchSpec.model_fields)
        raise StudyError(f"{_describe(e, str(p))}\n(keys of a mixsearch spec: {allowed})") from None
    cfg = load_config(spec.preset, [*spec.set, *extra])  # a bad preset or override says so here
    for key, more in (("proxy.set", spec.proxy.set), ("validate.set", spec.validate_runs.set)):
        try:
            load_config(spec.preset, [*spec.set, *extra, *more])
        except StudyError as e:
            raise StudyError(f"{p}: {key}: {e}") from None
    missing = [s for s in spec.sources if s not in cfg.mix.sources]
    if missing:
        raise StudyError(f"{p}: sources {missing} are not in preset {spec.preset!r}'s mix.sources "
                         f"({', '.join(cfg.mix.sources)}); define them there or with `set`")
    return p.stem, spec
