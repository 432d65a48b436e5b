"""LLMs behind one call, for generate and annotate (and the model loading evaluate shares).

  backend.py               the interface (`generate`, `candidate_probs`), Completion, Prompt, prompt seeds
  factory.py               make_backend: the backend a config's `kind` names
  transformers_backend.py  transformers (CPU/GPU, the bundled SmolLM2 GGUF); load_causal_lm, which every
                           stage's model loading goes through
  vllm_backend.py          vLLM's offline engine on GPUs
  openai_backend.py        an OpenAI-compatible server: retries, bounded concurrency, the key from the env
  parts.py                 resumable part files: one line per answer, fsync'd; a lock per folder; a key
                           that discards answers when what they depend on changes
  inference.py             datatrove's InferenceRunner as the executor (`executor.kind: datatrove`): the
                           same requests, run here, on Slurm or on Ray against an endpoint or vLLM /
                           SGLang servers the tasks start, imported into the same part files
  serve.py                 OpenAI-compatible servers on this machine (transformers serve, vLLM, SGLang)
"""
