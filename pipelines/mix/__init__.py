"""The `mix` stage: token-budgeted blends of sources, deduplicated and decontaminated, as llm.c shards.

  mix.py            the stage: picks the executor
  plan.py           one plan for both executors: weights, each source's part of the budget, seeded generator,
                    the manifest's records
  inmemory.py       the default executor: union of sources, exact + near-duplicate removal
  streaming.py      `mix.streaming: true`: sources streamed into shards, resumable per shard
  prepared.py       the deduplicated, decontaminated, tokenized union kept by key, shared between runs
  dedup.py          exact and MinHash (datatrove) duplicates
  decontaminate.py  benchmark n-gram index and matching
"""
