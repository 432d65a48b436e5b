"""Real web text in: the `ingest` and `tokenize` stages.

  ingest.py    web pages (hub or local files, via pipelines/data/pages.py) -> train / val document shards
  tokenize.py  ingest's documents -> llm.c token shards (for llm.c runs outside the study)
"""
