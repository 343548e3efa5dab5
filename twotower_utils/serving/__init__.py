"""Serving a saved run: run directories, nearest-neighbour indexes, batch top-k and export.

It owns the files of a run directory `models/<run_id>/` and their checks
(`artifacts.RunArtifacts`, which `TwoTowerRecallSystem.save` and `load` go through), the
brute-force and ScaNN indexes (`indexes`), the saved run as a serving object with embedding
export and offline batch recommendations (`run`, the command `python -m
twotower_utils.serving`) and the SavedModel export (`export`, the one module here that
imports TensorFlow, when called). It may import the top-level modules, `evaluation` (top-k)
`data.processed` (the format of the features it saves, `ID_FEATURE`) and
`data.fingerprint` (the name of the fingerprint file it saves); never `model`,
`reports` or `pipeline`: serving starts from the saved files, not from the training code.

`TF_USE_LEGACY_KERAS=1` is set here too, since `export` may be the first to import TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
