"""Every figure the notebooks show: seaborn where it is the natural tool, matplotlib otherwise.

Each function takes DataFrames, Series or arrays and returns a `matplotlib.figure.Figure` with
a title and labelled axes, or a `Note` (one sentence) when the data has nothing to draw, so a
report never shows an empty figure. Figures are closed in pyplot before they are returned, so
a cell that ends with `plots.plot_x(...)` displays the figure exactly once (the inline backend
would otherwise show it a second time) and long runs do not accumulate open figures. Legends
sit outside the axes, never over the data. `use_report_style` sets the one theme they share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from twotower_utils.display import Note

__all__ = [
    "Note", "use_report_style", "plot_activity_distribution", "plot_rating_distribution",
    "plot_interactions_over_time", "plot_feature_distributions", "plot_association",
    "plot_split_sizes", "plot_training_history", "plot_metric_comparison", "plot_metric_at_k",
    "plot_bucket_metrics", "plot_embedding_2d", "plot_norm_vs_popularity",
    "plot_score_distributions"]

PALETTE = sns.color_palette("tab10")
PANEL = (4.6, 3.4)  # size of one panel, inches
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False}


def use_report_style() -> None:
    """The one look of every report: seaborn's whitegrid theme, full table cells, crisp figures.

    Sets the seaborn theme (tab10 palette, notebook context), pandas' column width and row
    limits (long profiles are not cut at 50 characters) and the figure resolution. Call once
    at the top of a notebook; takes nothing, returns nothing.
    """
    sns.set_theme(context="notebook", style="whitegrid", palette="tab10",
                  rc={"figure.dpi": 100, "savefig.dpi": 110, "axes.titleweight": "bold"})
    pd.set_option("display.max_colwidth", 160)
    pd.set_option("display.max_rows", 60)
    pd.set_option("display.precision", 4)


def _figure(ncols: int = 1, nrows: int = 1, title: str | None = None, panel=PANEL):
    """A constrained-layout figure with a grid of axes (always a flat array)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows),
                             layout="constrained", squeeze=False)
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


def _legend_outside(ax, title: str | None = None, fontsize: int = 8) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, fontsize=fontsize, **OUTSIDE)


# ----------------------------------------------------------------------------- data (01, 02)
def plot_activity_distribution(user_counts: pd.Series, item_counts: pd.Series) -> Figure:
    """Interactions per user (histogram, log y) and item popularity by rank (log-log).

    Takes two Series of interaction counts (one value per user, one per item); returns the
    two-panel figure that shows the long tail.
    """
    fig, (left, right) = _figure(2, title="How activity is spread over users and items")
    users = np.asarray(user_counts, dtype=float)
    sns.histplot(users, bins=min(50, max(5, len(np.unique(users)))), ax=left, color=PALETTE[0])
    left.set_yscale("log")
    left.set(title="Interactions per user", xlabel="interactions of a user",
             ylabel="number of users (log)")
    left.axvline(np.median(users), color="black", linestyle="--", linewidth=1,
                 label=f"median {np.median(users):.0f}")
    left.legend(frameon=False, loc="upper right")
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
        right.legend(frameon=False, loc="lower left")
    return _done(fig)


def plot_rating_distribution(interactions: pd.DataFrame) -> Figure | Note:
    """Bar chart of how often each rating value occurs, with its share on top of each bar.

    Takes the interactions frame; a dataset without ratings gets a `Note` saying so.
    """
    if "rating" not in interactions.columns or interactions["rating"].isna().all():
        return Note("This dataset has no ratings: every interaction is a plain positive.")
    fig, (ax,) = _figure(title="Rating distribution")
    counts = interactions["rating"].dropna().value_counts().sort_index()
    bars = ax.bar([f"{v:g}" for v in counts.index], counts.to_numpy(), color=PALETTE[0])
    ax.bar_label(bars, labels=[f"{v / counts.sum():.0%}" for v in counts.to_numpy()])
    ax.set(xlabel="rating", ylabel="interactions")
    ax.margins(y=0.1)
    return _done(fig)


def plot_interactions_over_time(counts: pd.Series, period: str = "week") -> Figure | Note:
    """Line chart of interactions per period.

    Takes a Series indexed by period start dates (`eda.interactions_per_period`); an empty
    Series (no timestamps) gets a `Note` saying so.
    """
    series = pd.Series(counts)
    if series.empty:
        return Note("This dataset has no timestamps, so there is no timeline to draw.")
    fig, (ax,) = _figure(title=f"Interactions per {period}", panel=(9.2, 3.2))
    ax.plot(series.index, series.to_numpy(), color=PALETTE[0], marker=".", linewidth=1.5)
    ax.set(xlabel="date", ylabel=f"interactions per {period}")
    return _done(fig)


def plot_feature_distributions(
    table: pd.DataFrame, features: Mapping[str, str], side: str, top_n: int = 12
) -> Figure | None:
    """One panel per declared feature of a user or item table (None when there is none).

    Takes the feature table, `{column: "categorical"|"numeric"|"multi_hot"}` and the side's
    name ("user"/"item") for the title. Numeric columns get a histogram, categorical and
    multi-hot columns a horizontal bar chart of their `top_n` most frequent values (a
    multi-hot row counts once for each of its values). No features: None (the summary table
    above already says so in a sentence).
    """
    if not features:
        return None
    _check_columns(table, list(features), f"{side} table")
    ncols = 2 if len(features) in (2, 4) else min(3, len(features))
    nrows = int(np.ceil(len(features) / ncols))
    fig, axes = _figure(ncols, nrows, title=f"{side.capitalize()} feature distributions")
    for ax, (column, kind) in zip(axes, features.items(), strict=False):
        values = table[column]
        if kind == "numeric":
            sns.histplot(pd.to_numeric(values, errors="coerce").dropna(), bins=30, ax=ax,
                         color=PALETTE[0])
            ax.set(title=f"{column} (numeric)", xlabel=column, ylabel=f"{side}s")
            continue
        text = values.dropna().astype(str)
        if kind == "multi_hot":
            text = text.str.split("|").explode().str.strip()
            text = text[text != ""]
        counts = text.value_counts().head(top_n)
        sns.barplot(x=counts.to_numpy(), y=counts.index.astype(str), ax=ax, color=PALETTE[2],
                    orient="h")
        shown = f"top {top_n} of {text.nunique()}" if text.nunique() > top_n else "all values"
        ax.set(title=f"{column} ({kind}, {shown})", xlabel=f"{side}s", ylabel=column)
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes[len(features):]:
        ax.set_axis_off()
    return _done(fig)


def plot_association(matrix: pd.DataFrame | None, title: str, colour_label: str) -> Figure | None:
    """Heatmap of a square association table (`eda.feature_association`); None draws nothing.

    Takes the table (genre co-occurrence shares or feature correlations, rows = columns),
    the title and what a cell's value means.
    """
    if matrix is None or matrix.empty:
        return None
    size = max(4.0, 0.3 * len(matrix) + 2.0)
    fig, (ax,) = _figure(title=title, panel=(size + 1.2, size))
    sns.heatmap(matrix, ax=ax, cmap="rocket_r", square=True, linewidths=0.3,
                annot=len(matrix) <= 8, fmt=".2f", cbar_kws={"label": colour_label})
    ax.set(xlabel=matrix.columns.name or "feature", ylabel=matrix.index.name or "feature")
    return _done(fig)


def plot_split_sizes(split_sizes: pd.DataFrame) -> Figure:
    """Rows, users and items per split; takes a frame indexed by split with those columns."""
    _check_columns(split_sizes, ["rows", "users", "items"], "split_sizes")
    fig, axes = _figure(3, title="Split sizes", panel=(3.4, 3.0))
    for ax, column, colour in zip(axes, ("rows", "users", "items"), PALETTE, strict=False):
        values = split_sizes[column]
        bars = ax.bar(values.index.astype(str), values.to_numpy(dtype=float), color=colour)
        ax.bar_label(bars, labels=[f"{int(v):,}" for v in values], fontsize=8)
        ax.set(title=f"{column} per split", xlabel="split", ylabel=column)
        ax.margins(y=0.12)
    return _done(fig)


# ----------------------------------------------------------------------------- training (03)
def plot_training_history(history: pd.DataFrame | Sequence[Mapping],
                          metric: str | None = None) -> Figure:
    """Training loss, validation metrics and learning rate per epoch.

    Takes the per-epoch records (a DataFrame or a list of dicts, as `TrainingResult.history`)
    with `epoch` and `loss` columns, `val_<metric>@<k>` columns and optionally
    `learning_rate`; `metric` (e.g. "val_ndcg@10") names the early-stopping metric, whose
    best epoch is marked (default: the first validation column). Legends sit under the
    panels, clear of the curves. Returns the figure.
    """
    frame = pd.DataFrame(list(history)) if not isinstance(history, pd.DataFrame) else history
    if "epoch" not in frame.columns:
        frame = frame.reset_index().rename(columns={"index": "epoch"})
    _check_columns(frame, ["loss"], "history")
    metrics = [c for c in frame.columns if str(c).startswith("val_") and c != "val_loss"]
    if metric is not None:
        _check_columns(frame, [metric], "history")
    panels = 3 if "learning_rate" in frame.columns else 2
    fig, axes = _figure(panels, title="Training progress", panel=(4.2, 3.6))
    epochs = frame["epoch"].to_numpy()
    losses = [c for c in ("loss", "val_loss") if c in frame.columns]
    for column, colour in zip(losses, PALETTE, strict=False):
        axes[0].plot(epochs, frame[column], marker="o", color=colour,
                     label="training loss" if column == "loss" else "validation loss")
    axes[0].set(title="Loss", xlabel="epoch", ylabel="loss")
    for i, column in enumerate(metrics):
        axes[1].plot(epochs, frame[column], marker="o", color=PALETTE[(2 + i) % 10],
                     label=str(column).removeprefix("val_"))
    if metrics:
        chosen = metric or metrics[0]
        best = int(np.nanargmax(frame[chosen].to_numpy()))
        axes[1].axvline(epochs[best], color="black", linestyle="--", linewidth=1,
                        label=f"best {chosen.removeprefix('val_')}: epoch {epochs[best]}")
    axes[1].set(title="Validation metrics", xlabel="epoch", ylabel="metric value")
    for ax in axes[:2]:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  ncols=2, frameon=False, fontsize=8)
    if panels == 3:
        axes[2].plot(epochs, frame["learning_rate"], marker="o", color=PALETTE[7])
        axes[2].set(title="Learning rate (end of epoch)", xlabel="epoch",
                    ylabel="learning rate")
        axes[2].yaxis.set_major_formatter(FormatStrFormatter("%.2e"))
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _done(fig)


# ----------------------------------------------------------------------------- evaluation (04)
def _long_metrics(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """`compare_models` table -> long frame: model, metric, k, value (metric@k columns)."""
    rows = []
    for column in table.columns:
        name, _, k = str(column).partition("@")
        if name in metrics and k.isdigit():
            rows += [(str(m), name, int(k), float(v)) for m, v in table[column].items()]
    return pd.DataFrame(rows, columns=["model", "metric", "k", "value"])


def plot_metric_comparison(
    table: pd.DataFrame, k: int = 10,
    metrics: Sequence[str] = ("precision", "recall", "ndcg", "map", "hit_rate"),
) -> Figure:
    """Grouped bars (seaborn) of each model's metrics at one cut-off.

    Takes a table indexed by model with `<metric>@<k>` columns (`compare_models` output), the
    cut-off and the metric names to show. Returns the figure.
    """
    long = _long_metrics(table, metrics)
    long = long[long["k"] == k]
    if long.empty:
        raise ValueError(f"table has no column for metrics {list(metrics)} at k={k}; "
                         f"columns: {list(table.columns)}")
    long = long.assign(metric=long["metric"] + f"@{k}")
    fig, (ax,) = _figure(title=f"Model comparison at k = {k}", panel=(9.2, 3.8))
    sns.barplot(long, x="metric", y="value", hue="model", ax=ax, palette="tab10")
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set(xlabel="metric", ylabel="value (higher is better)")
    ax.margins(y=0.12)
    _legend_outside(ax, "model")
    return _done(fig)


def plot_metric_at_k(
    table: pd.DataFrame, metrics: Sequence[str] = ("precision", "recall", "ndcg")
) -> Figure:
    """One panel per metric: its value against k, one line per model (`compare_models` table)."""
    long = _long_metrics(table, metrics)
    fig, axes = _figure(len(metrics), title="Metrics as the list grows", panel=(3.6, 3.2))
    for ax, metric in zip(axes, metrics, strict=True):
        rows = long[long["metric"] == metric]
        if rows.empty:
            raise ValueError(f"table has no '{metric}@k' column; columns: {list(table.columns)}")
        sns.lineplot(rows, x="k", y="value", hue="model", marker="o", ax=ax, palette="tab10",
                     legend=ax is axes[-1])
        ax.set(title=f"{metric}@k", xlabel="k (list length)", ylabel=metric)
        ax.set_xticks(sorted(rows["k"].unique()))
    _legend_outside(axes[-1], "model")
    return _done(fig)


def plot_bucket_metrics(frame: pd.DataFrame, metric: str, bucket_label: str,
                        count_column: str = "users") -> Figure:
    """Grouped bars (seaborn) of a metric per bucket (e.g. user activity), one bar per model.

    Takes a long frame with columns `bucket`, `model`, `metric` and optionally
    `count_column` (the bucket's size, shown under the tick labels), the metric column name
    and what the buckets are (axis label). Returns the figure.
    """
    _check_columns(frame, ["bucket", "model", metric], "bucket frame")
    buckets = list(dict.fromkeys(frame["bucket"].astype(str)))
    labels = dict(zip(buckets, buckets, strict=True))
    if count_column in frame.columns:
        first = frame.drop_duplicates("bucket")
        labels = {str(b): f"{b}\n(n={int(n):,})"
                  for b, n in zip(first["bucket"], first[count_column], strict=True)}
    shown = frame.assign(bucket=frame["bucket"].astype(str).map(labels))
    fig, (ax,) = _figure(title=f"{metric} by {bucket_label}", panel=(9.2, 3.6))
    sns.barplot(shown, x="bucket", y=metric, hue="model", ax=ax, palette="tab10",
                order=[labels[b] for b in buckets])
    ax.tick_params(axis="x", labelsize=8)
    ax.set(xlabel=bucket_label, ylabel=metric)
    _legend_outside(ax, "model")
    return _done(fig)


# ----------------------------------------------------------------------------- embeddings (05)
def plot_embedding_2d(
    coords: np.ndarray, colour: Sequence, title: str, colour_label: str,
    categorical: bool = True, max_legend: int = 10, log_colour: bool = False,
) -> Figure | Note:
    """Scatter of a 2-D projection of embeddings.

    Takes `[n, 2]` coordinates, one colour value per point (a category, or a number such as
    popularity when `categorical` is False; `log_colour` puts numbers on a log scale, values
    below 1 shown as 1), the title and what the colour means. Categorical colours show the
    `max_legend` most common values, the rest in grey; no category at all gives a `Note`.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be [n, 2]; got shape {coords.shape}")
    if len(colour) != len(coords):
        raise ValueError(f"colour has {len(colour)} values for {len(coords)} points")
    labels = pd.Series(list(colour), dtype=object).astype(str)
    if categorical and set(labels) <= {"unknown", "nan"}:
        return Note(f"{title}: not drawn, the items have no category to colour by.")
    fig, (ax,) = _figure(title=title, panel=(6.4, 5.0))
    if categorical:
        common = list(labels.value_counts().index[:max_legend])
        shown = labels.where(labels.isin(common), "other")
        palette = dict(zip(common, PALETTE, strict=False)) | {"other": "lightgrey"}
        order = common + (["other"] if (shown == "other").any() else [])
        sns.scatterplot(x=coords[:, 0], y=coords[:, 1], hue=shown.to_numpy(), hue_order=order,
                        palette=palette, s=12, linewidth=0, ax=ax)
        _legend_outside(ax, colour_label, fontsize=7)
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
    ax.set_title(f"Spearman rho = {rho:.2f}", fontsize=10, fontweight="normal")
    return _done(fig)


def plot_score_distributions(positive: np.ndarray, negative: np.ndarray, bins: int = 60,
                             positive_label: str = "test positives") -> Figure:
    """Scores of held-out positives vs sampled negatives: histograms and ECDFs (seaborn, hue).

    Takes the two score arrays, the number of bins and what the positives are. Bins span the
    0.5-99.5 percentiles of all scores, so a few extreme ones do not squash the histograms.
    """
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    scores = pd.DataFrame({
        "score": np.r_[positive, negative],
        "pair": [f"{positive_label} (n={len(positive):,})"] * len(positive)
        + [f"sampled negatives (n={len(negative):,})"] * len(negative)})
    fig, (hist, ecdf) = _figure(2, title="Scores of positives vs negatives", panel=(5.0, 3.8))
    span = tuple(np.percentile(scores["score"], [0.5, 99.5])) if len(scores) else None
    sns.histplot(scores, x="score", hue="pair", bins=bins, binrange=span, stat="density",
                 common_norm=False, element="step", ax=hist, palette=PALETTE[:2], legend=False)
    hist.set(title="Histogram (0.5-99.5 percentile range)", ylabel="density",
             xlabel="score (dot product of user and item embeddings)")
    sns.ecdfplot(scores, x="score", hue="pair", ax=ecdf, palette=PALETTE[:2])
    ecdf.set(title="Cumulative share", xlabel="score", ylabel="share of pairs at or below")
    sns.move_legend(ecdf, **OUTSIDE, title=None, fontsize=8)
    return _done(fig)
