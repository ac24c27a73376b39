"""Item-item scores for the re-ranker: EASE (Steck 2019) fitted on users, or its denoising
form DLAE (Steck 2020, below), and the session family's EASE fitted on what was rated
together (``Sittings``), as session-aware linear item-item models do (SLIST, Choi et al.
2021). Closed form, numpy: float64 inside, or float32 where the export keeps no weights
(``FeatureTables.build``: past 7,071 movies), which halves the [N, N] fit's memory.

DLAE ("Autoencoders that don't overfit towards the identity", Steck, NeurIPS 2020) is the
linear autoencoder trained on its input with each entry dropped with probability p: in
closed form ``B = I - P Lambda`` with ``P = (G + Lambda)^-1``, ``G = X^T X`` and the diagonal
``Lambda = lambda + p / (1 - p) diag(G)``, so a popular movie is regularised more, where EASE
(``lambda`` alone and a zero-diagonal constraint) treats every movie alike. Its diagonal
only scores a movie from itself, which a history's own movies never are here (they are
excluded), so it is kept at zero as EASE's. On ML-100K it scores above EASE on every
protocol of the quality benchmark's validation seeds (docs/quality.md)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.linalg import eigh, lapack

from tfrs_movies.inference import pairs, position_of


def interactions(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                 dtype=np.float64) -> np.ndarray:
    """[len(user_ids), len(movie_ids)] 0/1 of ``dtype``: which movie each user rated (ids
    absent from ``ratings`` get zero rows, movies absent from ``movie_ids`` are left out)."""
    r, c = pairs(ratings, position_of(user_ids), position_of(movie_ids))
    x = np.zeros((len(user_ids), len(movie_ids)), dtype)
    x[r, c] = 1.0
    return x


def most_rated(ratings: pd.DataFrame, movie_ids: np.ndarray, limit: int) -> np.ndarray:
    """Positions in ``movie_ids`` of its ``limit`` movies with the most ratings in ``ratings``
    (ties: the earlier position), in catalogue order: every position when there are no more
    than ``limit``. What the EASE fits are fitted on past ``ReRankerConfig.ease_movies``."""
    if len(movie_ids) <= limit:
        return np.arange(len(movie_ids))
    columns = position_of(movie_ids).reindex(ratings["movie_id"]).dropna().to_numpy(np.int64)
    counts = np.bincount(columns, minlength=len(movie_ids))
    return np.sort(np.argsort(-counts, kind="stable")[:limit])


def ease_from_gram(gram: np.ndarray, lam: float, dropout: float = 0.0) -> np.ndarray:
    """EASE's item-item weights ``B`` [N, N] (zero diagonal) from the rows' Gram matrix
    ``X^T X`` [N, N] (float64 or float32: the weights' type), which it overwrites, or with
    ``dropout`` p > 0, DLAE's (the module's docstring) with the same diagonal kept at zero:
    ``B[j, c] = -P[j, c] Lambda[c]``, where EASE's is ``-P[j, c] / P[c, c]``.
    ``gram + Lambda`` is symmetric positive definite, so LAPACK's Cholesky factor and inverse
    (``potrf``, ``potri``) run in its own array and the weights are computed there. One
    [N, N] array in all (760 MB in float64 at ml-latest-small's 9.7k movies), where
    ``inv(gram + lam * eye)`` held three."""
    if not 0 <= dropout < 1:
        raise ValueError(f"the item-item dropout must be within [0, 1), got {dropout}")
    regulariser = dlae_diagonal(np.diag(gram), lam, dropout)
    gram[np.diag_indices_from(gram)] += regulariser.astype(gram.dtype, copy=False)
    # LAPACK writes in place into a Fortran-ordered array: gram itself, or gram.T (the same
    # symmetric matrix) when gram is C-ordered.
    fortran = gram.T if gram.flags.c_contiguous else gram
    potrf, potri = ((lapack.spotrf, lapack.spotri) if gram.dtype == np.float32
                    else (lapack.dpotrf, lapack.dpotri))
    factor, info = potrf(fortran, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        inverse, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: the Gram matrix plus lambda={lam} is not positive definite "
                         f"(LAPACK info {info}); use a larger lambda")
    p = inverse.T  # gram's memory (a view of it): its lower triangle holds the inverse
    _mirror_lower(p)
    if dropout:
        p *= -regulariser.astype(p.dtype, copy=False)
    else:
        p /= -np.diag(p).copy()
    np.fill_diagonal(p, 0.0)
    return p


def dlae_diagonal(gram_diagonal: np.ndarray, lam: float, dropout: float) -> np.ndarray:
    """DLAE's regulariser ``Lambda`` [N] float64: ``lam + p / (1 - p) diag(G)`` (``lam``
    alone at ``dropout`` 0, EASE's)."""
    return lam + dropout / (1.0 - dropout) * np.asarray(gram_diagonal, np.float64)


def _mirror_lower(p: np.ndarray, block: int = 512) -> None:
    """Copies the lower triangle of square ``p`` onto its upper one, a block of rows at a
    time (no [N, N] temporary)."""
    n = len(p)
    for start in range(0, n, block):
        end = min(start + block, n)
        p[:start, start:end] = p[start:end, :start].T
        upper = np.triu_indices(end - start, 1)
        square = p[start:end, start:end]
        square[upper] = square.T[upper]


def latest_weights(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                   decay: float, columns: np.ndarray | None = None) -> np.ndarray:
    """[len(user_ids), len(movie_ids)] float64: each user's movies in ``ratings`` weighted
    ``exp(-back / decay)``, ``back`` the number of their (distinct) catalogue movies rated
    after it: 1.0 for the latest. Time order is the ``timestamp`` column's where there is one
    (equal times by movie id), else row order; a movie rated twice counts at its later place.
    ``columns``: positions in ``movie_ids`` to return, in that order (``back`` still counts
    every catalogue movie): [len(user_ids), len(columns)]."""
    user_pos, movie_pos = position_of(user_ids), position_of(movie_ids)
    frame = ratings[["user_id", "movie_id"]].assign(
        row=user_pos.reindex(ratings["user_id"]).to_numpy(),
        column=movie_pos.reindex(ratings["movie_id"]).to_numpy())
    if "timestamp" in ratings:
        # Equal times by movie id, as the vocabulary orders each user's history.
        frame = frame.assign(timestamp=ratings["timestamp"].to_numpy()).sort_values(
            ["row", "timestamp", "movie_id"], kind="stable")
    frame = frame.dropna(subset=["row", "column"])
    frame = frame.drop_duplicates(["row", "column"], keep="last")
    back = frame.groupby("row", sort=False).cumcount(ascending=False).to_numpy()
    rows, cols = frame["row"].to_numpy(np.int64), frame["column"].to_numpy(np.int64)
    if columns is not None:
        place = np.full(len(movie_ids), -1, np.int64)
        place[np.asarray(columns, np.int64)] = np.arange(len(columns))
        kept = place[cols] >= 0
        rows, cols, back = rows[kept], place[cols[kept]], back[kept]
    x = np.zeros((len(user_ids), len(movie_ids) if columns is None else len(columns)),
                 np.float64)
    x[rows, cols] = np.exp(-back / decay)
    return x


def ease_fit(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
             lam: float, dtype=np.float64, dropout: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """EASE (or with ``dropout`` > 0, DLAE: ``ease_from_gram``) fitted on the rows
    ``user_ids`` of ``ratings`` (ids absent get zero rows) over the columns ``movie_ids``:
    (their scores ``X B`` [U, N] float32, the weights ``B`` [N, N] of ``dtype``), so a
    history that arrives later scores as ``history @ B``."""
    x = interactions(ratings, user_ids, movie_ids, dtype)
    b = ease_from_gram(x.T @ x, lam, dropout)
    return (x @ b).astype(np.float32), b


# The rank of ``ease_factors``: on the top-n split of ML-100K (seed 42) the whole-catalogue
# top 10 of the re-ranker's DLAE weights (lambda 300, dropout 0.67) from the rank-256 form
# scores nDCG@10 0.4722 against the weights' 0.4764, and the two forms' scores correlate
# 0.996 (384: 0.4763, 0.9994; ``python -m benchmarks.ease_rank``).
EASE_RANK = 256


def ease_factors(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                 weights: np.ndarray, lam: float, rank: int = EASE_RANK, dropout: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """EASE's (or DLAE's) weights ``B`` (``ease_fit`` of the same arguments) in a low-rank
    form that scores a history over the whole catalogue at the cost of a rank-r product:
    (left [N, r], right [N, r]) float32 with ``(h @ left) @ right.T`` close to ``h @ B`` at
    every movie outside the history h (a multi-hot row).

    With ``G = X^T X``, the regulariser ``Lambda = D`` (diagonal: ``lam`` for EASE,
    ``dlae_diagonal`` for DLAE) and ``G' = D^-1/2 G D^-1/2 = sum_i sigma_i q_i q_i^T``,
    ``P = (G + D)^-1 = D^-1/2 (I - sum_i s_i q_i q_i^T) D^-1/2`` where ``s_i = sigma_i /
    (sigma_i + 1)``. Off the diagonal ``B[j, c] = -P[j, c] w_c``, with ``w_c = 1 / P[c, c]``
    for EASE and ``D[c]`` for DLAE, so ``B[j, c] = sum_i s_i q_ij q_ic w_c / (d_j d_c)^1/2``:
    the sum is kept over the ``rank`` largest eigenvalues (the others' s_i are the
    smallest), ``P[c, c]`` is exact (from ``G`` and ``B``: ``1 / (G[c, c] + lam - sum_j
    G[j, c] B[j, c])``)."""
    x = interactions(ratings, user_ids, movie_ids)
    gram = x.T @ x
    scale = 1.0 / np.sqrt(dlae_diagonal(np.diag(gram), lam, dropout))  # D^-1/2
    if dropout:
        column = 1.0 / scale  # D[c] / D[c]^1/2
    else:
        column = (np.diag(gram) + lam - np.einsum("jc,jc->c", gram, weights)) * scale
    gram *= scale[:, None]
    gram *= scale[None, :]
    n = len(gram)
    r = min(rank, n)
    sigma, q = eigh(gram, subset_by_index=[n - r, n - 1], overwrite_a=True, check_finite=False)
    shrink = np.maximum(sigma, 0.0) / (np.maximum(sigma, 0.0) + 1.0)
    return ((q * (shrink * scale[:, None])).astype(np.float32),
            (q * column[:, None]).astype(np.float32))


def ease_scores(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                lam: float) -> np.ndarray:
    """EASE user x movie scores ``X B`` [U, N], float32 (computed in float64), for the rows
    ``user_ids`` and columns ``movie_ids`` (``ease_fit``). The quality benchmark's EASE
    baseline is this function too."""
    return ease_fit(ratings, user_ids, movie_ids, lam)[0]


@dataclasses.dataclass(frozen=True)
class Sittings:
    """What was rated together, the session family's rows: ``movie_ids[i]`` is in row
    ``sittings[i]``. Rows are each user's sittings (their ratings in time order while no gap
    between two is longer than ``gap_seconds``), then, with ``window`` > 0, each user's
    windows of ``window`` consecutive ratings, cut at two offsets (0 and ``window // 2``) so
    that every rating is in two windows and every pair of neighbours shares one."""

    movie_ids: np.ndarray
    sittings: np.ndarray

    @classmethod
    def build(cls, ratings: pd.DataFrame, gap_seconds: int, window: int = 0) -> "Sittings":
        ordered = ratings.sort_values(["user_id", "timestamp"], kind="stable")
        by_user = ordered.groupby("user_id", sort=False)
        gap = by_user["timestamp"].diff()
        starts = (gap.isna() | (gap > gap_seconds)).to_numpy()
        movies = ordered["movie_id"].to_numpy(str)
        groups = [np.cumsum(starts).astype(np.int64) - 1]
        if window > 0 and len(ordered):
            user = pd.factorize(ordered["user_id"])[0].astype(np.int64)
            position = by_user.cumcount().to_numpy(np.int64)
            for offset in sorted({0, window // 2}):
                # Row keys (user, window index); numbered after the rows before them.
                key = user * (len(ordered) // window + 2) + (position + offset) // window
                groups.append(int(groups[-1].max()) + 1 + pd.factorize(key)[0])
        return cls(np.tile(movies, len(groups)), np.concatenate(groups))

    def save(self, path: Path) -> None:
        np.savez(path, movie_ids=self.movie_ids, sittings=self.sittings)

    @classmethod
    def load(cls, path: Path) -> "Sittings":
        with np.load(path) as f:
            return cls(f["movie_ids"], f["sittings"])


def session_scores(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                   sittings: Sittings, lam: float) -> np.ndarray:
    """The session family's [U, N] float32 scores: each user's ``ratings`` (their history)
    times EASE weights fitted on ``sittings``' rows instead of users' (ids absent from
    ``ratings`` get zero rows; ``session_fit``)."""
    return session_fit(ratings, user_ids, movie_ids, sittings, lam)[0]


def session_fit(ratings: pd.DataFrame, user_ids: np.ndarray, movie_ids: np.ndarray,
                sittings: Sittings, lam: float, dtype=np.float64
                ) -> tuple[np.ndarray, np.ndarray]:
    """(``session_scores``, the session family's weights [N, N] of ``dtype``)."""
    columns = position_of(movie_ids).reindex(sittings.movie_ids).to_numpy()
    known = ~np.isnan(columns)
    rows = sparse.csr_matrix(
        (np.ones(int(known.sum()), dtype),
         (sittings.sittings[known], columns[known].astype(np.int64))),
        shape=(int(sittings.sittings.max(initial=-1)) + 1, len(movie_ids)))
    rows.data[:] = 1.0  # a movie twice in one row counts once
    gram = rows.T @ rows
    dense = gram.toarray()
    del gram
    b = ease_from_gram(dense, lam)
    return (interactions(ratings, user_ids, movie_ids, dtype) @ b).astype(np.float32), b
