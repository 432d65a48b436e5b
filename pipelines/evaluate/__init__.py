"""The `evaluate` stage: ARC, HellaSwag and MMLU by answer log-likelihood, with bootstrap CIs.

  evaluate.py  targets (trained checkpoints, reference models), tasks, per-item records, table.csv
  scoring.py   the batched scorer: shared-context tree packing, one forward per batch
  lmeval.py    the bridge to lm-evaluation-harness, for item-by-item agreement checks
"""
