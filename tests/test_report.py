"""The run report (`study report`): what a run is and its flags, each with its number, read from real
manifests (written through Run.execute) and real llm.c-format logs; the paper's Setup text and the
confusion matrix's axis follow the run's label source."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.figures import figures as paper
from pipelines.figures import tables as T
from pipelines.runs import report as R
from pipelines.runs.manifest import Run

QUIET = {"log": lambda m: None}
BUDGET = 100_000


def ensure(run: Run, stage: str, fn=lambda ctx: {}) -> None:
    """`stage` done through Run.execute (a real manifest), its upstream stages first (empty ones)."""
    for dep in run.inputs(stage):
        if run.state(dep).status != "done":
            ensure(run, dep)
    run.execute(stage, fn, **QUIET)


def main_log(folder, val: list[float], train: list[float]) -> None:
    """llm.c main.log: train loss at every step, validation loss every 10 steps (s = 0, 10, 20, ...)."""
    lines = [f"s:{10 * i} tel:{v:.4f}" for i, v in enumerate(val)]
    lines += [f"s:{s} trl:{x:.4f} lr:0.003000 norm:1.0" for s, x in enumerate(train)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.log").write_text("\n".join(lines) + "\n")


def mix_result(epochs: float = 21.0) -> dict:
    per = lambda tokens, ep, unique: {"weight": 1.0, "target_tokens": BUDGET, "tokens": tokens,  # noqa: E731
                                      "documents": unique, "unique_documents": unique,
                                      "available_documents": unique, "available_tokens": int(tokens / ep), "epochs": ep}
    return {"mixes": [{"name": "web", "budget_tokens": BUDGET, "tokens": BUDGET, "documents": 150,
                       "per_source": {"web": per(BUDGET, 0.47, 150)}},
                      {"name": "synthetic", "budget_tokens": BUDGET, "tokens": BUDGET, "documents": 32,
                       "per_source": {"synthetic": per(BUDGET, epochs, 32)}}],
            "sources": {"web": {"stage": "ingest", "documents_kept": 276, "tokens_kept": 212_334},
                        "synthetic": {"stage": "generate", "documents_kept": 32, "tokens_kept": int(BUDGET / epochs)}}}


def train_fn(tokens: int, rising: bool):
    def fn(ctx):
        main_log(ctx.dir / "web", [10.9, 9.5, 9.1, 8.9], [10.9 - 0.1 * s for s in range(30)])
        # the case: validation loss 9.02 -> 9.45 while train loss falls to 5.3
        val = [10.9, 9.02, 9.2, 9.45] if rising else [10.9, 9.5, 9.1, 8.9]
        main_log(ctx.dir / "synthetic", val, [10.9 - 0.19 * s for s in range(30)])
        return {"outputs": [{"mix": m, "dir": m, "tokens": tokens, "steps": 30} for m in ("web", "synthetic")],
                "runs": {m: {"parameters": 7_400_000} for m in ("web", "synthetic")}}
    return fn


def annotate_result(failed: int) -> dict:
    return {"counts": {"pages": 16, "documents": 16 - failed, "unparsed": failed, "parse_failure_rate": failed / 16},
            "annotators": [{"name": "0-smollm2", "model": "SmolLM2-135M-Instruct", "parsed": 16 - failed,
                            "failed": failed, "parse_failure_rate": failed / 16}]}


def classify_result(counts: dict, choice: dict | None = None, where: str = "embedded") -> dict:
    fields = [{"field": "meta.edu_score", "map": {}}]
    return {"labels": {"all": counts, "validation": {k: v // 5 for k, v in counts.items()}},
            "label_source": {"labelled": sum(counts.values()), "from": where, "fields": fields,
                             "choice": choice or {"used": "label_source", "why": "classifier.label_source"}},
            "counts": {"train": 400, "validation": 100}}


def decisions(same: int, total: int) -> dict:
    pairs = [{"a": "web", "b": "synthetic", "verdict": "no detectable difference" if i < same else "better"}
             for i in range(total)]
    return {"settings": {"level": 0.95}, "scales": ["d4c128"], "mixes": ["web", "synthetic"],
            "results": [{"scale": "d4c128", "key": f"m{i}", "metric": "acc", "pairs": [p],
                         "best": {"mix": "web", "significant": p["verdict"] == "better"}}
                        for i, p in enumerate(pairs)]}


def study(run: Run, *, epochs=21.0, tokens=30_720, failed=8, rising=True, small=True, same=3) -> Run:
    """A run with every stage the report reads, done, with the given problems planted (or not)."""
    ensure(run, "annotate", lambda ctx: annotate_result(failed))
    counts = {"0": 200, "1": 210, "2": 4 if small else 40, "3": 39, "4": 77, "5": 7 if small else 18}
    ensure(run, "classify", lambda ctx: classify_result(counts))
    ensure(run, "mix", lambda ctx: mix_result(epochs))
    ensure(run, "train", train_fn(tokens, rising))

    def evaluate(ctx):
        (ctx.dir / "decisions.json").write_text(json.dumps(decisions(same, 5)))
        return {}

    ensure(run, "evaluate", evaluate)
    return run


def flags(rep: R.Report) -> dict[str, list[R.Flag]]:
    out: dict[str, list[R.Flag]] = {}
    for f in rep.flags:
        out.setdefault(f.kind, []).append(f)
    return out


def test_every_flag_with_its_number(ci_config):
    rep = R.build(study(Run(ci_config(), "r")))
    got = flags(rep)
    assert set(got) == {"repeated_source", "under_budget", "parse_failures", "val_loss_rising", "small_classes",
                        "within_ci"}
    (rep_src,) = got["repeated_source"]
    assert rep_src.value == 21.0 and "`synthetic` is repeated 21.0 times" in rep_src.message
    assert "30,720 of the mix's tokens: about 6.5 passes" in rep_src.message  # 21 x 30,720 / 100,000
    (under,) = got["under_budget"]
    assert under.value == pytest.approx(0.307) and "31% of their mix's 100,000-token budget" in under.message
    assert got["parse_failures"][0].value == 0.5 and "50% of 16 answers" in got["parse_failures"][0].message
    (val,) = got["val_loss_rising"]
    assert "`synthetic`" in val.message and "9.02 (step 10) -> 9.45 (step 30)" in val.message
    assert val.value == pytest.approx(0.43)
    (small,) = got["small_classes"]
    assert small.value == 2 and "score 2: 4" in small.message and "score 5: 7" in small.message
    (ci,) = got["within_ci"]
    assert ci.value == 3 and "3 of 5 paired differences" in ci.message
    md = rep.markdown()
    assert md.startswith("# Run report: `r`") and "## Flags (6)" in md and "| mixes |" in md


def test_a_clean_run_has_no_flags(ci_config):
    rep = R.build(study(Run(ci_config(), "clean"), epochs=0.9, tokens=BUDGET, failed=0, rising=False, small=False,
                        same=0))
    assert rep.flags == [] and "## Flags (0)" in rep.markdown()
    assert "GPT-2 d2c64 (7.4M parameters)" in rep.fact("trained models")


def test_a_partial_run_reports_what_is_there(ci_config):
    run = Run(ci_config(), "partial")
    ensure(run, "annotate", lambda ctx: annotate_result(12))
    rep = R.build(run)
    assert [f.kind for f in rep.flags] == ["parse_failures"]
    assert any("validation loss (train)" in n for n in rep.not_checked)
    assert "annotate done" not in rep.fact("stages") and "train missing" in rep.fact("stages")


def test_validation_loss_must_rise_while_train_loss_falls():
    def log(val, train):
        rows = [{"step": 10 * i, "val_loss": v, "train_loss": None} for i, v in enumerate(val)]
        rows += [{"step": s, "val_loss": None, "train_loss": x} for s, x in enumerate(train)]
        return pd.DataFrame(rows).sort_values("step")

    falling = [10 - 0.1 * s for s in range(31)]
    assert R.val_loss_rising(log([10, 9.0, 9.3, 9.5], falling))["min_step"] == 10
    assert R.val_loss_rising(log([10, 9.0, 8.9, 8.8], falling)) is None  # still improving
    assert R.val_loss_rising(log([10, 9.0, 9.3, 9.5], [5.0] * 31)) is None  # train loss flat too: not memorising
    assert R.val_loss_rising(log([10, 9.0, 9.03], falling)) is None  # within 1%


def test_the_label_source_in_words_and_as_an_axis_name():
    sample = R.label_source(classify_result({"0": 20}))
    assert sample["used"] == "sample" and "not LLM annotations" in sample["text"] and "LLM" not in sample["short"]
    fallback = R.label_source(classify_result({"0": 20}, {"used": "fallback", "why": "Spearman 0.10 is below 0.3"}))
    assert "the fallback, because Spearman 0.10 is below 0.3" in fallback["text"]
    own = R.label_source(classify_result({"0": 20}, {"used": "annotate", "why": "ok"}, "stage 'annotate'"),
                         annotate_result(0))
    assert own["used"] == "annotate" and own["short"] == "LLM annotation" and "SmolLM2-135M-Instruct" in own["text"]


def test_paper_setup_and_confusion_axis_follow_the_label_source(ci_config):
    run = study(Run(ci_config(), "paper"))
    rep = R.build(run)
    setup = T.setup_paragraphs(rep)
    assert "An instruct LLM rates" not in setup and "labels already in the embedded sample" in setup
    assert "its labels did not train the classifier" in setup  # the annotator ran, but the labels are the sample's
    assert "30,720 tokens of its mix, whose budget is 100,000" in setup and "up to 21.0 times" in setup
    assert setup.count("{") == setup.count("}")
    assert paper.label_name(run).startswith("sample labels")
    own = R.build(run)
    own.labels = R.label_source(classify_result({"0": 20}, {"used": "annotate", "why": "ok"}, "stage 'annotate'"),
                                annotate_result(2))
    assert "An instruct LLM (SmolLM2-135M-Instruct) rates" in T.setup_paragraphs(own)
    tex = T.report_latex(rep)
    assert r"\section{Run report: paper}" in tex and r"\item \textit{repeated source}" in tex
    assert tex.count("{") == tex.count("}")


def test_study_report_prints_writes_and_never_creates_a_run(ci_config, capsys):
    run = study(Run(ci_config(), "cli"))
    results = run.root.parent
    assert main(["report", "cli", "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "# Run report: `cli`" in out and "**repeated source**" in out
    assert (run.root / "report.md").read_text() in out
    assert main(["report", "clj", "--results-dir", str(results)]) == 2  # a typo: an error, no folder
    assert "no run at" in capsys.readouterr().err and not (results / "clj").exists()
