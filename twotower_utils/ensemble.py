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

from twotower_utils.config import SINGLE_MEMBER, Config

__all__ = ["MEMBER_SEED_STRIDE", "MemberSettings", "member_config", "member_settings"]

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
            popularity_alpha=float(data.popularity_alpha), seed=int(train.seed)))
    return out
