"""Train the two-tower model on the MovieLens-100K benchmark split and measure it.

    .venv/bin/python benchmarks/train_ml100k.py [--config config.json] [--set KEY VALUE ...]
        [--out benchmarks/results/ml100k] [--ml100k-dir DIR]

Writes to `--out`: `recommendations.csv` (`user_id,item_id,rank`: the test users' top 10
among the items seen in training, excluding each user's training items), `metrics.json`
(scored from that CSV with `evaluation.evaluate_recommendations`, plus timings), and
prints the same. Timings: seconds per epoch, training time to the best validation epoch, and
the step time of the project's training step against a bare TensorFlow loop computing the
same thing (same embedding tables, features, history pooling, layers, negatives with
rejection, BCE and a fused Adam update, on raw variables: no Keras, no TFRS), as a ratio.
Both are timed in the same process, interleaved in blocks, and the medians are compared,
because the machine is shared. A bare matrix-factorisation loop (id embeddings only, same
size and negatives) is reported too, as the absolute floor.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import _common  # noqa: E402  (first: the repository root on sys.path)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from twotower_utils.evaluation.metrics import evaluate_recommendations  # noqa: E402
from twotower_utils.logs import configure_logging  # noqa: E402
from twotower_utils.model.encoding import FeatureEncoding  # noqa: E402
from twotower_utils.model.sampler import PairSampler  # noqa: E402
from twotower_utils.model.training import Trainer  # noqa: E402
from twotower_utils.model.two_tower import MODEL_DEFAULTS, feature_dim  # noqa: E402
from twotower_utils.system import TwoTowerRecallSystem  # noqa: E402

ROOT = _common.ROOT


class BareLoop(tf.Module):
    """The project's BCE training step in raw TensorFlow: variables, ops, fused Adam.

    Mirrors `TwoTowerModel` for the given data and config (same embedding tables and
    feature encoders, history pooling with history dropout, layers, negatives from the same
    `PairSampler`, per-positive BCE, L2 on the outputs), so the ratio of step times
    measures the framework's overhead (Keras layers, TFRS model, optimizer wrapper, our
    loop). With `mf_only=True` the towers shrink to id embeddings: matrix factorisation
    with the same embedding size and negatives, the absolute floor.
    """

    def __init__(self, data, config, mf_only: bool = False):
        super().__init__()
        m, options = config.model, {k: getattr(config.model, k, v)
                                    for k, v in MODEL_DEFAULTS.items()}
        self.mf_only, self.k, self.d = mf_only, config.data.num_negatives, m.embedding_dim
        self.rate, self.lr, self.l2 = m.dropout, config.training.learning_rate, \
            m.l2_regularization
        self.history_dropout = 0.0 if mf_only else options["history_dropout"]
        init = tf.random_uniform_initializer(-0.05, 0.05, seed=1)
        self.vars, self.sides = [], {}
        self.sampler = PairSampler(data.history, config.data.negative_sampling,
                                   config.data.popularity_alpha, seed=0)
        for side, size in (("user", data.num_users), ("item", data.num_items)):
            specs = [] if mf_only else data.feature_specs.get(side, [])
            side_vars, width = {}, 0
            # The towers' own encoding of the raw tables, as the package's model does.
            tables = dict(FeatureEncoding(specs).encode_tables(
                {spec["name"]: data.features[f"{side}/{spec['name']}"] for spec in specs}))
            if mf_only or side == "item" or options["use_user_id"]:
                side_vars["id"] = self._var(init([size, self.d]))
                width += self.d
            for spec in specs:
                if spec["type"] == "numeric":
                    width += 1
                else:
                    n = len(spec["vocabulary"]) + 1
                    side_vars[spec["name"]] = self._var(init([n, feature_dim(n, self.d)]))
                    width += feature_dim(n, self.d)
            if side == "user" and m.use_history and not mf_only:
                side_vars["history"] = self._var(init([data.num_items, self.d]))
                width += self.d + 1
            layers = []
            for units in ([] if mf_only else m.hidden_layers):
                layers.append((self._var(init([width, units])), self._var(tf.zeros([units])),
                               self._var(tf.ones([units])), self._var(tf.zeros([units]))))
                width = units
            proj = (self._var(init([width, self.d])), self._var(tf.zeros([self.d]))) \
                if (m.output_projection and not mf_only) else None
            self.sides[side] = (specs, tables, side_vars, layers, proj)
        self.slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
                      for v in self.vars]
        self.t = tf.Variable(0.0)

    def _var(self, value):
        self.vars.append(tf.Variable(value))
        return self.vars[-1]

    def _tower(self, side, idx):
        specs, tables, v, layers, proj = self.sides[side]
        parts = [tf.gather(v["id"], idx)] if "id" in v else []
        for spec in specs:
            value = tf.gather(tables[spec["name"]], idx)
            if spec["type"] == "numeric":
                parts.append(value[:, None])
            elif spec["type"] == "categorical":
                parts.append(tf.gather(v[spec["name"]], value))
            else:
                mask = tf.cast(value > 0, tf.float32)[..., None]
                summed = tf.reduce_sum(tf.gather(v[spec["name"]], value) * mask, 1)
                parts.append(summed / tf.maximum(tf.reduce_sum(mask, 1), 1.0))
        if "history" in v:
            unique, where = tf.unique(idx)
            rows = tf.gather(self.sampler.history, unique)
            if self.history_dropout > 0:
                keep = self.sampler.kept(tf.gather(unique, rows.value_rowids()),
                                         rows.flat_values, self.sampler.step_seed(),
                                         self.history_dropout)
                rows = tf.ragged.boolean_mask(rows, rows.with_flat_values(keep))
            matrix = tf.sparse.SparseTensor(
                tf.stack([rows.value_rowids(), tf.cast(rows.flat_values, tf.int64)], 1),
                tf.ones_like(rows.flat_values, tf.float32),
                tf.stack([rows.nrows(), tf.shape(v["history"], tf.int64)[0]]))
            sums = tf.gather(tf.sparse.sparse_dense_matmul(matrix, v["history"]), where)
            counts = tf.gather(tf.cast(rows.row_lengths(), tf.float32), where)[:, None]
            parts += [sums / tf.maximum(counts, 1.0), tf.math.log1p(counts)]
        x = tf.concat(parts, 1)
        for kernel, bias, gamma, beta in layers:
            x = tf.matmul(x, kernel) + bias
            mean, var = tf.nn.moments(x, [0])
            x = tf.nn.relu(tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-3))
            keep = self.sampler.generator.uniform(tf.shape(x)) >= self.rate
            x = tf.where(keep, x / (1.0 - self.rate), 0.0)
        return x if proj is None else tf.matmul(x, proj[0]) + proj[1]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)] * 2)
    def step(self, users, items):
        """One training step on a batch of positives; returns the loss."""
        neg, valid = self.sampler.sample(users, self.k)
        with tf.GradientTape() as tape:
            u = self._tower("user", users)
            unique, where = tf.unique(tf.concat([items, tf.reshape(neg, [-1])], 0))
            iv = self._tower("item", unique)
            b = tf.size(users)
            pos = tf.reduce_sum(u * tf.gather(iv, where[:b]), 1, keepdims=True)
            negs = tf.einsum("bd,bkd->bk", u,
                             tf.reshape(tf.gather(iv, where[b:]), [b, self.k, -1]))
            bce = tf.concat([tf.nn.softplus(-pos),
                             tf.nn.softplus(negs) * tf.cast(valid, tf.float32)], 1)
            loss = tf.reduce_sum(bce) / tf.cast(b, tf.float32) + self.l2 * (
                tf.reduce_mean(tf.reduce_sum(u**2, 1))
                + tf.reduce_mean(tf.gather(tf.reduce_sum(iv**2, 1), where)))
        grads = tape.gradient(loss, self.vars)
        self.t.assign_add(1.0)
        b1, b2 = 0.9, 0.999
        for var, (m, v), g in zip(self.vars, self.slots, grads, strict=True):
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=m.handle, v=v.handle, beta1_power=b1**self.t,
                beta2_power=b2**self.t, lr=self.lr, beta1=b1, beta2=b2, epsilon=1e-7,
                grad=tf.convert_to_tensor(g))
        return loss


def time_steps(step, users, items, batch, blocks=5, steps_per_block=20, warmup=3):
    """Median seconds per step over `blocks` blocks of `steps_per_block` steps, as a list."""
    starts = np.arange(0, len(users) - batch, batch)
    for s in starts[:warmup]:
        step(users[s:s + batch], items[s:s + batch])
    times = []
    for block in range(blocks):
        chosen = starts[(block * steps_per_block + np.arange(steps_per_block)) % len(starts)]
        began = time.perf_counter()
        for s in chosen:
            step(users[s:s + batch], items[s:s + batch])
        times.append((time.perf_counter() - began) / steps_per_block)
    return times


def main(argv=None) -> int:
    """Run the benchmark; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config.json"))
    _common.add_set_option(parser)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ml100k"))
    _common.add_ml100k_option(parser)
    parser.add_argument("--run-id", default="benchmark-ml100k")
    parser.add_argument("--skip-step-timing", action="store_true")
    parser.add_argument("--step-timing-only", action="store_true",
                        help="skip training: prepare the data and time the steps only")
    args = parser.parse_args(argv)
    _common.use_ml100k_dir(args)
    overrides = {**_common.ML100K_OVERRIDES, **_common.set_overrides(parser, args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    configure_logging()  # the data stage's and the epochs' progress lines
    system = TwoTowerRecallSystem(args.config, overrides, run_id=args.run_id)
    system.prepare_data()
    if args.step_timing_only:
        print(json.dumps(step_timing(system), indent=2))
        return 0
    system.build_model()
    result = system.train_model()
    data = system.data
    test_users = data.test["user_id"].unique()
    recs = system.recommend_batch(test_users, top_k=10)
    recs[["user_id", "item_id", "rank"]].to_csv(out / "recommendations.csv", index=False)
    scored = recs.assign(score=-recs["rank"].astype(float))
    metrics = evaluate_recommendations(data.test[["user_id", "item_id"]], scored, k_values=(10,),
                                       metrics=("ndcg", "precision", "recall", "map",
                                                "map_at_k", "hit_rate"))
    epochs = result.history
    report = {
        "metrics_from_recommendations_csv": metrics,
        "metrics_from_evaluate_model": system.evaluate_model(k_values=[10]),
        "users_scored": int(recs["user_id"].nunique()),
        "best_epoch": result.best_epoch,
        "epochs_run": len(epochs),
        "seconds_to_best_epoch": round(result.seconds_to_best, 2),
        "seconds_per_epoch_mean": round(float(np.mean([r["seconds"] for r in epochs])), 2),
        "train_seconds_per_epoch_median": round(float(np.median(
            [r["train_seconds"] for r in epochs])), 2),
        "overrides": overrides,
    }
    if not args.skip_step_timing:
        report.update(step_timing(system))
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def step_timing(system) -> dict:
    """Project step vs bare loop vs MF floor, interleaved; medians in ms and the ratios."""
    from twotower_utils.model.fitting import member_config
    from twotower_utils.model.two_tower import build_model

    # One member's step: an ensemble's step runs one such per member, each on its own batch.
    config, data = member_config(system.config, 0), system.data
    users = data.train["user_idx"].to_numpy().astype(np.int32)
    items = data.train["item_idx"].to_numpy().astype(np.int32)
    order = np.random.default_rng(0).permutation(len(users))
    users, items = users[order], items[order]
    model = build_model(data, config)
    trainer = Trainer(model, config, users, items, data.interactions("validation"), data.history,
                      checkpoint_dir=config.path("models_dir") / ".checkpoints" / "step-timing")
    # The bare loops must stay referenced: a tf.function method holds its object weakly.
    bare, bare_mf = BareLoop(data, config), BareLoop(data, config, mf_only=True)
    loops = {"project": trainer._step, "bare": bare.step, "bare_mf": bare_mf.step}
    samples = {name: [] for name in loops}
    for _ in range(4):  # interleave, so load from other processes hits all loops alike
        for name, step in loops.items():
            samples[name] += time_steps(step, users, items, config.training.batch_size, blocks=2)
    ms = {name: 1000 * float(np.median(v)) for name, v in samples.items()}
    return {"step_ms_project": round(ms["project"], 2), "step_ms_bare": round(ms["bare"], 2),
            "step_ms_bare_mf": round(ms["bare_mf"], 2),
            "step_ratio_project_vs_bare": round(ms["project"] / ms["bare"], 3),
            "step_ratio_project_vs_bare_mf": round(ms["project"] / ms["bare_mf"], 3)}


if __name__ == "__main__":
    raise SystemExit(main())
