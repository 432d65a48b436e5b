"""The `evaluate` stage: ARC, HellaSwag and MMLU by answer log-likelihood and DCLM's CORE suite, with
bootstrap CIs, and the decisions they support; `study eval` for any model outside a study.

  evaluate.py   targets (trained checkpoints per mix, model size and seed; reference models), tasks,
                per-item records (acc, acc_norm, bpb, prob_norm, margin), table.csv, summary.csv
  decisions.py  paired differences over items and seeds, p-values and verdicts, signal-to-noise, decision
                accuracy across model sizes: decisions.json (numpy only)
  core.py       DCLM CORE: llm-foundry's few-shot prompts and tokenization, its three task types through
                the scorer, centered accuracy, CORE with bootstrap CIs
  anymodel.py   `study eval MODEL... --tasks --limit`: any model into results/eval/<model>/ (eval_models)
  scoring.py    the batched scorer: shared-context tree packing, one forward per batch
  lmeval.py     the bridge to lm-evaluation-harness, for item-by-item agreement checks
"""
