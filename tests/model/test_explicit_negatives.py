"""Explicit negatives (label-0 rows): saved split like the positives, never a positive of
their user, in the BCE beside the sampled negatives, and effective: a model given them for
planted "shown but disliked" items ranks those items lower than one without."""

import numpy as np
import pandas as pd
import pytest
from synthetic_settings import SMALL_SYNTHETIC

from twotower_utils.data.synthetic import generate_synthetic
from twotower_utils.system import TwoTowerRecallSystem

pytestmark = pytest.mark.tf

DISLIKED_PER_CLUSTER = 6
EPOCHS = 12  # at 8 the effect sat at the 0.05 margin (+0.044 on this machine); at 12: +0.09


def planted_files(folder):
    """Synthetic data where, per taste cluster, a few of its own items are disliked: the
    cluster's users never take them and are shown most of them (label 0)."""
    raw = generate_synthetic(300, 120, 6000, num_clusters=4, seed=1)
    users, items, log = raw.users, raw.items, raw.interactions
    rng = np.random.default_rng(0)
    disliked = {c: rng.choice(items.loc[items["cluster"] == c, "item_id"].to_numpy(),
                              DISLIKED_PER_CLUSTER, replace=False)
                for c in sorted(items["cluster"].unique())}
    user_cluster = users.set_index("user_id")["cluster"]
    bad = {(c, i) for c, its in disliked.items() for i in its}
    keep = [(int(c), i) not in bad for c, i in zip(user_cluster[log["user_id"]], log["item_id"])]
    log = log[np.asarray(keep)]
    rows = [(u, i) for u, c in user_cluster.items() for i in disliked[int(c)]
            if rng.random() < 0.7]
    negatives = pd.DataFrame({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows],
                              "label": 0, "rating": 1.0,
                              "timestamp": int(log["timestamp"].max()) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    users.to_csv(folder / "users.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    pd.concat([log, negatives]).to_csv(folder / "interactions.csv", index=False)
    return {"data.dataset": "csv", "data.users_csv": str(folder / "users.csv"),
            "data.items_csv": str(folder / "items.csv"),
            "data.interactions_csv": str(folder / "interactions.csv"),
            "data.item_features": {"category": "categorical", "tags": "multi_hot"}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    root = tmp_path_factory.mktemp("explicit")
    paths = {f"paths.{name}": str(root / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}
    return {**{k: v for k, v in SMALL_SYNTHETIC.items() if k != "data.synthetic"},
            **paths, **planted_files(root / "files"), "training.epochs": EPOCHS,
            "training.early_stopping_patience": EPOCHS}


def system_for(project_root, settings, **extra):
    system = TwoTowerRecallSystem(project_root / "config.json", {**settings, **extra},
                                  run_id=f"explicit{len(extra)}")
    system.prepare_data(reuse=True)
    system.build_model()
    return system


def test_explicit_negatives_are_saved_split_and_never_a_positive(project_root, settings):
    system = system_for(project_root, settings, **{"training.explicit_negatives": 3})
    data = system.data
    frame = data.explicit_negatives
    # About four per user: the per-user validation share of three rounds to none.
    assert len(frame) > 300 and {"train", "test"} <= set(frame["split"])
    counts = data.stats["explicit_negatives"]
    assert sum(counts[s] for s in ("train", "validation", "test")) == len(frame)
    width = data.num_items
    positives = pd.concat([data.train, data.validation, data.test])
    known = set(positives["user_idx"].to_numpy(np.int64) * width + positives["item_idx"])
    keys = frame["user_idx"].to_numpy(np.int64) * width + frame["item_idx"]
    assert not known & set(keys)
    # What training draws: only the user's own training explicit negatives.
    users = np.repeat(data.train["user_idx"].to_numpy(np.int32), 1)
    drawn, valid = system.model.explicit.sample(system.model.sampler.generator, users, 5)
    own = set(frame.loc[frame["split"] == "train", "user_idx"].to_numpy(np.int64) * width
              + frame.loc[frame["split"] == "train", "item_idx"])
    drawn_keys = (np.repeat(users, 5).astype(np.int64) * width
                  + drawn.numpy().ravel())[valid.numpy().ravel()]
    assert len(drawn_keys) and set(drawn_keys) <= own and not set(drawn_keys) & known


def test_the_loss_with_explicit_negatives_equals_a_hand_computation(project_root, settings):
    from twotower_utils.model import losses
    from twotower_utils.model.loss_view import bce_batch_breakdown

    system = system_for(project_root, settings, **{
        "training.explicit_negatives": 2, "training.explicit_negative_weight": 0.5,
        "model.l2_regularization": 0.0})
    model, data = system.model, system.data
    users = data.train["user_idx"].to_numpy(np.int32)[:6]
    items = data.train["item_idx"].to_numpy(np.int32)[:6]
    generator = model.sampler.generator
    state = generator.state.numpy()
    negatives, valid = model.sampler.sample(users, model.num_negatives)
    explicit, explicit_valid = losses.explicit_negatives(model, 0, users)
    generator.state.assign(state)
    loss = float(losses.member_loss(model, 0, users, items))
    user_vec = model.embed_users(users).numpy()
    scored = np.concatenate([items[:, None], negatives.numpy(), explicit.numpy()], axis=1)
    item_vec = model.embed_items(scored.ravel()).numpy().reshape(*scored.shape, -1)
    z = np.einsum("bd,bkd->bk", user_vec, item_vec) / model.temperature
    k = model.num_negatives
    weight = np.c_[np.ones((6, 1)), valid.numpy(), 0.5 * explicit_valid.numpy()]
    terms = np.c_[np.log1p(np.exp(-z[:, :1])), np.log1p(np.exp(z[:, 1:]))]
    assert explicit_valid.numpy().any() and scored.shape[1] == 1 + k + 2
    assert loss == pytest.approx((terms * weight).sum() / 6, rel=1e-5)
    breakdown = bce_batch_breakdown(model, data, batch_size=64)
    assert breakdown.matches, (breakdown.loss, breakdown.model_loss)
    assert "explicit negative" in set(breakdown.pairs["kind"])
    assert breakdown.negatives_hit_positives == 0


def percentile_rank(system) -> float:
    """Mean share of candidate items a user scores above each of their held-out explicit
    negatives (higher: the disliked item is ranked lower)."""
    data, model = system.data, system.model
    test = data.explicit_negatives[data.explicit_negatives["split"] == "test"]
    scores = model.user_embeddings(test["user_idx"].to_numpy()) @ model.item_embeddings().T
    scores[:, ~data.train_item_mask()] = -np.inf
    own = scores[np.arange(len(test)), test["item_idx"].to_numpy()]
    return float(((scores > own[:, None]).sum(1) / data.train_item_mask().sum()).mean())


def test_explicit_negatives_rank_the_planted_disliked_items_lower(project_root, settings):
    from twotower_utils.reports.embedding_analysis import (
        auc_summary,
        explicit_negative_auc,
        score_samples,
    )

    ranks, aucs = {}, {}
    for count in (0, 4):
        system = system_for(project_root, settings, **{"training.explicit_negatives": count})
        system.train_model(save=False)
        ranks[count] = percentile_rank(system)
        vectors = (system.model.user_embeddings(np.arange(system.data.num_users)),
                   system.model.item_embeddings(), system.data)
        aucs[count] = explicit_negative_auc(*vectors)
        summary = auc_summary(*score_samples(*vectors), *vectors)
        assert "sampled negatives" in summary and "held-out explicit negatives" in summary
    print(f"held-out disliked items: mean percentile rank {ranks[0]:.3f} without, "
          f"{ranks[4]:.3f} with explicit negatives; AUC vs test positives {aucs[0]:.3f} / "
          f"{aucs[4]:.3f}")
    assert ranks[4] > ranks[0] + 0.05
    assert aucs[4] > aucs[0]


def test_training_says_how_many_explicit_negatives_it_uses(project_root, settings):
    from dataclasses import replace

    from twotower_utils.data.processed import empty_explicit_negatives
    from twotower_utils.model.explicit_negatives import explicit_negative_summary
    from twotower_utils.model.loss_view import bce_batch_breakdown

    system = system_for(project_root, settings, **{
        "training.explicit_negatives": 2, "model.ensemble_size": 2,
        "model.ensemble_member_overrides": [{}, {"training.explicit_negatives": 0}]})
    line = explicit_negative_summary(system.model, system.data)
    assert "2/0 per positive" in line and "explicit-negative terms per epoch" in line
    # Each member its own: member 1 draws none.
    assert "explicit negative" in set(bce_batch_breakdown(system.model, system.data, 32,
                                                          member=0).pairs["kind"])
    other = bce_batch_breakdown(system.model, system.data, 32, member=1)
    assert other.matches and "explicit negative" not in set(other.pairs["kind"])
    off = system_for(project_root, settings)
    assert "not used in training" in explicit_negative_summary(off.model, off.data)
    none = replace(system.data, explicit_negatives=empty_explicit_negatives())
    assert "none in the data (training.explicit_negatives is set" in \
        explicit_negative_summary(system.model, none)
