"""The prepared union: what the in-memory mix computes before it samples, kept to be shared.

Dedup, decontamination and tokenization of the union depend on its documents, the sources a mix uses
(their priority order) and the dedup / decontamination settings only, never on a mix's weights or
budget. With `mix.keep_prepared: true` the stage keeps that result in mix/prepared/<key>/ and a run
whose `share_with` names that run reuses it when the key matches (a mixture search: one union, many
weight vectors), so each such run only samples and writes its shards.

The key is a sha256 of: every document of the union in priority order (key and text), each used
source's members, the dedup and decontamination sections, the sha256 of each benchmark file that
decontamination reads, and the tokenizer. A changed page, source, setting or benchmark file gives
another key, so nothing stale is reused.

  prepared.json  {key, removed: [[doc key, reason, details], ...] in removal order, too_short,
                  signed_in_part, keep: [doc key, ...]}
  tokens.npy     (sum of lengths,) uint16: the GPT-2 tokens of `keep`, concatenated in order
  lengths.npy    (len(keep),) int64
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.config import MixConfig
from pipelines.data.benchmarks import local_path
from pipelines.files import atomic_path, file_sha256

FORMAT = 2  # bump when the layout or what the key covers changes (2: the benchmark files' bytes)
TOKENIZER = "gpt2"


@dataclass
class Prepared:
    removed: dict[str, tuple[str, dict]]  # doc key -> (reason, details), in removal order
    tokens: dict[str, np.ndarray]  # doc key -> tokens, for every surviving document (val included)
    too_short: dict[str, int]
    signed_in_part: int


def benchmark_files(cfg: MixConfig) -> dict[str, str]:
    """{benchmark: sha256 of the file decontamination reads} ("hub" when it reads the hub): an item edited
    in place changes the key."""
    if not cfg.decontaminate.enabled:
        return {}
    paths = {b: local_path(b, data_dir=cfg.decontaminate.eval_dir) for b in cfg.decontaminate.benchmarks}
    return {b: file_sha256(p) if p is not None else "hub" for b, p in paths.items()}


def key(cfg: MixConfig, order: list[str], texts: dict[str, str], members: dict[str, list[str]]) -> str:
    h = hashlib.sha256()
    head = {"format": FORMAT, "tokenizer": TOKENIZER, "dedup": cfg.dedup.model_dump(mode="json"),
            "decontaminate": cfg.decontaminate.model_dump(mode="json"), "sources": list(members),
            "benchmark_files": benchmark_files(cfg)}
    h.update(json.dumps(head, sort_keys=True).encode())
    for k in order:
        h.update(b"\x00d")
        h.update(k.encode())
        h.update(b"\x00")
        h.update(texts[k].encode("utf-8", "surrogatepass"))
    for name, keys in members.items():
        h.update(b"\x00m" + name.encode())
        for k in keys:
            h.update(b"\x00" + k.encode())
    return h.hexdigest()


def find(dirs: dict[str, Path], k: str) -> tuple[str, Path] | None:
    """(run, folder) of the first complete prepared/<key>/ among `dirs` ({run: its mix/prepared folder})."""
    for run, d in dirs.items():
        p = d / k
        if (p / "prepared.json").exists():
            return run, p
    return None


def load(path: Path, k: str) -> Prepared:
    meta = json.loads((path / "prepared.json").read_text())
    if meta.get("key") != k or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not the prepared union with key {k}")
    flat = np.load(path / "tokens.npy", allow_pickle=False)
    lengths = np.load(path / "lengths.npy", allow_pickle=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = {d: flat[offsets[i] : offsets[i + 1]] for i, d in enumerate(meta["keep"])}
    removed = {d: (reason, details) for d, reason, details in meta["removed"]}
    return Prepared(removed, tokens, meta["too_short"], meta["signed_in_part"])


def save(root: Path, k: str, prep: Prepared, keep: list[str]) -> Path:
    """Writes root/<key>/ whole or not at all (files.atomic_path: a temporary folder renamed at the end)."""
    final = root / k
    with atomic_path(final) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed run's
        tmp.mkdir(parents=True)
        lengths = np.array([len(prep.tokens[d]) for d in keep], dtype=np.int64)
        flat = np.concatenate([prep.tokens[d] for d in keep]) if keep else np.empty(0, dtype=np.uint16)
        np.save(tmp / "tokens.npy", flat.astype(np.uint16), allow_pickle=False)
        np.save(tmp / "lengths.npy", lengths, allow_pickle=False)
        meta = {"format": FORMAT, "key": k, "too_short": prep.too_short, "signed_in_part": prep.signed_in_part,
                "removed": [[d, reason, details] for d, (reason, details) in prep.removed.items()], "keep": keep}
        (tmp / "prepared.json").write_text(json.dumps(meta, ensure_ascii=False))  # written last: marks it complete
        shutil.rmtree(final, ignore_errors=True)  # os.replace does not replace a folder that has files
    return final
