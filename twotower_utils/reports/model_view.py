"""Pictures of the model for `03_training`: the two towers, drawn from the built model.

`tower_stages(tower)` reads a built `Tower` (its feature specs, embedding tables, hidden
layers and projection) and lists what a row goes through, from inputs to the embedding;
`plot_towers(model)` draws both towers side by side, meeting in the score. Only Keras layer
attributes are read, so this module imports neither TensorFlow nor the model.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

__all__ = ["tower_stages", "plot_towers"]


def tower_stages(tower) -> list[tuple[str, list[str]]]:
    """What one row goes through in `tower` (a built `Tower`), as `(stage, lines)` pairs:
    the inputs (each with its width per member), their concatenation, every hidden layer,
    the projection and the output. Widths are one member's; `members` are side by side."""
    members = max(int(getattr(tower, "members", 1)), 1)
    inputs, width = [], 0
    if tower.id_embedding is not None:
        size = tower.id_embedding.output_dim // members
        inputs.append(f"{tower.side} id embedding ({tower.id_embedding.input_dim:,} rows) "
                      f"-> {size}")
        width += size
    for spec in tower.specs:
        name, kind = spec["name"], spec["type"]
        if kind == "numeric":
            inputs.append(f"{name}: numeric, standardised -> 1")
            width += 1
            continue
        size = tower.feature_embeddings[name].output_dim // members
        values = len(spec.get("vocabulary", []))
        how = "mean of its values' embeddings" if kind == "multi_hot" else "embedding"
        inputs.append(f"{name}: {kind.replace('_', '-')} ({values:,} values), {how} -> {size}")
        width += size
    if tower.history_embedding is not None:
        size = tower.history_embedding.output_dim // members
        inputs.append(f"history: mean embedding of the user's training items -> {size}")
        inputs.append("history size: log(1 + count) -> 1")
        width += size + 1
    stages = [("inputs", inputs), ("concatenate", [f"{width} values per row"])]
    hidden, projection = tower.member_layers[0]
    for dense, _norm, activation, dropout in hidden:
        name = getattr(activation.activation, "__name__", "activation")
        stages.append(("hidden layer", [f"Dense {dense.units} -> BatchNorm -> {name} -> "
                                        f"Dropout {dropout.rate:g}"]))
    if projection is not None:
        stages.append(("projection", [f"Dense {projection.units} (linear)"]))
    size = tower.output_dim // members
    output = f"{size}-d embedding" + (", L2-normalised" if tower.normalize else "")
    if members > 1:
        output += f"; {members} members side by side = {tower.output_dim}"
    stages.append(("output", [output]))
    return stages


def plot_towers(model, title: str = "The two towers"):
    """Draw the user and item towers of `model` (a built `TwoTowerModel`) side by side,
    inputs at the top, meeting in the score at the bottom; returns the figure."""
    line, gap = 0.42, 0.75  # height of one text line and the space between stages
    columns = [("user tower", tower_stages(model.user_tower)),
               ("item tower", tower_stages(model.item_tower))]
    depth = max(sum(line * len(lines) + 0.3 + gap for _, lines in stages)
                for _, stages in columns)
    fig, ax = plt.subplots(figsize=(13, 0.7 * depth + 1.8))
    ax.set(xlim=(0, 2), ylim=(-1.8, depth + 0.6), title=title)
    ax.axis("off")
    for column, (name, stages) in enumerate(columns):
        x, top = column + 0.5, depth
        ax.text(x, top + 0.25, name, ha="center", va="bottom", weight="bold", fontsize=12)
        for position, (stage, lines) in enumerate(stages):
            height = line * len(lines) + 0.3
            box = dict(boxstyle="round,pad=0.35", fc="#eef3fb" if stage == "inputs" else
                       "#f6f6f6", ec="#5a7bb5" if stage == "output" else "#999999")
            ax.text(x, top - height / 2, "\n".join(lines), ha="center", va="center",
                    fontsize=8.5, bbox=box, linespacing=1.5)
            ax.text(x - 0.49, top - height / 2, stage, ha="left", va="center", fontsize=8,
                    color="#666666", style="italic")
            bottom = top - height
            end = -1.25 if position == len(stages) - 1 else bottom - gap
            ax.annotate("", xy=(1.0 if end < 0 else x, end), xytext=(x, bottom - 0.1),
                        arrowprops=dict(arrowstyle="->", color="#777777"))
            top = bottom - gap
    similarity = ("cosine / temperature" if model.user_tower.normalize else "dot product")
    ax.text(1.0, -1.5, f"score(user, item) = {similarity} of the two embeddings",
            ha="center", va="center", fontsize=10,
            bbox=dict(boxstyle="round,pad=0.4", fc="#fff7e6", ec="#d08c00"))
    fig.tight_layout()
    return fig
