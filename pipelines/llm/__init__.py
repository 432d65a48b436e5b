"""LLMs behind one call, for generate and annotate.

  backends.py  transformers (CPU/GPU, the bundled SmolLM2 GGUF), vLLM, an OpenAI-compatible server
  parts.py     resumable part files: one line per answer, fsync'd; a lock per folder; a key that
               discards answers when what they depend on changes
"""
