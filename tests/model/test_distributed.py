"""Training under tf.distribute: two MultiWorkerMirroredStrategy workers on 127.0.0.1 reach the
quality of one process and end with identical weights; strategy selection and TF_CONFIG are
validated.

The workers talk to each other only through 127.0.0.1 addresses (free ports picked by the
OS); note that TensorFlow's gRPC server itself listens on the wildcard address of that port,
which TensorFlow does not let a caller change.
"""

import json
import os
import socket
import subprocess
import sys

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


@pytest.fixture(scope="module")
def setup(project_root, tmp_path_factory):
    """(overrides, config, processed data) for a tiny synthetic run in a scratch directory."""
    work = tmp_path_factory.mktemp("distributed")
    overrides = {**TINY, **{f"paths.{name}": str(work / name)
                            for name in ("raw_dir", "processed_dir", "models_dir", "logs_dir")}}
    config = load_config(project_root / "config.json", overrides)
    DataPreprocessor(config, log=lambda _: None).run()
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


def _run_workers(project_root, overrides, tmp_path, attempts: int = 2) -> list[dict]:
    """Run the two workers; retried once if a port was taken between choosing and binding."""
    for attempt in range(attempts):
        codes, outputs = _start_workers(project_root, overrides, tmp_path)
        if any(code != 0 for code in codes) and attempt + 1 < attempts and any(
                "gRPC server" in output for output in outputs):
            continue
        for code, output in zip(codes, outputs):
            assert code == 0, output[-3000:]
        return [json.loads((tmp_path / f"summary-{i}.json").read_text()) for i in range(2)]
    raise AssertionError("unreachable")


def _start_workers(project_root, overrides, tmp_path) -> tuple[list[int], list[str]]:
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
                   "multi_worker_mirrored", "--timeout", "120", "--summary", str(summary)]
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


def test_two_workers_on_loopback_train_as_well_as_one_process(project_root, setup, tmp_path):
    from twotower_utils.model.distributed import train_distributed

    overrides, config, data = setup
    single = train_distributed(data, config, "default", log=None)
    assert single.replicas == 1
    first, second = _run_workers(project_root, overrides, tmp_path)
    assert first["replicas"] == second["replicas"] == 2
    assert first["workers"] == second["workers"] == 2
    # Synchronous data parallelism: both workers hold the same weights at the end.
    assert first["weights_checksum"] == pytest.approx(second["weights_checksum"], rel=1e-6)
    history = first["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    # Same quality: the best validation nDCG@10 within 10% of the single-process run's.
    assert first["best_metric"] >= 0.9 * single.best_metric, (first, single.best_metric)
    assert single.best_metric > 0.25  # both are far above chance on the planted clusters


def test_strategies_are_chosen_by_name_and_need_a_valid_tf_config(monkeypatch, setup):
    from twotower_utils.model.distributed import (
        cluster_spec,
        is_chief,
        make_strategy,
        train_distributed,
    )

    assert make_strategy("default") is tf.distribute.get_strategy()
    _, config, data = setup
    mirrored = train_distributed(data, config, "mirrored", epochs=1, log=None)
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
