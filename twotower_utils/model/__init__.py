"""The two-tower model and its training: where TensorFlow is imported (and serving.export).

It owns the towers (`towers`) and the TFRS retrieval model (`two_tower`), the in-graph negative
sampler (`sampler`), the losses (`losses`, laid out batch by batch in `loss_view`), the
explicit negatives (`explicit_negatives`), ensembles of independent members (`ensemble`), the
one training loop with checkpoints and early stopping, on one device or under a `tf.distribute`
strategy (`training`, resumable through `resume`, scored each epoch by `validation`), training
and refit of every member (`fitting`), the tuning step (`tuning`) and the strategies and the
multi-worker command line (`distributed`). Checkpoints go to `models/.checkpoints/<run_id>/`
and TensorBoard logs to `logs/<run_id>/`. It may import the top-level modules, `data`
(processed data) and `evaluation` (validation metrics); never `serving`, `reports` or
`pipeline` (`distributed` trains and saves its run through `system.TwoTowerRecallSystem`).

TensorFlow Recommenders needs Keras 2: `TF_USE_LEGACY_KERAS=1` is set here, once, before any
module of the package can import TensorFlow.

TensorFlow's thread pools default here to one thread per operation and one operation per core
(`TF_NUM_INTRAOP_THREADS=1`, `TF_NUM_INTEROP_THREADS` = the usable cores, at least 2): a step
is many small operations (the members' gathers, pooling and [1024, 64] products) that gain
more from running side by side than from being split across cores; on 2 cores an epoch of the
shipped four-member step took 2.0-2.7 s this way against 2.5-4.1 s with TensorFlow's own
defaults (benchmarks/README.md, "TensorFlow's thread pools"). Either variable set beforehand, or
`tf.config.threading`, wins.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
# The cores this process may use (sched_getaffinity is Linux-only; elsewhere all of them).
_cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
          else os.cpu_count() or 2)
os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(max(2, _cores)))
