"""What a trained system refuses, and a pipeline killed during training that continues.

The kill test runs the data and training stages of a tiny synthetic run three times: once
through, once killed with SIGTERM after its second epoch, and that killed run continued with
`--stage training`; the continued run must end with the same embeddings as the one that ran
through.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic_settings import SMALL_SYNTHETIC

from twotower_utils.pipeline import runner as pipeline
from twotower_utils.system import TwoTowerRecallSystem

pytestmark = pytest.mark.tf
PROJECT = Path(__file__).resolve().parents[2]


def _paths(tmp_path):
    return {f"paths.{name}": str(tmp_path / name)
            for name in ("raw_dir", "processed_dir", "models_dir", "reports_dir", "logs_dir")}


def test_an_untrained_or_misused_system_refuses_clearly(project_root, tmp_path):
    overrides = {**SMALL_SYNTHETIC, **_paths(tmp_path), "training.epochs": 1}
    system = TwoTowerRecallSystem(project_root / "config.json", overrides, run_id="safety")
    system.prepare_data()
    system.build_model()
    user = system.data.user_vocab[0]
    for call in (lambda: system.recommend_items(user), system.save,
                 lambda: system.get_item_embedding(system.data.item_vocab[0])):
        with pytest.raises(RuntimeError, match="untrained: call train_model"):
            call()
    assert not (tmp_path / "models_dir" / "safety").exists()
    system.train_model(save=False)
    with pytest.raises(ValueError, match=r"unknown feature\(s\) \['agee'\].*'age'"):
        system.recommend_items("stranger", user_features={"agee": 31})
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a saved run"):
        system.save(mydocs)
    assert sorted(p.name for p in mydocs.iterdir()) == ["notes.txt"]
    with pytest.raises(FileExistsError, match="not a saved run"):
        system.save(tmp_path / "models_dir")  # the folder of every run
    saved = system.save()
    assert json.loads((saved / "manifest.json").read_text())["kind"] == "twotower-run"
    assert json.loads((saved / "fingerprint.json").read_text())["digest"] in str(
        system.data.directory)
    assert system.save() == saved  # a saved run may be replaced by a new save of it


def _pipeline_args(tmp_path, run_id):
    overrides = {**SMALL_SYNTHETIC, **_paths(tmp_path), "training.epochs": 6,
                 "training.early_stopping_patience": 6, "training.batch_size": 32}
    args = ["--config", str(PROJECT / "config.json"), "--run-id", run_id, "--no-html"]
    for key, value in overrides.items():
        args += ["-p", key, json.dumps(value)]
    return args


def _epochs_done(tmp_path, run_id) -> int:
    done = 0
    for path in (tmp_path / "models_dir" / ".checkpoints").glob(f"{run_id}*/**/history.json"):
        with contextlib.suppress(ValueError):  # caught mid-write
            done = max(done, len(json.loads(path.read_text())))
    return done


def _start_and_wait_for_epochs(tmp_path, run_id, stages, epochs, **popen):
    command = [sys.executable, "-m", "twotower_utils.pipeline",
               *_pipeline_args(tmp_path, run_id), *stages]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 300
    while _epochs_done(tmp_path, run_id) < epochs:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"training never reached epoch {epochs}"
        time.sleep(0.2)
    return process


def test_ctrl_c_at_the_terminal_ends_the_run_as_interrupted_without_a_traceback(tmp_path):
    # Ctrl-C signals the whole foreground process group: the pipeline and its kernel.
    process = _start_and_wait_for_epochs(
        tmp_path, "ctrl-c", ["--stage", "preprocessing", "--stage", "training"], 1,
        start_new_session=True)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    summary = json.loads((tmp_path / "reports_dir" / "ctrl-c" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert {s["name"]: s["status"] for s in summary["stages"]}["training"] == "interrupted"


def test_sigterm_during_training_then_continuing_matches_an_uninterrupted_run(tmp_path):
    stages = ["--stage", "preprocessing", "--stage", "training"]
    assert pipeline.main(_pipeline_args(tmp_path, "whole") + stages) == 0

    process = _start_and_wait_for_epochs(tmp_path, "killed", stages, 2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert "--from-stage training --run-id killed" in err
    summary = json.loads((tmp_path / "reports_dir" / "killed" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["interrupted"]["stage"] == "training"
    assert {s["name"]: s["status"] for s in summary["stages"]}["training"] == "interrupted"
    assert "killed" in (tmp_path / "reports_dir" / "index.html").read_text()
    stopped_at = _epochs_done(tmp_path, "killed")
    time.sleep(2)
    assert _epochs_done(tmp_path, "killed") == stopped_at, "the kernel kept training"
    assert stopped_at < 6

    assert pipeline.main(_pipeline_args(tmp_path, "killed") + ["--stage", "training"]) == 0
    summary = json.loads((tmp_path / "reports_dir" / "killed" / "summary.json").read_text())
    assert summary["status"] == "ok"
    models = tmp_path / "models_dir"
    for name in ("user_embeddings.npy", "item_embeddings.npy"):
        np.testing.assert_allclose(np.load(models / "killed" / name),
                                   np.load(models / "whole" / name), atol=1e-5)
    resumed = json.loads((tmp_path / "reports_dir" / "killed" / "results" / "training.json")
                         .read_text())
    whole = json.loads((tmp_path / "reports_dir" / "whole" / "results" / "training.json")
                       .read_text())
    assert resumed.get("resumed_from", stopped_at) >= 1
    for key in ("best_epoch", "best_metric"):
        if key in whole:
            assert resumed[key] == pytest.approx(whole[key], abs=1e-6)
    assert os.path.isdir(models / "killed")


def test_a_dead_kernels_orphaned_task_prints_no_traceback_other_asyncio_errors_do(caplog):
    import asyncio

    from nbclient.exceptions import DeadKernelError

    from twotower_utils.pipeline.interrupts import quiet_orphaned_kernel_errors

    quiet_orphaned_kernel_errors()
    quiet_orphaned_kernel_errors()  # idempotent: one filter
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level("ERROR", logger="asyncio"):
            for error in (DeadKernelError("Kernel died"), RuntimeError("a real bug")):
                loop.default_exception_handler({"message": "Task exception was never retrieved",
                                                "exception": error})
    finally:
        loop.close()
    messages = [r for r in caplog.records if r.name == "asyncio"]
    assert [type(r.exc_info[1]).__name__ for r in messages] == ["RuntimeError"]
