"""Runs own their data and their folders: run ids, processed-data fingerprints, safe saves,
stale temporaries and damaged run folders. No TensorFlow: the data stage and file checks only.
"""

import json
import os
import signal
import time

import numpy as np
import pytest

from twotower_utils.config import load_config
from twotower_utils.data.fingerprint import data_fingerprint
from twotower_utils.data.preprocessing import DataPreprocessor
from twotower_utils.io import atomic_directory, remove_stale_temporaries
from twotower_utils.pipeline import runner as pipeline
from twotower_utils.pipeline.interrupts import SignalsAsInterrupts
from twotower_utils.pipeline.runs import check_run_id, start_run
from twotower_utils.serving.artifacts import (
    RunDirectoryError,
    check_run_dir,
    check_save_target,
    write_manifest,
)
from twotower_utils.system import TwoTowerRecallSystem

TINY = {"data.dataset": "synthetic", "data.user_features": None, "data.item_features": None,
        "data.synthetic": {"num_users": 60, "num_items": 40, "num_interactions": 900}}


def _overrides(tmp_path, **extra):
    paths = {f"paths.{name}": str(tmp_path / name)
             for name in ("raw_dir", "processed_dir", "models_dir", "reports_dir", "logs_dir")}
    return {**TINY, **paths, **extra}


# ----------------------------------------------------------------------------- run ids
@pytest.mark.parametrize("bad", [".", "..", "a/b", "../x", "/abs", ".hidden", "", "a b"])
def test_unsafe_run_ids_are_refused_by_the_api_and_the_cli(project_root, tmp_path, bad,
                                                           capsys):
    with pytest.raises(ValueError, match="run_id = .*letters, digits"):
        TwoTowerRecallSystem(project_root / "config.json", _overrides(tmp_path), run_id=bad)
    with pytest.raises(ValueError, match="RUN_ID = "):
        check_run_id(bad)
    status = pipeline.main(["--config", str(project_root / "config.json"), "--run-id", bad,
                            "--no-html"] + [x for k, v in _overrides(tmp_path).items()
                                            for x in ("-p", k, json.dumps(v))])
    assert status == 2 and "letters, digits" in capsys.readouterr().err
    assert not (tmp_path / "models_dir").exists()


# ----------------------------------------------------------------------------- fingerprints
def test_data_settings_key_the_processed_directory(project_root, tmp_path):
    base = load_config(project_root / "config.json", _overrides(tmp_path))
    same = load_config(project_root / "config.json",
                       _overrides(tmp_path, **{"training.seed": 5, "model.embedding_dim": 8}))
    other = load_config(project_root / "config.json",
                        _overrides(tmp_path, **{"data.split.seed": 7}))
    assert base.processed_dir() == same.processed_dir()  # model settings don't shape data
    assert base.processed_dir() != other.processed_dir()
    assert base.processed_dir().name.startswith("synthetic-")


def test_csv_content_is_part_of_the_fingerprint(project_root, tmp_path, small_synthetic):
    from twotower_utils.data.rawdata import write_dataset

    write_dataset(small_synthetic, tmp_path / "csv")
    keys = {f"data.{n}_csv": str(tmp_path / "csv" / f"{n}.csv")
            for n in ("users", "items", "interactions")}
    config = load_config(project_root / "config.json", {"data.dataset": "csv", **keys})
    before = data_fingerprint(config)
    with open(tmp_path / "csv" / "interactions.csv", "a") as handle:
        handle.write(f"{small_synthetic.users['user_id'].iloc[0]},"
                     f"{small_synthetic.items['item_id'].iloc[0]},1,0\n")
    after = data_fingerprint(config)
    assert before.digest != after.digest
    assert before.settings["data.interactions_csv.sha256"] != \
        after.settings["data.interactions_csv.sha256"]


def test_the_data_format_version_is_part_of_the_fingerprint(project_root, monkeypatch):
    from twotower_utils.data import fingerprint

    config = load_config(project_root / "config.json")
    current = data_fingerprint(config)
    assert current.settings["format_version"] == fingerprint.FORMAT_VERSION
    monkeypatch.setattr(fingerprint, "FORMAT_VERSION", fingerprint.FORMAT_VERSION - 1)
    older = data_fingerprint(config)
    assert older.digest != current.digest  # an older release's processed data is not reused


def test_a_stage_of_run_a_refuses_the_data_of_run_b(project_root, tmp_path):
    config_path = project_root / "config.json"
    run_a = start_run(config_path, _overrides(tmp_path), "run-a")
    directory_a = DataPreprocessor(run_a.config).run()
    run_a.bind_data()
    run_b = start_run(config_path, _overrides(tmp_path, **{"data.split.seed": 7}), "run-b")
    directory_b = DataPreprocessor(run_b.config).run()
    run_b.bind_data()
    assert directory_a != directory_b and directory_a.is_dir() and directory_b.is_dir()
    # Run A's evaluation stage with run B's settings: refused, naming the key.
    mixed = start_run(config_path, _overrides(tmp_path, **{"data.split.seed": 7}), "run-a")
    with pytest.raises(ValueError, match=r"data\.split\.seed: 42 -> 7"):
        mixed.processed_dir  # noqa: B018 (the property checks)
    # Run A's own settings still find exactly run A's data.
    assert start_run(config_path, _overrides(tmp_path), "run-a").processed_dir == directory_a
    # The training stage alone with another data size is refused the same way.
    resized = start_run(config_path, _overrides(tmp_path, **{"data.synthetic.num_users": 40}),
                        "run-a")
    with pytest.raises(ValueError, match=r"data\.synthetic\.num_users: 60 -> 40"):
        resized.check_data()
    # ... and before any kernel starts, by the pipeline.
    status = pipeline.main(["--config", str(config_path), "--run-id", "run-a", "--stage",
                            "training", "--no-html"]
                           + [x for k, v in _overrides(tmp_path, **{
                               "data.synthetic.num_users": 40}).items()
                              for x in ("-p", k, json.dumps(v))])
    assert status == 2


def test_prepare_data_reuses_only_data_made_with_the_same_settings(project_root, tmp_path):
    config_path = project_root / "config.json"
    first = TwoTowerRecallSystem(config_path, _overrides(tmp_path), run_id="one")
    data = first.prepare_data(reuse=True)
    stamp = (data.directory / "stats.json").stat().st_mtime_ns
    again = TwoTowerRecallSystem(config_path, _overrides(tmp_path), run_id="two")
    assert again.prepare_data(reuse=True).directory == data.directory
    assert (data.directory / "stats.json").stat().st_mtime_ns == stamp  # reused, not redone
    other = TwoTowerRecallSystem(config_path, _overrides(tmp_path, **{
        "data.synthetic.num_users": 40}), run_id="three")
    other_data = other.prepare_data(reuse=True)
    assert other_data.directory != data.directory
    assert other_data.num_users - 1 <= 40


# ----------------------------------------------------------------------------- saving
def test_save_refuses_a_folder_that_is_not_a_saved_run(tmp_path):
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a saved run"):
        check_save_target(mydocs)
    assert (mydocs / "thesis.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert check_save_target(tmp_path / "empty") == tmp_path / "empty"
    saved = tmp_path / "saved"
    saved.mkdir()
    write_manifest(saved, "saved")
    assert check_save_target(saved) == saved
    with pytest.raises(FileExistsError, match="is a file"):
        check_save_target(mydocs / "thesis.txt")


def test_interrupted_saves_are_cleaned_on_the_next_save(tmp_path):
    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process
    stale = tmp_path / f".run.tmp-{dead_pid}-abcd"
    stale.mkdir()
    old = tmp_path / f".run.old-{dead_pid}"
    old.mkdir()
    live = tmp_path / f".run.tmp-{os.getpid()}-live"
    live.mkdir()
    unrelated = tmp_path / ".run.notes"
    unrelated.mkdir()
    with atomic_directory(tmp_path / "run") as staging:
        (staging / "file").write_text("x")
    assert not stale.exists() and not old.exists()
    assert live.exists() and unrelated.exists()  # a save in progress and others' folders stay
    assert (tmp_path / "run" / "file").read_text() == "x"
    assert remove_stale_temporaries(tmp_path / "run") == []


# ----------------------------------------------------------------------------- damaged runs
def _fake_run(directory, users=3, items=4, dim=2):
    directory.mkdir()
    (directory / "vocabularies.json").write_text(json.dumps(
        {"user_id": [str(u) for u in range(users)], "item_id": [str(i) for i in range(items)]}))
    for name in ("config.json", "feature_specs.json"):
        (directory / name).write_text("{}")
    np.savez(directory / "features.npz")
    np.savez(directory / "history.npz", indptr=np.zeros(users + 2, np.int64),
             indices=np.zeros(0, np.int32), shape=np.asarray([users + 1, items + 1]))
    np.save(directory / "candidates.npy", np.ones(items + 1, bool))
    np.save(directory / "user_embeddings.npy", np.zeros((users + 1, dim), np.float32))
    np.save(directory / "item_embeddings.npy", np.zeros((items + 1, dim), np.float32))
    write_manifest(directory, directory.name)
    return directory


def test_damaged_run_folders_name_the_file_and_the_fix(tmp_path):
    run = _fake_run(tmp_path / "run")
    assert check_run_dir(run)["kind"] == "twotower-run"
    (run / "item_embeddings.npy").unlink()
    with pytest.raises(RunDirectoryError, match="missing item_embeddings.npy.*saved again"):
        check_run_dir(run)
    older = _fake_run(tmp_path / "older")
    manifest = json.loads((older / "manifest.json").read_text())
    (older / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(RunDirectoryError, match="run format 1, this release reads format 2"):
        check_run_dir(older)
    with pytest.raises(RunDirectoryError, match="missing item_embeddings.npy"):
        TwoTowerRecallSystem.load(run)
    np.save(run / "item_embeddings.npy", np.zeros((5, 2), np.float32))
    data = (run / "item_embeddings.npy").read_bytes()
    (run / "item_embeddings.npy").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(RunDirectoryError, match=r"item_embeddings.npy: damaged.*saved again"):
        check_run_dir(run)
    np.save(run / "item_embeddings.npy", np.zeros((7, 2), np.float32))  # wrong row count
    with pytest.raises(RunDirectoryError, match=r"item_embeddings.npy: damaged \(shape"):
        check_run_dir(run)
    with pytest.raises(RunDirectoryError, match="no such run directory"):
        check_run_dir(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- signals
def test_sigterm_becomes_an_interruption_naming_the_signal():
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), SignalsAsInterrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises inside the sleep
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
