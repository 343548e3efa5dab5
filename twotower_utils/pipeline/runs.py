"""One pipeline run as the notebooks see it: its id, its resolved config and its directories.

Every notebook starts with `run = start_run(CONFIG_PATH, OVERRIDES, RUN_ID, FAST)`. The run
id ties the five notebooks together: they hand work to each other only through files under
it (`models/<run_id>/`, `reports/<run_id>/`, `logs/<run_id>/`) and the processed data
directory of the configured dataset. A stage records the numbers the run summary needs with
`run.record(stage, payload)` (written to `reports/<run_id>/results/<stage>.json`).
No TensorFlow, papermill or plotting here: the EDA notebook imports this module.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twotower_utils.config import Config, load_config
from twotower_utils.data.fingerprint import (
    FINGERPRINT_FILE,
    DataFingerprint,
    data_fingerprint,
    describe_differences,
)
from twotower_utils.io import read_json, write_json

__all__ = ["FAST_OVERRIDES", "QUICK_OVERRIDES", "DEFAULT_RUN_ID", "Run", "start_run", "new_run_id",
           "check_run_id"]

# Smoke-test settings (FAST = True): a tiny model trained for two epochs. Explicit
# overrides still win over these, so a test can shrink the data further.
FAST_OVERRIDES: dict[str, Any] = {
    "training.epochs": 2,
    "training.early_stopping_patience": 1,
    "model.embedding_dim": 16,
    "model.hidden_layers": [32],
}
# The faster loop (`--quick`): three ensemble members (one BCE, two in-batch softmax + logQ)
# instead of four. A fifth to a third less training; judged on validation it is level on
# MovieLens-100K's benchmark split and 0.002-0.003 below the four on its temporal split and
# on a long-tail 9K-item catalogue (benchmarks/README.md, "Fewer members"), so it is an
# option for exploring, not the default.
_SOFTMAX_MEMBER = {"training.loss": "softmax", "training.logq_correction": True}
QUICK_OVERRIDES: dict[str, Any] = {
    "model.ensemble_size": 3,
    "model.ensemble_member_overrides": [{}, _SOFTMAX_MEMBER, _SOFTMAX_MEMBER],
}
DEFAULT_RUN_ID = "lab"  # notebooks opened by hand share this run, so 03 finds what 02 wrote
_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_run_id(run_id: str, name: str = "RUN_ID") -> str:
    """Return `run_id` if it is a safe directory name, else raise ValueError naming `name`.

    Safe: 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (so never
    '.', '..', a hidden name or a path with separators).
    """
    if not isinstance(run_id, str) or not _RUN_ID_PATTERN.fullmatch(run_id):
        raise ValueError(
            f"{name} = {run_id!r}: expected 1-100 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (it names directories under models/ and reports/)"
        )
    return run_id


def new_run_id(dataset: str = "", fast: bool = False) -> str:
    """A fresh, sortable run id: `<yyyymmdd-hhmmss>-<dataset>[-fast]` (local time)."""
    parts = [time.strftime("%Y%m%d-%H%M%S"), dataset, "fast" if fast else ""]
    return check_run_id("-".join(p for p in parts if p))


@dataclass(frozen=True)
class Run:
    """A run's id, its validated `Config` and where its files go.

    `overrides` are the merged overrides (FAST settings, then the caller's), as given to
    `load_config`; `config_path` is absolute.
    """

    run_id: str
    config: Config
    config_path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    fast: bool = False

    @property
    def dataset(self) -> str:
        """The configured dataset name (`data.dataset`)."""
        return self.config.data.dataset

    @property
    def processed_dir(self) -> Path:
        """The processed data of this run (written by notebook 02, read by 03-05), after
        `check_data(model=True)`: raises ValueError when this stage's data settings differ
        from the ones the run (or its trained model) was made from."""
        return self.check_data(model=True)

    @property
    def data_record_path(self) -> Path:
        """`reports/<run_id>/data.json`: the fingerprint of the data this run was made from."""
        return self.reports_dir / "data.json"

    def bind_data(self) -> Path:
        """Record the current data settings as this run's data (the data stage does this);
        returns the processed-data directory."""
        return self._bind(data_fingerprint(self.config))

    def _bind(self, fingerprint: DataFingerprint) -> Path:
        directory = self.config.processed_dir(fingerprint.digest)
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.data_record_path, fingerprint.to_dict() | {"directory": str(directory)})
        return directory

    def check_data(self, model: bool = False) -> Path:
        """The processed-data directory for this stage, refusing to mix runs.

        The first stage that touches data binds it (`bind_data`); a later stage whose data
        settings differ from the recorded ones, or (`model=True`) from those of the model
        saved under `models/<run_id>/`, raises ValueError naming each differing key.
        """
        current = data_fingerprint(self.config)
        if not self.data_record_path.is_file():
            return self._bind(current)
        recorded = [("run", read_json(self.data_record_path))]
        model_record = self.models_dir / FINGERPRINT_FILE
        if model and model_record.is_file():
            recorded.append(("trained model", read_json(model_record)))
        for what, payload in recorded:
            if payload.get("digest") != current.digest:
                changed = describe_differences(payload["settings"], current.settings)
                raise ValueError(
                    f"run {self.run_id!r}: the {what} was made from other data than this "
                    f"stage's settings describe ({changed}). Pass the run's own settings "
                    "again, start a new run id, or rerun it from the data stage "
                    "(--from-stage preprocessing)")
        return self.config.processed_dir(current.digest)

    @property
    def models_dir(self) -> Path:
        """`models/<run_id>/`: the trained towers, embeddings and history."""
        return self.config.path("models_dir") / self.run_id

    @property
    def reports_dir(self) -> Path:
        """`reports/<run_id>/`: executed notebooks, HTML, results and summary."""
        return self.config.path("reports_dir") / self.run_id

    @property
    def logs_dir(self) -> Path:
        """`logs/<run_id>/`: TensorBoard logs."""
        return self.config.path("logs_dir") / self.run_id

    def record(self, stage: str, payload: dict[str, Any]) -> Path:
        """Write `payload` (JSON-able) as this run's result of `stage`; returns the path."""
        path = self.reports_dir / "results" / f"{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(path, payload)

    def results(self) -> dict[str, Any]:
        """Every recorded stage result of this run, `{stage: payload}`."""
        directory = self.reports_dir / "results"
        return {p.stem: read_json(p) for p in sorted(directory.glob("*.json"))}

    def describe(self) -> str:
        """A few lines for the top of a notebook: run id, dataset and where files go (paths
        relative to the project, so a shared report does not show the machine's layout)."""
        return "\n".join([
            f"run id:          {self.run_id}" + ("  (FAST smoke-test settings)" if self.fast
                                                  else ""),
            f"dataset:         {self.dataset}",
            f"config:          {self.relative(self.config_path)}",
            f"overrides:       {self.overrides or 'none'}",
            f"processed data:  {self.relative(self.config.processed_dir())}",
            f"model directory: {self.relative(self.models_dir)}",
            f"reports:         {self.relative(self.reports_dir)}",
        ])

    def relative(self, path: str | Path) -> str:
        """`path` relative to the config's directory when it lies inside it, else as is."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.config.root))
        except ValueError:
            return str(path)


def start_run(
    config_path: str | Path = "config.json",
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    fast: bool = False,
    create: bool = True,
) -> Run:
    """Resolve a run: validate `config_path` + overrides, pick the id, create the directories.

    Takes the notebook parameters CONFIG_PATH, OVERRIDES (dict, nested or dotted keys),
    RUN_ID (None = `DEFAULT_RUN_ID`) and FAST (merge `FAST_OVERRIDES` under OVERRIDES).
    Returns a `Run`; raises `ConfigError` naming bad keys, ValueError naming a bad RUN_ID or
    OVERRIDES, FileNotFoundError for a missing config file. `create=False` only validates
    (no directory is made).
    """
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ValueError(f"OVERRIDES = {overrides!r}: expected a dict of config overrides, "
                         "e.g. {'training.epochs': 3}")
    if not isinstance(fast, bool):
        raise ValueError(f"FAST = {fast!r}: expected True or False")
    # Later keys win when load_config merges them in order, so OVERRIDES beat FAST settings.
    merged = {**FAST_OVERRIDES, **overrides} if fast else dict(overrides)
    config_path = Path(config_path).resolve()
    config = load_config(config_path, merged)
    run = Run(check_run_id(run_id or DEFAULT_RUN_ID), config, config_path, merged, fast)
    if create:
        run.reports_dir.mkdir(parents=True, exist_ok=True)
    return run
