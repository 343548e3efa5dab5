"""Ensemble members: each member's configuration and the loss settings the model reads.

With `model.ensemble_size` K > 1 the towers hold K members side by side (see `model.Tower`)
and one training step trains all K (see `training.Trainer`): member m gets its own batch order,
its own negatives and history-dropout masks (its own sampler generator, seeded
`training.seed + 1000 * m`), its own dropout masks, and its entry of
`model.ensemble_member_overrides` (e.g. another loss). `member_config` is that member's
configuration as a single model; `member_settings` reads from it what one training step needs
per member.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from twotower_utils.config import SINGLE_MEMBER, Config

__all__ = ["MEMBER_SEED_STRIDE", "MemberSettings", "MemberStopping", "member_config",
           "member_settings", "member_variables", "read_member", "write_member"]

MEMBER_SEED_STRIDE = 1000  # runs with seeds s and s + 1 must not share members


def member_config(config: Config, member: int) -> Config:
    """The configuration ensemble member `member` trains with: one member, its entry of
    `model.ensemble_member_overrides` (if any) applied, and the seed
    `training.seed + 1000 * member`."""
    member_overrides = config.model.ensemble_member_overrides
    extra = member_overrides[member] if member < len(member_overrides) else {}
    config = config.with_overrides({**extra, **SINGLE_MEMBER})
    seed = config.training.seed + MEMBER_SEED_STRIDE * member
    return replace(config, training=replace(config.training, seed=seed))


@dataclass(frozen=True)
class MemberSettings:
    """What one member's loss and sampling read (from its `member_config`)."""

    loss: str
    num_negatives: int
    softmax_negatives: int
    in_batch_negatives: bool
    logq_correction: bool
    temperature: float
    l2: float
    dropout: float
    history_dropout: float
    history_leave_one_out: bool
    negative_sampling: str
    popularity_alpha: float
    seed: int
    explicit_negatives: int = 0  # label-0 rows per positive in the BCE (0 = none)
    explicit_negative_weight: float = 1.0


def member_settings(config: Config, **options) -> list[MemberSettings]:
    """One `MemberSettings` per member of `config.model.ensemble_size`; `options`
    (`history_dropout`, `history_leave_one_out`) override every member's value."""
    out = []
    members = config.model.ensemble_size
    for member in range(members):
        own = member_config(config, member) if members > 1 else config
        model, train, data = own.model, own.training, own.data
        out.append(MemberSettings(
            loss=train.loss, num_negatives=int(data.num_negatives),
            softmax_negatives=int(train.softmax_negatives),
            in_batch_negatives=bool(train.in_batch_negatives),
            logq_correction=bool(train.logq_correction),
            temperature=float(model.temperature), l2=float(model.l2_regularization),
            dropout=float(model.dropout),
            history_dropout=float(options.get("history_dropout", model.history_dropout)),
            history_leave_one_out=bool(options.get("history_leave_one_out",
                                                   model.history_leave_one_out)),
            negative_sampling=data.negative_sampling,
            popularity_alpha=float(data.popularity_alpha), seed=int(train.seed),
            explicit_negatives=int(train.explicit_negatives),
            explicit_negative_weight=float(train.explicit_negative_weight)))
    return out


def member_variables(model, member: int) -> list[tuple]:
    """`(variable, columns)` pairs that hold member `member`'s weights in an ensemble model:
    its column slice of every wide table (`columns` a slice) and its own layers' variables
    (`columns` None: the whole variable)."""
    out = []
    for tower in (model.user_tower, model.item_tower):
        tables = [tower.id_embedding, tower.history_embedding,
                  *tower.feature_embeddings.values()]
        for layer in tables:
            if layer is not None:
                width = layer.embeddings.shape[1] // tower.members
                out.append((layer.embeddings, slice(member * width, (member + 1) * width)))
        hidden, projection = tower.member_layers[member]
        layers = [layer for group in hidden for layer in group]
        layers += [projection] if projection is not None else []
        out += [(variable, None) for layer in layers for variable in layer.weights]
    return out


def read_member(model, member: int) -> list[np.ndarray]:
    """Member `member`'s weights (numpy, in `member_variables` order)."""
    return [variable.numpy()[:, columns] if columns is not None else variable.numpy()
            for variable, columns in member_variables(model, member)]


def write_member(model, member: int, values: list[np.ndarray]) -> None:
    """Put weights read by `read_member` back into member `member`'s place."""
    for (variable, columns), value in zip(member_variables(model, member), values,
                                          strict=True):
        if columns is None:
            variable.assign(value)
        else:
            full = variable.numpy()
            full[:, columns] = value
            variable.assign(full)


class MemberStopping:
    """Early stopping per ensemble member, and each member's weights from its own epoch.

    With validation (`member_epochs` None): member m's best epoch is the one its own slice
    of the embeddings scores best on (an improvement must beat the best by more than
    `min_delta`), and it stops training (`active`) after `patience` epochs without
    improving; training stops once every member has. Without validation (a refit), member
    m trains for `member_epochs[m]` epochs and its weights are taken then.
    A stopped member is left out of the training step, so it costs nothing while the others
    go on (members share no weights: the others train exactly as if it were still
    there); its weights go on drifting with Adam's momentum, which does not matter because
    `assemble` puts its snapshot back. Snapshots go to
    `directory/member-<m>.npz` (they survive a resume); `assemble` writes each member's
    snapshot into the model. `state` (best epochs, metrics, waits) belongs in the checkpoint.
    """

    def __init__(self, model, directory: Path, member_epochs: list[int] | None = None,
                 patience: int = 5, min_delta: float = 0.0):
        members = model.members
        self.model, self.directory, self.member_epochs = model, Path(directory), member_epochs
        # patience 0 stops after the first epoch without improvement, as Keras does.
        self.patience = max(int(patience), 1)
        self.min_delta = float(min_delta)
        self.state = {
            "member_best_epoch": tf.Variable(tf.zeros([members], tf.int64), trainable=False),
            "member_best_metric": tf.Variable(tf.fill([members], tf.constant(-np.inf,
                                                                             tf.float64)),
                                              trainable=False),
            "member_wait": tf.Variable(tf.zeros([members], tf.int64), trainable=False),
        }

    def active(self, epoch: int) -> np.ndarray:
        """Bool `[members]`: which members train in `epoch` (not yet stopped, or with refit
        epochs left)."""
        if self.member_epochs is not None:
            return np.asarray(self.member_epochs) >= epoch
        return self.state["member_wait"].numpy() < self.patience

    def update(self, epoch: int, values: dict[int, float] | None = None) -> bool:
        """After `epoch`: snapshot the members that improved (validation `values` of the
        members trained in it) or whose epoch it is (refit); returns whether any member
        was snapshotted."""
        best = self.state["member_best_metric"].numpy()
        wait = self.state["member_wait"].numpy()
        best_epoch = self.state["member_best_epoch"].numpy()
        chosen = []
        for member in range(self.model.members):
            if values is None:
                if self.member_epochs[member] == epoch:
                    chosen.append(member)
                    best_epoch[member] = epoch
            elif member not in values:
                continue  # stopped earlier
            elif values[member] > best[member] + self.min_delta:
                best[member], best_epoch[member], wait[member] = values[member], epoch, 0
                chosen.append(member)
            else:
                wait[member] += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        for member in chosen:
            np.savez(self.directory / f"member-{member}.npz",
                     *read_member(self.model, member))
        for key, value in (("member_best_metric", best), ("member_wait", wait),
                           ("member_best_epoch", best_epoch)):
            self.state[key].assign(value)
        return bool(chosen)

    def exhausted(self) -> bool:
        """Has every member gone `patience` epochs without improving?"""
        if self.member_epochs is not None:
            return False  # a refit runs its epochs
        return bool((self.state["member_wait"].numpy() >= self.patience).all())

    def assemble(self) -> None:
        """Write each member's snapshot (if it has one) into its place in the model."""
        for member in range(self.model.members):
            path = self.directory / f"member-{member}.npz"
            if path.is_file():
                with np.load(path) as saved:
                    write_member(self.model, member,
                                 [saved[f"arr_{i}"] for i in range(len(saved.files))])
