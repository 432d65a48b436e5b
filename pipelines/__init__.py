"""Synthetic vs classifier-filtered web text for small-LM pretraining: the study's stages.

One package per stage family, named as the stages are in `study --help` and the STAGES registry
(pipelines/runs/manifest.py); stage X runs from pipelines/<family>/X.py:run.

  ingest/     ingest (web pages -> document shards), tokenize (-> llm.c token shards)
  synthetic/  prompts (Cosmopedia-style), generate (LLM completions -> synthetic documents), templates/
  annotate/   annotate (FineWeb-Edu's 5-point prompt through an LLM)
  classify/   classify (train the educational classifier)
  filter/     filter (score pages with the classifier, keep int_score >= t)
  mix/        mix: plan (weights, budgets), inmemory and streaming executors, dedup, decontaminate
  train/      train: llm.c as a subprocess, or the PyTorch reference trainer
  evaluate/   evaluate: benchmark scoring of checkpoints and reference models; lm-eval bridge
  figures/    figures: the stage, plots and LaTeX tables

Layers, bottom to top; a module imports only from its own package and lower layers, and no stage
package imports another (they meet through files and manifests; tests/test_layout.py checks this):

  6  cli, sweep, notebooks, mixsearch the `study` command, parameter grids, papermill, mixture search
  5  the stage packages above          no imports between them
  4  runs/                             manifests and stage states, the stage runner, typed readers
  3  data/, engines/, model,           documents, page sources, benchmark items; LLM backends and the
     classifier                        resumable part files; GPT-2 in torch (llm.c checkpoints, HF export);
                                       the educational classifier (features, saved format) classify and
                                       filter share
  2  config                            the typed study config
  1  llmc/, files, onednn              llm.c formats (shards, tokenizer, shapes, eval file); atomic files;
                                       CPU kernels (oneDNN matmul, a heap that keeps its blocks)
  0  errors                            StudyError
"""

import os

# OpenMP threads that spin while they wait make every torch process slower on a shared or busy machine
# (scoring beside one busy process: 28.3 s spinning, 13.5 s passive). Set before torch loads its
# OpenMP runtime, so every entry point (study, notebooks, sweeps, tests) gets it; a value you set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
