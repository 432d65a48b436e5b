"""Runs, stages and their manifests (the ID cards of docs/design.md).

results/<run>/<stage>/ holds a stage's outputs and, written last and atomically, manifest.json:
stage, resolved config, config hash, input manifests (path + sha256), outputs with counts,
timings, package versions, git commit, status, and the stage's typed result (its fields: what the
stage's run() returns, the type named in STAGES; pipelines/runs/results.py reads it back). A stage is

- done:       manifest complete, config hash equal, every input manifest unchanged and done;
- stale:      a manifest exists but the config or an upstream stage changed;
- incomplete: outputs without a manifest (killed, or running now);
- missing:    nothing there.

Under 500 lines as one thing: the registry, the states and `execute` decide together when a
stage runs, and what it may delete.
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.config import PROJECT_ROOT, StudyConfig, config_hash, dump_yaml
from pipelines.errors import StudyError
from pipelines.files import Lock, file_sha256, write_json_atomic, write_text_atomic  # noqa: F401 - callers import them from here too
from pipelines.llmc.shards import validate_shard
from pipelines.model import read_checkpoint_header
from pipelines.runs.provenance import data_line, data_read


@dataclass(frozen=True)
class StageSpec:
    runner: str  # "module:function", imported only when the stage runs (optional deps stay optional)
    result: str  # "module:Class", the stage's typed result (its package's result.py), imported when used
    sections: tuple[str, ...]  # config sections that define the stage's output (hashed)
    inputs: tuple[str, ...] = ()  # upstream stages
    resumable: bool = False  # keeps its folder on rerun and skips work already written
    command: str = ""  # the CLI command that runs it
    inputs_from: str | None = None  # "section.property" of the config naming more upstream stages
    reads_what_ran: bool = False  # inputs outside the config's `stages` are left out (figures)
    preflight: str | None = None  # "module:function"(ctx) raising StudyError before anything is touched

    def load_preflight(self) -> Callable[["StageContext"], object] | None:
        return None if self.preflight is None else _function(self.preflight)

    def load(self) -> Callable[["StageContext"], Any]:
        return _function(self.runner)

    def load_result(self) -> type:  # a pipelines.runs.results.StageResult
        return _function(self.result)


def _function(ref: str) -> Any:
    """A "module:name" reference (a function, a class), imported now."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


# Stages in execution order; each new stage registers here (and its config section in config.py).
STAGES: dict[str, StageSpec] = {
    "ingest": StageSpec("pipelines.ingest.ingest:run", "pipelines.ingest.result:IngestResult", ("ingest",),
                        command="study ingest"),
    "tokenize": StageSpec("pipelines.ingest.tokenize:run", "pipelines.ingest.result:TokenizeResult", ("tokenize",),
                          ("ingest",), command="study tokenize"),
    # web-extract seeds come from ingest; topic seeds (prompts.seeds: topics) need no upstream stage
    "prompts": StageSpec("pipelines.synthetic.prompts:run", "pipelines.synthetic.result:PromptsResult", ("prompts",),
                         inputs_from="prompts.input_stages", command="study prompts"),
    "generate": StageSpec("pipelines.synthetic.generate:run", "pipelines.synthetic.result:GenerateResult",
                          ("generate",), ("prompts",), resumable=True, command="study generate"),
    # FineWeb-Edu-style: LLM labels (resumable like generate), a classifier trained on labels, and the
    # classifier applied as datatrove steps (resumable: datatrove skips tasks already completed)
    "annotate": StageSpec("pipelines.annotate.annotate:run", "pipelines.annotate.result:AnnotateResult",
                          ("annotate",), ("ingest",), resumable=True, command="study annotate"),
    "classify": StageSpec("pipelines.classify.classify:run", "pipelines.classify.result:ClassifyResult",
                          ("classifier",), inputs_from="classifier.input_stages", command="study classifier train"),
    "filter": StageSpec("pipelines.filter.filter:run", "pipelines.filter.result:FilterResult", ("filter",),
                        inputs_from="filter.input_stages", resumable=True, command="study classifier apply"),
    # resumable: a streaming mix (mix.streaming) continues after its last complete shard; the in-memory
    # mix empties its folder itself
    "mix": StageSpec("pipelines.mix.mix:run", "pipelines.mix.result:MixResult", ("mix",), ("ingest",),
                     inputs_from="mix.source_stages", resumable=True, command="study mix"),
    # one llm.c-format run per shard set; resumable: a rerun continues from the last DONE checkpoint
    "train": StageSpec("pipelines.train.train:run", "pipelines.train.result:TrainResult", ("train",), ("mix",),
                       resumable=True, command="study train", preflight="pipelines.train.train:preflight"),
    # after train: its checkpoints (evaluate.trained) plus reference models; resumable: a finished
    # (model, checkpoint) keeps its per-item results while its evaluation settings are unchanged
    "evaluate": StageSpec("pipelines.evaluate.evaluate:run", "pipelines.evaluate.result:EvaluateResult",
                          ("evaluate",), inputs_from="evaluate.upstream_stages", resumable=True,
                          command="study evaluate"),
    # last: paper figures and tables (pipelines/figures/figures.py); `study figures` also draws a partial run's figures
    "figures": StageSpec("pipelines.figures.figures:run", "pipelines.figures.result:FiguresResult", (),
                         ("ingest", "generate", "classify", "filter", "mix", "train", "evaluate"),
                         command="study figures", reads_what_ran=True),
}


def study_stages(config: StudyConfig) -> list[str]:
    """The stages `study run` executes, in order: config.stages (checked: known names, each with
    its inputs), or every stage."""
    if config.stages is None:
        return list(STAGES)
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise StudyError(f"stages: unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    run = Run(config, "check")
    for stage in config.stages:
        missing = [d for d in run.inputs(stage) if d not in config.stages]
        if missing:
            raise StudyError(f"stages: `{stage}` reads {missing}, which the list leaves out; add them to `stages`")
    return [s for s in STAGES if s in config.stages]

def stages_through(config: StudyConfig, last: str, run_name: str | None = "check") -> list[str]:
    """`last` and every stage it reads, transitively, in execution order."""
    run, need, todo = Run(config, run_name), set(), [last]
    while todo:
        stage = todo.pop()
        if stage not in need:
            need.add(stage)
            todo += list(run.inputs(stage))
    return [s for s in STAGES if s in need]


MANIFEST = "manifest.json"
VERSIONED = ("pipelines", "numpy", "pydantic", "tiktoken", "datasets", "pyarrow", "datatrove",
             "torch", "transformers", "sentence-transformers", "scikit-learn", "vllm")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


@dataclass
class StageState:
    stage: str
    status: str  # done | stale | incomplete | missing
    reason: str = ""
    manifest: dict | None = None


@dataclass
class StageContext:
    run: "Run"
    stage: str
    dir: Path
    inputs: dict[str, dict] = field(default_factory=dict)  # upstream stage -> its manifest

    @property
    def config(self) -> StudyConfig:
        return self.run.config


FILESYSTEM_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}  # told plainly, not as tracebacks
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a plain folder name: no separators, not . or ..


def check_run_name(name: str) -> str:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise StudyError(f"run name {name!r}: use letters, digits and . _ - only, starting with a letter or "
                         f"digit (the run is the folder <results_dir>/<run>/; paths are not run names)")
    return name


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (nested dicts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in dict.fromkeys([*old, *new]):
            out += changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


class Run:
    def __init__(self, config: StudyConfig, name: str | None = None):
        self.config = config
        self.name = check_run_name(config.preset if name is None else name)
        self.root = Path(config.results_dir) / self.name

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest_path(self, stage: str) -> Path:
        return self.dir(stage) / MANIFEST

    def read_manifest(self, stage: str) -> dict | None:
        p = self.manifest_path(stage)
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) else None

    def inputs(self, stage: str) -> tuple[str, ...]:
        spec = STAGES[stage]
        extra: tuple[str, ...] = ()
        if spec.inputs_from:
            section, prop = spec.inputs_from.split(".")
            extra = tuple(getattr(getattr(self.config, section), prop))
            unknown = [s for s in extra if s not in STAGES]
            if unknown:
                raise StudyError(f"[{stage}] {spec.inputs_from} names unknown stage(s) {unknown}; stages: "
                                 f"{', '.join(STAGES)}")
        inputs = tuple(dict.fromkeys(spec.inputs + extra))
        if spec.reads_what_ran and self.config.stages is not None:
            inputs = tuple(d for d in inputs if d in self.config.stages)
        return inputs

    def stage_config(self, stage: str) -> dict:
        spec = STAGES[stage]
        return {"seed": self.config.seed, **{s: getattr(self.config, s).model_dump(mode="json") for s in spec.sections}}

    def stage_hash(self, stage: str) -> str:
        spec = STAGES[stage]
        payload = {"seed": self.config.seed, **{s: getattr(self.config, s).hashed_dict() for s in spec.sections}}
        return config_hash(payload)

    def state(self, stage: str) -> StageState:
        d = self.dir(stage)
        m = self.read_manifest(stage)
        if m is None or m.get("status") != "complete":
            has_files = d.exists() and any(d.iterdir())
            return StageState(stage, "incomplete" if has_files else "missing",
                              "outputs without a complete manifest (killed or running)" if has_files else "")
        if m.get("config_hash") != self.stage_hash(stage):
            keys = changed_keys(m.get("config") or {}, self.stage_config(stage))
            more = f" ({', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''})" if keys else ""
            return StageState(stage, "stale", f"config changed{more}", m)
        for dep in self.inputs(stage):
            dep_state = self.state(dep)
            if dep_state.status != "done":
                return StageState(stage, "stale", f"upstream `{dep}` is {dep_state.status}", m)
            recorded = m.get("inputs", {}).get(dep, {}).get("sha256")
            if recorded != file_sha256(self.manifest_path(dep)):
                return StageState(stage, "stale", f"upstream `{dep}` was rerun", m)
        return StageState(stage, "done", "", m)

    def find_donor(self, stage: str) -> "Run | None":
        """A run of `config.share_with` where `stage` is done with this run's config hash and inputs
        (sweeps share generation, annotation, ... this way instead of recomputing them)."""
        mine = {dep: file_sha256(self.manifest_path(dep)) for dep in self.inputs(stage)
                if self.manifest_path(dep).exists()}
        if len(mine) != len(self.inputs(stage)):
            return None
        for name in self.config.share_with:
            other = Run(self.config, name)
            if name == self.name or other.dir(stage).is_symlink() and other.dir(stage).resolve() == self.dir(stage).resolve():
                continue
            st = other.state(stage)
            if st.status == "done" and all(st.manifest["inputs"].get(dep, {}).get("sha256") == sha
                                           for dep, sha in mine.items()):
                return other
        return None

    def save_config(self) -> None:
        """The config of the latest invocation: what `study status RUN` compares against."""
        write_text_atomic(self.root / "config.yaml", dump_yaml(self.config))

    def lock(self, stage: str) -> Lock:
        """One writer per run and stage: results/<run>/.locks/<stage>.lock (outside the stage folder,
        which a rerun empties)."""
        return Lock(self.root / ".locks" / f"{stage}.lock", f"stage `{stage}` of run `{self.name}`")

    def _remove(self, d: Path) -> None:
        """Delete a stage folder of this run, never anything outside results_dir/<run>/ (a shared stage
        is a symlink: only the link goes)."""
        if d.is_symlink():
            d.unlink()
            return
        if self.root.resolve() not in d.resolve().parents:
            raise StudyError(f"refusing to delete {d}: it is not inside this run's folder {self.root}")
        shutil.rmtree(d)

    def execute(self, stage: str, fn: Callable[[StageContext], Any] | None = None, force: bool = False,
                log: Callable[[str], None] = print) -> dict:
        """Run `fn` for `stage` unless it is done; write its manifest last. Returns the manifest.
        `fn` (default: the stage's runner) returns the stage's typed result, or a dict of its fields.

        A non-resumable stage starts from an empty folder; a resumable one keeps what is there
        (its function must skip work already written). A second process on the same run and stage
        stops at once (Run.lock).
        """
        try:
            with self.lock(stage):
                return self._execute(stage, fn, force, log)
        except OSError as e:
            if e.errno not in FILESYSTEM_ERRORS:
                raise
            resumes = "continues where it stopped" if STAGES[stage].resumable else "runs the stage again"
            raise StudyError(f"[{stage}] {e.strerror}: {e.filename or self.dir(stage)}. The stage is left incomplete "
                             f"(no manifest; what it wrote stays in {self.dir(stage)}); free space or make the "
                             f"results folder writable, then rerun the same command: it {resumes}") from None

    def _execute(self, stage: str, fn: Callable[[StageContext], Any] | None, force: bool,
                 log: Callable[[str], None]) -> dict:
        """Skip a done stage; share one done elsewhere; else check its inputs, empty its folder, run it and
        write its manifest."""
        st = self.state(stage)
        if st.status == "done" and not force:
            log(f"[{stage}] done, config {st.manifest['config_hash']}: skipped "
                f"(use --force to rerun)")
            return st.manifest
        shared = self._share(stage, st, log)
        if shared is not None:
            return shared
        inputs = self._done_inputs(stage)
        fn, result_type = self._checked(stage, fn, inputs)
        self._start(stage, st, log)
        data = data_read(self.config, stage)
        for what, desc in data.items():
            log(f"[{stage}] {what}: {data_line(desc)}")
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        returned = fn(StageContext(self, stage, self.dir(stage), inputs))
        wall = time.perf_counter() - t0
        # a typed result, or (until every stage returns one) a dict validated into the stage's type
        result = result_type.of(returned).fields()
        manifest = self._manifest(stage, inputs, data, result, started, wall)
        write_json_atomic(self.manifest_path(stage), manifest)
        return manifest

    def _share(self, stage: str, st: StageState, log: Callable[[str], None]) -> dict | None:
        """A stage shared from another run that no longer fits loses its link; a stage done in a run of
        `share_with` with the same config and inputs becomes a link to it (-> its manifest)."""
        d = self.dir(stage)
        if d.is_symlink():  # a stage shared from another run that no longer fits: drop the link only
            self._remove(d)
            return None
        if st.status == "done":
            return None
        donor = self.find_donor(stage)
        if donor is None:
            return None
        self.save_config()
        d.parent.mkdir(parents=True, exist_ok=True)
        if d.exists():
            self._remove(d)
        d.symlink_to(os.path.relpath(donor.dir(stage), d.parent), target_is_directory=True)
        log(f"[{stage}] done in run `{donor.name}` with the same config and inputs: shared (symlink)")
        return self.read_manifest(stage)

    def _done_inputs(self, stage: str) -> dict[str, dict]:
        """{upstream stage: its manifest}, each done; else an error naming the command to run first."""
        inputs = {}
        for dep in self.inputs(stage):
            dep_state = self.state(dep)
            if dep_state.status != "done":
                raise StudyError(
                    f"[{stage}] needs `{dep}`, which is {dep_state.status}"
                    f"{' (' + dep_state.reason + ')' if dep_state.reason else ''}: "
                    f"run `{STAGES[dep].command} --run {self.name}` (or `study run`) first"
                )
            inputs[dep] = dep_state.manifest
        return inputs

    def _checked(self, stage: str, fn: Callable[[StageContext], Any] | None, inputs: dict[str, dict]
                 ) -> tuple[Callable[[StageContext], Any], type]:
        """(the stage function, its result type), after its preflight: a config or environment error stops
        here, leaving the last manifest as it was. A given fn (tests, notebooks) checks itself."""
        spec = STAGES[stage]
        check = spec.load_preflight() if fn is None else None
        if check is not None:
            check(StageContext(self, stage, self.dir(stage), inputs))
        return fn or spec.load(), spec.load_result()

    def _start(self, stage: str, st: StageState, log: Callable[[str], None]) -> None:
        """Save the config, remove the manifest (first: a kill from here on never leaves a complete-looking
        stage), empty the folder of a stage that does not resume."""
        d = self.dir(stage)
        self.save_config()
        self.manifest_path(stage).unlink(missing_ok=True)
        if not STAGES[stage].resumable and d.exists():
            self._remove(d)
        d.mkdir(parents=True, exist_ok=True)
        if st.status != "missing":
            log(f"[{stage}] {st.status}{': ' + st.reason if st.reason else ''}; running")

    def _manifest(self, stage: str, inputs: dict[str, dict], data: dict, result: dict, started: dt.datetime,
                  wall: float) -> dict:
        """The record around the stage's result fields (pipelines/runs/results.py Record: the same keys)."""
        return {
            "stage": stage,
            "run": self.name,
            "status": "complete",
            # unique per execution: a rerun of this stage makes every stage after it stale even when it
            # writes the same outputs within the same second (downstream compares manifest hashes)
            "execution": uuid.uuid4().hex,
            "preset": self.config.preset,
            "config": self.stage_config(stage),
            "config_hash": self.stage_hash(stage),
            "derived": self.config.derived(),
            "inputs": {
                dep: {"path": str(self.manifest_path(dep)), "sha256": file_sha256(self.manifest_path(dep)),
                      "config_hash": inputs[dep].get("config_hash")}
                for dep in self.inputs(stage)
            },
            **({"data": data} if data else {}),
            **result,
            "timings": {"started": started.isoformat(timespec="seconds"),
                        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "wall_s": round(wall, 3)},
            "versions": package_versions(),
            "git": git_state(),
            "argv": sys.argv,
        }

    def verify(self, stage: str) -> list[str]:
        """What is wrong with the outputs a done stage's manifest lists: missing files, and llm.c files
        (token shards, checkpoints) whose header or size is wrong. Empty: all there and whole."""
        m = self.read_manifest(stage) or {}
        d = self.dir(stage)
        problems = []
        for out in m.get("outputs", []) if isinstance(m.get("outputs"), list) else []:
            rels = [out[k] for k in ("path", "log", "dir") if isinstance(out.get(k), str)]
            rels += [p for p in out.get("paths", []) if isinstance(p, str)]
            rels += [p for p in (out.get("items") or {}).values() if isinstance(p, str)]
            for rel in rels:
                p = d / rel
                if not p.exists():
                    problems.append(f"{rel} is missing")
                    continue
                try:
                    if p.suffix == ".bin" and p.name.startswith("model_"):
                        read_checkpoint_header(p)
                    elif p.suffix == ".bin" and "tokens" in out:
                        ntok = validate_shard(p, check_tokens=False)
                        if ntok != out["tokens"]:
                            problems.append(f"{rel}: {ntok:,} tokens, the manifest says {out['tokens']:,}")
                except StudyError as e:
                    problems.append(str(e).replace(str(p), rel, 1))
        return problems

    def status_rows(self, verify: bool = False) -> list[dict]:
        rows = []
        for stage in STAGES:
            st = self.state(stage)
            if self.config.stages is not None and stage not in self.config.stages and st.status == "missing":
                st = StageState(stage, "not used", "not among this study's `stages`")
            if verify and st.status == "done":
                problems = self.verify(stage)
                if problems:
                    st = StageState(stage, "damaged", "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""),
                                    st.manifest)
            m = st.manifest or {}
            counts = m.get("counts", {})
            rows.append({
                "stage": stage,
                "status": st.status,
                "documents": counts.get("documents"),
                "tokens": counts.get("tokens"),
                "wall_s": m.get("timings", {}).get("wall_s"),
                "finished": m.get("timings", {}).get("finished"),
                "note": st.reason,
            })
        return rows


