"""The `annotate` stage: FineWeb-Edu's additive 5-point educational prompt through one LLM or a jury.

  annotate.py  prompt, score parsing, resumable annotation of ingest's pages, readers for the notebook
"""
