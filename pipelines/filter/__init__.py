"""The `filter` stage: the classify stage's classifier applied to pages, as datatrove steps.

  filter.py  EduScoreFilter (score batches, keep int_score >= threshold, histograms per task), the
             pipeline on the local / Slurm / Ray executor, the manifest; readers for the notebook
"""
