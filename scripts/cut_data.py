#!/usr/bin/env python3
"""Cut the embedded default data set, data/, from the shared data folder (see data/README.md).

    python scripts/cut_data.py [--shared ../shared] [--out data]
    python scripts/cut_data.py --check           # verify data/ against data/checksums.json

Writes, deterministically (standard library only; rerunning gives identical bytes):
  data/web/web_pages.jsonl.gz   the general-web pages of shared/data/web/web_sample.jsonl.gz: every
                                source except `fineweb_sample10BT_legalpilot` (legal-keyword biased),
                                records unchanged (same fields, meta keys), in source order
  data/eval/<name>.jsonl.gz     byte-for-byte copies of shared/data/eval/*.jsonl.gz
  data/core/*                   byte-for-byte copies of shared/data/core/ (DCLM CORE: the task files
                                *.jsonl.gz, core_tasks.yaml, dclm_reference_results.csv; its README.md
                                is summarised in data/README.md instead)
  data/checksums.json           file -> sha256, bytes, rows (plus the inputs' sha256); the CORE files
                                under the separate key `core` (`files` holds gzip'd JSONL only)

Written gzip files use GzipFile(filename='', mtime=0, compresslevel=9) over
json.dumps(record, ensure_ascii=False) + "\\n" lines, so the bytes depend only on the input and on
zlib's compressor (the same zlib build gives the same bytes).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB_SOURCE = "web/web_sample.jsonl.gz"
WEB_OUT = "web/web_pages.jsonl.gz"
EVAL_FILES = (
    "arc_easy_test.jsonl.gz",
    "arc_challenge_test.jsonl.gz",
    "hellaswag_validation.jsonl.gz",
    "mmlu_test.jsonl.gz",
    "mmlu_dev.jsonl.gz",
)
LEFT_OUT_SOURCES = frozenset({"fineweb_sample10BT_legalpilot"})  # legal-keyword biased, not general web
LABEL_KEYS = ("edu_score", "dclm_human_quality_label")  # meta keys of the labelled pages (all kept)
CORE_EXTRA = ("core_tasks.yaml", "dclm_reference_results.csv")  # besides core/*.jsonl.gz
CORE_ABOUT = ("DCLM CORE task files (data/README.md, 'DCLM CORE'); kept apart from `files`, which "
              "scripts/cut_data.py writes and checks")
BUDGET_BYTES = 15 * 1024 * 1024
CHECKSUMS = "checksums.json"


def default_shared() -> Path:
    env = os.environ.get("STUDY_SHARED_DIR")
    return Path(env) if env else ROOT.parent / "shared"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gzip_rows(data: bytes) -> int:
    """Lines in a gzip'd JSONL file (every line must parse as JSON)."""
    n = 0
    for line in gzip.decompress(data).decode("utf-8").split("\n"):
        if line:
            json.loads(line)
            n += 1
    return n


def deterministic_gzip(lines: list[str]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for line in lines:
            gz.write(line.encode("utf-8"))
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cut_web(src: bytes) -> tuple[bytes, dict]:
    lines, per_source, labelled, kept_ids = [], {}, {k: 0 for k in LABEL_KEYS}, set()
    for raw in gzip.decompress(src).decode("utf-8").split("\n"):
        if not raw:
            continue
        rec = json.loads(raw)
        meta = rec.get("meta") or {}
        is_labelled = any(k in meta for k in LABEL_KEYS)
        if rec["source"] in LEFT_OUT_SOURCES:
            if is_labelled:
                raise SystemExit(f"cut_data: labelled page {rec['id']!r} is in a left-out source")
            continue
        if rec["id"] in kept_ids:
            raise SystemExit(f"cut_data: duplicate id {rec['id']!r}")
        kept_ids.add(rec["id"])
        for k in LABEL_KEYS:
            labelled[k] += k in meta
        per_source[rec["source"]] = per_source.get(rec["source"], 0) + 1
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return deterministic_gzip(lines), {"per_source": per_source, "labelled": labelled}


def build(shared: Path, out: Path) -> dict:
    shared_data = shared / "data"
    src_path = shared_data / WEB_SOURCE
    if not src_path.is_file():
        raise SystemExit(f"cut_data: {src_path} not found (pass --shared DIR or set STUDY_SHARED_DIR)")
    files, inputs = {}, {}

    src = src_path.read_bytes()
    inputs[WEB_SOURCE] = sha256_bytes(src)
    web, web_stats = cut_web(src)
    write_atomic(out / WEB_OUT, web)
    files[WEB_OUT] = {"sha256": sha256_bytes(web), "bytes": len(web), "rows": gzip_rows(web),
                      "how": "general-web subset of " + WEB_SOURCE, **web_stats}

    for name in EVAL_FILES:
        rel = f"eval/{name}"
        data = (shared_data / rel).read_bytes()
        inputs[rel] = sha256_bytes(data)
        write_atomic(out / rel, data)  # whole file, bytes unchanged
        files[rel] = {"sha256": sha256_bytes(data), "bytes": len(data), "rows": gzip_rows(data),
                      "how": "byte-for-byte copy"}

    core = cut_core(shared_data, out)
    total = sum(f["bytes"] for f in files.values())
    manifest = {"files": files, "inputs_sha256": inputs, "total_bytes": total, "core": core,
                "command": "python scripts/cut_data.py"}
    write_atomic(out / CHECKSUMS, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    if total + core["total_bytes"] > BUDGET_BYTES:
        print(f"cut_data: warning: {total + core['total_bytes']} bytes is over the {BUDGET_BYTES}-byte budget",
              file=sys.stderr)
    return manifest


def cut_core(shared_data: Path, out: Path) -> dict:
    """shared/data/core/ -> out/core/, byte for byte; the `core` entry of checksums.json."""
    src = shared_data / "core"
    names = sorted(p.name for p in src.glob("*.jsonl.gz")) + list(CORE_EXTRA)
    if not (src / "core_tasks.yaml").is_file():
        raise SystemExit(f"cut_data: {src}/core_tasks.yaml not found (the DCLM CORE folder)")
    files = {}
    for name in names:
        rel = f"core/{name}"
        data = (src / name).read_bytes()
        write_atomic(out / rel, data)  # whole file, bytes unchanged
        entry = {"sha256": sha256_bytes(data), "bytes": len(data), "how": f"byte-for-byte copy of shared/data/{rel}"}
        if name.endswith(".jsonl.gz"):
            entry["rows"] = gzip_rows(data)
        files[rel] = entry
    return {"about": CORE_ABOUT, "files": files, "total_bytes": sum(f["bytes"] for f in files.values())}


def check(out: Path) -> int:
    manifest = json.loads((out / CHECKSUMS).read_text())
    bad = 0
    core = manifest.get("core", {}).get("files", {})
    for rel, want in sorted({**manifest["files"], **core}.items()):
        path = out / rel
        if not path.is_file():
            print(f"MISSING {rel}")
            bad += 1
            continue
        data = path.read_bytes()
        got = (sha256_bytes(data), gzip_rows(data) if "rows" in want else None)
        ok = got == (want["sha256"], want.get("rows"))
        bad += not ok
        print(f"{'ok' if ok else 'MISMATCH':8s} {rel}" + (f"  rows={got[1]}" if got[1] is not None else ""))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=None,
                    help="the shared folder (holds data/); default $STUDY_SHARED_DIR or ../shared beside the checkout")
    ap.add_argument("--out", type=Path, default=ROOT / "data", help="output folder (default: data/ in the checkout)")
    ap.add_argument("--check", action="store_true", help="verify --out against its checksums.json; write nothing")
    args = ap.parse_args(argv)
    if args.check:
        return check(args.out)
    manifest = build(args.shared or default_shared(), args.out)
    for rel, f in sorted({**manifest["files"], **manifest["core"]["files"]}.items()):
        rows = f"{f['rows']:>7,d} rows" if "rows" in f else " " * 12
        print(f"{rel:46s} {f['bytes']:>10,d} B {rows}  {f['sha256']}")
    print(f"{'total':46s} {manifest['total_bytes'] + manifest['core']['total_bytes']:>10,d} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
