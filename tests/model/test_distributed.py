"""Training under tf.distribute, through the one training loop (`training.Trainer`): two
MultiWorkerMirroredStrategy workers on 127.0.0.1 reach the quality of one process, end with
identical weights, checkpoint apart (the chief in the run's directory) and resume a stopped run
as if it never stopped; MirroredStrategy over two logical CPUs (in a fresh interpreter,
`mirrored_run.py`) checkpoints, resumes and refits an ensemble exactly; strategy selection
(also from `training.distribution_strategy`) and TF_CONFIG are validated.

The workers talk to each other only through 127.0.0.1 addresses (free ports picked by the
OS); note that TensorFlow's gRPC server itself listens on the wildcard address of that port,
which TensorFlow does not let a caller change.
"""

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")

from synthetic_settings import SMALL_SYNTHETIC  # noqa: E402

from twotower_utils.config import load_config  # noqa: E402
from twotower_utils.data.preprocessing import DataPreprocessor, load_processed  # noqa: E402

TINY = {**SMALL_SYNTHETIC, "training.epochs": 8, "training.early_stopping_patience": 8}
WORKER_TIMEOUT = 180  # seconds for the whole two-worker run (about 25 s on two idle cores)
MIRRORED_TIMEOUT = 420  # seconds for mirrored_run.py's three trainings (about 60 s idle)
HISTORY_KEYS = ("loss", "val_ndcg@10", "val_recall@10", "learning_rate")


@pytest.fixture(scope="module")
def setup(project_root, tmp_path_factory):
    """(overrides, config, processed data) for a tiny synthetic run in a scratch directory."""
    work = tmp_path_factory.mktemp("distributed")
    overrides = {**TINY, **{f"paths.{name}": str(work / name)
                            for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}}
    config = load_config(project_root / "config.json", overrides)
    DataPreprocessor(config).run()
    return overrides, config, load_processed(config.processed_dir())


def _free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_workers(project_root, overrides, tmp_path, extra=(), attempts: int = 2) -> list[dict]:
    """Run the two workers (`extra`: more CLI arguments); retried once if a port was taken
    between choosing and binding. Returns their summaries."""
    for attempt in range(attempts):
        codes, outputs = _start_workers(project_root, overrides, tmp_path, extra)
        if any(code != 0 for code in codes) and attempt + 1 < attempts and any(
                "gRPC server" in output for output in outputs):
            continue
        for code, output in zip(codes, outputs):
            assert code == 0, output[-3000:]
        return [json.loads((tmp_path / f"summary-{i}.json").read_text()) for i in range(2)]
    raise AssertionError("unreachable")


def _start_workers(project_root, overrides, tmp_path, extra) -> tuple[list[int], list[str]]:
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    params = [arg for key, value in overrides.items() for arg in ("-p", key, json.dumps(value))]
    summary = tmp_path / "summary-{task}.json"
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}),
            "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, "-m", "twotower_utils.model.distributed", "--config",
                   str(project_root / "config.json"), *params, "--strategy",
                   "multi_worker_mirrored", "--timeout", "120", "--summary", str(summary),
                   *extra]
        workers.append(subprocess.Popen(command, env=env, cwd=project_root, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=WORKER_TIMEOUT)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:  # bounded: never leave a worker behind
                worker.kill()
                worker.wait()
    return [worker.returncode for worker in workers], outputs


def _train(project_root, overrides, run_id, strategy=None):
    """One `TwoTowerRecallSystem.train_model` run: its replica count, strategy, history and
    best metric."""
    from twotower_utils.system import TwoTowerRecallSystem

    system = TwoTowerRecallSystem(project_root / "config.json", overrides, run_id=run_id,
                                  strategy=strategy)
    system.prepare_data(reuse=True)
    result = system.train_model(save=False)
    return SimpleNamespace(replicas=system.strategy.num_replicas_in_sync,
                           strategy=system.strategy, history=result.history,
                           best_metric=result.best_metric)


def _history(records: list[dict]) -> list[float]:
    """The epochs' losses, validation metrics and learning rates, flat."""
    return [record[key] for record in records for key in HISTORY_KEYS]


@pytest.fixture(scope="module")
def loopback(project_root, setup, tmp_path_factory) -> list[dict]:
    """The two workers' summaries of an uninterrupted run (run id "loopback")."""
    return _run_workers(project_root, setup[0], tmp_path_factory.mktemp("loopback"),
                        ["--run-id", "loopback"])


def test_two_workers_on_loopback_train_as_well_as_one_process(project_root, setup, loopback):
    overrides, config, data = setup
    single = _train(project_root, {**overrides, "training.distribution_strategy": "default"},
                    "single")
    assert single.replicas == 1
    first, second = loopback
    assert first["replicas"] == second["replicas"] == 2
    assert first["workers"] == second["workers"] == 2
    # Synchronous data parallelism: both workers hold the same weights at the end.
    assert first["weights_checksum"] == pytest.approx(second["weights_checksum"], rel=1e-6)
    history = first["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    # Same quality: the best validation nDCG@10 within 10% of the single-process run's.
    assert first["best_metric"] >= 0.9 * single.best_metric, (first, single.best_metric)
    assert single.best_metric > 0.25  # both are far above chance on the planted clusters
    # The chief checkpoints to the run's directory, the other worker beside it.
    checkpoints = config.path("models_dir") / ".checkpoints"
    for directory in ("loopback", "loopback.worker-1"):
        saved = json.loads((checkpoints / directory / "history.json").read_text())
        assert _history(saved) == pytest.approx(_history(history), abs=1e-6)
    assert (checkpoints / "loopback" / "config.json").is_file()


def test_two_workers_resume_a_stopped_run_as_if_it_never_stopped(project_root, setup,
                                                                 loopback, tmp_path):
    overrides = setup[0]
    stopped = _run_workers(project_root, {**overrides, "training.epochs": 3}, tmp_path,
                           ["--run-id", "loopback-resumed"])
    assert [len(summary["history"]) for summary in stopped] == [3, 3]
    resumed = _run_workers(project_root, overrides, tmp_path,
                           ["--run-id", "loopback-resumed", "--resume"])
    whole = loopback[0]
    for summary in resumed:
        assert summary["resumed_from"] == 3
        assert _history(summary["history"]) == pytest.approx(_history(whole["history"]),
                                                             abs=1e-6)
        assert summary["best_epoch"] == whole["best_epoch"]
        assert summary["weights_checksum"] == pytest.approx(whole["weights_checksum"],
                                                            rel=1e-6)


def test_mirrored_over_two_cpus_checkpoints_resumes_and_refits(project_root, setup, tmp_path):
    overrides = {**setup[0], "paths.models_dir": str(tmp_path / "models"),
                 "model.ensemble_size": 2, "training.epochs": 3,
                 "training.refit_with_validation": True}
    out = tmp_path / "mirrored.json"
    run = subprocess.run(
        [sys.executable, str(project_root / "tests" / "model" / "mirrored_run.py"), str(out),
         str(project_root / "config.json"), json.dumps(overrides), "2"],
        cwd=project_root, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=MIRRORED_TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:]
    report = json.loads(out.read_text())
    whole, resumed = report["whole"], report["resumed"]
    assert report["replicas"] == 2
    assert len(whole["history"]) == 3
    assert whole["history"][-1]["loss"] < whole["history"][0]["loss"]
    # Checkpointed and refitted: the early-stopped run and its refit, each member at its epoch.
    assert {"whole", "whole-refit", "killed", "killed-refit"} <= set(resumed["checkpoints"])
    assert whole["extra"]["refit_from"] == "scratch"
    assert whole["extra"]["refit_epochs"] == whole["best_epoch"] >= 1
    assert len(whole["extra"]["member_best_epochs"]) == 2
    # Killed after epoch 2 and resumed: the same epochs, members, refit and final weights.
    assert resumed["resumed_from"] == 2
    assert _history(resumed["history"]) == pytest.approx(_history(whole["history"]), abs=1e-6)
    for key in ("member_best_epochs", "refit_epochs", "refit_from"):
        assert resumed["extra"][key] == whole["extra"][key]
    assert resumed["extra"]["member_val_ndcg@10"] == pytest.approx(
        whole["extra"]["member_val_ndcg@10"], abs=1e-6)
    assert resumed["weights"] == pytest.approx(whole["weights"], rel=1e-5)
    assert whole["plain"] and resumed["plain"]  # the system ends with an undistributed model


def test_strategies_are_chosen_by_name_and_need_a_valid_tf_config(monkeypatch, setup,
                                                                   project_root):
    from twotower_utils.model.distributed import cluster_spec, is_chief, is_default, make_strategy

    assert make_strategy("default") is tf.distribute.get_strategy()
    assert is_default(make_strategy("default"))
    overrides = setup[0]
    # training.distribution_strategy is honoured by TwoTowerRecallSystem.train_model.
    mirrored = _train(project_root, {**overrides, "training.epochs": 1,
                                     "training.distribution_strategy": "mirrored"},
                      "mirrored-by-config")
    assert isinstance(mirrored.strategy, tf.distribute.MirroredStrategy)
    assert mirrored.replicas == max(1, len(tf.config.list_logical_devices("GPU")))
    assert np.isfinite(mirrored.history[0]["loss"])
    with pytest.raises(ValueError, match="strategy = 'horovod': expected one of default"):
        make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        make_strategy("multi_worker_mirrored")
    assert cluster_spec() == {} and is_chief()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="TF_CONFIG = .*expected JSON like"):
        cluster_spec()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert not is_chief()


def test_the_cli_refuses_to_start_without_processed_data(project_root, tmp_path):
    from twotower_utils.model.distributed import main

    with pytest.raises(SystemExit, match="no processed data; run the data stage first"):
        main(["--config", str(project_root / "config.json"), "-p", "paths.processed_dir",
              str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="--resume needs --run-id"):
        main(["--config", str(project_root / "config.json"), "--resume"])
