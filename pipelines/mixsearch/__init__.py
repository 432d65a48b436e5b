"""`study mixsearch SPEC`: mixture weights chosen from a swarm of small proxy runs (RegMix-style), on top
of the stages (layer 6, beside sweep.py, whose sharing of upstream stages it reuses).

  spec.py     the search's YAML spec (configs/mixsearch/*.yaml), strict, with clear errors
  sample.py   seeded Dirichlet sampling around the prior; repetition caps as largest weights
  proxies.py  the census, proxy and validation runs (shared upstream stages); their targets
  regress.py  LightGBM and linear regressors, k-fold rank correlation, top-k search, bootstrap
  report.py   proxies.csv, the figures and report.md under results/<search>/
  paper.py    results/<search>/paper/: LaTeX tables (proposal, proxies, a paragraph) and the figures
  search.py   the search, start to end, resumable
"""
