"""The `classify` stage: train the educational classifier on labelled pages (FineWeb-Edu's recipe).

  classify.py  labels, the seeded stratified split, the ridge head, training both kinds, the stage
  metrics.py   classifier_metrics: MSE, accuracy, macro-F1, confusion matrix, P/R/F1 at the threshold

The classifier itself (features, saved format, load_classifier) is pipelines/classifier.py, which the
`filter` stage (pipelines/filter/) reads too.
"""
