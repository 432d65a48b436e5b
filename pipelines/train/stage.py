"""The `train` stage: one llm.c-format training run per shard set (mix), in results/<run>/train/.

  results/<run>/train/
    dev/data/hellaswag/hellaswag_val.bin   HellaSwag for -h 1 (llm.c opens this path in its cwd)
    gpt2_tokenizer.bin                     llm.c backend: lets train_gpt2cu print its samples as text
    <mix>/                                 the -o folder: main.log, model_%08d.bin, state_*, DONE_*,
                                           stdout.log, launch.json (backend, command, flags, inputs),
                                           hf/ (the final model as a Hugging Face folder)

Both backends run with results/<run>/train/ as their working directory and relative paths
(-i ../mix/web/web_train_*.bin -j ../mix/val/heldout_val_*.bin -o web). The stage is resumable: a rerun after a kill or crash
continues each run from its last DONE checkpoint (-y 1); a run whose config or input shards
changed (launch.json differs) starts over in an emptied folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import StudyError
from pipelines.manifest import StageContext, file_sha256, write_json_atomic
from pipelines.train.flags import check_train_config, llmc_flags
from pipelines.train.hellaswag import LLMC_RELATIVE_PATH, write_eval_file
from pipelines.train.launcher import (find_llmc_binary, launch_command, max_done_step, train_with_restarts,
                                      write_llmc_tokenizer)
from pipelines.train.trainlog import read_log, summary


@dataclass(frozen=True)
class ShardSet:
    """One training data set in llm.c shards: what llm.c's -i / -j take."""

    name: str  # the mix name: the output folder results/<run>/train/<name>/
    train_pattern: Path  # glob of train shards
    val_pattern: Path  # glob of val shards
    train_tokens: int


def shard_sets(ctx: StageContext) -> list[ShardSet]:
    """One shard set per mix of the mix stage; all share the mix stage's held-out validation shards."""
    mix = ctx.inputs["mix"]
    d = ctx.run.dir("mix")
    return [ShardSet(m["name"], d / m["train_pattern"], d / m["val_pattern"], int(m["tokens"]))
            for m in mix["mixes"]]


def final_step(cfg, s: ShardSet) -> int:
    """-x, or llm.c's one-epoch default: train tokens // tokens per step."""
    return cfg.steps if cfg.steps is not None else s.train_tokens // cfg.tokens_per_step


def prepare_hellaswag(cfg, stage_dir: Path) -> dict | None:
    """Write the eval file once per (source, seq_len, examples); a sidecar JSON records what is in it."""
    if not cfg.hellaswag:
        return None
    path = stage_dir / LLMC_RELATIVE_PATH
    key = {"source": cfg.hellaswag_path, "seq_len": cfg.seq_len, "max_examples": cfg.hellaswag_examples}
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        info = json.loads(sidecar.read_text())
        if info.get("key") == key:
            return info
    info = write_eval_file(path, cfg.hellaswag_path, seq_len=cfg.seq_len, max_examples=cfg.hellaswag_examples)
    info["key"] = key
    write_json_atomic(sidecar, info)
    print(f"[train] HellaSwag: {info['examples']:,} examples -> {path} ({info['skipped']} left out: do not fit "
          f"seq_len {cfg.seq_len} or --set train.hellaswag_examples)")
    return info


def prepare_out_dir(out: Path, record: dict) -> None:
    """Keep the folder (resume) when launch.json matches this run; empty it when the run changed."""
    path = out / "launch.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        keys = ("backend", "flags", "inputs", "seed", "dtype")
        if all(old.get(k) == record[k] for k in keys):
            return
        changed = [k for k in keys if old.get(k) != record[k]]
        print(f"[train] {out.name}: {', '.join(changed)} changed since the last launch; starting over in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.train
    check_train_config(cfg)
    if cfg.backend == "llmc":
        find_llmc_binary()  # fail before writing anything when the binary is missing
    hs = prepare_hellaswag(cfg, ctx.dir)
    if cfg.backend == "llmc" and not (ctx.dir / "gpt2_tokenizer.bin").exists():
        write_llmc_tokenizer(ctx.dir / "gpt2_tokenizer.bin")
    inputs = {dep: file_sha256(ctx.run.manifest_path(dep)) for dep in ctx.inputs}
    outputs, runs = [], {}
    for s in shard_sets(ctx):
        if s.name == "dev":
            raise StudyError("a shard set may not be named `dev` (llm.c's HellaSwag file lives in train/dev/)")
        out = ctx.dir / s.name
        flags = llmc_flags(cfg, os.path.relpath(s.train_pattern, ctx.dir), os.path.relpath(s.val_pattern, ctx.dir),
                           s.name)
        cmd = launch_command(cfg, flags)
        record = {"backend": cfg.backend, "flags": flags, "command": cmd, "inputs": inputs, "seed": cfg.seed,
                  "dtype": cfg.dtype, "cwd": str(ctx.dir)}
        prepare_out_dir(out, record)
        last = final_step(cfg, s)
        if last < 1:
            raise StudyError(f"[train] {s.name}: {s.train_tokens:,} train tokens make no step of "
                             f"{cfg.tokens_per_step:,} tokens; lower train.total_batch_tokens or add data")
        if max_done_step(out) >= last:
            print(f"[train] {s.name}: done (DONE_{last:08d} exists); skipped")
        else:
            print(f"[train] {s.name}: {cfg.backend} backend, {last:,} steps x {cfg.tokens_per_step:,} tokens -> {out}")
            print(f"[train] command (in {ctx.dir}): {' '.join(cmd)}")
            try:
                train_with_restarts(cmd, ctx.dir, out, cfg.resume, cfg.max_restarts, desc=f"train {s.name}")
            except KeyboardInterrupt:
                done = max_done_step(out)
                print(f"[train] {s.name}: stopped; last checkpoint: {'step ' + str(done) if done >= 0 else 'none'}. "
                      f"Rerun the same command to resume.")
                raise
        model_file = out / f"model_{last:08d}.bin"
        if not (out / f"DONE_{last:08d}").exists() or not model_file.exists():
            raise StudyError(f"[train] {s.name}: the run ended without its final checkpoint {model_file} "
                             f"(see {out}/stdout.log)")
        from pipelines.model import read_checkpoint_header

        shape, version = read_checkpoint_header(model_file)  # llm.c's header checks + exact size
        if cfg.export_hf and not (out / "hf" / "config.json").exists():
            from pipelines.model import export_hf

            export_hf(model_file, out / "hf")
        table = read_log(out, cfg.tokens_per_step)
        info = summary(out)
        runs[s.name] = {**info, "steps": last, "tokens": last * cfg.tokens_per_step, "model": model_file.name,
                        "checkpoint_version": version, "parameters": shape.num_parameters,
                        "log_rows": len(table)}
        outputs.append({"mix": s.name, "path": f"{s.name}/{model_file.name}", "steps": last,
                        "tokens": last * cfg.tokens_per_step, "log": f"{s.name}/main.log",
                        "hf": f"{s.name}/hf" if cfg.export_hf else None})
        print(f"[train] {s.name}: train loss {info['first_train_loss']} -> {info['last_train_loss']}, "
              f"val loss {info['last_val_loss']}, HellaSwag {info['hellaswag']}")
    return {
        "outputs": outputs,
        "counts": {"runs": len(outputs), "tokens": sum(o["tokens"] for o in outputs),
                   "steps": sum(o["steps"] for o in outputs)},
        "runs": runs,
        "hellaswag": hs,
    }
