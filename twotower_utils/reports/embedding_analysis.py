"""Tables behind the embeddings notebook (05): projections, neighbours, norms and scores.

Arrays in, arrays or DataFrames out; no TensorFlow (the embeddings come from the run's saved
`user_embeddings.npy` / `item_embeddings.npy`, row = index).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from twotower_utils.data.processed import ProcessedData

__all__ = ["primary_label", "plot_sample", "top_items", "project_2d", "nearest_items",
           "pair_scores", "score_samples", "auc", "explicit_negative_scores",
           "explicit_negative_auc", "auc_summary"]


def primary_label(items: pd.DataFrame, item_features: Mapping[str, str],
                  item_vocab: Sequence[str], rule: str = "specific") -> tuple[str, np.ndarray]:
    """A category per item index for colouring plots, from the first categorical or
    multi-hot item feature.

    An item with several values (genres "Comedy|Drama|Film-Noir") is labelled with its most
    specific one, the value fewest items have (`rule="specific"`: Film-Noir), or with its
    most common one (`rule="frequent"`: Drama); the alphabetically first would say more about
    spelling than about the item. Returns `(feature name, labels [num_items + 1])`, "unknown"
    where missing, and ("none", all "unknown") when the items have no such feature.
    """
    if rule not in ("specific", "frequent"):
        raise ValueError(f"rule = {rule!r}: expected 'specific' or 'frequent'")
    names = [c for c, kind in item_features.items() if kind in ("categorical", "multi_hot")
             and c in items.columns]
    labels = np.full(len(item_vocab) + 1, "unknown", dtype=object)
    if not names:
        return "none", labels
    column = names[0]
    values = items.drop_duplicates("item_id").set_index("item_id")[column].dropna()
    exploded = values.astype(str).str.split("|").explode().str.strip()
    exploded = exploded[(exploded != "") & (exploded != "nan")]
    frequency = exploded.map(exploded.value_counts())
    # Per item, the value with the lowest (specific) or highest (frequent) count; ties by name.
    ranked = pd.DataFrame({"value": exploded, "count": frequency}).reset_index()
    ranked = ranked.sort_values(["count", "value"], ascending=[rule == "specific", True],
                                kind="stable")
    chosen = ranked.drop_duplicates("item_id").set_index("item_id")["value"]
    mapped = pd.Series(list(item_vocab)).map(chosen)
    labels[1:] = mapped.where(mapped.notna(), "unknown").to_numpy(object)
    return column, labels


def project_2d(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates `[n, 2]` of row vectors with "pca" or "tsne" (scikit-learn).

    Raises ValueError for another method.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30, max(5, (len(vectors) - 1) // 3)))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=500,
                    random_state=seed)
        # t-SNE's OpenMP threads spin-wait: on a busy machine several threads run many
        # times slower than one, and one thread handles a few thousand points in seconds.
        with threadpool_limits(limits=1, user_api="openmp"):
            return tsne.fit_transform(vectors)
    raise ValueError(f"method = {method!r}: expected 'pca' or 'tsne'")


def nearest_items(item_vectors: np.ndarray, query_idx: Sequence[int], names: np.ndarray,
                  candidates: np.ndarray, k: int = 5) -> pd.DataFrame:
    """The `k` items most cosine-similar to each query item, among `candidates`.

    Returns a frame indexed by (item, rank) with columns `neighbour` and `cosine`.
    """
    vectors = np.asarray(item_vectors, dtype=np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    frames = []
    for query in query_idx:
        similarity = unit @ unit[query]
        similarity[~np.asarray(candidates, bool)] = -np.inf
        similarity[query] = -np.inf
        best = np.argsort(-similarity, kind="stable")[:k]
        frames.append(pd.DataFrame({"item": names[query], "rank": np.arange(1, len(best) + 1),
                                    "neighbour": names[best], "cosine": similarity[best]}))
    return pd.concat(frames).set_index(["item", "rank"])


def plot_sample(candidates: np.ndarray, popularity: np.ndarray, max_points: int) -> np.ndarray:
    """Item indices to draw: the candidates, or their `max_points` most popular if more."""
    items = np.flatnonzero(np.asarray(candidates, bool))
    if len(items) <= max_points:
        return items
    order = np.argsort(-np.asarray(popularity)[items], kind="stable")
    return np.sort(items[order[:max_points]])


def top_items(popularity: np.ndarray, n: int = 4) -> np.ndarray:
    """The `n` most popular item indices (the "well-known" items), most popular first."""
    return np.argsort(-np.asarray(popularity), kind="stable")[:n]


def pair_scores(user_vectors: np.ndarray, item_vectors: np.ndarray, users: np.ndarray,
                items: np.ndarray) -> np.ndarray:
    """Dot-product score of each (user, item) index pair (`[n]`)."""
    return np.einsum("nd,nd->n", np.asarray(user_vectors)[users], np.asarray(item_vectors)[items])


def score_samples(user_vectors: np.ndarray, item_vectors: np.ndarray, data: ProcessedData,
                  max_pairs: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of test positives and of the saved sampled negatives (at most `max_pairs` each).

    Negatives that are in fact a validation or test positive of their user are dropped, so
    the two samples are disjoint. Returns `(positive_scores, negative_scores)`.
    """
    rng = np.random.default_rng(seed)
    n_items = data.num_items
    known = np.concatenate([
        data.validation["user_idx"].to_numpy(np.int64) * n_items + data.validation["item_idx"],
        data.test["user_idx"].to_numpy(np.int64) * n_items + data.test["item_idx"]])
    negatives = data.negatives
    keys = negatives["user_idx"].to_numpy(np.int64) * n_items + negatives["item_idx"]
    negatives = negatives[~np.isin(keys, known)]
    samples = []
    for frame in (data.test, negatives):
        if len(frame) > max_pairs:
            frame = frame.iloc[np.sort(rng.choice(len(frame), max_pairs, replace=False))]
        samples.append(pair_scores(user_vectors, item_vectors, frame["user_idx"].to_numpy(),
                                   frame["item_idx"].to_numpy()))
    return samples[0], samples[1]


def explicit_negative_scores(user_vectors: np.ndarray, item_vectors: np.ndarray,
                             data: ProcessedData, max_pairs: int = 20000,
                             seed: int = 0) -> np.ndarray:
    """Scores of the held-out (test) explicit negatives, label-0 rows such as items shown and
    not clicked (at most `max_pairs`); empty when the data has none."""
    frame = data.explicit_negatives
    frame = frame[frame["split"] == "test"]
    if len(frame) > max_pairs:
        rng = np.random.default_rng(seed)
        frame = frame.iloc[np.sort(rng.choice(len(frame), max_pairs, replace=False))]
    return pair_scores(user_vectors, item_vectors, frame["user_idx"].to_numpy(),
                       frame["item_idx"].to_numpy())


def explicit_negative_auc(user_vectors: np.ndarray, item_vectors: np.ndarray,
                          data: ProcessedData, max_pairs: int = 20000,
                          seed: int = 0) -> float | None:
    """AUC of test positives against held-out explicit negatives (None when there are none):
    how well scores separate what users took from what they were shown and passed over,
    beside `score_samples`' AUC against sampled negatives."""
    negative = explicit_negative_scores(user_vectors, item_vectors, data, max_pairs, seed)
    if not len(negative):
        return None
    positive, _ = score_samples(user_vectors, item_vectors, data, max_pairs, seed)
    return auc(positive, negative)


def auc_summary(positive: np.ndarray, negative: np.ndarray, user_vectors: np.ndarray,
                item_vectors: np.ndarray, data: ProcessedData) -> str:
    """The AUC of test positives against sampled negatives and, when the data has held-out
    explicit negatives, against those too (one line each)."""
    lines = [f"AUC = {auc(positive, negative):.3f} against {len(negative):,} sampled negatives"]
    explicit = explicit_negative_scores(user_vectors, item_vectors, data)
    if len(explicit):
        lines.append(f"AUC = {auc(positive, explicit):.3f} against {len(explicit):,} held-out "
                     "explicit negatives (label 0: shown and passed over)")
    return "\n".join(lines)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ROC AUC)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[positive, negative]))
