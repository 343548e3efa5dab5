"""Nearest-neighbour indexes over item embeddings: exact brute force and ScaNN (numpy only).

Both indexes answer the same question, the top-k items by dot product for a batch of user
vectors, and share one interface:

    index = build_index("scann", item_vectors, candidates=mask)   # or "brute_force"
    top_idx, top_scores = index.search(user_vectors, k=10, exclude=seen_csr)

Results are item indices (rows of `item_vectors`), best first, padded with -1 / -inf where
fewer than k items are allowed. `exclude` (sparse `[Q, num_items]`) removes e.g. a user's
seen items: ScaNN is asked for k plus the longest exclusion list of the batch and the excluded
hits are dropped afterwards, so exclusion never shortens a list. `measure_index` gives the
recall@k of any index against exact search and its per-query latency (p50/p99), and
`scann_grid` walks ScaNN's leaves / leaves-searched / reordering settings to show the
trade-off. ScaNN is used through its pybind API (no TensorFlow); the in-graph ScaNN of the
exported SavedModel lives in `export.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from twotower_utils.config import INDEXES  # the names serving.index accepts
from twotower_utils.evaluation.topk import top_k_scores

__all__ = ["INDEXES", "BruteForceIndex", "ScannIndex", "ScannParams", "build_index",
           "default_scann_params", "measure_index", "recall_against", "scann_grid"]

# Scores for a chunk of queries are materialised as [chunk, num_items] floats; this many
# floats (256 MiB) bounds that buffer whatever the catalogue size.
_SCORE_BUFFER = 1 << 26
MIN_SEARCHED_POINTS = 5000  # default ScaNN searches at least this many points' leaves


@dataclass(frozen=True)
class ScannParams:
    """ScaNN settings: a k-means tree of `num_leaves` partitions, of which
    `num_leaves_to_search` are scored per query with anisotropic quantisation
    (`dimensions_per_block` dims per 4-bit code), then the best `reorder` candidates are
    rescored exactly (0 = no reordering). `num_leaves = 0` skips the tree (all points scored)."""

    num_leaves: int = 0
    num_leaves_to_search: int = 0
    reorder: int = 500
    dimensions_per_block: int = 2
    anisotropic_threshold: float = 0.2
    training_sample_size: int = 250_000
    training_iterations: int = 12

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def default_scann_params(num_points: int, **overrides) -> ScannParams:
    """ScaNN settings that suit `num_points` items: ~2 sqrt(n) leaves, 5% of them searched
    but at least ~5,000 points' worth, and 500 reordered (at 1M items: 2,000 leaves, 100
    searched, recall@10 0.995 on a Gaussian mixture, see benchmarks/ann_tradeoff.py); no
    tree under 2,000 items, where scoring everything is already cheap. Keyword overrides
    win unless None.
    """
    if num_points < 2000:
        params = ScannParams(num_leaves=0, num_leaves_to_search=0)
    else:
        leaves = int(min(max(round(2 * math.sqrt(num_points)), 20), 10_000))
        # Small catalogues have small leaves: 5% of them would hold too few candidates.
        searched = max(leaves // 20, math.ceil(leaves * MIN_SEARCHED_POINTS / num_points))
        params = ScannParams(num_leaves=leaves, num_leaves_to_search=min(searched, leaves))
    given = {key: value for key, value in overrides.items() if value is not None}
    return replace(params, **given)


def _as_matrix(name: str, values: Any, dim: int | None = None) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=np.float32)
    if array.ndim == 1 and dim is not None:
        array = array[None, :]
    if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
        raise ValueError(f"{name}: expected a 2-D float array [n, {dim or 'd'}], got shape "
                         f"{array.shape}")
    return array


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k = {k!r}: expected an integer >= 1")
    return int(k)


class BruteForceIndex:
    """Exact top-k by dot product over every allowed item (see the module docstring).

    Args:
        item_vectors: float `[num_items, d]`, row = item index.
        candidates: optional bool `[num_items]` of the items that may be returned.
    """

    name = "brute_force"

    def __init__(self, item_vectors: np.ndarray, candidates: np.ndarray | None = None):
        self.vectors = _as_matrix("item_vectors", item_vectors)
        self.num_items, self.dim = self.vectors.shape
        self.candidates = None if candidates is None else np.asarray(candidates, dtype=bool)
        if self.candidates is not None and self.candidates.shape != (self.num_items,):
            raise ValueError(f"candidates: expected a bool array of shape ({self.num_items},), "
                             f"got {self.candidates.shape}")
        allowed = (np.arange(self.num_items) if self.candidates is None
                   else np.flatnonzero(self.candidates))
        self._allowed = allowed
        self._allowed_vectors = np.ascontiguousarray(self.vectors[allowed])

    def search(self, queries: np.ndarray, k: int,
               exclude: sp.spmatrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query row: (int32 `[Q, k]` item indices, float32 `[Q, k]` scores).

        `exclude`: optional sparse `[Q, num_items]`; a stored (q, i) is never returned for q.
        Ties go to the lower item index; -1 / -inf pad rows with fewer than k allowed items.
        """
        queries = _as_matrix("queries", queries, self.dim)
        chunk = max(1, min(4096, _SCORE_BUFFER // max(self.num_items, 1)))
        return top_k_scores(queries, self.vectors, _check_k(k), exclude=exclude,
                            candidates=self.candidates, chunk_size=chunk)

    def search_one(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for a single query vector `[d]`, without exclusions (the latency path)."""
        scores = self._allowed_vectors @ np.asarray(query, dtype=np.float32)
        k = min(_check_k(k), len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return self._allowed[top].astype(np.int32), scores[top]


class ScannIndex:
    """Approximate top-k by dot product with ScaNN (see `ScannParams` for the settings).

    Args:
        item_vectors: float `[num_items, d]`, row = item index.
        candidates: optional bool `[num_items]`; only these items are indexed.
        params: `ScannParams` (default: `default_scann_params` for the indexed count).
        threads: ScaNN training threads (0 = all cores).
    """

    name = "scann"

    def __init__(self, item_vectors: np.ndarray, candidates: np.ndarray | None = None,
                 params: ScannParams | None = None, threads: int = 0):
        import scann  # the pybind module; TensorFlow is not needed here

        vectors = _as_matrix("item_vectors", item_vectors)
        self.num_items, self.dim = vectors.shape
        mask = (np.ones(self.num_items, dtype=bool) if candidates is None
                else np.asarray(candidates, dtype=bool))
        if mask.shape != (self.num_items,):
            raise ValueError(f"candidates: expected a bool array of shape ({self.num_items},), "
                             f"got {mask.shape}")
        self._allowed = np.flatnonzero(mask).astype(np.int32)
        if len(self._allowed) == 0:
            raise ValueError("candidates: no item is allowed, nothing to index")
        self.params = params or default_scann_params(len(self._allowed))
        self._validate(self.params, len(self._allowed))
        started = time.perf_counter()
        builder = scann.scann_ops_pybind.builder(
            np.ascontiguousarray(vectors[self._allowed]), 10, "dot_product")
        self.searcher = apply_scann_params(builder, self.params).build()
        self.build_seconds = time.perf_counter() - started

    @staticmethod
    def _validate(params: ScannParams, num_points: int) -> None:
        if params.num_leaves < 0 or params.num_leaves > num_points:
            raise ValueError(f"num_leaves = {params.num_leaves}: expected 0 (no tree) up to "
                             f"the {num_points} indexed items")
        if params.num_leaves and not 1 <= params.num_leaves_to_search <= params.num_leaves:
            raise ValueError(f"num_leaves_to_search = {params.num_leaves_to_search}: expected "
                             f"1..num_leaves ({params.num_leaves})")
        if params.reorder < 0:
            raise ValueError(f"reorder = {params.reorder}: expected >= 0 (0 = no reordering)")

    def _query_args(self, fetch: int, leaves: int | None, reorder: int | None) -> dict:
        args = {"final_num_neighbors": int(fetch)}
        if self.params.reorder:
            # Reordering is set up at build time; asking for 0 at query time rescores only
            # the final `fetch` hits, which leaves the approximate set unchanged.
            reorder = self.params.reorder if reorder is None else reorder
            args["pre_reorder_num_neighbors"] = int(max(reorder, fetch))
        if self.params.num_leaves:
            args["leaves_to_search"] = int(leaves or self.params.num_leaves_to_search)
        return args

    def search(self, queries: np.ndarray, k: int, exclude: sp.spmatrix | None = None,
               leaves_to_search: int | None = None,
               reorder: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k of each query row, as `BruteForceIndex.search`.

        `leaves_to_search` / `reorder` override the built settings for this call (ScaNN
        applies them at query time, so a grid needs one build per `num_leaves`).
        """
        queries = _as_matrix("queries", queries, self.dim)
        k = _check_k(k)
        extra = 0
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != (len(queries), self.num_items):
                raise ValueError(f"exclude: expected shape ({len(queries)}, {self.num_items}), "
                                 f"got {exclude.shape}")
            extra = int(np.diff(exclude.indptr).max()) if len(queries) else 0
        fetch = min(k + extra, len(self._allowed))
        found, scores = self.searcher.search_batched(
            queries, **self._query_args(fetch, leaves_to_search, reorder))
        found = np.asarray(found, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        # Fewer hits than asked (too few points in the searched leaves) come back padded
        # with NaN scores.
        keep = (found >= 0) & ~np.isnan(scores)
        items = np.where(keep, self._allowed[np.clip(found, 0, None)], -1)
        if exclude is not None and exclude.nnz:
            rows = np.repeat(np.arange(len(queries)), np.diff(exclude.indptr))
            banned = rows.astype(np.int64) * self.num_items + exclude.indices
            keys = np.arange(len(queries))[:, None].astype(np.int64) * self.num_items + items
            keep &= ~np.isin(keys, banned)
        return _first_k(items, scores, keep, k)

    def search_one(self, query: np.ndarray, k: int, leaves_to_search: int | None = None,
                   reorder: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for a single query vector `[d]`, without exclusions (the latency path)."""
        found, scores = self.searcher.search(
            np.asarray(query, dtype=np.float32),
            **self._query_args(min(_check_k(k), len(self._allowed)), leaves_to_search, reorder))
        scores = np.asarray(scores, np.float32)
        found = np.asarray(found, dtype=np.int64)[~np.isnan(scores)]
        return self._allowed[found], scores[~np.isnan(scores)]


def apply_scann_params(builder, params: ScannParams):
    """Configure a ScaNN builder (pybind or TF ops) with `params`; returns the builder."""
    if params.num_leaves:
        builder = builder.tree(
            num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search,
            training_sample_size=params.training_sample_size,
            training_iterations=params.training_iterations)
    builder = builder.score_ah(params.dimensions_per_block,
                               anisotropic_quantization_threshold=params.anisotropic_threshold)
    if params.reorder:
        builder = builder.reorder(params.reorder)
    return builder


def _first_k(items: np.ndarray, scores: np.ndarray, keep: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k kept entries of each row (rows are already best first), padded."""
    rank = np.cumsum(keep, axis=1) - 1
    rows, cols = np.nonzero(keep & (rank < k))
    out_idx = np.full((len(items), k), -1, dtype=np.int32)
    out_scores = np.full((len(items), k), -np.inf, dtype=np.float32)
    out_idx[rows, rank[rows, cols]] = items[rows, cols]
    out_scores[rows, rank[rows, cols]] = scores[rows, cols]
    return out_idx, out_scores


def build_index(name: str, item_vectors: np.ndarray, candidates: np.ndarray | None = None,
                **params) -> BruteForceIndex | ScannIndex:
    """An index selected by name: "brute_force" or "scann".

    `params` are `ScannParams` fields for "scann" (None = the size-based default); they
    must be empty for "brute_force". Returns the built index.
    """
    if name == "brute_force":
        given = {key: value for key, value in params.items() if value is not None}
        if given:
            raise ValueError(f"index 'brute_force' takes no parameters, got {sorted(given)}")
        return BruteForceIndex(item_vectors, candidates)
    if name == "scann":
        unknown = set(params) - set(ScannParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"ScaNN parameters {sorted(unknown)}: expected some of "
                             f"{sorted(ScannParams.__dataclass_fields__)}")
        count = (np.shape(item_vectors)[0] if candidates is None
                 else int(np.count_nonzero(candidates)))
        return ScannIndex(item_vectors, candidates, default_scann_params(count, **params))
    raise ValueError(f"index = {name!r}: expected one of {', '.join(INDEXES)}")


def recall_against(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact top-k (item indices, -1 = empty) found by an index."""
    found, exact = np.asarray(found), np.asarray(exact)
    if found.shape[0] != exact.shape[0]:
        raise ValueError(f"found has {found.shape[0]} rows, exact has {exact.shape[0]}")
    hits = (found[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)
    sizes = np.maximum((exact >= 0).sum(axis=1), 1)
    return float((hits.any(axis=1).sum(axis=1) / sizes).mean())


def _latencies(search_one, queries: np.ndarray, k: int, **kwargs) -> np.ndarray:
    search_one(queries[0], k, **kwargs)  # warm caches and lazy initialisation
    out = np.empty(len(queries))
    for i, query in enumerate(queries):
        started = time.perf_counter()
        search_one(query, k, **kwargs)
        out[i] = time.perf_counter() - started
    return out * 1000.0


def measure_index(index, queries: np.ndarray, k: int = 10, exact: np.ndarray | None = None,
                  latency_queries: int = 200, **search_kwargs) -> dict[str, float]:
    """Recall@k of `index` against exact search, and its single-query latency.

    Args:
        index: a `BruteForceIndex` or `ScannIndex`.
        queries: float `[Q, d]` user vectors.
        k: list length.
        exact: the exact top-k item indices `[Q, k]` (default: computed by brute force over
            the same vectors and candidates, which needs the index to keep them).
        latency_queries: how many queries are timed one at a time (p50/p99 in ms).
        search_kwargs: query-time overrides (`leaves_to_search`, `reorder` for ScaNN).

    Returns:
        `{"recall": ..., "p50_ms": ..., "p99_ms": ..., "mean_ms": ..., "batch_ms_per_query":
        ...}` (the last from one batched call over all queries).
    """
    queries = _as_matrix("queries", queries, index.dim)
    k = _check_k(k)
    if exact is None:
        if not isinstance(index, BruteForceIndex):
            raise ValueError("exact: required for an approximate index (the exact top-k "
                             "item indices, e.g. from BruteForceIndex.search)")
        exact = index.search(queries, k)[0]
    started = time.perf_counter()
    found = index.search(queries, k, **search_kwargs)[0]
    batch = (time.perf_counter() - started) * 1000.0 / max(len(queries), 1)
    times = _latencies(index.search_one, queries[:latency_queries], k, **search_kwargs)
    return {"recall": recall_against(found, exact), "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)), "mean_ms": float(times.mean()),
            "batch_ms_per_query": float(batch)}


def scann_grid(item_vectors: np.ndarray, queries: np.ndarray, k: int = 10,
               num_leaves: Iterable[int] = (500, 1000, 2000),
               leaves_to_search: Sequence[float] = (0.02, 0.05, 0.1),
               reorder: Sequence[int] = (0, 100, 500), candidates: np.ndarray | None = None,
               latency_queries: int = 200) -> list[dict[str, float]]:
    """Recall@k and latency of ScaNN over a grid of settings, with brute force as reference.

    `leaves_to_search` entries below 1 are shares of `num_leaves`, others are counts. One
    index is built per `num_leaves`; the other settings are applied at query time. Returns
    one dict per setting (`index`, `num_leaves`, `leaves_to_search`, `reorder`, `build_s`,
    `recall`, `p50_ms`, `p99_ms`, `speedup_p50` against brute force); `format_grid` shows
    them as a table.
    """
    exact_index = BruteForceIndex(item_vectors, candidates)
    exact = exact_index.search(queries, k)[0]
    base = measure_index(exact_index, queries, k, exact, latency_queries)
    rows = [{"index": "brute_force", "num_leaves": 0, "leaves_to_search": 0, "reorder": 0,
             "build_s": 0.0, **base, "speedup_p50": 1.0}]
    for leaves in num_leaves:
        index = ScannIndex(item_vectors, candidates, ScannParams(
            num_leaves=leaves, num_leaves_to_search=1, reorder=max(reorder, default=0)))
        for share in leaves_to_search:
            searched = int(min(leaves, max(1, round(share * leaves) if share < 1 else share)))
            for count in reorder:
                result = measure_index(index, queries, k, exact, latency_queries,
                                       leaves_to_search=searched, reorder=count)
                rows.append({"index": "scann", "num_leaves": leaves,
                             "leaves_to_search": searched, "reorder": count,
                             "build_s": index.build_seconds, **result,
                             "speedup_p50": base["p50_ms"] / result["p50_ms"]})
    return rows


def format_grid(rows: list[dict[str, float]], k: int = 10) -> str:
    """The rows of `scann_grid` as an aligned text table."""
    lines = [f"{'index':<12}{'leaves':>7}{'searched':>9}{'reorder':>8}{'build_s':>8}"
             f"{f'recall@{k}':>10}{'p50_ms':>9}{'p99_ms':>9}{'speedup':>9}"]
    for row in rows:
        lines.append(f"{row['index']:<12}{row['num_leaves']:>7}{row['leaves_to_search']:>9}"
                     f"{row['reorder']:>8}{row['build_s']:>8.1f}{row['recall']:>10.4f}"
                     f"{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['speedup_p50']:>8.1f}x")
    return "\n".join(lines)
