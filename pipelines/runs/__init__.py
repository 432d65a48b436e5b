"""Runs: results/<run>/<stage>/ folders, their manifests, and running stages in order.

  manifest.py  STAGES (the registry: runner, config sections, inputs), Run, StageContext, stage states
               (done / stale / incomplete / missing), manifests written last and atomically
  runner.py    run_stages: what `study run --direct`, sweeps, notebooks and tests call; the status table
  provenance.py  which data sets (embedded, hub, local) a stage reads, for its manifest
  readers.py   typed readers of a stage's outputs (a stage's documents, the mix tables)
  trainlog.py  llm.c's main.log and stdout step lines -> tables; a schedule's stages end to end
  report.py    the run report (`study report`): what the run is, and flags with their numbers
"""
