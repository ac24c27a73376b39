"""Top-k search over the catalogue with exclusions: one interface, three implementations.

``index(query [B, D], excluded [B, E], k) -> (scores [B, k], positions [B, k])``: the best
``k`` catalogue positions per row whose position is not in that row's ``excluded`` (-1 pads),
best first; slots beyond the allowed movies score -inf. Each implementation only says how to
``fetch`` candidates (the whole catalogue's scores, or its ``width`` best with their
positions); exclusions, the final top-k and the completion of short rows are written once,
here:

- ``BruteForce``: exact dot products with every candidate (the GPU-friendly default).
- ``ScaNN``: approximate (tree + asymmetric hashing, exact re-scoring of the best few hundred).
  A row it leaves short (fewer than k allowed results while allowed movies remain, e.g. when
  long exclusions swallow what it found) is completed exactly by brute force, so no caller
  gets a short list.
- ``Popular``: the most popular movies whatever the query (the unknown-user fallback).

Exclusions: on a whole-catalogue score matrix they are set to -inf by a scatter, O(B E); on
fetched candidates (``k + E`` of them per row: at most E are excluded, so an exact fetch always
keeps k) by a binary search in the row's sorted exclusions, O(B (k + E) log E). Never a
catalogue x exclusions comparison.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

NEG = float("-inf")  # the score of an empty slot, everywhere a list is scored
# ScaNN re-scores at least this many candidates exactly (and 10 k when larger).
_MIN_REORDER = 200
# A whole-catalogue fetch keeps its k + E best first when that is under 1/16 of the catalogue.
_SHORT = 16


class Index(tf.Module):
    """Base: ``__call__`` runs ``fetch``, drops exclusions, keeps the top k, completes rows."""

    exact = True

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def fetch(self, query: tf.Tensor, width: tf.Tensor):
        """query [B, D], width <= size -> (scores [B, W], positions [B, W] int64), W <= width,
        NaN or -inf marking an empty slot; or (scores [B, size], None): every candidate's
        score in position order."""
        raise NotImplementedError

    def complete(self, query: tf.Tensor, excluded: tf.Tensor, k: int):
        """The exact answer for rows an approximate ``fetch`` left short."""
        raise NotImplementedError

    def __call__(self, query: tf.Tensor, excluded: tf.Tensor, k: int):
        b = tf.shape(query)[0]
        k = min(k, self.size)
        # A -1 column keeps E >= 1.
        excluded = tf.concat([tf.fill([b, 1], tf.constant(-1, tf.int64)),
                              tf.cast(excluded, tf.int64)], axis=1)
        width = tf.minimum(self.size, k + tf.shape(excluded)[1])
        scores, positions = self.fetch(query, width)
        if positions is None:
            # A whole-catalogue score matrix: when the list is short next to the catalogue,
            # its k + E best then dropping the excluded skips copying the matrix for a scatter.
            scores, positions = tf.cond(
                width * _SHORT < self.size,
                lambda: _drop(*_top(scores, None, width, least=k + 1), excluded, k),
                lambda: _top(_mask(scores, excluded), None, k))
        else:
            scores, positions = _drop(scores, positions, excluded, k)
        if self.exact:
            return scores, positions
        allowed = self.size - _distinct_valid(tf.sort(excluded, axis=1))
        found = tf.reduce_sum(tf.cast(scores > NEG, tf.int32), axis=1)
        short = found < tf.minimum(k, allowed)
        return tf.cond(tf.reduce_any(short),
                       lambda: self._fill(query, excluded, k, short, scores, positions),
                       lambda: (scores, positions))

    def _fill(self, query, excluded, k, short, scores, positions):
        rows = tf.where(short)
        exact_scores, exact_positions = self.complete(
            tf.gather_nd(query, rows), tf.gather_nd(excluded, rows), k)
        return (tf.tensor_scatter_nd_update(scores, rows, exact_scores),
                tf.tensor_scatter_nd_update(positions, rows, exact_positions))


def _drop(scores: tf.Tensor, positions: tf.Tensor, excluded: tf.Tensor, k: int):
    """The k best of fetched candidates [B, W] that are not excluded (nor empty, NaN)."""
    # Sorted rows let a binary search find the excluded candidates.
    dropped = tf.math.is_nan(scores) | _member(positions, tf.sort(excluded, axis=1))
    return _top(tf.where(dropped, NEG, scores), positions, k)


def _mask(scores: tf.Tensor, excluded: tf.Tensor) -> tf.Tensor:
    """Sets ``scores[b, excluded[b, e]]`` to -inf for every position >= 0 (a scatter)."""
    hit = tf.where(excluded >= 0)  # [H, 2]: (row, column in excluded)
    index = tf.stack([hit[:, 0], tf.gather_nd(excluded, hit)], axis=1)
    return tf.tensor_scatter_nd_update(scores, index, tf.fill([tf.shape(index)[0]], NEG))


def _member(positions: tf.Tensor, sorted_excluded: tf.Tensor) -> tf.Tensor:
    """[B, W] positions, [B, E] sorted exclusions -> [B, W] bool: position excluded."""
    at = tf.searchsorted(sorted_excluded, positions, side="left", out_type=tf.int64)
    at = tf.minimum(at, tf.cast(tf.shape(sorted_excluded)[1] - 1, tf.int64))
    return tf.gather(sorted_excluded, at, batch_dims=1) == positions


def _distinct_valid(sorted_excluded: tf.Tensor) -> tf.Tensor:
    """[B, E] sorted positions (-1 pads) -> [B] number of distinct positions >= 0."""
    first = tf.concat([tf.ones_like(sorted_excluded[:, :1], tf.bool),
                       sorted_excluded[:, 1:] != sorted_excluded[:, :-1]], axis=1)
    return tf.reduce_sum(tf.cast(first & (sorted_excluded >= 0), tf.int32), axis=1)


def _top(scores: tf.Tensor, positions: tf.Tensor | None, k, least: int | None = None):
    """The k best of [B, W] (W may be < k: padded with -inf, position 0); ``positions`` None
    means the columns are the positions (``least``: a bound k is never below, when k is a
    tensor)."""
    if positions is None:
        scores, top = _top_k_of_rows(scores, k, least)
        return scores, tf.cast(top, tf.int64)
    missing = tf.maximum(k - tf.shape(scores)[1], 0)
    scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=NEG)
    positions = tf.pad(positions, [[0, 0], [0, missing]])
    scores, top = tf.math.top_k(scores, k)
    return scores, tf.gather(positions, top, batch_dims=1)


# From this many columns a whole-catalogue top k ranks group maxima first (``_grouped_top_k``):
# k = 104 over [64, 10^6] 7x faster than ``tf.math.top_k``, over [256, 10^4] 1.15x
# (``python -m benchmarks.top_k_speed``; docs/speed.md).
GROUPED_TOP_MIN = 10_000
# The first stage ranks the groups' maxima: worth it while k is at most this share of them.
_GROUPS_PER_K = 4


def group_size(columns: int | None, k: int | None = None) -> int | None:
    """The group width of ``_grouped_top_k`` for rows of ``columns`` scores: a divisor of it
    (the rows reshape into groups without a copy) within 8..128 that leaves at least
    ``_GROUPS_PER_K`` k groups (k None: any), a multiple of 8 where one is, the nearest to 32
    of those; None when the rows are short (``GROUPED_TOP_MIN``) or no such divisor exists
    (then ``tf.math.top_k`` takes the whole row)."""
    if columns is None or columns < GROUPED_TOP_MIN:
        return None
    divisors = [s for s in range(8, 129) if columns % s == 0
                and (k is None or columns // s >= _GROUPS_PER_K * k)]
    # Whole vectors of 8 floats reduce fastest (groups of 16 over [256, 10^4]: 1.07x
    # groups of 20's speed).
    return min(divisors, key=lambda s: (s % 8 > 0, abs(s - 32), s)) if divisors else None


def _top_k_of_rows(scores: tf.Tensor, k, least: int | None = None):
    """``tf.math.top_k(scores, k)`` of a [B, N] score matrix: the same values and indices in
    the same order (ties to the lower index), by ``_grouped_top_k`` where it is cheaper.
    The groups are sized for k, or for ``least`` (a bound it is never below) when k is a
    tensor; a tensor k past a quarter of the groups takes ``tf.math.top_k``."""
    size = group_size(scores.shape[1], k if isinstance(k, int) else least)
    if size is None:
        return tf.math.top_k(scores, k)
    if isinstance(k, int):  # the groups were sized for it
        return _grouped_top_k(scores, k, size)
    groups = scores.shape[1] // size
    return tf.cond(k * _GROUPS_PER_K <= groups, lambda: _grouped_top_k(scores, k, size),
                   lambda: tuple(tf.math.top_k(scores, k)))


def _grouped_top_k(scores: tf.Tensor, k, size: int):
    """The k best of each row of [B, N] ``scores`` (N a multiple of ``size``), as
    ``tf.math.top_k`` gives them. Each row is cut into groups of ``size`` columns; each of
    its k best scores is at most its group's maximum, and at most k groups' maxima reach the
    k-th best, so the k groups with the best maxima (ties: the lower group) hold all of them.
    Only those groups' k * size scores, in column order, are ranked. (NaN scores, a broken
    model's, may be ranked otherwise than ``tf.math.top_k`` ranks them.)"""
    b = tf.shape(scores)[0]
    blocks = tf.reshape(scores, [b, scores.shape[1] // size, size])
    best = tf.sort(tf.math.top_k(tf.reduce_max(blocks, axis=2), k, sorted=False).indices,
                   axis=1)
    values, at = tf.math.top_k(tf.reshape(tf.gather(blocks, best, batch_dims=1), [b, -1]), k)
    return values, tf.gather(best, at // size, batch_dims=1) * size + at % size


# The largest catalogue (movies x D floats) whose embeddings ``BruteForce`` also keeps row by
# row: 16 MB (1.3x10^5 movies at D = 32); the 10^6-movie export stays one table.
ROW_COPY_MAX = 1 << 22


class BruteForce(Index):
    """Exact: ``query @ embeddings^T`` over the whole catalogue.

    The candidates are stored transposed, [D, M]: the matmul then reads them in place (with
    ``transpose_b`` TensorFlow's CPU kernel is about 10% slower at 10^6 candidates). Up to
    ``ROW_COPY_MAX`` floats they are also kept row by row, [M, D], for ``vectors``: gathering
    rows of it took 0.8 ms for [256, 70] positions where gathering columns of the transposed
    table and transposing them took 4.9 (ML-100K, D = 32)."""

    def __init__(self, embeddings: np.ndarray, name: str = "candidate_embeddings"):
        super().__init__(len(embeddings))
        self.transposed = tf.Variable(np.ascontiguousarray(embeddings.T), trainable=False,
                                      name=name)
        self.rows = None
        if embeddings.size <= ROW_COPY_MAX:
            self.rows = tf.Variable(np.ascontiguousarray(embeddings), trainable=False,
                                    name=f"{name}_rows")

    def vectors(self, positions: tf.Tensor) -> tf.Tensor:
        """Candidate embeddings at ``positions`` [...] -> [..., D]."""
        if self.rows is not None:
            return tf.gather(self.rows, positions)
        rank = positions.shape.rank
        return tf.transpose(tf.gather(self.transposed, positions, axis=1),
                            list(range(1, rank + 1)) + [0])

    def fetch(self, query, width):
        return tf.matmul(query, self.transposed), None


class ScaNN(Index):
    """Approximate search with a ScaNN index over the same candidates; short rows are
    completed by an exact ``BruteForce`` over them.

    Sized for the catalogue: about sqrt(M) partitions (leaves), enough of them searched to
    hold about 4 ``fetch`` candidates (at least a tenth), exact re-scoring of the best
    ``max(10 fetch, 200)``, where ``fetch`` is k plus the longest seen list (up to 1000).
    """

    exact = False

    def __init__(self, embeddings: np.ndarray, k: int, longest_seen: int = 0):
        import tensorflow_recommenders as tfrs

        super().__init__(len(embeddings))
        self.exact_index = BruteForce(embeddings)
        fetch = min(k + min(longest_seen, 1000), len(embeddings))
        num = len(embeddings)
        leaves = max(2, min(2000, int(np.sqrt(num))))
        searched = int(np.ceil(leaves * min(1.0, 4.0 * fetch / num)))
        self.scann = tfrs.layers.factorized_top_k.ScaNN(
            k=fetch, distance_measure="dot_product", num_leaves=leaves,
            num_leaves_to_search=min(leaves, max(1, leaves // 10, searched)),
            training_iterations=12, dimensions_per_block=2,
            num_reordering_candidates=max(10 * fetch, _MIN_REORDER))
        self.scann.index(tf.constant(embeddings))

    def fetch(self, query, width):
        scores, positions = self.scann(query, k=width)
        return scores, tf.cast(positions, tf.int64)

    def complete(self, query, excluded, k):
        return self.exact_index(query, excluded, k)

    def vectors(self, positions: tf.Tensor) -> tf.Tensor:
        """Candidate embeddings at ``positions`` [...] -> [..., D]."""
        return self.exact_index.vectors(positions)


class Popular(Index):
    """The most popular catalogue positions (ties in catalogue order), whatever the query;
    scores are ``log(1 + ratings)``. Only the top ``width`` are ever touched."""

    def __init__(self, popularity: np.ndarray):
        super().__init__(len(popularity))
        order = np.argsort(-popularity, kind="stable")
        self.order = tf.constant(order, tf.int64)
        self.scores = tf.constant(np.log1p(popularity[order]).astype(np.float32))

    def fetch(self, query, width):
        b = tf.shape(query)[0]
        return (tf.tile(self.scores[None, :width], [b, 1]),
                tf.tile(self.order[None, :width], [b, 1]))


def make_index(kind: str, embeddings: np.ndarray, k: int, longest_seen: int = 0) -> Index:
    """``brute-force`` or ``scann`` over [M, D] candidate ``embeddings``."""
    if kind == "scann":
        return ScaNN(embeddings, k, longest_seen)
    return BruteForce(embeddings)
