"""Every figure the notebooks show, in plain matplotlib (no TensorFlow, no seaborn).

Each function takes DataFrames, Series or arrays and returns a `matplotlib.figure.Figure` with
a title and labelled axes. Figures are closed in pyplot before they are returned, so a notebook
cell that ends with `plots.plot_x(...)` displays the figure exactly once (the inline backend
would otherwise show it a second time) and long runs do not accumulate open figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

__all__ = [
    "use_report_style",
    "plot_activity_distribution",
    "plot_rating_distribution",
    "plot_interactions_over_time",
    "plot_feature_distributions",
    "plot_split_sizes",
    "plot_training_history",
    "plot_metric_comparison",
    "plot_metric_at_k",
    "plot_bucket_metrics",
    "plot_embedding_2d",
    "plot_norm_vs_popularity",
    "plot_score_distributions",
]

PALETTE = plt.get_cmap("tab10").colors
PANEL = (4.6, 3.4)  # size of one panel, inches


def use_report_style() -> None:
    """Display settings for notebooks rendered as reports: full table cells, crisp figures.

    Sets pandas' column width and row limits (long profiles are not cut at 50 characters)
    and the inline figure resolution. Takes nothing, returns nothing.
    """
    pd.set_option("display.max_colwidth", 160)
    pd.set_option("display.max_rows", 60)
    pd.set_option("display.precision", 4)
    plt.rcParams["figure.dpi"] = 100
    plt.rcParams["savefig.dpi"] = 110


def _figure(ncols: int = 1, nrows: int = 1, title: str | None = None, panel=PANEL):
    """A constrained-layout figure with a grid of axes (always a flat array)."""
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained",
        squeeze=False,
    )
    if title:
        fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig, axes.ravel()


def _done(fig: Figure) -> Figure:
    plt.close(fig)
    return fig


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; it has {list(frame.columns)}")


# ----------------------------------------------------------------------------- data (01, 02)
def plot_activity_distribution(user_counts: pd.Series, item_counts: pd.Series) -> Figure:
    """Interactions per user (histogram, log y) and item popularity by rank (log-log).

    Takes two Series of interaction counts (one value per user, one per item); returns the
    two-panel figure that shows the long tail.
    """
    fig, (left, right) = _figure(2, title="How activity is spread over users and items")
    users = np.asarray(user_counts, dtype=float)
    left.hist(users, bins=min(50, max(5, len(np.unique(users)))), color=PALETTE[0])
    left.set_yscale("log")
    left.set(title="Interactions per user", xlabel="interactions of a user",
             ylabel="number of users (log)")
    left.axvline(np.median(users), color="black", linestyle="--", linewidth=1,
                 label=f"median {np.median(users):.0f}")
    left.legend(frameon=False)
    items = np.sort(np.asarray(item_counts, dtype=float))[::-1]
    ranks = np.arange(1, len(items) + 1)
    right.loglog(ranks, np.maximum(items, 0.5), color=PALETTE[1], linewidth=2)
    right.set(title="Item popularity (long tail)", xlabel="item rank by popularity (log)",
              ylabel="interactions of the item (log)")
    if len(items):
        top = max(1, int(round(0.1 * len(items))))
        share = items[:top].sum() / max(items.sum(), 1)
        right.axvline(top, color="black", linestyle="--", linewidth=1,
                      label=f"top 10% of items: {share:.0%} of interactions")
        right.legend(frameon=False)
    return _done(fig)


def _empty(fig: Figure, ax, message: str, xlabel: str, ylabel: str) -> Figure:
    """A figure that says why there is nothing to draw (keeps the report's structure)."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel=xlabel, ylabel=ylabel, xticks=[], yticks=[])
    return _done(fig)


def plot_rating_distribution(interactions: pd.DataFrame) -> Figure:
    """Bar chart of how often each rating value occurs, with its share on top of each bar.

    Takes the interactions frame; a dataset without a `rating` column gets a figure that says
    so. Returns the figure.
    """
    fig, (ax,) = _figure(title="Rating distribution")
    if "rating" not in interactions.columns or interactions["rating"].isna().all():
        return _empty(fig, ax, "this dataset has no ratings", "rating", "interactions")
    counts = interactions["rating"].dropna().value_counts().sort_index()
    ax.bar([f"{v:g}" for v in counts.index], counts.to_numpy(), color=PALETTE[0])
    ax.set(xlabel="rating", ylabel="interactions")
    ax.margins(y=0.1)
    for x, value in enumerate(counts.to_numpy()):
        ax.annotate(f"{value / counts.sum():.0%}", (x, value), ha="center", va="bottom")
    return _done(fig)


def plot_interactions_over_time(counts: pd.Series, period: str = "week") -> Figure:
    """Line chart of interactions per period.

    Takes a Series indexed by period start dates (`eda.interactions_per_period`); an empty
    Series (no timestamps) gets a figure that says so. Returns the figure.
    """
    fig, (ax,) = _figure(title=f"Interactions per {period}", panel=(9.2, 3.2))
    series = pd.Series(counts)
    if series.empty:
        return _empty(fig, ax, "this dataset has no timestamps", "date",
                      f"interactions per {period}")
    ax.plot(series.index, series.to_numpy(), color=PALETTE[0], marker=".", linewidth=1.5)
    ax.set(xlabel="date", ylabel=f"interactions per {period}")
    ax.grid(alpha=0.3)
    return _done(fig)


def plot_feature_distributions(
    table: pd.DataFrame, features: Mapping[str, str], side: str, top_n: int = 12
) -> Figure:
    """One panel per declared feature of a user or item table.

    Takes the feature table, `{column: "categorical"|"numeric"|"multi_hot"}` and the side's
    name ("user"/"item") for the title. Numeric columns get a histogram, categorical and
    multi-hot columns a horizontal bar chart of their `top_n` most frequent values (a
    multi-hot row counts once for each of its values). Returns the figure.
    """
    if not features:
        fig, (ax,) = _figure(title=f"{side.capitalize()} features")
        return _empty(fig, ax, f"no {side} features declared", "feature", f"{side}s")
    _check_columns(table, list(features), f"{side} table")
    ncols = 2 if len(features) in (2, 4) else min(3, len(features))
    nrows = int(np.ceil(len(features) / ncols))
    fig, axes = _figure(ncols, nrows, title=f"{side.capitalize()} feature distributions")
    for ax, (column, kind) in zip(axes, features.items(), strict=False):
        values = table[column]
        if kind == "numeric":
            numbers = pd.to_numeric(values, errors="coerce").dropna()
            ax.hist(numbers, bins=30, color=PALETTE[0])
            ax.set(title=f"{column} (numeric)", xlabel=column, ylabel=f"{side}s")
            continue
        text = values.dropna().astype(str)
        if kind == "multi_hot":
            text = text.str.split("|").explode().str.strip()
            text = text[text != ""]
        counts = text.value_counts().head(top_n)[::-1]
        ax.barh(counts.index.astype(str), counts.to_numpy(), color=PALETTE[2])
        shown = f"top {top_n} of {text.nunique()}" if text.nunique() > top_n else "all values"
        ax.set(title=f"{column} ({kind}, {shown})", xlabel=f"{side}s", ylabel=column)
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes[len(features):]:
        ax.set_axis_off()
    return _done(fig)


def plot_split_sizes(split_sizes: pd.DataFrame) -> Figure:
    """Rows, users and items per split; takes a frame indexed by split with those columns."""
    _check_columns(split_sizes, ["rows", "users", "items"], "split_sizes")
    fig, axes = _figure(3, title="Split sizes", panel=(3.4, 3.0))
    for ax, column, colour in zip(axes, ("rows", "users", "items"), PALETTE, strict=False):
        values = split_sizes[column]
        ax.bar(values.index.astype(str), values.to_numpy(), color=colour)
        ax.set(title=f"{column} per split", xlabel="split", ylabel=column)
        ax.margins(y=0.1)
        for x, value in enumerate(values.to_numpy()):
            ax.annotate(f"{value:,}", (x, value), ha="center", va="bottom", fontsize=8)
    return _done(fig)


# ----------------------------------------------------------------------------- training (03)
def plot_training_history(history: pd.DataFrame | Sequence[Mapping],
                          metric: str | None = None) -> Figure:
    """Training loss, validation metrics and learning rate per epoch.

    Takes the per-epoch records (a DataFrame or a list of dicts, as `TrainingResult.history`)
    with `epoch` and `loss` columns, `val_<metric>@<k>` columns and optionally
    `learning_rate`; `metric` (e.g. "val_ndcg@10") names the early-stopping metric, whose
    best epoch is marked (default: the first validation column). Returns the figure.
    """
    frame = pd.DataFrame(list(history)) if not isinstance(history, pd.DataFrame) else history
    if "epoch" not in frame.columns:
        frame = frame.reset_index().rename(columns={"index": "epoch"})
    _check_columns(frame, ["loss"], "history")
    metrics = [c for c in frame.columns if str(c).startswith("val_") and c != "val_loss"]
    if metric is not None:
        _check_columns(frame, [metric], "history")
    panels = 3 if "learning_rate" in frame.columns else 2
    fig, axes = _figure(panels, title="Training progress", panel=(4.2, 3.3))
    epochs = frame["epoch"].to_numpy()
    axes[0].plot(epochs, frame["loss"], marker="o", label="training loss", color=PALETTE[0])
    if "val_loss" in frame.columns:
        axes[0].plot(epochs, frame["val_loss"], marker="o", label="validation loss",
                     color=PALETTE[1])
    axes[0].set(title="Loss", xlabel="epoch", ylabel="loss")
    axes[0].legend(frameon=False)
    for i, column in enumerate(metrics):
        axes[1].plot(epochs, frame[column], marker="o", color=PALETTE[(2 + i) % 10],
                     label=str(column).removeprefix("val_"))
    if metrics:
        chosen = metric or metrics[0]
        best = int(np.nanargmax(frame[chosen].to_numpy()))
        axes[1].axvline(epochs[best], color="black", linestyle="--", linewidth=1,
                        label=f"best {chosen.removeprefix('val_')}: epoch {epochs[best]}")
        axes[1].legend(frameon=False, fontsize=8)
    axes[1].set(title="Validation metrics", xlabel="epoch", ylabel="metric value")
    if panels == 3:
        axes[2].plot(epochs, frame["learning_rate"], marker="o", color=PALETTE[7])
        axes[2].set(title="Learning rate (end of epoch)", xlabel="epoch",
                    ylabel="learning rate")
        axes[2].yaxis.set_major_formatter(FormatStrFormatter("%.2e"))
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _done(fig)


# ----------------------------------------------------------------------------- evaluation (04)
def _metric_columns(table: pd.DataFrame, metric: str) -> list[tuple[int, str]]:
    """(k, column) pairs of `metric@k` columns, sorted by k."""
    found = []
    for column in table.columns:
        name, _, k = str(column).partition("@")
        if name == metric and k.isdigit():
            found.append((int(k), column))
    return sorted(found)


def plot_metric_comparison(
    table: pd.DataFrame, k: int = 10,
    metrics: Sequence[str] = ("precision", "recall", "ndcg", "map", "hit_rate"),
) -> Figure:
    """Grouped bars of each model's metrics at one cut-off.

    Takes a table indexed by model with `<metric>@<k>` columns (`compare_models` output), the
    cut-off and the metric names to show. Returns the figure.
    """
    columns = [f"{m}@{k}" for m in metrics if f"{m}@{k}" in table.columns]
    if not columns:
        raise ValueError(f"table has no column for metrics {list(metrics)} at k={k}; "
                         f"columns: {list(table.columns)}")
    fig, (ax,) = _figure(title=f"Model comparison at k = {k}", panel=(9.2, 3.8))
    width = 0.8 / len(table.index)
    positions = np.arange(len(columns))
    for i, model in enumerate(table.index):
        values = table.loc[model, columns].to_numpy(dtype=float)
        bars = ax.bar(positions + i * width, values, width, label=str(model),
                      color=PALETTE[i % 10])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(positions + width * (len(table.index) - 1) / 2, columns)
    ax.set(xlabel="metric", ylabel="value (higher is better)")
    ax.margins(y=0.12)
    ax.legend(title="model", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _done(fig)


def plot_metric_at_k(
    table: pd.DataFrame, metrics: Sequence[str] = ("precision", "recall", "ndcg")
) -> Figure:
    """One panel per metric: its value against k, one line per model (`compare_models` table)."""
    fig, axes = _figure(len(metrics), title="Metrics as the list grows", panel=(3.6, 3.2))
    for ax, metric in zip(axes, metrics, strict=True):
        pairs = _metric_columns(table, metric)
        if not pairs:
            raise ValueError(f"table has no '{metric}@k' column; columns: {list(table.columns)}")
        ks = [k for k, _ in pairs]
        for i, model in enumerate(table.index):
            ax.plot(ks, table.loc[model, [c for _, c in pairs]].to_numpy(dtype=float),
                    marker="o", label=str(model), color=PALETTE[i % 10])
        ax.set(title=f"{metric}@k", xlabel="k (list length)", ylabel=metric)
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    return _done(fig)


def plot_bucket_metrics(frame: pd.DataFrame, metric: str, bucket_label: str,
                        count_column: str = "users") -> Figure:
    """Grouped bars of a metric per bucket (e.g. user activity), one bar per model.

    Takes a long frame with columns `bucket`, `model`, `metric` and optionally
    `count_column` (the bucket's size, shown under the tick labels), the metric column name
    and what the buckets are (axis label). Returns the figure.
    """
    _check_columns(frame, ["bucket", "model", metric], "bucket frame")
    buckets = list(dict.fromkeys(frame["bucket"]))
    models = list(dict.fromkeys(frame["model"]))
    fig, (ax,) = _figure(title=f"{metric} by {bucket_label}", panel=(9.2, 3.6))
    width = 0.8 / len(models)
    positions = np.arange(len(buckets))
    for i, model in enumerate(models):
        rows = frame[frame["model"] == model].set_index("bucket").reindex(buckets)
        ax.bar(positions + i * width, rows[metric].to_numpy(dtype=float), width,
               label=str(model), color=PALETTE[i % 10])
    labels = [str(b) for b in buckets]
    if count_column in frame.columns:
        sizes = frame.drop_duplicates("bucket").set_index("bucket")[count_column]
        sizes = sizes.reindex(buckets)
        labels = [f"{b}\n(n={int(n):,})" for b, n in zip(labels, sizes, strict=True)]
    ax.set_xticks(positions + width * (len(models) - 1) / 2, labels, fontsize=8)
    ax.set(xlabel=bucket_label, ylabel=metric)
    ax.legend(title="model", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _done(fig)


# ----------------------------------------------------------------------------- embeddings (05)
def plot_embedding_2d(
    coords: np.ndarray | None, colour: Sequence, title: str, colour_label: str,
    categorical: bool = True, max_legend: int = 10, log_colour: bool = False,
) -> Figure:
    """Scatter of a 2-D projection of embeddings.

    Takes `[n, 2]` coordinates, one colour value per point (a category, or a number such as
    popularity when `categorical` is False; `log_colour` puts numbers on a log scale, values
    below 1 shown as 1), the title and what the colour means. Categorical colours show the
    `max_legend` most common values, the rest in grey. `coords=None` (a projection that is
    not available, e.g. UMAP without umap-learn) gives a figure that says so.
    """
    if coords is None:
        fig, (ax,) = _figure(title=title, panel=(6.4, 2.0))
        return _empty(fig, ax, "not available: install umap-learn for this projection",
                      "component 1", "component 2")
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be [n, 2]; got shape {coords.shape}")
    if len(colour) != len(coords):
        raise ValueError(f"colour has {len(colour)} values for {len(coords)} points")
    fig, (ax,) = _figure(title=title, panel=(6.4, 5.0))
    if categorical:
        labels = pd.Series(list(colour), dtype=object).astype(str)
        common = labels.value_counts().index[:max_legend]
        rest = ~labels.isin(common).to_numpy()
        if rest.any():
            ax.scatter(coords[rest, 0], coords[rest, 1], s=8, color="lightgrey", label="other")
        for i, value in enumerate(common):
            mask = (labels == value).to_numpy()
            ax.scatter(coords[mask, 0], coords[mask, 1], s=10, color=PALETTE[i % 10],
                       label=value)
        ax.legend(title=colour_label, frameon=False, fontsize=7, markerscale=1.5,
                  loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        values = np.asarray(colour, dtype=float)
        norm = None
        if log_colour:
            values = np.maximum(values, 1.0)
            norm = LogNorm(vmin=values.min(), vmax=max(values.max(), values.min() * 1.01))
        points = ax.scatter(coords[:, 0], coords[:, 1], s=10, c=values, cmap="viridis",
                            norm=norm)
        fig.colorbar(points, ax=ax, label=colour_label)
    ax.set(xlabel="component 1", ylabel="component 2")
    return _done(fig)


def plot_norm_vs_popularity(item_vectors: np.ndarray, popularity: np.ndarray) -> Figure:
    """Scatter of item embedding L2 norm against training popularity (log x), Spearman rho.

    Takes item embeddings `[n, d]` and the items' interaction counts `[n]`.
    """
    norms = np.linalg.norm(np.asarray(item_vectors, dtype=float), axis=1)
    popularity = np.asarray(popularity, dtype=float)
    if norms.shape != popularity.shape:
        raise ValueError(f"item_vectors has {len(norms)} rows but popularity has "
                         f"{popularity.shape} values")
    fig, (ax,) = _figure(title="Embedding norm vs popularity", panel=(6.0, 4.0))
    ax.scatter(np.maximum(popularity, 0.5), norms, s=8, alpha=0.6, color=PALETTE[0])
    ax.set_xscale("log")
    ax.set(xlabel="training interactions of the item (log)", ylabel="item embedding L2 norm")
    rho = pd.Series(norms).corr(pd.Series(popularity), method="spearman")
    ax.text(0.02, 0.95, f"Spearman rho = {rho:.2f}", transform=ax.transAxes, va="top")
    return _done(fig)


def plot_score_distributions(positive: np.ndarray, negative: np.ndarray,
                             bins: int = 60) -> Figure:
    """Overlaid histograms of model scores for held-out positives and sampled negatives."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    fig, (ax,) = _figure(title="Scores of positives vs negatives", panel=(7.0, 3.8))
    both = np.concatenate([positive, negative])
    # A few extreme scores would squash the histograms: bins span the 0.5-99.5 percentiles.
    span = tuple(np.percentile(both, [0.5, 99.5])) if both.size else None
    edges = np.histogram_bin_edges(both, bins=bins, range=span) if both.size else bins
    ax.hist(negative, bins=edges, alpha=0.6, density=True, color=PALETTE[1],
            label=f"sampled negatives (n={len(negative):,})")
    ax.hist(positive, bins=edges, alpha=0.6, density=True, color=PALETTE[0],
            label=f"test positives (n={len(positive):,})")
    ax.set(xlabel="score (dot product of user and item embeddings; 0.5-99.5 percentile range)",
           ylabel="density")
    ax.legend(frameon=False)
    return _done(fig)
