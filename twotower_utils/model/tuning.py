"""The tuning step of `train_model` (`training.tune`): trials judged on validation, in a budget.

With `training.tune.enabled`, `TwoTowerRecallSystem.train_model` first early-stops one model
per trial on the validation split: trial 0 is the configuration as given, trial i > 0 that
configuration with `training.tune.trials[i - 1]` applied (dotted keys, e.g.
`{"model.l2_regularization": 0.1}`). Trials start while the time spent is under
`training.tune.budget_seconds` (a trial that has started runs to its end, so the step can
overrun the budget by at most one trial). The trial with the best validation
`training.early_stopping_metric` wins, and its early-stopped model goes on to the refit (if
any) exactly as an untuned run's would: the winner is never trained twice. Test data is never
read. What a trial may change is `config_checks.TRIAL_OVERRIDABLE`: the model, its loss and its
optimisation (an ensemble member's negatives through `model.ensemble_member_overrides`), not
the data, the split or the seed, so every trial is judged on the same validation pairs.

Trials are not resumed: an interrupted tuning step starts again from trial 0 (each trial
is short; the final refit resumes as before).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from twotower_utils.config_checks import flatten_overrides, trial_config

__all__ = ["TuningResult", "describe", "plot_trials", "trials_table", "tune"]

logger = logging.getLogger(__name__)


def describe(trial: dict[str, Any], width: int = 200) -> str:
    """One line naming a trial's overrides ("as configured" for none), cut to `width`."""
    text = ", ".join(f"{key} = {json.dumps(value)}"
                     for key, value in flatten_overrides(trial).items())
    text = text or "as configured"
    return text if len(text) <= width else text[:width - 3] + "..."


@dataclass
class TuningResult:
    """What the tuning step did: `trials` (one row per trial run: `trial`, `overrides`,
    the validation metric, `best_epoch`, `seconds`), the `winner` row's index and its
    overrides, and `skipped` (trials left out by the budget)."""

    trials: pd.DataFrame
    winner: int
    overrides: dict[str, Any]
    metric: str
    skipped: int

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"trials": self.trials.to_dict("records"), "winner": self.winner,
                "overrides": self.overrides, "metric": self.metric, "skipped": self.skipped}


def tune(system, name: str, callbacks=()):
    """Run the trials of `system.config.training.tune` on `system`'s prepared data.

    Returns `(TuningResult, winner's Config, winner's TrainingResult, winner's
    early-stopped model)`; `fitting.train_and_refit` continues from the last three.
    """
    from twotower_utils.model.fitting import early_stop
    from twotower_utils.model.two_tower import build_model

    config = system.config
    settings = config.training.tune
    # Dotted keys once, for the log, the table and the winner's configuration.
    candidates = [{}] + [flatten_overrides(trial) for trial in settings.trials]
    metric = config.training.early_stopping_metric
    rows, best = [], None
    started = time.perf_counter()
    for index, trial in enumerate(candidates):
        spent = time.perf_counter() - started
        if index and spent >= settings.budget_seconds:
            logger.info(f"tuning: budget of {settings.budget_seconds:.0f} s spent "
                        f"({spent:.0f} s); {len(candidates) - index} trial(s) not run")
            break
        own = trial_config(config, trial)
        logger.info(f"tuning: trial {index} of {len(candidates) - 1}: {describe(trial)}")
        trial_started = time.perf_counter()
        with system.strategy.scope():
            model = build_model(system.data, own)
        result = early_stop(system, model, own, f"{name}-trial-{index}", resume=False,
                            callbacks=callbacks)
        rows.append({"trial": index, "overrides": trial,
                     f"val_{metric}": result.best_metric,
                     "best_epoch": result.best_epoch,
                     "member_best_epochs": result.extra.get("member_best_epochs"),
                     "seconds": time.perf_counter() - trial_started})
        if best is None or result.best_metric > best[2].best_metric:
            best = (index, trial, result, model)
    table = pd.DataFrame(rows)
    index, trial, result, model = best
    # The run goes on with the winner's settings (its tuning section kept as configured).
    own = config.with_overrides(trial)
    logger.info(f"tuning: trial {index} wins with validation {metric} {result.best_metric:.4f} "
                f"({len(rows)} trial(s), {time.perf_counter() - started:.0f} s)")
    outcome = TuningResult(trials=table, winner=index, overrides=trial, metric=metric,
                           skipped=len(candidates) - len(rows))
    return outcome, own, result, model


def trials_table(tuning: TuningResult | None) -> pd.DataFrame | None:
    """The trials as a table (one row per trial run, the winner marked), or None with a
    printed note when the tuning step did not run (`training.tune.enabled` false)."""
    if tuning is None:
        print("no tuning step: training.tune.enabled is false, so the configuration was "
              "trained as given")
        return None
    table = tuning.trials.assign(
        overrides=[describe(o, 80) for o in tuning.trials["overrides"]],
        seconds=tuning.trials["seconds"].round(1),
        winner=["<- winner" if t == tuning.winner else "" for t in tuning.trials["trial"]])
    if tuning.skipped:
        print(f"{tuning.skipped} trial(s) not run: the budget "
              "(training.tune.budget_seconds) was spent")
    return table.set_index("trial")


def plot_trials(tuning: TuningResult | None, ax=None):
    """Bar chart of each trial's validation metric (the winner highlighted); returns the
    axes (None, drawing nothing, when the tuning step did not run)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if tuning is None:
        return None
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.4 * len(tuning.trials) + 1.2))
    table = tuning.trials.assign(label=[f"{row.trial}: {describe(row.overrides, 48)}"
                                        for row in tuning.trials.itertuples()])
    column = f"val_{tuning.metric}"
    colours = ["tab:orange" if trial == tuning.winner else "tab:blue"
               for trial in table["trial"]]
    sns.barplot(data=table, y="label", x=column, hue="label", palette=colours, legend=False,
                ax=ax)
    # Trials differ in the third decimal: zoom in on their range (the axis does not start at 0).
    low, high = table[column].min(), table[column].max()
    margin = 0.15 * (high - low) + 1e-3
    ax.set_xlim(low - margin, high + margin)
    ax.set(xlabel=f"validation {tuning.metric}", ylabel="",
           title="Tuning trials (validation only; orange: the winner)")
    return ax
