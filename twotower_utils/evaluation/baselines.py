"""Non-neural baselines the two-tower model must beat: most-popular, EASE and,
where EASE does not fit, item-kNN.

All fit on a sparse user x item training matrix (row = user index, column = item index; any
stored value counts as an interaction) and score users as dense `[len(users), I]` arrays, so
they plug into `twotower_utils.evaluation.topk.top_k_from_scores`. EASE and item-kNN score the
rows of the matrix they were fitted on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import lapack

from twotower_utils.evaluation.protocol import seen_items
from twotower_utils.evaluation.ranking import check_metrics, ranking_metrics
from twotower_utils.evaluation.topk import _select_top_k, top_k_from_scores

__all__ = ["MostPopular", "PopularityByFeature", "EASE", "ItemKNN", "DEFAULT_EASE_GRID",
           "DEFAULT_KNN_GRID", "EASE_MAX_DIM", "tune_ease", "tune_item_knn",
           "cosine_neighbours", "similarity_baseline", "score_chunk_size"]

DEFAULT_EASE_GRID = (50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0)
DEFAULT_KNN_GRID = (10, 20, 50, 100, 200, 400)
# EASE solves a dense min(users, items)-sized system in time ~ n³: at 5,000 one
# eigendecomposition took 77 s and each l2's product 8 s on 2 busy cores, so tuning is minutes
# there, and past it item-kNN stands in (see `similarity_baseline`).
EASE_MAX_DIM = 5_000


def _binary_csr(train: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """The training matrix as float64 CSR with every stored interaction set to 1."""
    x = sp.csr_matrix(train, dtype=np.float64, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


class MostPopular:
    """Scores every item by its number of distinct training users, the same for every user.

    Ties keep the lower item index first (see `top_k_from_scores`).
    """

    def __init__(self) -> None:
        self.popularity_: np.ndarray | None = None

    def fit(self, train: sp.spmatrix | sp.sparray) -> MostPopular:
        """Count each item's users in `train` (sparse `[U, I]`); returns self."""
        x = _binary_csr(train)
        self.popularity_ = np.asarray(x.sum(axis=0)).ravel()
        return self

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Popularity scores, float64 `[len(user_idx), I]` (identical rows)."""
        if self.popularity_ is None:
            raise RuntimeError("MostPopular.scores called before fit")
        return np.tile(self.popularity_, (len(np.atleast_1d(user_idx)), 1))


def _value_incidence(values: np.ndarray, kind: str) -> sp.csr_matrix:
    """Binary `[items, distinct values]` matrix of which item has which (non-missing) value;
    multi-hot values are split on "|" and stripped."""
    column = pd.Series(np.asarray(values, dtype=str))
    if kind == "multi_hot":
        column = column.str.split("|").explode().str.strip()
    rows = column.index.to_numpy()
    codes, _ = pd.factorize(column.where(column != ""))  # missing -> -1
    keep = codes >= 0
    matrix = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], codes[keep])),
                           shape=(len(values), int(codes.max(initial=-1)) + 1))
    matrix.sum_duplicates()
    return matrix


class PopularityByFeature:
    """Cold-item baseline: items scored by how popular their feature values are in training.

    For each categorical or multi-hot item feature, a value's popularity is the mean number
    of training users of the training items that have it; an item's score is the mean, over
    its features, of the mean popularity of its values. Values never seen on a training item
    (and numeric features) carry no information and are skipped; an item with none left
    gets the mean training popularity. The same scores for every user.
    """

    def __init__(self) -> None:
        self.scores_: np.ndarray | None = None

    def fit(self, train: sp.spmatrix | sp.sparray, item_features: dict[str, np.ndarray],
            specs: Sequence[dict]) -> PopularityByFeature:
        """Fit on `train` (sparse `[U, I]`) and the raw item feature tables (`name -> [I]`
        strings, "" = missing, multi-hot `|`-separated: `ProcessedData.side_features("item")`)
        described by `specs`; returns self."""
        counts = np.asarray(_binary_csr(train).sum(axis=0)).ravel()
        seen = counts > 0
        per_feature = []
        for spec in specs:
            if spec["type"] not in ("categorical", "multi_hot"):
                continue
            incidence = _value_incidence(item_features[spec["name"]], spec["type"])
            incidence.data[:] = 1.0  # a value listed twice on one item counts once
            trained = incidence[seen]
            items_with = np.asarray(trained.sum(axis=0)).ravel()
            value_pop = np.divide(trained.T @ counts[seen], items_with,
                                  out=np.full(len(items_with), np.nan), where=items_with > 0)
            known = incidence.multiply(np.isfinite(value_pop)[None, :]).tocsr()
            total = known @ np.nan_to_num(value_pop)
            n_known = np.asarray(known.sum(axis=1)).ravel()
            per_feature.append(np.divide(total, n_known, out=np.full(len(counts), np.nan),
                                         where=n_known > 0))
        fallback = counts[seen].mean() if seen.any() else 0.0
        if per_feature:
            stacked = np.vstack(per_feature)
            known = np.isfinite(stacked)
            total = np.where(known, stacked, 0.0).sum(axis=0)
            n_known = known.sum(axis=0)
            self.scores_ = np.where(n_known > 0, total / np.maximum(n_known, 1), fallback)
        else:
            self.scores_ = np.full(len(counts), fallback)
        return self

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Feature-popularity scores, float64 `[len(user_idx), I]` (identical rows)."""
        if self.scores_ is None:
            raise RuntimeError("PopularityByFeature.scores called before fit")
        return np.tile(self.scores_, (len(np.atleast_1d(user_idx)), 1))




def score_chunk_size(num_items: int) -> int:
    """Users to score at once so a dense float64 score block stays near 64 MB (at most 4,096):
    a scorer holds two or three such blocks, whatever the catalogue size."""
    return int(min(4096, max(1, (1 << 23) // max(num_items, 1))))


def _chunks(n: int, width: int) -> list[np.ndarray]:
    """Row indices 0..n-1 in blocks of `score_chunk_size(width)` rows."""
    step = score_chunk_size(width)
    return [np.arange(s, min(s + step, n)) for s in range(0, n, step)]


def _smaller_gram(x: sp.csr_matrix) -> tuple[np.ndarray, bool]:
    """`(gram, dual)`: XXᵀ (users x users, dual = True) when users < items, else XᵀX."""
    dual = x.shape[0] < x.shape[1]
    return (x @ x.T if dual else x.T @ x).toarray(), dual


def _cholesky_inverse(gram: np.ndarray, l2: float) -> np.ndarray:
    """(gram + l2·I)⁻¹ by Cholesky: one l2 needs no eigendecomposition (several times cheaper)."""
    a = gram + l2 * np.eye(len(gram))
    factor, info = lapack.dpotrf(a, lower=False, overwrite_a=True)
    if info == 0:
        inverse, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: gram + {l2:g}·I is not positive definite")
    upper = np.triu(inverse)
    return upper + np.triu(upper, 1).T  # potri fills the upper triangle only


class _EaseScorer:
    """EASE scores `x_u B` of training rows at one l2, without the `I x I` matrix B.

    `inverse` is (XXᵀ + l2·I)⁻¹ in the dual form, (XᵀX + l2·I)⁻¹ in the primal. With
    P = (XᵀX + l2·I)⁻¹, `x_u B = x_u - (x_u P) diag(1/diag(P))`, whose entries on the user's
    own items are those of B's zero diagonal. In the dual, X·P = (XXᵀ + l2·I)⁻¹X and
    diag(P) = (1 - diag(Xᵀ(XXᵀ + l2·I)⁻¹X)) / l2 (Woodbury), so memory stays at users².
    """

    def __init__(self, x: sp.csr_matrix, l2: float, inverse: np.ndarray, dual: bool) -> None:
        self.x, self.l2, self.inverse, self.dual = x, float(l2), inverse, dual
        if dual:
            inner = np.zeros(x.shape[1])
            for rows in _chunks(x.shape[0], x.shape[1]):
                inner += np.asarray(x[rows].multiply(self.xp(rows)).sum(axis=0)).ravel()
            self.diag = (1.0 - inner) / self.l2
        else:
            self.diag = np.diag(inverse).copy()

    def xp(self, rows: np.ndarray) -> np.ndarray:
        """`X[rows] · P`, dense `[len(rows), I]`."""
        if self.dual:
            return np.asarray(self.x.T @ self.inverse[rows].T).T
        return np.asarray(self.x[rows] @ self.inverse)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Scores of training rows `rows`, float64 `[len(rows), I]`."""
        rows = np.atleast_1d(rows)
        return self.x[rows].toarray() - self.xp(rows) / self.diag

    def weights(self) -> np.ndarray:
        """The dense `I x I` item-item matrix B (diagonal 0), for inspection only."""
        if self.dual:
            p = -(self.x.T @ (self.x.T @ self.inverse).T)
            p[np.diag_indices_from(p)] += 1.0
            p /= self.l2
        else:
            p = self.inverse
        weights = p / (-np.diag(p))
        np.fill_diagonal(weights, 0.0)
        return weights


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, 2019): closed-form item-item weights.

    `B = I - P diag(1/diag(P))` with `P = (XᵀX + l2·I)⁻¹`, so diag(B) = 0 and a user's scores
    are `x_u B`. Solved in the smaller of the user and item spaces: with fewer users than
    items, the dual (users x users) form never builds an `I x I` matrix. Time grows as the
    cube and memory as the square of min(users, items); see `similarity_baseline`.
    """

    def __init__(self, l2: float = 500.0) -> None:
        if l2 <= 0:
            raise ValueError(f"l2 = {l2}: expected a positive regularisation weight")
        self.l2 = float(l2)
        self.train_: sp.csr_matrix | None = None
        self._scorer: _EaseScorer | None = None
        self._weights: np.ndarray | None = None

    def fit(self, train: sp.spmatrix | sp.sparray) -> EASE:
        """Solve EASE on `train` (sparse `[U, I]`, whose rows are the users `scores` takes);
        returns self."""
        x = _binary_csr(train)
        gram, dual = _smaller_gram(x)
        self._scorer = _EaseScorer(x, self.l2, _cholesky_inverse(gram, self.l2), dual)
        self.train_, self._weights = x, None
        return self

    @property
    def weights_(self) -> np.ndarray | None:
        """The item-item matrix B, dense `[I, I]`, built on first access (None before fit)."""
        if self._scorer is not None and self._weights is None:
            self._weights = self._scorer.weights()
        return self._weights

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores `x_u B` from the users' training rows, float64 `[len(user_idx), I]`."""
        if self._scorer is None:
            raise RuntimeError("EASE.scores called before fit")
        return self._scorer.scores(user_idx)


class ItemKNN:
    """Item-kNN: cosine similarity of items' training users, `neighbours` kept per item.

    sim(i, j) = |users(i) ∩ users(j)| / sqrt(|users(i)| |users(j)|); each item keeps its
    `neighbours` most similar other items (ties to the lower index; similarity 0 is no
    neighbour) in a sparse `[I, I]` matrix S, and a user's scores are `x_u S`: the summed
    similarity of each item to the user's items. Memory is `I x neighbours`, so it scales
    where EASE's dense inverse does not.
    """

    def __init__(self, neighbours: int = 100) -> None:
        if int(neighbours) != neighbours or neighbours < 1:
            raise ValueError(f"neighbours = {neighbours!r}: expected an integer >= 1")
        self.neighbours = int(neighbours)
        self.similarity_: sp.csr_matrix | None = None
        self.train_: sp.csr_matrix | None = None

    def fit(self, train: sp.spmatrix | sp.sparray,
            similarity: sp.csr_matrix | None = None) -> ItemKNN:
        """Fit on `train` (sparse `[U, I]`); `similarity`, if given, is `cosine_neighbours`
        of the same matrix with at least `neighbours` per item (tuning reuses it). Returns self."""
        x = _binary_csr(train)
        similarity = cosine_neighbours(x, self.neighbours) if similarity is None else similarity
        self.similarity_, self.train_ = _first_per_row(similarity, self.neighbours), x
        return self

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores `x_u S` from the users' training rows, float64 `[len(user_idx), I]`."""
        if self.similarity_ is None or self.train_ is None:
            raise RuntimeError("ItemKNN.scores called before fit")
        return (self.train_[np.atleast_1d(user_idx)] @ self.similarity_).toarray()


def cosine_neighbours(train: sp.spmatrix | sp.sparray, neighbours: int) -> sp.csr_matrix:
    """Each item's `neighbours` most cosine-similar other items over the training users.

    Takes sparse `[U, I]` interactions. Returns csr `[I, I]`: row i holds item i's neighbours,
    most similar first (ties to the lower index), similarity > 0 only. Items are processed
    in blocks so the dense scratch stays at about 64 MB whatever the catalogue size.
    """
    x = _binary_csr(train)
    counts = np.asarray(x.sum(axis=0)).ravel()
    scale = np.divide(1.0, np.sqrt(counts), out=np.zeros_like(counts), where=counts > 0)
    by_item = (x @ sp.diags(scale)).T.tocsr()  # [I, U], unit-norm rows
    by_user = by_item.T.tocsr()
    n_items, width = x.shape[1], min(int(neighbours), x.shape[1])
    indices, values = [], []
    for rows in _chunks(n_items, n_items):
        block = (by_item[rows] @ by_user).toarray()
        block[np.arange(len(rows)), rows] = -np.inf  # an item is not its own neighbour
        block[block <= 0.0] = -np.inf
        top, _ = _select_top_k(block, width)
        indices.append(top)
        values.append(block[np.arange(len(rows))[:, None], top])  # float64, not float32
    top, top_values = np.vstack(indices), np.vstack(values)
    keep = np.isfinite(top_values)  # finite values come first in each row
    indptr = np.r_[0, np.cumsum(keep.sum(axis=1))]
    return sp.csr_matrix((top_values[keep], top[keep], indptr), shape=(n_items, n_items))


def _first_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """The first `n` stored entries of each row: the `n` nearest of `cosine_neighbours`."""
    lengths = np.diff(matrix.indptr)
    position = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], lengths)
    keep = position < n
    indptr = np.r_[0, np.cumsum(np.minimum(lengths, n))]
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)


def similarity_baseline(num_users: int, num_items: int, max_dim: int = EASE_MAX_DIM
                        ) -> tuple[str, str]:
    """Which similarity baseline fits a catalogue: `("ease" | "item_knn", reason)`.

    EASE while min(users, items) <= `max_dim` (it solves in the smaller space, in time ~ n³
    and memory ~ n²); past it item-kNN stands in. The reason is a sentence for reports.
    """
    side = min(num_users, num_items)
    if side <= max_dim:
        form = ("dual form (users x users)" if num_users < num_items
                else "primal form (items x items)")
        return "ease", (f"EASE, {form}: min(users, items) = {side:,} <= {max_dim:,}")
    return "item_knn", (
        f"item-kNN stands in for EASE: min(users, items) = {side:,} > {max_dim:,}, past which "
        f"EASE's dense {side:,} x {side:,} solve ({8 * side**2 / 2**30:.1f} GiB a copy, time "
        "~ n³ per l2) does not fit an interactive evaluation")


def _validation_table(name: str, values: Sequence, make_scorer, train: sp.csr_matrix,
                      validation: sp.spmatrix | sp.sparray, k: int, metric: str,
                      candidates: np.ndarray | None) -> tuple[float, pd.DataFrame]:
    """Score the validation users with `make_scorer(value) -> scores_fn` for each value."""
    check_metrics([metric])
    validation = sp.csr_matrix(validation)
    if candidates is None:
        candidates = seen_items(train != 0)  # the protocol's: the items seen in training
    rows = []
    for value in values:
        started = time.perf_counter()
        score_fn = make_scorer(value)
        fit_seconds = time.perf_counter() - started
        # Every user is listed, not only those with validation items: coverage counts all.
        top_idx, _ = top_k_from_scores(score_fn, train.shape[0], k, exclude=train,
                                       candidates=candidates,
                                       chunk_size=score_chunk_size(train.shape[1]))
        rows.append({name: value, **ranking_metrics(top_idx, validation, (k,),
                                                    num_items=int(candidates.sum())),
                     "fit_seconds": fit_seconds})
    table = pd.DataFrame(rows)
    return table.loc[table[f"{metric}@{k}"].idxmax(), name], table


def tune_ease(train: sp.spmatrix | sp.sparray, validation: sp.spmatrix | sp.sparray,
              grid: Sequence[float] = DEFAULT_EASE_GRID, k: int = 10, metric: str = "ndcg",
              candidates: np.ndarray | None = None) -> tuple[float, pd.DataFrame]:
    """Pick EASE's l2 on a validation split (never the test split).

    One eigendecomposition of the smaller Gram matrix (users x users when users < items)
    serves every l2: (G + l2·I)⁻¹ = V diag(1/(w + l2)) Vᵀ. Scores equal `EASE(l2)`'s.

    Args:
        train: sparse `[U, I]` interactions EASE is fitted on; also excluded from the lists.
        validation: sparse `[U, I]` held-out items the lists are scored against.
        grid: l2 values to try.
        k: cut-off; metric: the name from `METRICS` to maximise at k.
        candidates: bool `[I]` of recommendable items; default the items seen in `train`.

    Returns:
        `(best_l2, table)`: the first l2 with the highest metric, and a DataFrame with one row
        per l2 (column "l2", every metric at k, "fit_seconds" for that l2's solve); the
        shared eigendecomposition's seconds are in `table.attrs["decomposition_seconds"]`.
    """
    x, started = _binary_csr(train), time.perf_counter()
    gram, dual = _smaller_gram(x)
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    del gram
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # a Gram matrix is PSD; drop rounding
    decomposition_seconds = time.perf_counter() - started

    def make_scorer(l2: float):
        inverse = (eigenvectors / (eigenvalues + l2)) @ eigenvectors.T
        return _EaseScorer(x, l2, inverse, dual).scores

    best, table = _validation_table("l2", [float(v) for v in grid], make_scorer, x,
                                    validation, k, metric, candidates)
    table.attrs.update(decomposition_seconds=decomposition_seconds,
                       form="dual" if dual else "primal")
    return float(best), table


def tune_item_knn(train: sp.spmatrix | sp.sparray, validation: sp.spmatrix | sp.sparray,
                  grid: Sequence[int] = DEFAULT_KNN_GRID, k: int = 10, metric: str = "ndcg",
                  candidates: np.ndarray | None = None) -> tuple[int, pd.DataFrame]:
    """Pick item-kNN's neighbour count on a validation split, as `tune_ease` picks l2.

    The similarities are computed once, for the largest count, and cut for the others.
    Takes the arguments of `tune_ease` (`grid`: neighbour counts). Returns `(best, table)`:
    the first count with the highest metric and one row per count (column "neighbours",
    every metric at k, "fit_seconds"; the shared similarity's in `attrs["similarity_seconds"]`).
    """
    x, started = _binary_csr(train), time.perf_counter()
    similarity = cosine_neighbours(x, max(grid))
    similarity_seconds = time.perf_counter() - started

    def make_scorer(n: int):
        return ItemKNN(n).fit(x, similarity).scores

    best, table = _validation_table("neighbours", [int(v) for v in grid], make_scorer, x,
                                    validation, k, metric, candidates)
    table.attrs["similarity_seconds"] = similarity_seconds
    return int(best), table
