"""Offline evaluation: ranking metrics, top-k selection and the non-neural baselines.

It owns the per-user ranking metrics (`ranking`), the exact top-k over score matrices with
seen items excluded (`topk`), the baselines the model is compared against (`baselines`:
most-popular, EASE, item-kNN) and the DataFrame-level evaluation and comparison tables
(`metrics`). It works on numpy/scipy/pandas arrays only: it may import the top-level modules
and nothing else of the package, never TensorFlow, so the model, serving and the reports can
all use it.
"""
