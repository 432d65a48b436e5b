"""The HellaSwag file that llm.c's `-h 1` reads, written by us (llm.c's dev/data/hellaswag.py format).

train_gpt2cu opens `dev/data/hellaswag/hellaswag_val.bin` relative to its working directory, so the
train stage writes it there under results/<run>/train/ and starts both backends in that folder.

File: 256 int32 header ([0]=20240522, [1]=1, [2]=examples, [3]=longest example in bytes), then per
example uint16: 65535, the example's size in bytes, its index, label, 4, the context length, the
context tokens, then 4 x (length, tokens). Endings are tokenized as " " + ending (GPT-2 BPE).
llm.c asserts context + ending < T, so for a short training sequence length the examples that do
not fit are left out (and counted); for T = 1024 every HellaSwag validation example fits.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

from pipelines.config import PROJECT_ROOT
from pipelines.errors import StudyError
from pipelines.train.data import EVAL_MAGIC, NUM_COMPLETIONS, START_EXAMPLE

DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "data" / "eval" / "hellaswag_validation.jsonl.gz"
LLMC_RELATIVE_PATH = Path("dev/data/hellaswag/hellaswag_val.bin")


HUB_ID = "Rowan/hellaswag"


def resolve_source(source: str | None) -> str:
    """None: the offline copy in ../shared/data/eval/ when present, else the hub dataset."""
    if source is None:
        return str(DEFAULT_SOURCE) if DEFAULT_SOURCE.exists() else HUB_ID
    return source


def read_items(source: str | Path | None = None) -> list[dict]:
    """HellaSwag validation rows (ctx, endings, label) from a local JSONL(.gz) or a hub dataset id."""
    source = resolve_source(None if source is None else str(source))
    p = Path(source)
    if p.suffix in (".jsonl", ".gz", ".json") or p.exists():
        if not p.exists():
            raise StudyError(f"HellaSwag items not found at {p}: set train.hellaswag_path to a JSONL(.gz) "
                             f"with ctx / endings / label, to a hub id ({HUB_ID}), or train.hellaswag=false")
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    try:
        import datasets

        return list(datasets.load_dataset(source, split="validation"))
    except Exception as e:  # noqa: BLE001 - offline, missing dataset: one clear message
        raise StudyError(f"could not load HellaSwag from the hub ({source}): {type(e).__name__}: {e}; offline, "
                         f"set train.hellaswag_path to a local JSONL(.gz) copy, or train.hellaswag=false") from None


def encode_example(item: dict, enc) -> tuple[int, list[int], list[list[int]]]:
    ctx = enc.encode_ordinary(item["ctx"])
    endings = [enc.encode_ordinary(" " + e) for e in item["endings"]]  # " ": GPT-2 BPE word boundary
    return int(item["label"]), ctx, endings


def example_stream(index: int, label: int, ctx: list[int], endings: list[list[int]]) -> np.ndarray:
    stream = [START_EXAMPLE, 0, index, label, len(endings), len(ctx), *ctx]
    for e in endings:
        stream += [len(e), *e]
    stream[1] = 2 * len(stream)  # <EXAMPLE_BYTES>, the delimiter and itself included
    if stream[1] >= 2**16:
        raise ValueError(f"example {index} is {stream[1]} bytes, too large for llm.c's uint16 size field")
    return np.array(stream, dtype="<u2")


def write_eval_file(path: str | Path, source: str | Path | None = None, seq_len: int | None = None,
                    max_examples: int | None = None) -> dict:
    """Write llm.c's HellaSwag file; returns {"path", "source", "examples", "skipped", "longest_bytes"}.

    seq_len: leave out examples whose context + ending is not < seq_len (llm.c asserts it).
    max_examples: the first N examples that fit (None: all of them).
    """
    from pipelines.tokenizer import gpt2

    enc = gpt2()
    streams, skipped = [], 0
    for item in read_items(source):
        if max_examples is not None and len(streams) >= max_examples:
            break
        label, ctx, endings = encode_example(item, enc)
        if len(endings) != NUM_COMPLETIONS or not ctx or not all(endings):
            skipped += 1
            continue
        if seq_len is not None and len(ctx) + max(len(e) for e in endings) >= seq_len:
            skipped += 1
            continue
        streams.append(example_stream(len(streams), label, ctx, endings))
    if not streams:
        raise StudyError(f"no HellaSwag example of {source} fits seq_len={seq_len}")
    longest = max(2 * len(s) for s in streams)
    header = np.zeros(256, dtype="<i4")
    header[:4] = (EVAL_MAGIC, 1, len(streams), longest)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        for s in streams:
            f.write(s.tobytes())
    os.replace(tmp, path)
    return {"path": str(path), "source": resolve_source(None if source is None else str(source)),
            "examples": len(streams), "skipped": skipped, "longest_bytes": longest}
