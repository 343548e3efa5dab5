"""Config overrides for the small planted-cluster dataset the TensorFlow tests train on.

One place for the shared shape (300 users, 120 items, 6000 interactions, a tiny tower), so the
model, serving and distributed tests train on the same data; each adds its own epochs etc.
"""

SMALL_SYNTHETIC = {
    "data.dataset": "synthetic",
    "data.user_features": None,
    "data.item_features": None,
    "data.synthetic": {"num_users": 300, "num_items": 120, "num_interactions": 6000,
                       "num_clusters": 4, "seed": 1},
    "data.split.method": "random",
    "model.embedding_dim": 16,
    "model.hidden_layers": [32],
    "training.batch_size": 256,
    "training.learning_rate": 0.01,
    # One BCE model with few negatives, whatever config.json's quality settings are; the
    # tests that need ensembles, refits or other losses ask for them.
    "model.ensemble_size": 1,
    "training.loss": "bce",
    "training.refit_with_validation": False,
    "data.num_negatives": 4,
}
