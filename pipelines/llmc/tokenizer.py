"""GPT-2 BPE through tiktoken, with an offline route for its rank file.

tiktoken downloads `r50k_base.tiktoken` (the GPT-2 ranks; identical merges and ids to the `gpt2`
encoding) into TIKTOKEN_CACHE_DIR under the sha1 of its URL. Without that site, the identical
file ships in the `openai-whisper` source package on PyPI (whisper/assets/gpt2.tiktoken, same
sha256): `study assets` copies it into the cache, so tiktoken never needs the network.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipelines.errors import StudyError
from pipelines.files import atomic_open

EOT = 50256  # <|endoftext|>, starts every document in an llm.c shard
VOCAB = 50257
BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"


def cache_dir() -> Path:
    """TIKTOKEN_CACHE_DIR if set, else ~/.cache/study/tiktoken (set for tiktoken too)."""
    d = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        d = os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(base) / "study" / "tiktoken")
    return Path(d)


def cached_bpe_path() -> Path:
    return cache_dir() / hashlib.sha1(BPE_URL.encode()).hexdigest()


def _valid(path: Path) -> bool:
    return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == BPE_SHA256


def ensure_gpt2_bpe(log=print) -> Path:
    """Put the GPT-2 rank file in the tiktoken cache: download, else take it from openai-whisper."""
    target = cached_bpe_path()
    if _valid(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import tiktoken.load

        tiktoken.load.read_file_cached(BPE_URL, BPE_SHA256)  # downloads into cache_dir() when online
        if _valid(target):
            log(f"GPT-2 BPE downloaded to {target}")
            return target
    except Exception as e:  # noqa: BLE001 - any failure means: take the offline route
        log(f"tiktoken could not download the GPT-2 BPE ({type(e).__name__}); "
            f"taking it from the {WHISPER_SDIST} source package on PyPI")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "-d", tmp, WHISPER_SDIST]
        r = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("openai_whisper-*.tar.gz")) + list(Path(tmp).glob("openai-whisper-*.tar.gz"))
        if not sdists:
            raise StudyError(
                "could not get the GPT-2 BPE file: tiktoken's download failed and "
                f"`{' '.join(cmd[2:])}` did not work:\n{r.stderr[-2000:]}\n"
                f"Put r50k_base.tiktoken (sha256 {BPE_SHA256}) at {target} by hand."
            )
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(WHISPER_MEMBER)), None)
            if member is None:
                raise StudyError(f"{sdists[0].name} has no {WHISPER_MEMBER}")
            data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != BPE_SHA256:
        raise StudyError(f"{WHISPER_MEMBER} from {WHISPER_SDIST} does not have the expected sha256 {BPE_SHA256}")
    with atomic_open(target, "wb") as f:
        f.write(data)
    log(f"GPT-2 BPE from {WHISPER_SDIST} -> {target}")
    return target


@lru_cache(maxsize=1)
def gpt2():
    """The GPT-2 tiktoken encoding; a clear message when the rank file is missing offline."""
    import tiktoken

    if not _valid(cached_bpe_path()):
        try:
            ensure_gpt2_bpe(log=lambda msg: print(msg, file=sys.stderr))
        except StudyError as e:
            raise StudyError(f"{e}\n(run `study assets` once on a machine with PyPI access)") from None
    enc = tiktoken.get_encoding("r50k_base")
    assert enc.n_vocab == VOCAB and enc.eot_token == EOT
    return enc


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (all documents' tokens, each prefixed with EOT, as one uint16 array; their lengths)."""
    enc = gpt2()
    encoded = [enc.encode_ordinary(t) for t in texts]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    out = np.empty(int(lengths.sum()), dtype=np.uint16)
    pos = 0
    for e in encoded:
        out[pos] = EOT
        out[pos + 1 : pos + 1 + len(e)] = e
        pos += len(e) + 1
    return out, lengths



def _init_worker() -> None:
    gpt2()



def encode_stream(batches: Iterable[list[str]], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """encode_batch over `batches` in order, with at most 2 batches in flight per worker."""
    if workers <= 1:
        for b in batches:
            yield encode_batch(b)
        return
    with mp.get_context().Pool(workers, initializer=_init_worker) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append(pool.apply_async(encode_batch, (b,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
