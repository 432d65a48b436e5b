"""The educational classifier: the `classify` and `filter` stages (FineWeb-Edu's recipe).

  classify.py  train embedding + ridge and hashed n-gram + ridge classifiers on labelled pages; metrics
  filter.py    score pages with a trained classifier as datatrove steps; keep int_score >= threshold
"""
