"""DCLM CORE: the task files (embedded, hash-checked), llm-foundry's prompts built by hand, the three task
types scored on a real tiny GPT-2 against hand-computed log-likelihoods, centered accuracy and CORE by
hand, and `study eval` on a tiny llm.c checkpoint."""

from __future__ import annotations

import gzip
import json
import random
import shutil

import numpy as np
import pytest
import torch

from pipelines.data.core_tasks import CoreTask, load_core, read_specs
from pipelines.data.embedded import CORE_DIR
from pipelines.errors import StudyError
from pipelines.evaluate import core
from pipelines.evaluate.core_prompts import build_prompts, fewshot_indices, needs_prefix_space
from pipelines.evaluate.models import HFCausalLM

SPECS = read_specs(CORE_DIR / "core_tasks.yaml")


@pytest.fixture(scope="module")
def enc():
    from pipelines.llmc.tokenizer import gpt2

    return gpt2()


@pytest.fixture(scope="module")
def tiny(enc):
    """A real tiny GPT-2 (random weights, seeded) behind the scorer, GPT-2 BPE through tiktoken."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256, vocab_size=50257)).eval()
    return model, HFCausalLM(model, encode=enc.encode_ordinary_batch, max_length=256, prefix_token_id=50256)


def hand_logprobs(model, context: list[int], continuation: list[int]) -> tuple[float, int, bool]:
    """(sum of log p, tokens, every token the argmax) of one continuation: one plain forward, no packing."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(ids).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    n = len(context)
    lps = [float(logp[n - 1 + k, t]) for k, t in enumerate(continuation)]
    greedy = all(int(logits[n - 1 + k].argmax()) == t for k, t in enumerate(continuation))
    return sum(lps), len(continuation), greedy


def task_of(label: str, rows: list[dict], **changes) -> CoreTask:
    from dataclasses import replace

    return CoreTask(replace(SPECS[label], **changes), rows, "test", "test")


# ---------------------------------------------------------------------------------------------
# the files


def test_embedded_files_are_whole_and_every_offline_task_loads():
    from pipelines.data.core_tasks import check_embedded

    assert check_embedded() == []
    data = load_core()
    assert len(SPECS) == 22 and sorted(data.missing) == ["coqa", "squad"]
    assert len(data.tasks) == 20
    for label, t in data.tasks.items():
        assert len(t.rows) == t.spec.n_items, label  # every line, in file order
        assert t.verified == "sha256" or label.startswith("hellaswag"), label


def test_missing_corrupt_and_upstream_named_files(tmp_path):
    # llm-foundry's own layout and names (jeopardy_all.jsonl in a sub-folder, uncompressed) are found and verified
    (tmp_path / "world_knowledge").mkdir()
    (tmp_path / "world_knowledge" / "jeopardy_all.jsonl").write_bytes(gzip.decompress((CORE_DIR / "jeopardy.jsonl.gz").read_bytes()))
    data = load_core(["jeopardy"], tmp_path)
    assert data.tasks["jeopardy"].verified == "sha256" and len(data.tasks["jeopardy"].rows) == 2117
    # a named task without a file: an error that names the file (unnamed ones are recorded as missing: squad, coqa)
    with pytest.raises(StudyError, match="copa: no file copa.jsonl.gz"):
        load_core(["copa"], tmp_path)
    # one changed line: the hash check refuses it, verify=false scores it
    lines = gzip.decompress((CORE_DIR / "copa.jsonl.gz").read_bytes()).decode().splitlines()
    lines[3] = lines[3].replace("therefore", "so")
    (tmp_path / "copa.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(StudyError, match="sha256 of its lines"):
        load_core(["copa"], tmp_path)
    assert load_core(["copa"], tmp_path, check=False).tasks["copa"].verified.startswith("unverified")
    (tmp_path / "copa.jsonl").write_text('{"query": "x", "choices": ["a"], "gold": 3}\n')
    with pytest.raises(StudyError, match="line 1: gold 3"):
        load_core(["copa"], tmp_path, check=False)
    (tmp_path / "piqa.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(StudyError, match="cannot read"):
        load_core(["piqa"], tmp_path)
    with pytest.raises(StudyError, match="unknown CORE task"):
        load_core(["piqa2"])
    with pytest.raises(StudyError, match="no canonical hub copy"):
        load_core(None, "hub")


# ---------------------------------------------------------------------------------------------
# prompts, string for string with llm-foundry's rules written out by hand


def hand_shots(n: int, k: int, idx: int, rng: random.Random) -> list[int]:
    # llm-foundry get_fewshot_sample_idxs, spelled out: sample k of range(n); the item itself is swapped
    # for a redraw; the set's iteration order is the order of the examples
    drawn = set(rng.sample(range(n), k))
    if idx in drawn:
        drawn.discard(idx)
        while True:
            r = rng.choice(range(n))
            if r != idx and r not in drawn:
                drawn.add(r)
                break
    return list(drawn)


def test_fewshot_prompts_of_arc_easy_are_llm_foundrys():
    data = load_core(["arc_easy"])
    rows = [{k: v.strip() if isinstance(v, str) else v for k, v in r.items()} for r in data.tasks["arc_easy"].rows]
    ours = build_prompts(data.tasks["arc_easy"], prefix_space=True, limit=4)
    rng = random.Random(1234)
    for i in range(4):
        shots = hand_shots(len(rows), 10, i, rng)
        assert i not in shots and len(shots) == 10
        preamble = "\n".join(rows[s]["query"] + "\nAnswer: " + rows[s]["choices"][rows[s]["gold"]] for s in shots)
        context = "\n" + rows[i]["query"] + "\nAnswer:"  # "\nAnswer: " right-stripped
        p = ours[i]
        assert p.preamble == preamble and p.contexts == [context] * 4
        assert p.continuations == [" " + c for c in rows[i]["choices"]] and p.gold == rows[i]["gold"]
    # the limit never changes an item's prompt (the RNG is consumed as for the whole file)
    assert build_prompts(data.tasks["arc_easy"], True, 2) == ours[:2]
    # a SentencePiece-style tokenizer: no space added to the scored continuation
    assert build_prompts(data.tasks["arc_easy"], False, 1)[0].continuations == rows[0]["choices"]


def test_zero_shot_schema_lm_and_hellaswag_prompts():
    data = load_core(["copa", "winograd", "lambada_openai", "hellaswag_zeroshot"])
    copa = build_prompts(data.tasks["copa"], True, 1)[0]
    assert (copa.preamble, copa.contexts, copa.continuations, copa.gold) == (
        "", ["The man turned on the faucet, therefore"] * 2,
        [" the toilet filled with water.", " water flowed from the spout."], 1)
    wino = build_prompts(data.tasks["winograd"], True, 1)[0]
    assert wino.contexts == ["The city councilmen refused the demonstrators a permit because the city councilmen",
                             "The city councilmen refused the demonstrators a permit because the demonstrators"]
    assert wino.continuations == [" feared violence."] * 2 and wino.gold == 0
    lam = build_prompts(data.tasks["lambada_openai"], True, 1)[0]
    row = data.tasks["lambada_openai"].rows[0]
    assert lam.contexts == [row["context"].strip()] and lam.continuations == [" " + row["continuation"].strip()]
    hs = build_prompts(data.tasks["hellaswag_zeroshot"], True, 1)[0]
    assert hs.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he" and hs.gold == 3


def test_jeopardy_draws_shots_within_its_category_with_a_fresh_rng():
    data = load_core(["jeopardy"])
    rows = [{k: v.strip() if isinstance(v, str) else v for k, v in r.items()} for r in data.tasks["jeopardy"].rows]
    ours = build_prompts(data.tasks["jeopardy"], True, 30)
    cat = rows[0]["category"]
    members = [i for i, r in enumerate(rows) if r["category"] == cat]
    rng = random.Random(1234)
    for j, i in enumerate(members):
        if i >= 30:
            break
        shots = hand_shots(len(members), 10, j, rng)
        pre = "\n".join(rows[members[s]]["context"] + "\nAnswer: " + rows[members[s]]["continuation"] for s in shots)
        assert ours[i].preamble == pre and ours[i].category == cat
        assert ours[i].contexts == ["\n" + rows[i]["context"] + "\nAnswer:"]


def test_shots_never_include_the_item_itself():
    rng = random.Random(5)
    for idx in range(6):
        for _ in range(50):
            s = fewshot_indices(6, 5, idx, rng)
            assert idx not in s and len(s) == 5
    assert fewshot_indices(3, 10, 1, random.Random(0)) == {0, 2}  # fewer rows than shots


# ---------------------------------------------------------------------------------------------
# the three task types on a real tiny model, against hand-computed log-likelihoods


def test_multiple_choice_is_the_lowest_mean_per_token_loss(tiny, enc):
    model, lm = tiny
    query = "Question: Which one is it?"
    ctx = enc.encode_ordinary(query + "\nAnswer:")
    # plant an item whose summed and per-token log-likelihoods pick different choices
    short = " yes"
    candidates = [" it is the long and winding road", " a sort of very big tree", " purple monkey dishwasher today",
                  " maybe later than expected", " not quite the right answer here"]
    s_short = hand_logprobs(model, ctx, enc.encode_ordinary(short))
    planted = None
    for c in candidates:
        s = hand_logprobs(model, ctx, enc.encode_ordinary(c))
        if s[0] / s[1] > s_short[0] / s_short[1] and s[0] < s_short[0]:
            planted = c
            break
    assert planted is not None, "no planted pair found for this seed"
    rows = [{"query": query, "choices": [short.strip(), planted.strip()], "gold": 1}]
    task = task_of("copa", rows, continuation_delimiter="\nAnswer: ")
    prompts = build_prompts(task, needs_prefix_space(lm))
    rec = core.score_task(lm, task, prompts)[0]
    hand = [hand_logprobs(model, ctx, enc.encode_ordinary(x)) for x in (short, planted)]
    assert rec["ntok"] == [h[1] for h in hand]
    assert np.allclose(rec["lls"], [h[0] for h in hand], atol=1e-4)
    assert int(np.argmax([h[0] for h in hand])) == 0  # the summed log-likelihood prefers the short choice
    assert rec["pred"] == 1 and rec["acc"] == 1  # the per-token mean (llm-foundry) prefers the planted one
    assert rec["margin"] == pytest.approx(hand[1][0] / hand[1][1] - hand[0][0] / hand[0][1], abs=1e-5)
    p = np.exp(np.array([h[0] for h in hand]) - max(h[0] for h in hand))
    assert rec["prob_norm"] == pytest.approx(p[1] / p.sum(), rel=1e-4)
    assert rec["bpb"] == pytest.approx(-hand[1][0] / (np.log(2) * len(planted.encode())), rel=1e-5)


def test_schema_picks_the_option_under_which_the_continuation_is_likeliest(tiny, enc):
    model, lm = tiny
    rows = [{"context_options": ["The trophy did not fit in the suitcase because the trophy",
                                 "The trophy did not fit in the suitcase because the suitcase"],
             "continuation": "was too big.", "gold": 0}]
    task = task_of("winograd", rows)
    rec = core.score_task(lm, task, build_prompts(task, True))[0]
    cont = enc.encode_ordinary(" was too big.")
    hand = [hand_logprobs(model, enc.encode_ordinary(o), cont) for o in rows[0]["context_options"]]
    assert np.allclose(rec["lls"], [h[0] for h in hand], atol=1e-4) and rec["ntok"] == [len(cont)] * 2
    assert rec["pred"] == int(np.argmax([h[0] for h in hand])) and rec["acc"] == int(rec["pred"] == 0)


def test_language_modeling_is_correct_only_when_greedy_reproduces_every_token(tiny, enc):
    model, lm = tiny
    # the model's own greedy continuation of a context, as text that re-encodes to the same tokens
    found = None
    for context in ("The cat sat on the", "In the beginning there was", "My favourite colour is", "He said that",
                    "Water boils at", "The capital of France is", "Once upon a time", "She opened the door and"):
        ids = enc.encode_ordinary(context)
        greedy = []
        with torch.no_grad():
            for _ in range(3):
                greedy.append(int(model(torch.tensor([ids + greedy])).logits[0, -1].argmax()))
        text = enc.decode(greedy)
        if text.startswith(" ") and text.strip() == text[1:] and enc.encode_ordinary(text) == greedy:
            found = (context, text, greedy)
            break
    assert found is not None, "no round-tripping greedy continuation for this seed"
    context, text, greedy = found
    other = next(t for t in range(50000, 50200) if t != greedy[1] and enc.decode([t]).strip() and
                 enc.encode_ordinary(enc.decode([greedy[0], t, greedy[2]])) == [greedy[0], t, greedy[2]])
    wrong = enc.decode([greedy[0], other, greedy[2]])  # the same but its middle token
    rows = [{"context": context, "continuation": text.strip()}, {"context": context, "continuation": wrong.strip()}]
    task = task_of("lambada_openai", rows)
    recs = core.score_task(lm, task, build_prompts(task, True))
    assert [r["acc"] for r in recs] == [1, 0]
    assert hand_logprobs(model, enc.encode_ordinary(context), greedy)[2]
    assert recs[0]["lls"][0] == pytest.approx(hand_logprobs(model, enc.encode_ordinary(context), greedy)[0], abs=1e-4)


def test_contexts_are_cut_from_the_left_to_the_models_length(tiny, enc):
    model, lm = tiny
    long_query = " ".join(["word"] * 400) + " end?"
    rows = [{"query": long_query, "choices": ["a b", "c"], "gold": 0}]
    task = task_of("copa", rows)
    rec = core.score_task(lm, task, build_prompts(task, True))[0]
    ctx = enc.encode_ordinary(long_query)
    for j, c in enumerate([" a b", " c"]):
        cont = enc.encode_ordinary(c)
        kept = ctx[-(256 - len(cont)):]  # llm-foundry's trim_context at the model's 256 tokens
        assert rec["lls"][j] == pytest.approx(hand_logprobs(model, kept, cont)[0], abs=1e-4)


# ---------------------------------------------------------------------------------------------
# centered accuracy and CORE, by hand


def test_centered_accuracy_and_core_by_hand():
    recs = {
        "copa": [{"acc": a} for a in (1, 1, 1, 0)],  # 0.75, baseline 0.5 -> 0.5
        "commonsense_qa": [{"acc": a} for a in (1, 0, 0, 0, 0)],  # 0.2: v1 baseline 0.2 -> 0; v2 0.403 -> < 0
        "jeopardy": [{"acc": 1, "category": "a"}, {"acc": 0, "category": "b"}, {"acc": 0, "category": "b"},
                     {"acc": 0, "category": "b"}],  # categories 1.0 and 0.0 -> 0.5 (not 0.25 over items)
    }
    s = core.summarize(recs, SPECS, "v1", n_boot=200)
    assert s["tasks"]["copa"]["centered"] == pytest.approx(0.5)
    assert s["tasks"]["commonsense_qa"]["centered"] == pytest.approx(0.0)
    assert s["tasks"]["jeopardy"]["acc"] == pytest.approx(0.5) and s["tasks"]["jeopardy"]["centered"] == 0.5
    assert s["core"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert s["label"] == "CORE v1 3/22" and s["ci"][0] <= s["core"] <= s["ci"][1]
    v2 = core.summarize(recs, SPECS, "v2", n_boot=200)
    assert v2["tasks"]["commonsense_qa"]["centered"] == pytest.approx((0.2 - 0.403) / (1 - 0.403))
    assert core.core_label("v2", 22) == "CORE v2"
    rows = core.table_rows(recs, SPECS, "v1", 200, 0.95, 0)
    top = [r for r in rows if r["subject"] is None]
    assert len(top) == 1 and top[0]["metric"] == "core" and top[0]["label"] == "CORE v1 3/22"
    # the decision values' macro average over tasks is CORE (jeopardy weighted to its category mean)
    values, groups = core.decision_values(recs, SPECS, "v1")
    assert np.mean([values[groups == g].mean() for g in np.unique(groups)]) == pytest.approx(s["core"])


def test_dclm_reference_core_is_reproduced_from_its_per_task_accuracies():
    from pipelines.data.core_tasks import reference_results

    for row in reference_results()[:5]:
        for version, col in (("v1", "Core_v1"), ("v2", "Core_v2")):
            cen = [core.centered(float(row[lb]), SPECS[lb].baseline(version)) for lb in SPECS]
            assert np.mean(cen) == pytest.approx(float(row[col]), abs=1e-9), (row["model"], version)


# ---------------------------------------------------------------------------------------------
# study eval


def test_study_eval_on_a_tiny_llmc_checkpoint(tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.model import build_model, write_checkpoint

    folder = tmp_path / "run"
    folder.mkdir()
    write_checkpoint(build_model("d2c64"), folder / "model_00000004.bin")
    out = tmp_path / "out"
    # an llm.c folder without DONE_ markers: a message that says so, nothing written
    assert main(["eval", str(folder), "--tasks", "core:copa", "--limit", "3", "--out", str(out)]) == 2
    assert "no DONE_%08d marker" in capsys.readouterr().err and not out.exists()
    (folder / "DONE_00000004").touch()
    args = ["eval", str(folder), "--tasks", "arc_easy,core:copa,core:winograd", "--limit", "3", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "CORE v1 2/22" in text
    d = out / "run" / "step_00000004"
    table = (d / "table.csv").read_text().splitlines()
    assert any(",core,,icl,core," in line for line in table)
    items = [json.loads(x) for x in (d / "items_core_copa.jsonl").open()]
    assert [r["row"] for r in items] == [0, 1, 2]  # the first N, as lm-eval's --limit
    assert len([json.loads(x) for x in (d / "items_arc_easy_cloze.jsonl").open()]) == 3
    assert main(args) == 0 and "reusing" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0 and "reusing" not in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    shutil.rmtree(out)


def test_agreement_with_lm_eval_on_core_tasks_per_item(tmp_path):
    """lm-eval (an optional tool: skipped where it is not installed) builds the same prompts from task configs
    that encode llm-foundry's rules, with our shots forced, and gets the same log-likelihoods and predictions:
    a 10-shot multiple-choice task with the "\\nAnswer: " delimiter, a schema task and a language-modelling task."""
    pytest.importorskip("lm_eval")
    from pipelines.evaluate.lmeval import (
        compare_core_task,
        core_prompts,
        load_model_pair,
        score_lmeval,
        write_core_tasks,
    )
    from pipelines.model import build_model, write_checkpoint

    ckpt = write_checkpoint(build_model("d2c64"), tmp_path / "model_00000001.bin")
    model, tok, ours_lm, _ = load_model_pair(str(ckpt), workdir=tmp_path)
    data = load_core(["piqa", "winograd", "lambada_openai"])
    prompts = {x: core_prompts(t, ours_lm, 2) for x, t in data.tasks.items()}
    assert all(len(p.shots) == 10 for p in prompts["piqa"])
    tasks = write_core_tasks(tmp_path / "tasks", data.tasks, prompts)
    samples, _ = score_lmeval(model, tok, tmp_path / "tasks", tasks, 2, batch_size=4,
                              num_fewshot={t.name: data.tasks[t.subject].spec.num_fewshot for t in tasks})
    for t in tasks:
        ours = core.score_task(ours_lm, data.tasks[t.subject], prompts[t.subject])
        c = compare_core_task(data.tasks[t.subject].spec, prompts[t.subject], ours, samples[t.name], tok)
        assert c["n"] == 2 and c["prompt_equal"] == c["pred_equal"] == c["lmeval_acc_equal"] == 2, (t.name, c)
        assert c["max_abs_ll_diff"] < 1e-3
