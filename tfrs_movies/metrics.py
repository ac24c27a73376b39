"""Offline top-k and rating metrics in plain numpy (no TensorFlow), vectorised over users.

Protocol of ``evaluate_topk``: score every item for every user that has a test item (in batches of
users, so ``[num_users, num_items]`` never exists at once), mask the user's train items
(``exclude_train=True``, the usual "full ranking, seen items excluded" protocol) or not (the TFRS
tutorial protocol), take the top k and compare with the test items.

Definitions follow Microsoft Recommenders' ``recommenders/evaluation/python_evaluation.py``, with
binary relevance, averaged over users that have at least one relevant item; ``R`` is the number
of distinct relevant items of a user and ``hit_i`` is 1 when the item at rank ``i`` is relevant:

- ``ndcg@k``: ``sum_i hit_i / log2(i + 1)`` over ``sum_{i <= min(R, k)} 1 / log2(i + 1)``.
- ``precision@k``: hits / k.  ``recall@k``: hits / R.  ``hit_rate@k``: 1 if any hit.
- ``map@k``: ``sum_i hit_i * precision@i / R``: Microsoft's ``map`` (and its ``map_at_k`` before
  it switched to Spark's ``min(R, k)`` denominator), so a user with R > k cannot reach 1.

Example::

    topk = topk_from_scores(scores, exclude=(train_rows, train_cols), k=10)
    ranking_metrics(topk, relevant=[np.array([3, 7]), np.array([1])], k=10)["ndcg@10"]
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Pairs = tuple[np.ndarray, np.ndarray]


def _check_k(k: int, limit: int, what: str = "the number of items") -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
        raise ValueError(f"k must be an int in [1, {limit}] ({what}), got {k!r}")


def _pairs(pairs: Pairs, name: str, num_rows: int, num_cols: int) -> Pairs:
    """Validates ``(rows, cols)`` int index arrays of equal length and returns them as int64."""
    if not isinstance(pairs, (tuple, list)) or len(pairs) != 2:
        raise ValueError(f"{name} must be a (rows, cols) pair of int arrays, got {type(pairs)}")
    out = []
    for part, a, bound in (("rows", pairs[0], num_rows), ("cols", pairs[1], num_cols)):
        a = np.asarray(a)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name} {part} must be a 1-D int array, got shape {a.shape} "
                             f"dtype {a.dtype}")
        bad = np.flatnonzero((a < 0) | (a >= bound))
        if bad.size:
            raise ValueError(f"{name} {part}[{bad[0]}] = {a[bad[0]]} is outside [0, {bound})")
        out.append(a.astype(np.int64, copy=False))
    if out[0].size != out[1].size:
        raise ValueError(f"{name} rows and cols differ in length: {out[0].size} != {out[1].size}")
    return out[0], out[1]


def _topk_masked(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns per row of ``scores`` [B, M], best first, ties to the lower index; slots whose
    score is -inf (masked items, when fewer than k remain) become -1.

    Not ``np.argpartition`` alone: which of several items tied at the k-th score it keeps is
    unspecified, so the k-th value comes from ``np.partition`` and ties are resolved by index.
    """
    kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, -k][:, None]  # k-th largest
    above, tied = scores > kth, scores == kth
    take = above | tied
    surplus = np.flatnonzero(take.sum(axis=1) > k)
    if surplus.size:  # more ties at the k-th value than free slots: keep the lowest indices
        need = k - above[surplus].sum(axis=1, keepdims=True)
        t = tied[surplus]
        take[surplus] = above[surplus] | (t & (np.cumsum(t, axis=1, dtype=np.int32) <= need))
    cols = np.nonzero(take)[1].reshape(-1, k)  # ascending column order within each row
    vals = np.take_along_axis(scores, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable: equal scores keep lower index first
    cols = np.take_along_axis(cols, order, axis=1)
    cols[np.take_along_axis(vals, order, axis=1) == -np.inf] = -1
    return cols


def topk_from_scores(scores: np.ndarray, exclude: Pairs | None = None, k: int = 10) -> np.ndarray:
    """Top-k item indices per user, highest score first.

    Args:
      scores: `[num_users, num_items]` finite float scores; not modified.
      exclude: `(rows, cols)` equal-length int arrays of (user, item) positions that may not be
        recommended (e.g. train interactions); they are masked to -inf.
      k: list length, 1 <= k <= num_items.

    Returns:
      `[num_users, k]` int64 item indices sorted by score descending, ties broken by the lower
      index. A user with fewer than k items left after exclusion gets -1 in the trailing slots.
    """
    scores = np.asarray(scores)
    scores = scores.astype(np.result_type(scores, np.float32))  # a copy we may mask
    if scores.ndim != 2:
        raise ValueError(f"scores must be [num_users, num_items], got shape {scores.shape}")
    _check_k(k, scores.shape[1])
    if not np.isfinite(scores).all():
        raise ValueError(f"scores contain {np.count_nonzero(~np.isfinite(scores))} non-finite "
                         "values (NaN or inf)")
    if exclude is not None:
        rows, cols = _pairs(exclude, "exclude", *scores.shape)
        scores[rows, cols] = -np.inf
    return _topk_masked(scores, k)


def _hits(topk: np.ndarray, rel_rows: np.ndarray, rel_cols: np.ndarray) -> Pairs:
    """``hits`` [U, k] bool (topk[u, i] is relevant to u) and ``n_rel`` [U] distinct relevant."""
    num_cols = int(max(topk.max(initial=0), rel_cols.max(initial=0))) + 1
    rel_keys = np.unique(rel_rows * num_cols + rel_cols)  # dedupes repeated test pairs
    n_rel = np.bincount(rel_keys // num_cols, minlength=topk.shape[0])
    keys = np.arange(topk.shape[0], dtype=np.int64)[:, None] * num_cols + topk
    pos = np.minimum(np.searchsorted(rel_keys, keys), max(rel_keys.size - 1, 0))
    hits = (topk >= 0) & (rel_keys[pos] == keys) if rel_keys.size else np.zeros(topk.shape, bool)
    return hits, n_rel


def _per_user(hits: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each metric per user [U] of ``hits`` [U, k] for users with ``n_rel`` [U] > 0."""
    hits = hits.astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # rank i -> 1 / log2(i + 1)
    idcg = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    n_hits = hits.sum(axis=1)
    prec_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return {
        f"ndcg@{k}": hits @ discount / idcg,
        f"precision@{k}": n_hits / k,
        f"recall@{k}": n_hits / n_rel,
        f"map@{k}": (prec_at_i * hits).sum(axis=1) / n_rel,
        f"hit_rate@{k}": (n_hits > 0).astype(np.float64),
    }


def _summarise(hits: np.ndarray, n_rel: np.ndarray, k: int) -> dict:
    users = n_rel > 0
    if not users.any():
        raise ValueError("no user has a relevant item: nothing to evaluate")
    per_user = _per_user(hits[users], n_rel[users], k)
    return {**{name: float(np.mean(values)) for name, values in per_user.items()},
            "users": int(users.sum())}


def ranking_metrics(topk: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> dict:
    """Mean ndcg, precision, recall, MAP and hit rate at k (definitions in the module docstring).

    Args:
      topk: `[num_users, >= k]` int item indices, best first, distinct per row; -1 = empty slot.
      relevant: `num_users` int arrays, user u's relevant (test) items; users with none are skipped.
      k: cut-off; only the first k columns of ``topk`` are used.

    Returns:
      ``{"ndcg@k", "precision@k", "recall@k", "map@k", "hit_rate@k": float, "users": int}``, where
      ``users`` counts the users with at least one relevant item, the ones averaged over.
    """
    return _summarise(*_relevant_hits(topk, relevant, k), k)


def per_user_metrics(topk: np.ndarray, relevant: Sequence[np.ndarray], k: int
                     ) -> dict[str, np.ndarray]:
    """`ranking_metrics` per user: ``{"ndcg@k", ...: float64 [num_users]}``, NaN for a user
    with no relevant item; their means over the other users are `ranking_metrics`' values.
    For paired comparisons (a bootstrap over users) of two top-k lists on the same users."""
    hits, n_rel = _relevant_hits(topk, relevant, k)
    users = n_rel > 0
    out = {}
    for name, values in _per_user(hits[users], n_rel[users], k).items():
        out[name] = np.full(n_rel.size, np.nan)
        out[name][users] = values
    return out


def _relevant_hits(topk, relevant, k: int) -> Pairs:
    """Validated ``hits`` [U, k] and distinct relevant counts [U] for `ranking_metrics`."""
    topk = np.asarray(topk)
    if topk.ndim != 2 or not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must be a [num_users, k] int array, got shape {topk.shape} "
                         f"dtype {topk.dtype}")
    _check_k(k, topk.shape[1], "the columns of topk")
    if len(relevant) != topk.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} users but topk has {topk.shape[0]} rows")
    lengths = [np.size(r) for r in relevant]
    # empty lists would turn the concatenation into floats, so only non-empty ones take part
    cols = np.concatenate([np.ravel(r) for r in relevant if np.size(r)] + [np.zeros(0, np.int64)])
    rows = np.repeat(np.arange(len(lengths)), lengths)
    # the bound keeps the user * num_items + item keys of _hits inside int64
    rows, cols = _pairs((rows, cols), "relevant", topk.shape[0], 2**62 // (topk.shape[0] + 1))
    return _hits(topk[:, :k].astype(np.int64), rows, cols)


def catalogue_coverage(topk: np.ndarray, num_items: int) -> float:
    """Share of the `num_items` catalogue that appears in at least one list of ``topk`` [U, k]."""
    items = np.unique(np.asarray(topk))
    items = items[items >= 0]  # -1 marks an empty slot
    if items.size and items[-1] >= num_items:
        raise ValueError(f"topk holds item {items[-1]}, outside [0, num_items={num_items})")
    return items.size / num_items


def novelty(topk: np.ndarray, item_popularity: np.ndarray, num_users_train: int) -> float:
    """Mean self-information ``-log2(pop_i / num_users_train)`` over all recommended slots.

    ``item_popularity`` is `[num_items]`: the number of train users who interacted with each item
    (Microsoft Recommenders' ``novelty``). An item nobody saw in train counts as seen once, so its
    novelty is the finite maximum ``log2(num_users_train)`` instead of infinity. Slots of -1 are
    skipped.
    """
    if num_users_train < 1:
        raise ValueError(f"num_users_train must be >= 1, got {num_users_train}")
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1 or (pop < 0).any() or (pop > num_users_train).any():
        raise ValueError(f"item_popularity must be [num_items] counts in [0, num_users_train="
                         f"{num_users_train}], got shape {pop.shape}, max {pop.max(initial=0)}")
    items = np.asarray(topk).ravel()
    items = items[items >= 0]
    if items.size == 0:
        raise ValueError("topk holds no recommended item")
    if items.max() >= pop.size:
        raise ValueError(f"topk holds item {items.max()}, outside item_popularity "
                         f"(size {pop.size})")
    return float(np.mean(-np.log2(np.maximum(pop[items], 1.0) / num_users_train)))


def rating_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """``{"rmse", "mae"}`` of predicted ratings `[N]` against true ratings `[N]`."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.size != y_pred.size:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty")
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] = {a[bad[0]]} is not finite")
    err = y_pred - y_true
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def evaluate_topk(user_emb: np.ndarray, item_emb: np.ndarray, train_pairs: Pairs,
                  test_pairs: Pairs, k: int, item_popularity: np.ndarray | None = None,
                  batch_size: int = 1024, user_bias: np.ndarray | None = None,
                  item_bias: np.ndarray | None = None, exclude_train: bool = True) -> dict:
    """Full-ranking top-k evaluation of a two-tower model from its embeddings.

    Scores are ``user_emb @ item_emb.T (+ item_bias) (+ user_bias)`` (a user bias never changes
    the ranking), computed for ``batch_size`` users at a time; only users with a test pair are
    scored and averaged over.

    Args:
      user_emb: `[num_users, dim]` user embeddings; pair rows index into it.
      item_emb: `[num_items, dim]` item embeddings; pair cols index into it.
      train_pairs: `(rows, cols)` train interactions: masked when ``exclude_train``, and the source
        of ``item_popularity`` (distinct users per item) when that is None.
      test_pairs: `(rows, cols)` held-out interactions, the relevant items (a test pair that is
        also a train pair is masked, so it can never be a hit when ``exclude_train``).
      k: list length.
      item_popularity: `[num_items]` train users per item, for ``novelty@k``.
      batch_size: users scored at once; peak memory is about ``batch_size * num_items`` floats.
      user_bias, item_bias: optional `[num_users]`, `[num_items]` score offsets.
      exclude_train: False reproduces the TFRS tutorial protocol (seen items stay candidates).

    Returns:
      ``ranking_metrics`` keys plus ``coverage@k``, ``novelty@k`` and ``top{k}_accuracy``: the
      share of distinct test pairs whose item is in its user's top k, which with
      ``exclude_train=False`` is TFRS ``FactorizedTopK``'s ``top_{k}_categorical_accuracy``.
    """
    user_emb, item_emb = np.asarray(user_emb), np.asarray(item_emb)
    if user_emb.ndim != 2 or item_emb.ndim != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(f"user_emb [num_users, dim] and item_emb [num_items, dim] must share dim, "
                         f"got shapes {user_emb.shape} and {item_emb.shape}")
    (num_users, _), (num_items, _) = user_emb.shape, item_emb.shape
    _check_k(k, num_items)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for name, bias, size in (("user_bias", user_bias, num_users), ("item_bias", item_bias,
                                                                    num_items)):
        if bias is not None and np.shape(bias) != (size,):
            raise ValueError(f"{name} must have shape ({size},), got {np.shape(bias)}")
    train_rows, train_cols = _pairs(train_pairs, "train_pairs", num_users, num_items)
    test_rows, test_cols = _pairs(test_pairs, "test_pairs", num_users, num_items)
    if item_popularity is None:
        seen = np.unique(train_rows * num_items + train_cols)
        item_popularity = np.bincount(seen % num_items, minlength=num_items)
    num_users_train = np.unique(train_rows).size

    users = np.unique(test_rows)  # row b of the evaluation is user users[b]
    position = np.full(num_users, -1, np.int64)
    position[users] = np.arange(users.size)
    ex_pos, ex_cols = position[train_rows], train_cols
    keep = ex_pos >= 0 if exclude_train else np.zeros(ex_pos.size, bool)
    order = np.argsort(ex_pos[keep], kind="stable")
    ex_pos, ex_cols = ex_pos[keep][order], ex_cols[keep][order]

    topk = np.empty((users.size, k), np.int64)
    for start in range(0, users.size, batch_size):
        batch = users[start:start + batch_size]
        scores = user_emb[batch] @ item_emb.T
        scores = scores.astype(np.result_type(scores, np.float32), copy=False)
        if item_bias is not None:
            scores += np.asarray(item_bias)[None, :]
        if user_bias is not None:
            scores += np.asarray(user_bias)[batch, None]
        if not np.isfinite(scores).all():
            raise ValueError(f"non-finite scores for users {batch[0]}..{batch[-1]}: check the "
                             "embeddings and biases for NaN or inf")
        lo, hi = np.searchsorted(ex_pos, [start, start + batch.size])
        scores[ex_pos[lo:hi] - start, ex_cols[lo:hi]] = -np.inf
        topk[start:start + batch.size] = _topk_masked(scores, k)

    hits, n_rel = _hits(topk, position[test_rows], test_cols)
    out = _summarise(hits, n_rel, k)
    out[f"top{k}_accuracy"] = float(hits.sum() / n_rel.sum())
    out[f"coverage@{k}"] = catalogue_coverage(topk, num_items)
    out[f"novelty@{k}"] = novelty(topk, item_popularity, num_users_train)
    return out
