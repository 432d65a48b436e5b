"""LLMs behind one call, for generate and annotate.

  backends.py  transformers (CPU/GPU, the bundled SmolLM2 GGUF), vLLM, an OpenAI-compatible server
  parts.py     resumable part files: one line per answer, fsync'd; a lock per folder; a key that
               discards answers when what they depend on changes
  inference.py datatrove's InferenceRunner as the executor (`executor.kind: datatrove`): the same
               requests, run here, on Slurm or on Ray against an endpoint or vLLM / SGLang servers the
               tasks start, imported into the same part files
  serve.py     OpenAI-compatible servers on this machine (transformers serve, vLLM, SGLang)
"""
