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

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from pipelines.errors import StudyError
from pipelines.files import atomic_open
from pipelines.llmc.shards import HEADER_BYTES, HEADER_INTS
from pipelines.llmc.tokenizer import gpt2

EVAL_MAGIC = 20240522
START_EXAMPLE = 65535  # uint16 delimiter before every example
NUM_COMPLETIONS = 4
LLMC_RELATIVE_PATH = Path("dev/data/hellaswag/hellaswag_val.bin")


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


def write_eval_file(path: str | Path, items: Iterable[dict], source: str, seq_len: int | None = None,
                    max_examples: int | None = None) -> dict:
    """Write llm.c's HellaSwag file from HellaSwag rows (ctx, endings, label) read from `source`;
    returns {"path", "source", "examples", "skipped", "longest_bytes"}.

    seq_len: leave out examples whose context + ending is not < seq_len (llm.c asserts it).
    max_examples: the first N examples that fit (None: all of them).
    """
    enc = gpt2()
    streams, skipped = [], 0
    for item in items:
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
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = (EVAL_MAGIC, 1, len(streams), longest)
    path = Path(path)
    with atomic_open(path, "wb") as f:  # makes the parent folder too
        f.write(header.tobytes())
        for s in streams:
            f.write(s.tobytes())
    return {"path": str(path), "source": source,
            "examples": len(streams), "skipped": skipped, "longest_bytes": longest}


@dataclass
class EvalExample:
    index: int
    label: int
    context: list[int]
    endings: list[list[int]]


def read_eval_file(path: str | Path, T: int | None = None) -> list[EvalExample]:
    """Parse (and validate like evalloader_init / evalloader_next_example_) an llm.c eval file."""
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    if header[0] != EVAL_MAGIC:
        raise StudyError(f"{path}: bad magic in eval file ({header[0]}, expected {EVAL_MAGIC})")
    if header[1] != 1:
        raise StudyError(f"{path}: bad version in eval file ({header[1]})")
    n, longest = int(header[2]), int(header[3])
    if T is not None and not (0 < longest < (1 + NUM_COMPLETIONS) * T * 2):
        raise StudyError(f"{path}: longest example is {longest} bytes, too long for T={T} (llm.c asserts this)")
    stream = np.frombuffer(raw[HEADER_BYTES:], dtype="<u2")
    examples, pos = [], 0
    for i in range(n):
        start, nbytes, index = (int(x) for x in stream[pos : pos + 3])
        if start != START_EXAMPLE or index != i:
            raise StudyError(f"{path}: example {i} is malformed (delimiter {start}, index {index})")
        ex = stream[pos : pos + nbytes // 2]
        label, ncomp, ctx_len = int(ex[3]), int(ex[4]), int(ex[5])
        if ncomp != NUM_COMPLETIONS or not 0 <= label < NUM_COMPLETIONS:
            raise StudyError(f"{path}: example {i}: {ncomp} completions, label {label} (llm.c expects 4, 0..3)")
        context = ex[6 : 6 + ctx_len].tolist()
        endings, q = [], 6 + ctx_len
        for _ in range(ncomp):
            m = int(ex[q])
            endings.append(ex[q + 1 : q + 1 + m].tolist())
            q += 1 + m
        if q * 2 != nbytes:
            raise StudyError(f"{path}: example {i}: {nbytes} bytes announced, {q * 2} read")
        if T is not None and any(not (0 < len(context) < T and 0 < len(context) + len(e) < T) for e in endings):
            raise StudyError(f"{path}: example {i} does not fit T={T} (context + ending must be < T)")
        examples.append(EvalExample(i, label, context, endings))
        pos += nbytes // 2
    return examples
