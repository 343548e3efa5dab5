"""Each figure has a title and labelled axes, is closed in pyplot, refuses bad input by name."""

import importlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from twotower_utils.reports import plots  # noqa: E402

RNG = np.random.default_rng(0)
TABLE = pd.DataFrame(
    {f"{m}@{k}": RNG.uniform(size=3) for m in ("precision", "recall", "ndcg", "map", "hit_rate")
     for k in (5, 10, 20)},
    index=pd.Index(["two_tower", "most_popular", "ease"], name="model"),
)
BUCKETS = pd.DataFrame({
    "bucket": ["1–10", "1–10", "11–50", "11–50"], "model": ["a", "b", "a", "b"],
    "users": [10, 10, 12, 12], "ndcg": [0.1, 0.2, 0.3, 0.4],
})
INTERACTIONS = pd.DataFrame({
    "user_id": list("aabbc"), "item_id": list("xyxzx"), "label": 1,
    "rating": [1.0, 5.0, 4.0, 4.0, 3.0],
    "timestamp": [0, 86400 * 8, 86400 * 15, 86400 * 20, 86400 * 30],
})
HISTORY = [{"epoch": e, "loss": 1 / e, "val_ndcg@10": 0.1 * e, "val_recall@10": 0.2 * e,
            "learning_rate": 0.01 * 0.9 ** e} for e in (1, 2, 3)]

FIGURES = {
    "activity": lambda: plots.plot_activity_distribution(pd.Series([5, 3, 1]),
                                                         pd.Series([10, 4, 2, 1])),
    "ratings": lambda: plots.plot_rating_distribution(INTERACTIONS),
    "time": lambda: plots.plot_interactions_over_time(
        pd.Series([3, 5], index=pd.to_datetime(["2020-01-06", "2020-01-13"]))),
    "features": lambda: plots.plot_feature_distributions(
        pd.DataFrame({"age": [20, 30, 40], "genres": ["A|B", "B", "C|A"], "sex": list("MFM")}),
        {"age": "numeric", "genres": "multi_hot", "sex": "categorical"}, side="user"),
    "association": lambda: plots.plot_association(
        pd.DataFrame(RNG.uniform(size=(3, 3)), index=list("abc"),
                     columns=pd.Index(list("abc"), name="genre")).rename_axis("genre"),
        "Genre co-occurrence", "share"),
    "splits": lambda: plots.plot_split_sizes(pd.DataFrame(
        {"rows": [70, 10, 20], "users": [5, 4, 5], "items": [9, 6, 8]},
        index=["train", "validation", "test"])),
    "history": lambda: plots.plot_training_history(HISTORY, metric="val_ndcg@10"),
    "comparison": lambda: plots.plot_metric_comparison(TABLE, k=10),
    "at_k": lambda: plots.plot_metric_at_k(TABLE),
    "buckets": lambda: plots.plot_bucket_metrics(BUCKETS, "ndcg", "training interactions"),
    "embedding_categories": lambda: plots.plot_embedding_2d(
        RNG.normal(size=(30, 2)), list("abc") * 10, "Items", "genre"),
    "embedding_popularity": lambda: plots.plot_embedding_2d(
        RNG.normal(size=(30, 2)), np.arange(30), "Items", "popularity", categorical=False,
        log_colour=True),
    "norms": lambda: plots.plot_norm_vs_popularity(RNG.normal(size=(30, 4)), np.arange(30)),
    "scores": lambda: plots.plot_score_distributions(RNG.normal(1, size=50), RNG.normal(size=80)),
    "sweep_levers": lambda: importlib.import_module("twotower_utils.pipeline.sweeps").plot_levers(
        pd.DataFrame({"dim": ["8", "8", "16", "16"], "lr": ["0.1", "0.2", "0.1", "0.2"],
                      "status": ["ok", "failed", "ok", "ok"],
                      "validation ndcg@10": [0.1, None, 0.3, 0.4]}), ["dim", "lr"]),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_has_a_title_and_labelled_axes_and_is_closed(name):
    fig = FIGURES[name]()
    assert isinstance(fig, Figure)
    title = fig._suptitle.get_text() if fig._suptitle else ""
    axes = [ax for ax in fig.axes
            if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"]
    assert title or all(ax.get_title() for ax in axes), f"{name}: no title"
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axes {ax.get_title()!r}"
    assert fig.number not in plt.get_fignums(), f"{name}: figure left open in pyplot"
    fig.savefig(__import__("io").BytesIO(), format="png")  # renders without error


def test_absent_data_gives_one_sentence_not_an_empty_figure():
    note = plots.plot_rating_distribution(INTERACTIONS.drop(columns="rating"))
    assert isinstance(note, plots.Note) and note._repr_markdown_() == f"*{note}*"
    assert isinstance(plots.plot_interactions_over_time(pd.Series(dtype="int64")), plots.Note)
    assert plots.plot_feature_distributions(pd.DataFrame(), {}, side="item") is None
    assert plots.plot_association(None, "t", "c") is None
    assert not plt.get_fignums(), "nothing was drawn"


def test_legends_sit_outside_the_axes():
    for name in ("history", "comparison", "buckets", "scores", "embedding_categories",
                 "sweep_levers"):
        fig = FIGURES[name]()
        fig.canvas.draw()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box, frame = legend.get_window_extent(), ax.get_window_extent()
            overlap = box.intersection(box, frame)
            assert overlap is None or overlap.width * overlap.height < 1, \
                f"{name}: the legend covers the plot area of {ax.get_title()!r}"


def test_figures_refuse_bad_input_naming_the_problem():
    with pytest.raises(ValueError, match="coords must be"):
        plots.plot_embedding_2d(np.zeros((3, 3)), list("abc"), "t", "c")
    with pytest.raises(ValueError, match="colour has 2 values for 3 points"):
        plots.plot_embedding_2d(np.zeros((3, 2)), list("ab"), "t", "c")
    with pytest.raises(ValueError, match="missing column"):
        plots.plot_split_sizes(pd.DataFrame({"rows": [1]}))
    with pytest.raises(ValueError, match="no column for metrics"):
        plots.plot_metric_comparison(TABLE, k=7)
    with pytest.raises(ValueError, match="user table: missing column"):
        plots.plot_feature_distributions(pd.DataFrame({"a": [1]}), {"b": "numeric"}, "user")
    with pytest.raises(ValueError, match="popularity"):
        plots.plot_norm_vs_popularity(np.zeros((3, 2)), np.zeros(4))


# ----------------------------------------------------------------------------- what they draw
ITEMS = pd.DataFrame({"item_id": list("abcd"),
                      "genres": ["Drama|Film-Noir", "Drama", "Comedy|Drama", "Comedy"]})


def test_maps_colour_items_by_their_most_informative_genre_not_the_first():
    from twotower_utils.reports import embedding_analysis as ea

    vocab = list("abcde")  # "e" has no row: unknown
    name, specific = ea.primary_label(ITEMS, {"genres": "multi_hot"}, vocab)
    assert name == "genres"
    assert list(specific) == ["unknown", "Film-Noir", "Drama", "Comedy", "Comedy", "unknown"]
    _, frequent = ea.primary_label(ITEMS, {"genres": "multi_hot"}, vocab, rule="frequent")
    assert list(frequent[1:4]) == ["Drama", "Drama", "Drama"]


def test_heatmap_table_and_split_wording_follow_the_data():
    from twotower_utils.reports import eda

    matrix, title, _ = eda.feature_association(ITEMS, {"genres": "multi_hot"})
    assert title.startswith("genres") and matrix.loc["Film-Noir", "Drama"] == 1.0
    assert matrix.loc["Drama", "Film-Noir"] == pytest.approx(1 / 3)
    assert np.isnan(matrix.loc["Drama", "Drama"]), "the diagonal is left out"
    assert eda.feature_association(ITEMS, {})[0] is None
    assert "test period" not in eda.describe_split("random")
    assert "test period" in eda.describe_split("temporal")
    assert isinstance(eda.feature_summary(ITEMS, {}, side="user"), plots.Note)


def test_a_map_without_categories_is_one_sentence():
    note = plots.plot_embedding_2d(RNG.normal(size=(3, 2)), ["unknown"] * 3, "Items (PCA)", "g")
    assert isinstance(note, plots.Note) and "no category" in note
