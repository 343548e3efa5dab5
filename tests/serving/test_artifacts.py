"""`RunArtifacts`, the one reader and writer of a run directory, without TensorFlow: a save and
load round trip gives back equal arrays, the manifest comes last and lists what the caller
wrote into the staging directory, and `ServingRun` is a view of the same loaded artifacts."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from twotower_utils.data.fingerprint import FINGERPRINT_FILE
from twotower_utils.serving.artifacts import RunArtifacts, RunDirectoryError
from twotower_utils.serving.run import ServingRun


def _artifacts(users=3, items=4, dim=2) -> RunArtifacts:
    rng = np.random.default_rng(0)
    history = sp.random(users + 1, items + 1, density=0.4, format="csr", random_state=1)
    history.data[:] = 1.0
    return RunArtifacts(
        config={"model": {"similarity": "dot"}, "serving": {"top_k": 3}},
        user_vocab=[f"u{u}" for u in range(users)], item_vocab=[f"i{i}" for i in range(items)],
        features={"user/__id__": np.arange(users + 1, dtype=np.int32),
                  "item/genre": np.array(["", *rng.choice(["a", "b", ""], items)])},
        feature_specs={"user": [], "item": [{"name": "genre", "type": "categorical",
                                             "vocabulary": ["a", "b"]}]},
        history=history.astype(np.float32),
        candidates=np.array([False] + [True] * items),
        user_embeddings=rng.normal(size=(users + 1, dim)).astype(np.float32),
        item_embeddings=rng.normal(size=(items + 1, dim)).astype(np.float32),
        training_history={"loss": [0.5, 0.4]}, training_summary={"best_epoch": 2},
        metrics={"ndcg@10": 0.25}, fingerprint={"digest": "abc"})


def test_a_save_and_load_round_trip_gives_back_equal_arrays(tmp_path):
    saved = _artifacts()
    written = []

    def write_more(staging):  # stands in for the system's TensorFlow parts
        (staging / "weights").mkdir()
        written.append(not (staging / "manifest.json").exists())

    target = saved.save(tmp_path / "run", "run", write_more)
    assert target == tmp_path / "run" == saved.directory and written == [True]
    assert not list(tmp_path.glob(".run.tmp-*"))  # the staging directory was renamed
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["kind"] == "twotower-run" and "weights" in manifest["files"]

    loaded = RunArtifacts.load(target)
    assert loaded.directory == target and loaded.manifest["run_id"] == "run"
    assert (loaded.num_users, loaded.num_items) == (4, 5)
    for name in ("config", "user_vocab", "item_vocab", "feature_specs", "training_history",
                 "training_summary", "metrics", "fingerprint"):
        assert getattr(loaded, name) == getattr(saved, name), name
    assert sorted(loaded.features) == sorted(saved.features)
    for key, table in saved.features.items():
        np.testing.assert_array_equal(loaded.features[key], table)
    for name in ("candidates", "user_embeddings", "item_embeddings"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(saved, name))
    assert isinstance(loaded.item_embeddings, np.memmap)  # memory-mapped, as serving needs
    assert (loaded.history != saved.history).nnz == 0 and loaded.history.shape == (4, 5)

    run = ServingRun.from_dir(target)
    assert run.artifacts is not None and run.directory == target
    assert list(run.user_ids) == saved.user_vocab and list(run.item_ids) == saved.item_vocab
    np.testing.assert_array_equal(run.item_vectors, saved.item_embeddings)
    assert run.config == saved.config and run.dim == 2


def test_metrics_recorded_after_the_save_are_listed_and_loaded(tmp_path):
    bare = _artifacts()
    bare.metrics = {}
    target = bare.save(tmp_path / "run", "run")
    assert "metrics.json" not in json.loads((target / "manifest.json").read_text())["files"]
    RunArtifacts.record_metrics(target, {"ndcg@10": 0.5})
    assert "metrics.json" in json.loads((target / "manifest.json").read_text())["files"]
    assert RunArtifacts.load(target).metrics == {"ndcg@10": 0.5}
    RunArtifacts.record_metrics(target, {"ndcg@10": 0.6})  # replaced, listed once
    assert json.loads((target / "manifest.json").read_text())["files"].count("metrics.json") == 1
    assert RunArtifacts.load(target).metrics == {"ndcg@10": 0.6}
    assert not list(target.glob(".*.partial"))  # no temporary file left beside them
    (tmp_path / "mydocs").mkdir()
    with pytest.raises(RunDirectoryError, match="not a saved run"):
        RunArtifacts.record_metrics(tmp_path / "mydocs", {"ndcg@10": 0.5})
    assert not (tmp_path / "mydocs" / "metrics.json").exists()


def test_optional_parts_are_absent_when_unknown_and_a_save_replaces_only_a_run(tmp_path):
    bare = _artifacts()
    bare.training_history = bare.training_summary = bare.fingerprint = None
    bare.metrics = {}
    target = bare.save(tmp_path / "run", "run")
    for name in ("training_history.json", "training.json", "metrics.json", FINGERPRINT_FILE):
        assert not (target / name).exists(), name
    loaded = RunArtifacts.load(target)
    assert loaded.training_history is None and loaded.metrics == {}
    assert bare.save(target, "run") == target  # a saved run may be replaced by a new save
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a saved run"):
        bare.save(mydocs, "run")
    assert sorted(p.name for p in mydocs.iterdir()) == ["notes.txt"]
    (target / "candidates.npy").unlink()
    with pytest.raises(RunDirectoryError, match="missing candidates.npy"):
        RunArtifacts.load(target)
