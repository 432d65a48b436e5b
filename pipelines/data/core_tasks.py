"""DCLM's CORE tasks: the 22 in-context tasks of DCLM's CORE score, as MosaicML llm-foundry ships them.

A folder of task files (`evaluate.core.core_dir`):
  None / `embedded`   the repository's copy, data/core/ (data/README.md): 18 task files byte for byte,
                      core_tasks.yaml (types, shots, delimiters, random baselines, hashes), and
                      dclm_reference_results.csv (DCLM's per-task accuracies of 20 public models)
  a path              a user's folder, e.g. llm-foundry's scripts/eval/local_data or nanochat's
                      eval_bundle/eval_data: every task file is looked up by name (ours, then llm-foundry's,
                      e.g. jeopardy_all.jsonl), .jsonl or .jsonl.gz, at the top or in any sub-folder;
                      its core_tasks.yaml is used when it has one, else the embedded one
  `hf:<owner>/<name>` a Hugging Face dataset repository holding such a folder (downloaded, then as a path)
  `hub`               refused with a message: no hub copy of the MosaicML files is known to be canonical

Every file with a known hash (sha256 of the uncompressed lines, or its llm-foundry git blob id) is
checked; a mismatch is a StudyError (`verify=False` accepts a modified copy). HellaSwag (0- and 10-shot)
reads a MosaicML `hellaswag.jsonl` from the folder when there is one, else the project's HellaSwag
file (pipelines.data.benchmarks, hub schema) mapped to MosaicML's layout: query "<activity_label>: <ctx>",
the four endings, gold. SQuAD and CoQA are missing offline: they are reported missing, never guessed.

A task is a TaskSpec (from core_tasks.yaml) and its rows, in file order, as the file has them
(multiple_choice: query, choices, gold; schema: context_options, continuation, gold; language_modeling:
context, continuation [, category]).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.data.benchmarks import load_benchmark
from pipelines.data.embedded import CORE_DIR, EMBEDDED, checksums
from pipelines.errors import StudyError

TASKS_FILE = "core_tasks.yaml"
REFERENCE_FILE = "dclm_reference_results.csv"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
FIELDS = {"multiple_choice": ("query", "choices", "gold"), "schema": ("context_options", "continuation", "gold"),
          "language_modeling": ("context", "continuation")}
HELLASWAG = ("hellaswag", "hellaswag_zeroshot")


@dataclass(frozen=True)
class TaskSpec:
    """One CORE task's settings (core_tasks.yaml, with its `defaults` filled in)."""

    label: str
    file: str  # file name in the folder; "missing" (squad, coqa) or "use ../eval/..." (hellaswag)
    icl_task_type: str
    num_fewshot: int
    continuation_delimiter: str
    example_delimiter: str
    prompt_string: str
    fewshot_random_seed: int
    max_seq_len: int
    has_categories: bool
    random_baseline: float  # v1 (DCLM paper, nanochat)
    random_baseline_v2: float  # v2 (DCLM's default since 2025-09)
    n_items: int
    source: str = ""
    sha256: str | None = None  # of the uncompressed jsonl
    git_blob: str | None = None  # llm-foundry's blob id of the jsonl

    def baseline(self, version: str) -> float:
        if version not in ("v1", "v2"):
            raise StudyError(f"CORE version must be v1 or v2, not {version!r}")
        return self.random_baseline if version == "v1" else self.random_baseline_v2

    @property
    def upstream_names(self) -> list[str]:
        """File names to look for: ours, then llm-foundry's (jeopardy_all.jsonl, winograd_wsc.jsonl, ...)."""
        names = [self.file] if self.file.endswith((".jsonl", ".jsonl.gz")) else []
        m = re.search(r"local_data/\S+?/([^/\s]+\.jsonl)", self.source)
        names += [f"{self.label}.jsonl.gz", f"{self.label}.jsonl"]
        if m:
            names += [m.group(1), m.group(1) + ".gz"]
        return list(dict.fromkeys(names))

    @property
    def expected_blob(self) -> str | None:
        if self.git_blob:
            return self.git_blob
        m = re.search(r"blob ([0-9a-f]{40})", self.source)
        return m.group(1) if m else None


@dataclass
class CoreTask:
    spec: TaskSpec
    rows: list[dict]
    source: str  # where the rows were read
    verified: str  # "sha256" / "git_blob" / "embedded" / "unverified: <why>"


@dataclass
class CoreData:
    """The tasks that could be loaded, in CORE's order, and those that could not, with the reason."""

    tasks: dict[str, CoreTask]
    missing: dict[str, str] = field(default_factory=dict)
    specs: dict[str, TaskSpec] = field(default_factory=dict)  # all 22
    folder: str = ""


# ---------------------------------------------------------------------------------------------
# the task table


def read_specs(path: Path) -> dict[str, TaskSpec]:
    """core_tasks.yaml -> {label: TaskSpec} in its order (DCLM's 22 CORE tasks)."""
    try:
        doc = yaml.safe_load(path.read_text())
        defaults = doc.get("defaults", {})
        out = {}
        for t in doc["tasks"]:
            v = {**defaults, **t}
            if v["icl_task_type"] not in TASK_TYPES:
                raise ValueError(f"task {v['label']}: unknown icl_task_type {v['icl_task_type']!r}")
            out[v["label"]] = TaskSpec(
                label=v["label"], file=str(v["file"]), icl_task_type=v["icl_task_type"],
                num_fewshot=int(v["num_fewshot"]), continuation_delimiter=str(v["continuation_delimiter"]),
                example_delimiter=str(v["example_delimiter"]), prompt_string=str(v.get("prompt_string") or ""),
                fewshot_random_seed=int(v["fewshot_random_seed"]), max_seq_len=int(v["max_seq_len"]),
                has_categories=bool(v.get("has_categories", False)), random_baseline=float(v["random_baseline"]),
                random_baseline_v2=float(v["random_baseline_v2"]), n_items=int(v["n_items"]),
                source=str(v.get("source", "")), sha256=v.get("sha256"), git_blob=v.get("git_blob"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
        raise StudyError(f"{path}: not a valid CORE task table ({type(e).__name__}: {e}); the repository's copy "
                         f"is data/core/{TASKS_FILE}") from None
    return out


def resolve_core_dir(core_dir: str | Path | None) -> Path:
    """None / `embedded`: data/core; `hf:<repo>`: a downloaded dataset repo; else the path itself."""
    if core_dir is None or str(core_dir) == EMBEDDED:
        return CORE_DIR
    s = str(core_dir)
    if s == "hub":
        raise StudyError("evaluate.core.core_dir=hub: no canonical hub copy of the MosaicML ICL files is known. "
                         "Use `embedded` (data/core), a local folder (llm-foundry's scripts/eval/local_data or "
                         "nanochat's eval_bundle), or `hf:<owner>/<dataset>` for a dataset repository holding one")
    if s.startswith("hf:"):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(s[3:], repo_type="dataset",
                                          allow_patterns=["*.jsonl", "*.jsonl.gz", "*.yaml", "*.csv"]))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo: one message that says what to do
            raise StudyError(f"could not download the CORE files from the hub dataset {s[3:]!r}: "
                             f"{type(e).__name__}: {e}. Offline, use evaluate.core.core_dir=embedded") from None
    p = Path(s).expanduser()
    if not p.is_dir():
        raise StudyError(f"evaluate.core.core_dir={s!r} is not a folder; give `embedded` (data/core), a folder of "
                         f"MosaicML ICL .jsonl(.gz) files, or hf:<owner>/<dataset>")
    return p


def load_specs(folder: Path) -> dict[str, TaskSpec]:
    own = folder / TASKS_FILE
    return read_specs(own if own.exists() else CORE_DIR / TASKS_FILE)


# ---------------------------------------------------------------------------------------------
# files


def find_file(folder: Path, spec: TaskSpec) -> Path | None:
    """The task's file in `folder` (top level first, then any sub-folder), by any of its names."""
    for name in spec.upstream_names:
        if (folder / name).is_file():
            return folder / name
    for name in spec.upstream_names:
        hits = sorted(folder.rglob(name))
        if hits:
            return hits[0]
    return None


def read_bytes(path: Path) -> bytes:
    """The uncompressed lines of a .jsonl or .jsonl.gz file."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise StudyError(f"{path}: cannot read ({type(e).__name__}: {e}); is it a complete .jsonl(.gz) file? "
                         f"The repository's copies are in data/core (data/README.md)") from None


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify(path: Path, data: bytes, spec: TaskSpec) -> str:
    """How the file was checked; StudyError when a known hash does not match."""
    if spec.sha256:
        got = hashlib.sha256(data).hexdigest()
        if got == spec.sha256:
            return "sha256"
        raise StudyError(f"{path}: sha256 of its lines is {got}, not {spec.sha256} (core_tasks.yaml): the file is "
                         f"damaged or not llm-foundry's. Restore it (data/core holds the originals) or set "
                         f"evaluate.core.verify=false to score a modified copy")
    blob = spec.expected_blob
    if blob:
        got = git_blob_id(data)
        if got == blob:
            return "git_blob"
        raise StudyError(f"{path}: git blob id {got}, not llm-foundry's {blob}: not the original file; set "
                         f"evaluate.core.verify=false to score it anyway")
    return "unverified: no known hash"


def parse_rows(path: Path, data: bytes, spec: TaskSpec) -> list[dict]:
    """Rows of a task file; a line that is not JSON or lacks its type's fields is a StudyError (few-shot
    draws depend on every row's position, so no row can be skipped)."""
    need = FIELDS[spec.icl_task_type] + (("category",) if spec.has_categories else ())
    rows = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise StudyError(f"{path} line {lineno}: not a JSON line ({e})") from None
        missing = [f for f in need if not isinstance(row, dict) or f not in row]
        if missing:
            raise StudyError(f"{path} line {lineno}: no field(s) {missing} ({spec.icl_task_type} needs {list(need)})")
        if "gold" in need:
            opts = row[need[0] if spec.icl_task_type == "schema" else "choices"]
            if not isinstance(opts, list) or not isinstance(row["gold"], int) or not 0 <= row["gold"] < len(opts):
                raise StudyError(f"{path} line {lineno}: gold {row['gold']!r} is not an index of its options")
        rows.append(row)
    if not rows:
        raise StudyError(f"{path}: no rows")
    return rows


def hellaswag_rows(data_dir: str | Path | None) -> tuple[list[dict], str]:
    """The project's HellaSwag validation items (hub schema) in MosaicML's layout: query, choices, gold.
    Bad rows are a StudyError here: the file is the repository's or a verified copy."""
    bench = load_benchmark("hellaswag", data_dir)
    if bench.bad:
        raise StudyError(f"{bench.source}: {len(bench.bad)} HellaSwag row(s) cannot be used "
                         f"({bench.bad_counts}); CORE needs every row (few-shot draws index the file)")
    return [{"query": it.question, "choices": list(it.choices), "gold": it.gold} for it in bench.items], bench.source


def load_task(spec: TaskSpec, folder: Path, data_dir: str | Path | None = None, check: bool = True,
              hellaswag: tuple[list[dict], str] | None = None) -> CoreTask:
    """One task's rows; StudyError when its file is absent, unreadable, damaged or malformed.
    `hellaswag`: the project's HellaSwag rows when already read (both HellaSwag tasks share them)."""
    path = find_file(folder, spec)
    if path is None and spec.label in HELLASWAG:
        rows, src = hellaswag or hellaswag_rows(data_dir)
        return CoreTask(spec, rows, src, "project HellaSwag file (hub schema, mapped to MosaicML's layout)")
    if path is None:
        raise StudyError(f"{spec.label}: no file {' / '.join(spec.upstream_names)} in {folder}")
    data = read_bytes(path)
    how = verify(path, data, spec) if check else "unverified: evaluate.core.verify=false"
    return CoreTask(spec, parse_rows(path, data, spec), str(path), how)


def load_core(tasks: list[str] | None = None, core_dir: str | Path | None = None,
              data_dir: str | Path | None = None, check: bool = True) -> CoreData:
    """The CORE tasks (all 22 by default). With `tasks` None a task whose file is not there (squad, coqa
    offline) is recorded in `.missing`; a task named in `tasks` must load. A damaged file always fails."""
    folder = resolve_core_dir(core_dir)
    specs = load_specs(folder)
    unknown = sorted(set(tasks or ()) - set(specs))
    if unknown:
        raise StudyError(f"unknown CORE task(s) {unknown}; the 22 are: {', '.join(specs)}")
    out = CoreData({}, {}, specs, str(folder))
    shared = None
    for label, spec in specs.items():
        if tasks is not None and label not in tasks:
            continue
        if tasks is None and find_file(folder, spec) is None and label not in HELLASWAG:
            out.missing[label] = f"no file {spec.upstream_names[0]} in {folder}"
            continue
        if label in HELLASWAG and find_file(folder, spec) is None:
            shared = shared or hellaswag_rows(data_dir)
        out.tasks[label] = load_task(spec, folder, data_dir, check, shared)
    return out


def check_embedded() -> list[str]:
    """Problems of data/core against data/checksums.json (`core`); [] when every file is whole."""
    want = checksums().get("core", {}).get("files", {})
    problems = []
    for rel, info in sorted(want.items()):
        p = CORE_DIR.parent / rel
        if not p.is_file():
            problems.append(f"missing {rel}")
        elif hashlib.sha256(p.read_bytes()).hexdigest() != info["sha256"]:
            problems.append(f"sha256 mismatch {rel}")
    return problems


def reference_results(folder: Path | None = None) -> list[dict]:
    """DCLM's per-task accuracies and Core_v1 / Core_v2 of public models (dclm_reference_results.csv)."""
    import csv

    path = (folder or CORE_DIR) / REFERENCE_FILE
    if not path.exists():
        path = CORE_DIR / REFERENCE_FILE
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

