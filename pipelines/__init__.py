"""Synthetic vs classifier-filtered web text for small-LM pretraining: the study's stages.

Stages (each a module): ingest -> tokenize (-> later: prompts, generate, annotate, classifier,
mix, train, evaluate, figures). Each writes results/<run>/<stage>/ and, last, manifest.json.
"""

__version__ = "0.1.0"
