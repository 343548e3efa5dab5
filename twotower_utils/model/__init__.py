"""The two-tower model and its training: where TensorFlow is imported (and serving.export).

It owns the towers (`towers`) and the TFRS retrieval model (`two_tower`), the in-graph
negative sampler (`sampler`), the losses (`losses`, laid out batch by batch in `loss_view`),
the explicit negatives (`explicit_negatives`), ensembles of independent members (`ensemble`),
the one training loop with checkpoints and early stopping, on one device or under a
`tf.distribute` strategy (`training`, resumable through `resume`), training and refit of every
member (`fitting`), the tuning step (`tuning`) and the strategies and the multi-worker command
line (`distributed`). Checkpoints go to `models/.checkpoints/<run_id>/` and TensorBoard logs
to `logs/<run_id>/`. It may import the top-level modules, `data` (processed data) and
`evaluation` (validation metrics); never `serving`, `reports` or `pipeline` (`distributed`
trains and saves its run through `system.TwoTowerRecallSystem`).

TensorFlow Recommenders needs Keras 2: `TF_USE_LEGACY_KERAS=1` is set here, once, before any
module of the package can import TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
