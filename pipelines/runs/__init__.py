"""Runs: results/<run>/<stage>/ folders, their manifests, and running stages in order.

  manifest.py  STAGES (the registry: runner, result type, config sections, inputs), Run, StageContext,
               stage states (done / stale / incomplete / missing), manifests written last and atomically
  results.py   typed stage results (each stage's in its package's result.py) and read_result(run, stage),
               the one way the report, readers, figures and notebooks read a finished stage
  runner.py    run_stages: what `study run --direct`, sweeps, notebooks and tests call; the status table
  provenance.py  which data sets (embedded, hub, local) a stage reads, for its manifest
  readers.py   readers of a stage's outputs through its result (a stage's documents, the mix tables)
  trainlog.py  llm.c's main.log and stdout step lines -> tables; a schedule's stages end to end
  report.py    the run report (`study report`): what the run is, and flags with their numbers
"""
