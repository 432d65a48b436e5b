"""Cosmopedia-style synthetic text: the `prompts` and `generate` stages.

  prompts.py   seed (web extract or topic) x audience x style, rendered from templates/*.yaml
  generate.py  a completion per prompt (resumable part files), cleaned into synthetic documents
  templates/   audiences, styles and the shared rules, as data
"""
