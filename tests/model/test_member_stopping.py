"""Per-member early stopping (`ensemble.MemberStopping`): which epoch counts as an
improvement, when a member stops, and what a refit trains."""

import os
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
pytest.importorskip("tensorflow")

from twotower_utils.model import ensemble  # noqa: E402


@pytest.fixture
def stopping(monkeypatch, tmp_path):
    """A `MemberStopping` factory over a two-member stand-in model whose snapshots are
    recorded instead of read from real towers."""
    snapshots = []
    monkeypatch.setattr(ensemble, "read_member",
                        lambda model, member: snapshots.append(member) or [np.zeros(1)])

    def make(**options):
        return ensemble.MemberStopping(SimpleNamespace(members=2), tmp_path, **options), \
            snapshots
    return make


def run(stopper, curves):
    """Feed per-epoch `{member: value}` to `stopper` while any member is active; returns
    the epochs run."""
    epoch = 0
    for epoch, values in enumerate(curves, start=1):
        active = stopper.active(epoch)
        stopper.update(epoch, {m: v for m, v in values.items() if active[m]})
        if stopper.exhausted():
            break
    return epoch


def best_epochs(stopper):
    return list(stopper.state["member_best_epoch"].numpy())


# Member 0 improves by 0.0002 at epoch 5 (noise); member 1 falls after epoch 1.
CURVES = [{0: 0.10, 1: 0.20}, {0: 0.12, 1: 0.19}, {0: 0.121, 1: 0.18}, {0: 0.1205, 1: 0.17},
          {0: 0.1222, 1: 0.16}, {0: 0.1210, 1: 0.15}, {0: 0.1200, 1: 0.15},
          {0: 0.1190, 1: 0.15}]


def test_any_gain_is_an_improvement_without_min_delta(stopping):
    stopper, snapshots = stopping(patience=2)
    epochs = run(stopper, CURVES)
    assert best_epochs(stopper) == [5, 1]
    assert epochs == 7  # member 0: epochs 6 and 7 without a gain
    assert stopper.active(8).tolist() == [False, False]
    assert snapshots == [0, 1, 0, 0, 0]  # epochs 1 (both), 2, 3, 5


def test_gains_within_min_delta_neither_move_the_best_epoch_nor_reset_the_patience(
        stopping):
    stopper, snapshots = stopping(patience=2, min_delta=0.005)
    epochs = run(stopper, CURVES)
    # 0.12 -> 0.121 and 0.1222 beat the best by less than 0.005: epoch 2 stays the best,
    # and member 0 stops after epochs 3 and 4.
    assert best_epochs(stopper) == [2, 1]
    assert epochs == 4
    assert snapshots == [0, 1, 0]


def test_a_refit_trains_each_member_for_its_epochs(stopping):
    stopper, snapshots = stopping(member_epochs=[3, 1], min_delta=0.5)
    for epoch in (1, 2, 3):
        assert stopper.active(epoch).tolist() == [True, epoch == 1]
        stopper.update(epoch)
        assert not stopper.exhausted()
    assert snapshots == [1, 0]
    assert best_epochs(stopper) == [3, 1]
