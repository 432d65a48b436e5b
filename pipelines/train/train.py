"""The `train` stage: one llm.c-format training run per mix (`train.mixes`) and one chain of runs
per schedule (`train.schedules`), in results/<run>/train/.

  results/<run>/train/
    dev/data/hellaswag/hellaswag_val.bin   HellaSwag for -h 1 (llm.c opens this path in its cwd)
    gpt2_tokenizer.bin                     llm.c backend: lets train_gpt2cu print its samples as text
    <mix>/                                 the -o folder: main.log, model_%08d.bin, state_*, DONE_*,
                                           stdout.log, launch.json (backend, command, flags, inputs),
                                           hf/ (the final model as a Hugging Face folder)
    <mix>-<model>-s<seed>/                 the same mix at another model size (train.models) and/or seed
                                           (train.seeds); the run with train.model and train.seed is <mix>/
    seeds/<mix>-s<seed>/                   llmc backend, a seed other than train.seed: the mix's train
                                           shards with their documents reshuffled by that seed (written
                                           once, shared by every model size); train_gpt2cu initialises
                                           with 42 whatever the seed, so the data order is what varies
    <schedule>/schedule.json               the stages with their step and token offsets
    <schedule>/<stage>/                    one -o folder per stage, as <mix>/ above
    <schedule>/hf/                         the last stage's final model

A schedule's stage k > 1 starts from stage k-1's final checkpoint (-e <schedule>/<stage k-1>/
model_%08d.bin: llm.c loads the weights; AdamW's moments and the lr schedule start afresh, hence
each stage's own warmup and schedule) and trains its own mix with its own flags. launch.json
records the sha256 of that checkpoint, so a stage whose predecessor was retrained starts over.

Both backends run with results/<run>/train/ as their working directory and relative paths
(-i ../mix/web/web_train_*.bin -j ../mix/val/heldout_val_*.bin -o web). The stage is resumable: a
rerun after a kill or crash continues each run (each stage) from its last DONE checkpoint (-y 1);
finished stages are skipped; a run whose config or input shards changed (launch.json differs)
starts over in an emptied folder.

A little over 400 lines as one thing: the plan of runs (mixes x sizes x seeds, schedules) and their
launch and resume decide together which folder each run owns.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.data.benchmarks import hellaswag_source, read_hellaswag
from pipelines.errors import StudyError
from pipelines.llmc.evalfile import LLMC_RELATIVE_PATH, write_eval_file
from pipelines.llmc.shapes import parse_descriptor
from pipelines.llmc.shards import read_shard, split_documents, write_shard
from pipelines.llmc.tokenizer import EOT
from pipelines.model import export_hf, read_checkpoint_header
from pipelines.runs.manifest import StageContext, file_sha256, write_json_atomic
from pipelines.runs.trainlog import SCHEDULE_FILE, read_log, summary
from pipelines.train.flags import check_train_config, llmc_flags
from pipelines.train.launcher import (
    find_llmc_binary,
    launch_command,
    max_done_step,
    train_with_restarts,
    write_llmc_tokenizer,
)


@dataclass(frozen=True)
class ShardSet:
    """One training data set in llm.c shards: what llm.c's -i / -j take."""

    name: str  # the mix name: the output folder results/<run>/train/<name>/
    train_pattern: Path  # glob of train shards
    val_pattern: Path  # glob of val shards
    tokens: int  # train tokens in the shards: the mix's `tokens` (its budget, mix.mixes[].tokens, once written)


def shard_sets(ctx: StageContext) -> list[ShardSet]:
    """One shard set per mix of the mix stage; all share the mix stage's held-out validation shards."""
    return from_manifest(ctx.inputs["mix"], ctx.run.dir("mix"))


def from_manifest(mix: dict, d: Path) -> list[ShardSet]:
    return [ShardSet(m["name"], d / m["train_pattern"], d / m["val_pattern"], int(m["tokens"]))
            for m in mix["mixes"]]


def shard_sets_of(run) -> list[ShardSet] | None:
    """The shard sets of a run's done mix stage, or None when it has not run (or is stale)."""
    st = run.state("mix")
    if st.status != "done":
        return None
    return from_manifest(st.manifest, run.dir("mix"))


def planned_shard_sets(cfg, mix_dir: Path) -> list[ShardSet]:
    """The shard sets the mix stage will write for this config (its naming), for a dry run before it ran."""
    val = mix_dir / "val" / f"{cfg.mix.val_name}_val_*.bin"
    return [ShardSet(m.name, mix_dir / m.name / f"{m.name}_train_*.bin", val, m.tokens) for m in cfg.mix.mixes]


SEED_DATA = "seeds"  # train/seeds/<mix>-s<seed>/: the llmc backend's reshuffled train shards per seed
RESERVED = ("dev", SEED_DATA)  # folders of train/ that are not runs


def run_folder(train, mix: str, model: str, seed: int) -> str:
    """The -o folder of a mix trained alone at one model size and seed: <mix> for train.model and
    train.seed (a single-seed study's folders are unchanged), else <mix>[-<model>][-s<seed>]."""
    return "-".join([mix, *([model] if model != train.model else []), *([f"s{seed}"] if seed != train.seed else [])])


@dataclass(frozen=True)
class Job:
    """One llm.c run: a mix trained alone (at one model size and seed), or one stage of a schedule."""

    run: str  # the mix or schedule name: evaluate's and the figures' label
    out: str  # the -o folder relative to train/: `web`, `web-d2c64-s1`, or `anneal/stage2-web-edu`
    shards: ShardSet
    cfg: object  # the train section with this run's model, seed, stage overrides, its steps (-x) and its -e
    steps: int  # the final step: -x, or one epoch of the shards
    stage: int = 0  # 1-based position in its schedule; 0: a mix trained alone
    start_step: int = 0  # steps and tokens of the schedule before this stage
    start_tokens: int = 0
    seed: int | None = None  # the run's seed (torch: initialisation and data order; llmc: data order)
    scale: str | None = None  # the model size it trains (a schedule: train.model)
    data_seed: int | None = None  # llmc: train on the mix's documents reshuffled with this seed (SEED_DATA)

    @property
    def tokens(self) -> int:
        return self.steps * self.cfg.tokens_per_step

    @property
    def init(self) -> str | None:
        """The previous stage's final model_%08d.bin (relative to train/, its -e), when stage > 1."""
        return self.cfg.model if self.stage > 1 else None


def plan(cfg, sets: list[ShardSet], verbose: bool = True) -> list[list[Job]]:
    """The runs of the stage: [[job]] per mix trained alone, [job, job, ...] per schedule, in order."""
    train = cfg.train
    by_name = {s.name: s for s in sets}
    alone = train.mixes if train.mixes is not None else [s.name for s in sets]
    runs = []
    for model in train.run_models:  # model sizes, then seeds, then mixes: every mix's first seed comes first
        for seed in train.run_seeds:
            if model == train.model and seed == train.seed:
                jcfg = train
            elif train.backend == "llmc":  # train_gpt2cu has no seed: the seed reshuffles the data instead
                jcfg = train.model_copy(update={"model": model})
            else:
                jcfg = train.model_copy(update={"model": model, "seed": seed})
            if model != train.model:
                try:
                    check_train_config(jcfg)
                except StudyError as e:
                    raise StudyError(f"train.models {model}: {e}") from None
            for name in alone:
                s = by_name[name]
                steps = final_step(train, s)
                if steps < 1:
                    raise StudyError(f"[train] {name}: {s.tokens:,} train tokens make no step of "
                                     f"{train.tokens_per_step:,} tokens; lower train.total_batch_tokens or add data")
                data_seed = seed if train.backend == "llmc" and seed != train.seed else None
                runs.append([Job(name, run_folder(train, name, model, seed), s, jcfg, steps, seed=seed, scale=model,
                                 data_seed=data_seed)])
    max_t = parse_descriptor(train.model).max_seq_len if not train.model.endswith(".bin") else None
    for sch in train.schedules:
        jobs: list[Job] = []
        for k, (st, folder) in enumerate(zip(sch.stages, sch.stage_names), 1):
            where = f"train.schedules {sch.name!r} stage {k} ({folder})"
            update = {key: getattr(st, key) for key in st.OVERRIDES if getattr(st, key) is not None}
            if jobs:  # from the previous stage's final weights
                prev = jobs[-1]
                update["model"] = f"{prev.out}/model_{prev.steps:08d}.bin"
            scfg = train.model_copy(update=update)
            steps = st.tokens // scfg.tokens_per_step
            if steps < 1:
                raise StudyError(f"{where}: {st.tokens:,} tokens make no step of {scfg.tokens_per_step:,} tokens; "
                                 f"raise its tokens or lower its total_batch_tokens")
            scfg = scfg.model_copy(update={"steps": steps})
            if max_t is not None and scfg.seq_len > max_t:
                raise StudyError(f"{where}: seq_len {scfg.seq_len} exceeds the model's max_seq_len {max_t} "
                                 f"(llm.c's GPT-2 models are built with 1024 positions)")
            try:
                check_train_config(scfg)
            except StudyError as e:
                raise StudyError(f"{where}: {e}") from None
            again = next((j for j in jobs if j.shards.name == st.mix), None)
            if again is not None and verbose:
                print(f"[train] note: {where} reads mix {st.mix!r} from its start again, as stage {again.stage} "
                      f"did (llm.c's loader restarts with the same seed): it repeats data that stage saw; give "
                      f"it a mix of its own for fresh documents")
            start_step = sum(j.steps for j in jobs)
            start_tokens = sum(j.tokens for j in jobs)
            jobs.append(Job(sch.name, f"{sch.name}/{folder}", by_name[st.mix], scfg, steps, k, start_step,
                            start_tokens, seed=train.seed, scale=train.model))
        runs.append(jobs)
    return runs


def schedule_record(jobs: list[Job]) -> dict:
    """train/<schedule>/schedule.json and the manifest's view of one schedule."""
    return {"schedule": jobs[0].run, "steps": sum(j.steps for j in jobs), "tokens": sum(j.tokens for j in jobs),
            "stages": [{"stage": j.stage, "name": Path(j.out).name, "dir": j.out, "mix": j.shards.name,
                        "steps": j.steps, "tokens": j.tokens, "tokens_per_step": j.cfg.tokens_per_step,
                        "seq_len": j.cfg.seq_len, "start_step": j.start_step, "start_tokens": j.start_tokens,
                        "init": j.cfg.model} for j in jobs]}


def final_step(cfg, s: ShardSet) -> int:
    """-x, or llm.c's one-epoch default: train tokens // tokens per step."""
    return cfg.steps if cfg.steps is not None else s.tokens // cfg.tokens_per_step


def prepare_hellaswag(cfg, stage_dir: Path, seq_len: int | None = None) -> dict | None:
    """Write the eval file once per (source, seq_len, examples); a sidecar JSON records what is in it.
    seq_len: the shortest -t of the stage's runs (llm.c needs every example to fit)."""
    if not cfg.hellaswag:
        return None
    seq_len = seq_len or cfg.seq_len
    path = stage_dir / LLMC_RELATIVE_PATH
    key = {"source": cfg.hellaswag_path, "seq_len": seq_len, "max_examples": cfg.hellaswag_examples}
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        info = json.loads(sidecar.read_text())
        if info.get("key") == key:
            return info
    source = hellaswag_source(cfg.hellaswag_path)
    info = write_eval_file(path, read_hellaswag(source), source, seq_len=seq_len,
                           max_examples=cfg.hellaswag_examples)
    info["key"] = key
    write_json_atomic(sidecar, info)
    print(f"[train] HellaSwag: {info['examples']:,} examples -> {path} ({info['skipped']} left out: do not fit "
          f"seq_len {seq_len} or --set train.hellaswag_examples)")
    return info


LAUNCH_KEYS = ("backend", "flags", "inputs", "seed", "dtype", "init", "data_seed")


def _launch(folder: Path) -> dict:
    try:
        return json.loads((folder / "launch.json").read_text())
    except (OSError, ValueError):
        return {}


def prepare_out_dir(out: Path, record: dict, aside: Path) -> Path | None:
    """Keep the folder (resume) when launch.json matches this run. When the run changed, the old
    folder is moved to `aside` (train/.previous/...), not deleted: it comes back if the new run fails
    before its first checkpoint, or when the old settings are asked for again, and is removed once
    the new run has finished. Returns the folder kept aside, if any."""
    if (out / "launch.json").exists():
        old = _launch(out)
        if all(old.get(k) == record.get(k) for k in LAUNCH_KEYS):
            return aside if aside.exists() else None
        changed = [k for k in LAUNCH_KEYS if old.get(k) != record.get(k)]
        back = aside.exists() and all(_launch(aside).get(k) == record.get(k) for k in LAUNCH_KEYS)
        swap = aside.with_name(aside.name + ".swap")
        if aside.exists() and not back:
            shutil.rmtree(aside)  # an older attempt still: superseded twice
        aside.parent.mkdir(parents=True, exist_ok=True)
        out.rename(swap if back else aside)
        if back:  # the settings of the run kept aside: it returns, the other one goes aside
            aside.rename(out)
            swap.rename(aside)
            print(f"[train] {out.name}: the run with these settings was kept aside; it is back in {out}")
            return aside
        print(f"[train] {out.name}: {', '.join(changed)} changed since the last launch; the previous run is "
              f"kept in {aside} until this one finishes (and comes back if it fails first)")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "launch.json", record)
    return aside if aside.exists() else None


def job_train_pattern(job: Job, train_dir: Path) -> Path:
    """The train shards a job reads: its mix's, or their reshuffled copy for its seed (llmc)."""
    if job.data_seed is None:
        return job.shards.train_pattern
    return train_dir / SEED_DATA / f"{job.shards.name}-s{job.data_seed}" / job.shards.train_pattern.name


def job_flags(job: Job, train_dir: Path) -> list[str]:
    return llmc_flags(job.cfg, os.path.relpath(job_train_pattern(job, train_dir), train_dir),
                      os.path.relpath(job.shards.val_pattern, train_dir), job.out)


def write_seed_shards(shards: ShardSet, seed: int, out: Path, inputs: dict) -> dict:
    """The mix's train shards with the order of the shards and of the documents inside each shard permuted
    by `seed`, as llm.c shards of the same names in `out` (one shard in memory at a time: a mix of any
    size). llm.c's loader shuffles with seed 42 whatever the run; reshuffled documents make different
    B x T rows, hence a different data order per seed. Written once: seed.json records the seed and the
    inputs (the mix manifest's hash, the shard names and sizes), and a rerun with the same keeps them."""
    sources = sorted(shards.train_pattern.parent.glob(shards.train_pattern.name))
    if not sources:
        raise StudyError(f"[train] {shards.name}: no train shards match {shards.train_pattern}")
    key = {"seed": seed, "inputs": inputs, "shards": [[p.name, p.stat().st_size] for p in sources]}
    sidecar = out / "seed.json"
    if sidecar.exists() and json.loads(sidecar.read_text()).get("key") == key:
        return json.loads(sidecar.read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))
    tokens = 0
    for dest, k in zip(sources, order):
        docs = split_documents(read_shard(sources[k]))
        perm = rng.permutation(len(docs))
        parts = [np.concatenate([[EOT], docs[i]]).astype(np.uint16) for i in perm]
        data = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
        write_shard(out / dest.name, data)
        tokens += len(data)
    info = {"key": key, "mix": shards.name, "seed": seed, "tokens": tokens,
            "shards": [{"path": d.name, "from": sources[k].name} for d, k in zip(sources, order)]}
    write_json_atomic(sidecar, info)
    print(f"[train] {shards.name}: train shards reshuffled with seed {seed} -> {out} ({tokens:,} tokens)")
    return info


def train_job(job: Job, train_dir: Path, inputs: dict) -> dict:
    """Launch (or resume, or skip when done) one llm.c run; returns its summary after checking its files."""
    cfg, out, last = job.cfg, train_dir / job.out, job.steps
    label = job.out
    init = None
    if job.init:  # the previous stage's final weights: must be complete; their hash chains the stages
        src = train_dir / job.init
        if not src.exists() or not (src.parent / f"DONE_{last_step_of(src):08d}").exists():
            raise StudyError(f"[train] {label}: starts from {src}, which is not a complete checkpoint")
        init = {"path": job.init, "sha256": file_sha256(src)}
    flags = job_flags(job, train_dir)
    cmd = launch_command(cfg, flags)
    record = {"backend": cfg.backend, "flags": flags, "command": cmd, "inputs": inputs, "seed": cfg.seed,
              "dtype": cfg.dtype, "cwd": str(train_dir), "init": init, "schedule": job.run if job.stage else None,
              "stage": job.stage or None}
    if job.data_seed is not None:  # llmc, another seed: the mix's documents reshuffled with it
        record["data_seed"] = job.data_seed
    previous = prepare_out_dir(out, record, train_dir / ".previous" / job.out)
    try:
        info = _run_job(job, cfg, out, last, label, cmd, train_dir, init)
    except BaseException:
        if previous is not None and previous.exists() and max_done_step(out) < 0:  # nothing new to resume
            shutil.rmtree(out)
            previous.rename(out)
            print(f"[train] {label}: the new run failed before its first checkpoint; the previous run is back in {out}")
        raise
    if previous is not None and previous.exists():
        shutil.rmtree(previous)
    return info


def _run_job(job: Job, cfg, out: Path, last: int, label: str, cmd: list[str], train_dir: Path, init) -> dict:
    if max_done_step(out) >= last:
        print(f"[train] {label}: done (DONE_{last:08d} exists); skipped")
    else:
        start = f" from {job.init}" if job.init else ""
        print(f"[train] {label}: {cfg.backend} backend, {last:,} steps x {cfg.tokens_per_step:,} tokens{start} -> {out}")
        print(f"[train] command (in {train_dir}): {shlex.join(cmd)}")
        try:
            train_with_restarts(cmd, train_dir, out, cfg.resume, cfg.max_restarts, desc=f"train {label}")
        except KeyboardInterrupt:
            done = max_done_step(out)
            print(f"[train] {label}: stopped; last checkpoint: {'step ' + str(done) if done >= 0 else 'none'}. "
                  f"Rerun the same command to resume.")
            raise
    model_file = out / f"model_{last:08d}.bin"
    if not (out / f"DONE_{last:08d}").exists() or not model_file.exists():
        raise StudyError(f"[train] {label}: the run ended without its final checkpoint {model_file} "
                         f"(see {out}/stdout.log)")

    shape, version = read_checkpoint_header(model_file)  # llm.c's header checks + exact size
    info = summary(out)
    print(f"[train] {label}: train loss {info['first_train_loss']} -> {info['last_train_loss']}, "
          f"val loss {info['last_val_loss']}, HellaSwag {info['hellaswag']}")
    return {**info, "steps": last, "tokens": job.tokens, "model": model_file.name, "checkpoint_version": version,
            "parameters": shape.num_parameters, "log_rows": len(read_log(out, cfg.tokens_per_step)), "init": init}


def last_step_of(model_file: Path) -> int:
    """N of a model_%08d.bin path."""
    try:
        return int(model_file.stem.split("_")[-1])
    except ValueError:
        raise StudyError(f"{model_file}: not an llm.c checkpoint name (model_%08d.bin)") from None


def export(cfg, model_file: Path, folder: Path) -> str | None:
    if not cfg.export_hf:
        return None
    if not (folder / "config.json").exists():
        export_hf(model_file, folder)
    return str(folder)


def dry_run(cfg, train_dir: Path, sets: list[ShardSet]) -> list[str]:
    """The exact command lines the stage would run, in order (nothing is launched or written)."""
    lines = [f"cd {train_dir}"]
    for jobs in plan(cfg, sets):
        for j in jobs:
            what = f"{j.run}: stage {j.stage} ({j.shards.name})" if j.stage else j.out
            if j.data_seed is not None:
                what += f" (its documents reshuffled with seed {j.data_seed} into {SEED_DATA}/ first)"
            lines.append(f"# {what}: {j.steps:,} steps x {j.cfg.tokens_per_step:,} tokens = {j.tokens:,} tokens")
            line = shlex.join(launch_command(j.cfg, job_flags(j, train_dir), resolve=False))
            lines.append(line.replace("'$LLMC_DIR/", '"$LLMC_DIR"/').replace("train_gpt2cu'", "train_gpt2cu"))
    return lines


def preflight(ctx: StageContext, verbose: bool = False) -> list[list[Job]]:
    """Before the stage touches anything: the config's checks, every run's and stage's plan (returned),
    the binary."""
    check_train_config(ctx.config.train)
    runs_plan = plan(ctx.config, shard_sets(ctx), verbose=verbose)
    if not runs_plan:
        raise StudyError("[train] nothing to train: train.mixes is [] and there are no train.schedules")
    folders = [jobs[0].out.split("/")[0] for jobs in runs_plan]
    taken = [f for f in folders if f in RESERVED]
    if taken:
        raise StudyError(f"a mix may not be named {taken[0]!r}: train/dev/ holds llm.c's HellaSwag file and "
                         f"train/{SEED_DATA}/ the reshuffled shards of other seeds")
    twice = sorted({f for f in folders if folders.count(f) > 1})
    if twice:
        raise StudyError(f"[train] two runs would share the folder train/{twice[0]}/ (a mix or schedule named like "
                         f"another mix at another model size or seed: <mix>-<model>-s<seed>); rename it")
    if ctx.config.train.backend == "llmc":
        find_llmc_binary()
    return runs_plan


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.train
    runs_plan = preflight(ctx, verbose=True)  # Run.execute checked it already; the function may run on its own
    hs = prepare_hellaswag(cfg, ctx.dir, min(j.cfg.seq_len for jobs in runs_plan for j in jobs))
    if cfg.backend == "llmc" and not (ctx.dir / "gpt2_tokenizer.bin").exists():
        write_llmc_tokenizer(ctx.dir / "gpt2_tokenizer.bin")
    inputs = {dep: file_sha256(ctx.run.manifest_path(dep)) for dep in ctx.inputs}
    outputs, runs, boundaries, reshuffled = [], {}, {}, {}
    for jobs in runs_plan:
        name, last = jobs[0].run, jobs[-1]
        folder = name if last.stage else last.out  # the run's folder in train/ (a schedule: its stages' parent)
        if last.stage:  # a schedule: its plan first, so a watcher can follow it while it trains
            sched = schedule_record(jobs)
            (ctx.dir / name).mkdir(parents=True, exist_ok=True)
            write_json_atomic(ctx.dir / name / SCHEDULE_FILE, sched)
        for j in jobs:
            if j.data_seed is not None and (j.shards.name, j.data_seed) not in reshuffled:  # once per mix and seed
                out_dir = job_train_pattern(j, ctx.dir).parent
                info = write_seed_shards(j.shards, j.data_seed, out_dir, inputs)
                reshuffled[(j.shards.name, j.data_seed)] = {"mix": j.shards.name, "seed": j.data_seed,
                                                            "dir": os.path.relpath(out_dir, ctx.dir),
                                                            "tokens": info["tokens"]}
        infos = [train_job(j, ctx.dir, inputs) for j in jobs]
        model_file = ctx.dir / last.out / infos[-1]["model"]
        total_steps, total_tokens = sum(j.steps for j in jobs), sum(j.tokens for j in jobs)
        hf = export(cfg, model_file, ctx.dir / folder / "hf")
        out = {"mix": name, "path": f"{last.out}/{model_file.name}", "steps": total_steps, "tokens": total_tokens,
               "log": f"{folder}/main.log" if not last.stage else f"{name}/{SCHEDULE_FILE}",
               "hf": os.path.relpath(hf, ctx.dir) if hf else None, "dir": folder, "seed": last.seed,
               "scale": last.scale}
        if last.stage:
            out["schedule"] = [{**st, "model": inf["model"], "init_sha256": (inf["init"] or {}).get("sha256")}
                               for st, inf in zip(sched["stages"], infos)]
            boundaries[name] = [j.start_tokens for j in jobs[1:]]
            runs[name] = {"first_train_loss": infos[0]["first_train_loss"],
                          "last_train_loss": infos[-1]["last_train_loss"],
                          "last_val_loss": infos[-1]["last_val_loss"], "hellaswag": infos[-1]["hellaswag"],
                          "steps": total_steps, "tokens": total_tokens, "model": out["path"],
                          "checkpoint_version": infos[-1]["checkpoint_version"],
                          "parameters": infos[-1]["parameters"],
                          "stages": {Path(j.out).name: inf for j, inf in zip(jobs, infos)}}
        else:
            runs[folder] = {**infos[0], "mix": name, "seed": last.seed, "scale": last.scale}
        outputs.append(out)
    return {
        "outputs": outputs,
        "counts": {"runs": len(outputs), "tokens": sum(o["tokens"] for o in outputs),
                   "steps": sum(o["steps"] for o in outputs)},
        "runs": runs,
        "stage_boundaries": boundaries,
        "reshuffled": list(reshuffled.values()),
        "hellaswag": hs,
    }
