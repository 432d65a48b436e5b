"""The four multiple-choice benchmarks: loaders (hub or local files of the hub's schema) and prompts.

  ARC-Easy / ARC-Challenge   allenai/ai2_arc, test        id, question, choices{text,label}, answerKey
  HellaSwag                  Rowan/hellaswag, validation  ind, activity_label, ctx_a, ctx_b, endings, label
  MMLU                       cais/mmlu "all", test + dev  question, subject, choices[4], answer (int)

`data_dir`: None reads the offline copy ../shared/data/eval/ beside the checkout when it exists, else
the hub; "hub" always reads the hub; a path reads that folder, which holds files named like the
offline copy's: arc_easy_test.jsonl.gz, arc_challenge_test.jsonl.gz, hellaswag_validation.jsonl.gz,
mmlu_test.jsonl.gz, mmlu_dev.jsonl.gz (optionally arc_*_train / hellaswag_train for k-shot).

Prompts are lm-evaluation-harness's, so that our numbers and its numbers agree item by item:
  arc_easy / arc_challenge   "Question: {question}\nAnswer:" + " " + choice
  hellaswag                  preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
                             + " " + preprocess(ending)                      (its `hellaswag`)
  mmlu, cloze                "The following are questions (with answers) about {subject}.\n\n"
                             "Question: {question.strip()}\nAnswer:" + " " + choice
                                                                             (its `mmlu_continuation`)
  mmlu, letter               "The following are multiple choice questions (with answers) about
                             {subject}.\n\n{question.strip()}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:"
                             + " " + letter                                   (its `mmlu`)
k-shot: the description, then k solved examples `text + " " + answer + "\n\n"`, then the item.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from pipelines.data.embedded import EMBEDDED, EVAL_DIR
from pipelines.errors import StudyError

BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "mmlu")
FORMS = ("cloze", "letter")
LETTERS = "ABCDEFGHIJ"

# benchmark -> (hub dataset, hub config, eval split, few-shot split)
HUB = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", "train"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", "train"),
    "hellaswag": ("Rowan/hellaswag", None, "validation", "train"),
    "mmlu": ("cais/mmlu", "all", "test", "dev"),
}
# the number of choices an item must have (ARC on the hub has a few 3- and 5-choice items)
CHOICES = {"arc_easy": (3, 5), "arc_challenge": (3, 5), "hellaswag": (4, 4), "mmlu": (4, 4)}


def local_file(benchmark: str, split: str) -> str:
    return f"{benchmark}_{split}.jsonl.gz"


def default_data_dir() -> Path:
    """The repository's embedded copy (data/eval, data/README.md): the same items on every machine."""
    return EVAL_DIR


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """None or "embedded": the repository's copy; "hub": the hub; a path: that folder.
    Returns the folder, or None for the hub."""
    if data_dir is None or str(data_dir) == EMBEDDED:
        return default_data_dir()
    if str(data_dir) == "hub":
        return None
    return Path(data_dir)


@dataclass
class Item:
    benchmark: str
    id: str  # ARC's id; HellaSwag's ind; MMLU: "<subject>/<row>"
    row: int  # position in the split's file (lm-evaluation-harness's doc_id)
    question: str  # ARC/MMLU: the question; HellaSwag: the preprocessed context
    choices: list[str]  # answer texts (HellaSwag: preprocessed endings)
    gold: int
    subject: str | None = None  # MMLU only

    @property
    def random_baseline(self) -> float:
        return 1.0 / len(self.choices)


@dataclass
class Benchmark:
    name: str
    items: list[Item]
    rows: int  # rows read from the split (before limit / sample)
    bad: list[dict] = field(default_factory=list)  # {"row", "reason", "detail"} for items left out
    source: str = ""

    @property
    def bad_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.bad:
            out[b["reason"]] = out.get(b["reason"], 0) + 1
        return out


# ---------------------------------------------------------------------------------------------
# HellaSwag preprocessing, exactly as lm-evaluation-harness's tasks/hellaswag/utils.py


def hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # bracket tags are WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_query(row: dict) -> str:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return hellaswag_preprocess(row["activity_label"] + ": " + ctx)


# ---------------------------------------------------------------------------------------------
# raw rows -> items


class BadItem(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _check_choices(benchmark: str, choices) -> list[str]:
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise BadItem("invalid_choices", f"choices must be a list of strings, got {type(choices).__name__}")
    lo, hi = CHOICES[benchmark]
    if not lo <= len(choices) <= hi:
        want = str(lo) if lo == hi else f"{lo}-{hi}"
        raise BadItem("wrong_number_of_choices", f"{len(choices)} choices, expected {want}")
    if any(not c.strip() for c in choices):
        raise BadItem("empty_choice", "an answer text is empty (nothing to score)")
    return choices


def _gold_index(value, n: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadItem("missing_answer", "no answer given")
    try:
        gold = int(value)
    except (TypeError, ValueError):
        raise BadItem("invalid_answer", f"answer {value!r} is not an index") from None
    if isinstance(value, float) and value != gold:
        raise BadItem("invalid_answer", f"answer {value!r} is not an index")
    if not 0 <= gold < n:
        raise BadItem("invalid_answer", f"answer index {gold} outside 0..{n - 1}")
    return gold


def make_item(benchmark: str, row: dict, index: int) -> Item:
    """One raw row (hub schema) -> Item; raises BadItem(reason) for an item that cannot be scored."""
    if not isinstance(row, dict):
        raise BadItem("invalid_row", f"expected an object, got {type(row).__name__}")
    try:
        if benchmark in ("arc_easy", "arc_challenge"):
            ch = row["choices"]
            texts = _check_choices(benchmark, ch.get("text") if isinstance(ch, dict) else None)
            labels = ch.get("label") or []
            key = row.get("answerKey")
            if key is None or (isinstance(key, str) and not key.strip()):
                raise BadItem("missing_answer", "no answerKey")
            if len(labels) != len(texts) or key not in labels:
                raise BadItem("invalid_answer", f"answerKey {key!r} not among labels {labels}")
            return Item(benchmark, str(row.get("id", index)), index, str(row["question"]), texts,
                        labels.index(key))
        if benchmark == "hellaswag":
            endings = _check_choices(benchmark, row["endings"])
            gold = _gold_index(row.get("label"), len(endings))
            return Item(benchmark, str(row.get("ind", index)), index, hellaswag_query(row),
                        [hellaswag_preprocess(e) for e in endings], gold)
        if benchmark == "mmlu":
            choices = _check_choices(benchmark, row["choices"])
            gold = _gold_index(row.get("answer"), len(choices))
            subject = str(row["subject"])
            return Item(benchmark, f"{subject}/{index}", index, str(row["question"]), choices, gold, subject)
    except KeyError as e:
        raise BadItem("missing_field", f"no field {e.args[0]!r}") from None
    except (TypeError, AttributeError) as e:
        raise BadItem("invalid_row", str(e)) from None
    raise StudyError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")


# ---------------------------------------------------------------------------------------------
# reading rows


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file; an undecodable line becomes {"__bad__": reason}."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict] = []
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rows.append(json.loads(raw.decode("utf-8")))
                except UnicodeDecodeError as e:
                    rows.append({"__bad__": f"{path.name} line {lineno}: not UTF-8 ({e.reason} at byte {e.start})"})
                except ValueError as e:
                    rows.append({"__bad__": f"{path.name} line {lineno}: invalid JSON: {e}"})
    except (OSError, EOFError) as e:
        raise StudyError(f"{path}: cannot read ({e}); is it a complete .jsonl(.gz) file?") from None
    return rows


def local_path(benchmark: str, split: str | None = None, data_dir: str | Path | None = None) -> Path | None:
    """The local file of one split that read_rows reads (`.jsonl.gz`, else `.jsonl`); None when it reads
    the hub or the file is missing."""
    d = resolve_data_dir(data_dir)
    if d is None or benchmark not in HUB:
        return None
    name = local_file(benchmark, split or HUB[benchmark][2])
    return next((d / n for n in (name, name[:-3]) if (d / n).exists()), None)


def read_rows(benchmark: str, split: str | None = None, data_dir: str | Path | None = None) -> tuple[list[dict], str]:
    """(rows, where from) of one split: `data_dir/<benchmark>_<split>.jsonl.gz`, or the hub."""
    if benchmark not in HUB:
        raise StudyError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    repo, config, eval_split, _ = HUB[benchmark]
    split = split or eval_split
    d = resolve_data_dir(data_dir)
    if d is not None:
        path = local_path(benchmark, split, data_dir)
        if path is not None:
            return _read_jsonl(path), str(path)
        raise StudyError(f"{d / local_file(benchmark, split)} is missing: set evaluate.data_dir to a folder holding "
                         f"<benchmark>_<split>.jsonl.gz files (hub schema), or to `hub` to read {repo} from the hub")
    try:
        import datasets

        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown split: one message that says what to do
        raise StudyError(f"could not load {repo} ({config or 'default'}, {split}) from the hub: "
                         f"{type(e).__name__}: {e}. Offline, set evaluate.data_dir to a local copy "
                         f"(`embedded`, the repository's data/eval)") from None
    return [dict(r) for r in ds], f"hub:{repo}/{config or ''}/{split}"


def subsample(n: int, limit: int | None, sample: str, seed: int) -> list[int]:
    """Row positions to keep: the first `limit`, or a seeded random `limit` kept in file order."""
    if limit is None or limit >= n:
        return list(range(n))
    if sample == "first":
        return list(range(limit))
    if sample != "random":
        raise StudyError(f"sample must be 'first' or 'random', not {sample!r}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=limit, replace=False))


def load_benchmark(benchmark: str, data_dir: str | Path | None = None, limit: int | None = None,
                   sample: str = "first", seed: int = 1337, split: str | None = None,
                   subjects: Iterable[str] | None = None) -> Benchmark:
    """Items of one benchmark. Bad rows (wrong number of choices, missing or invalid answer, empty
    choice, missing field, invalid JSON) are counted and listed in `.bad`, never fatal.

    limit / sample pick rows among the good items; `subjects` keeps only those MMLU subjects."""
    rows, source = read_rows(benchmark, split, data_dir)
    items: list[Item] = []
    bad: list[dict] = []
    keep_subjects = set(subjects) if subjects else None
    for i, row in enumerate(rows):
        if isinstance(row, dict) and "__bad__" in row:
            reason = "undecodable" if "not UTF-8" in row["__bad__"] else "invalid_json"
            bad.append({"row": i, "reason": reason, "detail": row["__bad__"]})
            continue
        try:
            item = make_item(benchmark, row, i)
        except BadItem as e:
            bad.append({"row": i, "reason": e.reason, "detail": e.detail})
            continue
        if keep_subjects is None or item.subject in keep_subjects:
            items.append(item)
    keep = subsample(len(items), limit, sample, seed)
    return Benchmark(benchmark, [items[i] for i in keep], len(rows), bad, source)


def load_fewshot_pool(benchmark: str, data_dir: str | Path | None = None) -> list[Item] | None:
    """Solved examples for k-shot prompts: MMLU dev; ARC / HellaSwag train. None when the split is
    not available (offline without a local copy): the caller then draws from the eval split."""
    split = HUB[benchmark][3]
    try:
        return load_benchmark(benchmark, data_dir, split=split).items
    except StudyError:
        if benchmark == "mmlu":
            raise
        return None


# ---------------------------------------------------------------------------------------------
# prompts


@dataclass(frozen=True)
class Prompt:
    context: str  # everything before the answer
    continuations: list[str]  # " " + answer text, one per choice
    answers: list[str]  # the answer texts without the leading space (acc_norm divides by their length)


def _subject_name(subject: str | None) -> str:
    return (subject or "").replace("_", " ")


def description(item: Item, form: str) -> str:
    if item.benchmark != "mmlu":
        return ""
    kind = "multiple choice questions" if form == "letter" else "questions"
    return f"The following are {kind} (with answers) about {_subject_name(item.subject)}.\n\n"


def question_text(item: Item, form: str) -> str:
    if item.benchmark == "hellaswag":
        return item.question
    if item.benchmark == "mmlu" and form == "letter":
        lines = [item.question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
        return "\n".join(lines) + "\nAnswer:"
    if item.benchmark == "mmlu":
        return f"Question: {item.question.strip()}\nAnswer:"
    return f"Question: {item.question}\nAnswer:"


def answer_texts(item: Item, form: str) -> list[str]:
    return [LETTERS[i] for i in range(len(item.choices))] if form == "letter" else list(item.choices)


def prompt(item: Item, form: str = "cloze", shots: list[Item] = ()) -> Prompt:
    """lm-evaluation-harness's context and continuations for one item (see the module docstring)."""
    if form not in FORMS:
        raise StudyError(f"form must be one of {FORMS}, not {form!r}")
    if form == "letter" and item.benchmark != "mmlu":
        raise StudyError(f"the letter form is defined for mmlu only, not {item.benchmark}")
    examples = "".join(f"{question_text(s, form)} {answer_texts(s, form)[s.gold]}\n\n" for s in shots)
    answers = answer_texts(item, form)
    return Prompt(description(item, form) + examples + question_text(item, form), [" " + a for a in answers], answers)


def fewshot_examples(item: Item, k: int, pool: list[Item] | None, eval_items: list[Item], seed: int) -> list[Item]:
    """k solved examples for `item`. MMLU: the first k dev items of the same subject (lm-evaluation-
    harness's first_n). Others: k drawn (seeded by the item's row) from the train pool, or from the
    eval split without the item itself when no train split is available."""
    if k <= 0:
        return []
    if item.benchmark == "mmlu":
        same = [s for s in (pool or []) if s.subject == item.subject]
        return same[:k]
    candidates = pool if pool else [s for s in eval_items if s.row != item.row]
    rng = np.random.default_rng([seed, item.row])
    pick = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
    return [candidates[int(i)] for i in pick]


def hellaswag_source(source: str | Path | None) -> str:
    """Where llm.c's HellaSwag file is cut from. None or "embedded": the repository's copy; "hub":
    the hub dataset; else a local JSONL(.gz) or a hub id."""
    if source is None or str(source) == EMBEDDED:
        return str(default_data_dir() / local_file("hellaswag", "validation"))
    if str(source) == "hub":
        return HUB["hellaswag"][0]
    return str(source)


def read_hellaswag(source: str | Path | None = None) -> list[dict]:
    """HellaSwag validation rows (ctx, endings, label) from a local JSONL(.gz) or a hub dataset id."""
    source = hellaswag_source(source)
    p = Path(source)
    if p.suffix in (".jsonl", ".gz", ".json") or p.exists():
        if not p.exists():
            raise StudyError(f"HellaSwag items not found at {p}: set train.hellaswag_path to a JSONL(.gz) "
                             f"with ctx / endings / label, to a hub id ({HUB['hellaswag'][0]}), or train.hellaswag=false")
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    try:
        import datasets

        return list(datasets.load_dataset(source, split="validation"))
    except Exception as e:  # noqa: BLE001 - offline, missing dataset: one clear message
        raise StudyError(f"could not load HellaSwag from the hub ({source}): {type(e).__name__}: {e}; offline, "
                         f"set train.hellaswag_path to a local JSONL(.gz) copy, or train.hellaswag=false") from None
