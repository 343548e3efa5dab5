"""Offline evaluation: the protocol, ranking metrics, top-k selection and the baselines.

It owns the evaluation protocol, the one definition of who is scored on a split against
what among which items (`protocol`), the per-user ranking metrics, the one implementation
of their formulas (`ranking`), the exact top-k over score matrices with seen items excluded
(`topk`), the baselines the model is compared against (`baselines`: most-popular, EASE,
item-kNN) and the DataFrame-level evaluation (an adapter over `ranking`) and comparison
tables (`metrics`). It works on numpy/scipy/pandas arrays only: it may import the top-level
modules and nothing else of the package, never TensorFlow, so the model, serving and the
reports can all use it.
"""
