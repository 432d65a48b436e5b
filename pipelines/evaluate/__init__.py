"""The `evaluate` stage: ARC, HellaSwag and MMLU by answer log-likelihood and DCLM's CORE suite, with
bootstrap CIs, and the decisions they support; `study eval` for any model outside a study.

  evaluate.py      the stage: `run` (targets -> every target scored on every task -> tables and
                   decisions), evaluate_target (one model, resumable task by task), decision_report
  targets.py       what is evaluated: trained checkpoints per mix, model size and seed; reference models
  models.py        the scorer's models (LM, HFCausalLM, CallableLM) and loading a target's (llm.c, HF, GGUF)
  tasks.py         the benchmarks' items and prompts as tasks (benchmark, form); the CORE suite
  scoring.py       the batched scorer: shared-context tree packing, one forward per batch (Batching)
  metrics.py       per-item records (acc, acc_norm, bpb, prob_norm, margin) and the metrics' direction
  progress.py      a target's folder: items files, progress.json, done.json; reuse and resume
  tables.py        table.csv, summary.csv, the log's summary lines, the notebook's wide table
  bootstrap.py     the item bootstrap: percentile CIs (table.csv, CORE) and the paired ItemBootstrap
  decisions.py     paired differences over items and seeds, p-values and verdicts, signal-to-noise,
                   decision accuracy across model sizes: decisions.json (numpy only)
  findings.py      the decision report in words; the verdict words
  core.py          DCLM CORE: its three task types through the scorer, centered accuracy, CORE with CIs
  core_prompts.py  llm-foundry's few-shot prompts and tokenization of the CORE tasks
  anymodel.py      `study eval MODEL... --tasks --limit`: any model into results/eval/<model>/ (eval_models)
  lmeval.py        the bridge to lm-evaluation-harness, for item-by-item agreement checks
"""
