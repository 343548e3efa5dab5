"""Serving: the exported recommender SavedModel (checked in a fresh process that never imports
twotower_utils), brute-force and ScaNN indexes, chunked batch top-k and embedding export, on a
small trained synthetic run."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")

from synthetic_settings import SMALL_SYNTHETIC  # noqa: E402

# Two joined members, as the shipped configuration joins four: export and serving must see
# the members' embeddings side by side.
SMALL = {**SMALL_SYNTHETIC, "training.epochs": 3, "model.ensemble_size": 2}


@pytest.fixture(scope="module")
def system(project_root, tmp_path_factory):
    """A trained, saved `TwoTowerRecallSystem` on small synthetic data."""
    from twotower_utils.system import TwoTowerRecallSystem

    work = tmp_path_factory.mktemp("serving")
    paths = {f"paths.{name}": str(work / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}
    system = TwoTowerRecallSystem(project_root / "config.json", {**SMALL, **paths},
                                  run_id="serve")
    system.prepare_data()
    system.train_model()
    return system


@pytest.fixture(scope="module")
def run(system):
    from twotower_utils.serving.run import ServingRun

    return ServingRun.from_system(system)


@pytest.fixture(scope="module")
def raw_users(system):
    """The raw users table (features as in users.csv)."""
    from twotower_utils.data.datasets import load_dataset

    return load_dataset(system.config).users


FRESH = textwrap.dedent("""
    import json, os, sys
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    requests = json.load(open(sys.argv[1]))
    out = {}
    for name, path in requests["models"].items():
        if name == "scann":
            import scann  # noqa: F401  registers the ScaNN ops; brute force needs only TF
        else:
            assert "scann" not in sys.modules
        model = tf.saved_model.load(path)
        for call, (signature, inputs) in requests["calls"].items():
            fn = model.signatures[signature]
            args = {k: tf.constant(v, fn.structured_input_signature[1][k].dtype)
                    for k, v in inputs.items()}
            result = fn(**args)
            out[f"{name}/{call}"] = {"item_ids": result["item_ids"].numpy().astype(str).tolist(),
                                     "scores": result["scores"].numpy().tolist()}
    assert "twotower_utils" not in sys.modules
    print(json.dumps(out))
""")


def test_exported_recommender_in_a_fresh_process_matches_recommend_items(
        system, run, raw_users, tmp_path):
    from twotower_utils.serving.run import export_recommender

    # Brute force first: the fresh process loads it before ScaNN's ops are registered.
    models = {name: str(export_recommender(run, tmp_path / name, index=name, top_k=10))
              for name in ("brute_force", "scann")}
    assert json.loads((tmp_path / "scann" / "serving.json").read_text())["index"] == "scann"
    users = raw_users.iloc[:100]
    features = {"segment": users["segment"].tolist(), "region": users["region"].tolist(),
                "age": users["age"].astype(float).tolist()}
    known = {"user_id": users["user_id"].tolist(), **features}
    seen_item = system.data.item_vocab[0]
    first = {k: v[:1] for k, v in features.items()}
    calls = {
        "known": ["serving_default", known],
        # An unknown id with features (and a history) takes the cold-start path.
        "cold": ["recommend", {"user_id": ["stranger"], **first,
                               "history_item_ids": [[seen_item]], "exclude_item_ids": [[""]]}],
        "exclude": ["recommend", {**{k: v[:1] for k, v in known.items()},
                                  "history_item_ids": [[""]], "exclude_item_ids": [["PLACE"]]}],
    }
    top_first = system.recommend_items(users["user_id"].iloc[0])["item_id"].tolist()
    calls["exclude"][1]["exclude_item_ids"] = [top_first[:2]]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"models": models, "calls": calls}))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script), str(request)], capture_output=True,
                          text=True, timeout=180, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    for name in models:
        got = out[f"{name}/known"]
        for row, user_id in enumerate(users["user_id"]):
            expected = system.recommend_items(user_id, top_k=10)
            assert got["item_ids"][row] == expected["item_id"].tolist(), (name, user_id)
            np.testing.assert_allclose(got["scores"][row], expected["score"], rtol=1e-4,
                                       atol=1e-5)
        cold = system.recommend_items("stranger", top_k=10, user_features={
            "segment": first["segment"][0], "region": first["region"][0],
            "age": first["age"][0]}, history_items=[seen_item])
        assert out[f"{name}/cold"]["item_ids"][0] == cold["item_id"].tolist()
        excluded = out[f"{name}/exclude"]["item_ids"][0]
        assert excluded == system.recommend_items(users["user_id"].iloc[0], top_k=12)[
            "item_id"].tolist()[2:]


def _clustered(n, d=16, seed=0, clusters=40):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    return (centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))).astype(
        np.float32)


def test_brute_force_is_exact_and_scann_recalls_well_honouring_exclusions():
    from twotower_utils.evaluation.metrics import top_k_scores
    from twotower_utils.serving.indexes import build_index, measure_index, recall_against

    items, queries = _clustered(5000), _clustered(64, seed=1)
    candidates = np.ones(len(items), dtype=bool)
    candidates[:100] = False
    exclude = sp.random(64, len(items), density=0.002, format="csr", random_state=3)
    exclude.data[:] = 1
    exact = top_k_scores(queries, items, 10, exclude=exclude, candidates=candidates)
    brute = build_index("brute_force", items, candidates)
    np.testing.assert_array_equal(brute.search(queries, 10, exclude=exclude)[0], exact[0])
    scann = build_index("scann", items, candidates, num_leaves=50, num_leaves_to_search=10)
    found, scores = scann.search(queries, 10, exclude=exclude)
    assert (found >= 100).all()  # candidates only, and the lists stay full
    assert not exclude[np.arange(64)[:, None], found].toarray().any()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert recall_against(found, exact[0]) >= 0.9
    result = measure_index(scann, queries, 10, brute.search(queries, 10)[0],
                           latency_queries=20)
    assert result["recall"] >= 0.9 and result["p99_ms"] >= result["p50_ms"] > 0
    # Asking for more than the searched leaves hold gives a padded list, never a filler item.
    short, short_scores = scann.search(queries[:4], 400, leaves_to_search=1)
    assert (short[:, -1] == -1).all() and np.isneginf(short_scores[:, -1]).all()
    for row in short:
        kept = row[row >= 0]
        assert len(kept) == len(set(kept)) and (kept >= 100).all()
    single = scann.search_one(queries[0], 10)[0]
    assert len(set(single) & set(brute.search_one(queries[0], 10)[0])) >= 8


def test_index_choice_and_settings_are_validated():
    from twotower_utils.serving.indexes import build_index, default_scann_params, scann_grid
    from twotower_utils.serving.run import serving_settings

    items = _clustered(3000)
    with pytest.raises(ValueError, match="index = 'annoy'.*brute_force, scann"):
        build_index("annoy", items)
    with pytest.raises(ValueError, match="num_leaves_to_search = 99"):
        build_index("scann", items, num_leaves=20, num_leaves_to_search=99)
    with pytest.raises(ValueError, match="brute_force' takes no parameters"):
        build_index("brute_force", items, num_leaves=3)
    assert default_scann_params(1_000_000).num_leaves == 2000
    assert default_scann_params(500).num_leaves == 0
    assert serving_settings(None)["index"] == "brute_force"
    settings = serving_settings({"serving": {"index": "scann", "scann": {"reorder": 50}}})
    assert settings["index"] == "scann" and settings["scann"]["reorder"] == 50
    with pytest.raises(ValueError, match="serving.index = 'faiss'"):
        serving_settings({"serving": {"index": "faiss"}})
    rows = scann_grid(items, _clustered(30, seed=4), 10, num_leaves=[30],
                      leaves_to_search=[0.1, 1.0], reorder=[0, 100], latency_queries=10)
    assert [r["index"] for r in rows] == ["brute_force"] + ["scann"] * 4
    assert rows[-1]["recall"] >= rows[1]["recall"]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_batch_recommendations_are_chunked_and_equal_recommend_batch(system, run, tmp_path,
                                                                     suffix):
    from twotower_utils.serving.run import recommend_to_file

    path = tmp_path / f"recs{suffix}"
    info = recommend_to_file(run, path, top_k=5, index="brute_force", chunk_size=37)
    assert info["users"] == len(system.data.user_vocab) and info["rows"] == 5 * info["users"]
    got = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, dtype={
        "user_id": str, "item_id": str})
    expected = system.recommend_batch(top_k=5)
    assert got[["user_id", "item_id", "rank"]].astype(str).values.tolist() == expected[
        ["user_id", "item_id", "rank"]].astype(str).values.tolist()
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5)
    some = system.data.user_vocab[5:8]
    info = recommend_to_file(run, path, user_ids=some, top_k=3, index="scann")
    assert info["rows"] == 9 and info["index"] == "scann"
    with pytest.raises(KeyError, match="user_ids: 1 not in this run's vocabulary"):
        recommend_to_file(run, path, user_ids=["nobody"])
    with pytest.raises(ValueError, match="expected a .parquet or .csv"):
        recommend_to_file(run, tmp_path / "recs.txt")


def test_embeddings_export_as_parquet_and_npy_with_their_ids(system, run, tmp_path):
    from twotower_utils.serving.run import export_embeddings

    written = export_embeddings(run, tmp_path / "pq")
    items = pd.read_parquet(written["items"])
    item_id = system.data.item_vocab[3]
    row = items.index[items["item_id"] == item_id][0]
    np.testing.assert_allclose(np.asarray(items.loc[row, "embedding"]),
                               system.get_item_embedding(item_id), rtol=1e-6)
    assert len(pd.read_parquet(written["users"])) == len(system.data.user_vocab)
    written = export_embeddings(run, tmp_path / "npy", fmt="npy")
    ids = (tmp_path / "npy" / "user_ids.txt").read_text().split()
    vectors = np.load(written["users"])
    np.testing.assert_allclose(vectors[ids.index(system.data.user_vocab[7])],
                               system.get_user_embedding(system.data.user_vocab[7]), rtol=1e-6)
    assert json.loads(written["manifest"].read_text())["dim"] == 2 * 16  # two members
    with pytest.raises(ValueError, match="fmt = 'h5'"):
        export_embeddings(run, tmp_path / "x", fmt="h5")


def test_serving_and_indexes_import_without_tensorflow(project_root):
    code = ("import sys, twotower_utils.serving.run, twotower_utils.serving.indexes;"
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=project_root, check=True)
    assert done.stdout.strip() == "False"


def test_scann_export_with_a_tree_keeps_lists_clean_when_leaves_run_short(system, run,
                                                                          raw_users, tmp_path):
    from twotower_utils.serving.run import export_recommender

    # One leaf of ten searched holds far fewer than k = 60 items: the rest must be empty.
    path = export_recommender(run, tmp_path / "tree", index="scann", top_k=60, scann={
        "num_leaves": 10, "num_leaves_to_search": 1, "reorder": 0})
    users = raw_users.iloc[:8]
    out = tf.saved_model.load(str(path)).signatures["serving_default"](
        user_id=tf.constant(users["user_id"].tolist()),
        segment=tf.constant(users["segment"].tolist()),
        region=tf.constant(users["region"].tolist()),
        age=tf.constant(users["age"].astype(float).to_numpy()))
    ids, scores = out["item_ids"].numpy().astype(str), out["scores"].numpy()
    assert (ids == "").any() and np.isneginf(scores[ids == ""]).all()
    for row, user_id in enumerate(users["user_id"]):
        got = [item for item in ids[row] if item]
        # Every candidate item the user has not seen (the catalogue has 120 items).
        allowed = set(system.recommend_items(user_id, top_k=200)["item_id"])
        assert len(got) == len(set(got)) and set(got) <= allowed, user_id
