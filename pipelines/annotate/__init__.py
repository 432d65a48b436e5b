"""The `annotate` stage: FineWeb-Edu's additive 5-point educational prompt through one LLM or a jury.

  prompt.py    the prompt, the parsed score line, the digits' distribution -> an expected score
  scoring.py   annotate.scoring's modes (parse / distribution / both), one class each: what a mode
               reads, how it labels a page, what it adds to the manifest
  annotate.py  resumable annotation of ingest's pages (answers and digit scores in part files), the
               labels, the manifest, readers for the notebook
"""
