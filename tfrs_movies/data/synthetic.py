"""A MovieLens-like synthetic dataset for tests and scale runs (``dataset="synthetic"``).

Ids are strings: users ``"u1"``..``"uN"``, movies ``"m1"``..``"mM"`` (1-based; the prefix makes
a user id passed as a movie id, or the reverse, fail loudly instead of matching by accident).

The model, chosen so that retrieval and ranking have something real to learn:
  * movies: 1-3 genres each (drawn with MovieLens-20m genre frequencies), Zipf popularity
    ``pop ~ 1/rank`` over a random order of ids, a hidden quality, a release year;
  * users: a Dirichlet genre taste ``theta`` (peaked: most users love a few genres), an
    activity level (log-normal, so a few users rate a lot), a rating bias, demographics
    (gender, TFDS age bucket, occupation, zip code) drawn with MovieLens 100k frequencies;
  * which movies a user rates: without replacement, with probability
    ``(1 - EXPLORE) * sum_g theta[u, g] * pop[m] [m in g] / pop(g) + EXPLORE * pop[m] / pop``,
    i.e. pick a genre by taste, then a movie of that genre by popularity;
  * the rating (1-5 stars, MovieLens 100k's star shares): taste match + movie quality + user
    bias + noise; timestamps increase through each user's history, and rows come sorted by
    time (so a temporal split is a real "future" split).
Everything is vectorised numpy; 10^7 ratings take seconds, not minutes. Same seed, same data.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tfrs_movies.data.schema import (GENRES, MOVIE_COLUMNS, RATING_COLUMNS, USER_COLUMNS,
                                     MovieLensData, conform)
from tfrs_movies.errors import DataError

# Genre -> number of MovieLens 20m movies with it: the genre mix of synthetic movies.
_GENRE_FREQ = {"Drama": 13344, "Comedy": 8374, "Thriller": 4178, "Romance": 4127,
               "Action": 3520, "Crime": 2939, "Horror": 2611, "Documentary": 2471,
               "Adventure": 2329, "Sci-Fi": 1743, "Mystery": 1514, "Fantasy": 1412,
               "War": 1194, "Children": 1139, "Musical": 1036, "Animation": 1027,
               "Western": 676, "Film-Noir": 330}
_AGE_BUCKETS = ((1, .04), (18, .18), (25, .35), (35, .20), (45, .09), (50, .08), (56, .06))
_STAR_SHARES = (.06, .11, .27, .34, .22)  # MovieLens 100k's share of 1..5 star ratings
EXPLORE = 0.1          # share of picks by global popularity instead of taste
_DENSE_LIMIT = 2 * 10**7  # users * movies up to which every user is sampled exactly
_CHUNK = 4 * 10**6     # cells of a users x movies block held at once


def synthetic(users: int, movies: int, ratings: int, seed: int = 42) -> MovieLensData:
    """Draws ``ratings`` distinct (user, movie) ratings by ``users`` users of ``movies`` movies.

    Returns exactly ``ratings`` rows (every user rates at least one movie when
    ``ratings >= users``); ``DataError`` if ``ratings > users * movies``.
    """
    for name, value in (("users", users), ("movies", movies), ("ratings", ratings)):
        if int(value) < 1:
            raise DataError(f"synthetic: {name} must be >= 1, got {value}")
    users, movies, ratings = int(users), int(movies), int(ratings)
    if ratings > users * movies:
        raise DataError(f"synthetic: cannot draw {ratings:,} distinct ratings from {users:,} "
                        f"users x {movies:,} movies (at most {users * movies:,})")
    rng = np.random.default_rng(seed)
    genre_ids = np.array([GENRES.index(g) for g in _GENRE_FREQ])
    freq = np.array(list(_GENRE_FREQ.values()), dtype=np.float64)
    freq /= freq.sum()

    member = _movie_genres(rng, movies, freq)                      # [M, G] bool
    pop = 1.0 / (1.0 + rng.permutation(movies))                   # Zipf over a random order
    quality = rng.normal(0.0, 0.7, movies) + 0.3 * _standardize(np.log(pop))
    taste = rng.dirichlet(freq, size=users)                       # [U, G], peaked
    activity = rng.lognormal(0.0, 1.2, users)
    counts = _user_counts(rng, activity, movies, ratings)

    user_idx, movie_idx = _draw_pairs(rng, taste, member, pop, counts)
    stars = _stars(rng, taste, member, quality, user_idx, movie_idx)
    timestamp = _timestamps(rng, user_idx, users)
    order = np.argsort(timestamp, kind="stable")

    user_names = _names("u", users)
    movie_names = _names("m", movies)
    table = conform({"user_id": user_names[user_idx[order]],
                     "movie_id": movie_names[movie_idx[order]],
                     "user_rating": stars[order], "timestamp": timestamp[order]},
                    RATING_COLUMNS)
    years = np.maximum(rng.integers(1930, 2019, movies), rng.integers(1960, 2019, movies))
    lists = [sorted(genre_ids[row].tolist()) for row in member]
    movie_table = conform({"movie_id": movie_names,
                           "movie_title": np.array([f"Synthetic Movie {k} ({y})" for k, y in
                                                    zip(range(1, movies + 1), years)],
                                                   dtype=object),
                           "movie_genres": lists}, MOVIE_COLUMNS)
    return MovieLensData(ratings=table, movies=movie_table,
                         users=_users(rng, user_names), name=f"synthetic(users={users}, "
                         f"movies={movies}, ratings={ratings}, seed={seed})")


def _names(prefix: str, n: int) -> np.ndarray:
    names = np.empty(n, dtype=object)
    names[:] = [f"{prefix}{k}" for k in range(1, n + 1)]
    return names


def _standardize(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


def _movie_genres(rng, movies: int, freq: np.ndarray) -> np.ndarray:
    """[M, G] membership: 1-3 distinct genres a movie, weighted by ``freq`` (Gumbel top-k)."""
    k = rng.choice([1, 2, 3], size=movies, p=[.45, .35, .20])
    keys = np.log(freq)[None, :] + rng.gumbel(size=(movies, len(freq)))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    return rank < k[:, None]


def _user_counts(rng, activity: np.ndarray, movies: int, ratings: int) -> np.ndarray:
    """Ratings per user: sums to ``ratings``, each <= ``movies``, >= 1 when possible."""
    users = len(activity)
    base = min(max(ratings // (4 * users), 1 if ratings >= users else 0), movies)
    counts = base + rng.multinomial(ratings - base * users, activity / activity.sum())
    excess = int(np.maximum(counts - movies, 0).sum())
    counts = np.minimum(counts, movies)
    for _ in range(20):  # hand the overflow to users with room left, by activity
        if excess == 0:
            break
        room = movies - counts
        extra = np.minimum(rng.multinomial(excess, np.where(room > 0, activity, 0.0) /
                                           activity[room > 0].sum()), room)
        counts += extra
        excess -= int(extra.sum())
    if excess:  # nearly full grids: fill the remaining room in user order
        room = movies - counts
        counts += np.clip(excess - (np.cumsum(room) - room), 0, room)
    return counts


def _draw_pairs(rng, taste, member, pop, counts):
    """Distinct (user, movie) index pairs, ``counts[u]`` for user u, grouped by user.

    Small grids sample every user exactly; large ones draw genre-then-movie picks with
    replacement, drop repeats, redraw the shortfall a few rounds, and sample the last few
    users exactly.
    """
    users, movies = taste.shape[0], member.shape[0]
    weight = member * pop[:, None]
    total = weight.sum(axis=0, keepdims=True)
    within = weight / np.where(total > 0, total, 1.0)              # [M, G] p(movie | genre)
    if users * movies <= _DENSE_LIMIT:
        return _draw_exact(rng, np.arange(users), counts, taste, within, pop, None)
    need = counts.astype(np.int64).copy()
    chosen = np.zeros(0, dtype=np.int64)                           # sorted keys u * M + m
    taste_cum = np.cumsum(taste, axis=1)
    taste_cum[:, -1] = 1.0
    taste_flat = (taste_cum + np.arange(users)[:, None]).ravel()
    genre_flat, genre_members = _genre_tables(within)
    pop_cum = np.cumsum(pop) / pop.sum()
    for _ in range(8):
        active = np.flatnonzero(need)
        if len(active) == 0:
            break
        draws = np.ceil(need[active] * 1.15).astype(np.int64) + 2
        u = np.repeat(active, draws)
        g = np.searchsorted(taste_flat, u + rng.random(len(u)), side="right") - u * len(
            taste_cum[0])
        g = np.minimum(g, taste.shape[1] - 1)
        m = genre_members[np.minimum(np.searchsorted(genre_flat, g + rng.random(len(u)),
                                                     side="right"), len(genre_members) - 1)]
        explore = rng.random(len(u)) < EXPLORE
        m[explore] = np.minimum(np.searchsorted(pop_cum, rng.random(int(explore.sum()))),
                                movies - 1)
        keys = u * movies + m
        if len(chosen):
            pos = np.minimum(np.searchsorted(chosen, keys), len(chosen) - 1)
            fresh = chosen[pos] != keys
            keys = keys[fresh]
        by_key = np.argsort(keys, kind="stable")
        sorted_keys = keys[by_key]
        head = np.ones(len(keys), dtype=bool)
        head[1:] = sorted_keys[1:] != sorted_keys[:-1]
        uniq, first = sorted_keys[head], by_key[head]              # first draw of each pair
        owner = uniq // movies
        order = np.lexsort((first, owner))                         # per user, in draw order
        owner_sorted = owner[order]
        starts = np.searchsorted(owner_sorted, owner_sorted, side="left")
        rank = np.arange(len(order)) - starts
        keep = uniq[order[rank < need[owner_sorted]]]
        need -= np.bincount(keep // movies, minlength=users)
        chosen = np.sort(np.concatenate([chosen, keep]))           # disjoint by construction
    left = np.flatnonzero(need)
    if len(left):
        lu, lm = _draw_exact(rng, left, need[left], taste, within, pop, chosen)
        chosen = np.sort(np.concatenate([chosen, lu * movies + lm]))
    return chosen // movies, chosen % movies


def _genre_tables(within: np.ndarray):
    """Flattened per-genre CDFs (``g + cdf``) and the movie at each entry, for searchsorted."""
    g_idx, m_idx = np.nonzero(within.T)                            # grouped by genre
    p = within.T[g_idx, m_idx]
    cum = np.cumsum(p)
    start = np.searchsorted(g_idx, g_idx, side="left")
    before = np.where(start > 0, cum[start - 1], 0.0)
    return g_idx + (cum - before), m_idx


def _draw_exact(rng, users_idx, counts, taste, within, pop, exclude):
    """``counts[i]`` movies without replacement for each user ``users_idx[i]`` (exponential
    keys ``E / p``, smallest first), skipping the sorted pair keys ``exclude``."""
    movies = within.shape[0]
    global_p = pop / pop.sum()
    rows = max(1, _CHUNK // movies)
    out_u, out_m = [], []
    for lo in range(0, len(users_idx), rows):
        uu, kk = users_idx[lo:lo + rows], counts[lo:lo + rows]
        p = (1 - EXPLORE) * taste[uu] @ within.T + EXPLORE * global_p[None, :]
        keys = rng.exponential(size=p.shape) / p
        if exclude is not None and len(exclude):
            lo_k = np.searchsorted(exclude, uu * movies)
            span = np.searchsorted(exclude, (uu + 1) * movies) - lo_k
            row = np.repeat(np.arange(len(uu)), span)
            pos = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
            keys[row, exclude[np.repeat(lo_k, span) + pos] % movies] = np.inf
        top = int(kk.max(initial=0))
        if top == 0:
            continue
        if top < movies:  # only the ``top`` smallest keys of a row matter
            part = np.argpartition(keys, top - 1, axis=1)[:, :top]
        else:
            part = np.broadcast_to(np.arange(movies), keys.shape)
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, axis=1),
                                                    axis=1), axis=1)
        take = np.arange(top)[None, :] < kk[:, None]
        out_u.append(np.repeat(uu, kk))
        out_m.append(order[take])
    if not out_u:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_u), np.concatenate(out_m)


def _stars(rng, taste, member, quality, user_idx, movie_idx) -> np.ndarray:
    """1-5 stars from taste match + quality + user bias + noise, cut at MovieLens's shares."""
    share = member / member.sum(axis=1, keepdims=True)             # genre mix of each movie
    match = np.empty(len(user_idx))
    step = max(1, _CHUNK // taste.shape[1])
    for lo in range(0, len(user_idx), step):
        u, m = user_idx[lo:lo + step], movie_idx[lo:lo + step]
        match[lo:lo + step] = np.einsum("ij,ij->i", taste[u], share[m])
    bias = rng.normal(0.0, 0.5, taste.shape[0])
    score = (_standardize(match) + quality[movie_idx] + bias[user_idx]
             + rng.normal(0.0, 0.8, len(user_idx)))
    cuts = np.quantile(score, np.cumsum(_STAR_SHARES)[:-1]) if len(score) > 20 else \
        np.array([-1.55, -0.95, -0.15, 0.77]) * max(score.std(), 1e-9) + score.mean()
    return (1 + np.searchsorted(cuts, score)).astype(np.float32)


def _timestamps(rng, user_idx, users: int) -> np.ndarray:
    """Seconds since 1970: each user starts between 1997 and 2017 and rates every few days."""
    start = rng.integers(852_076_800, 1_483_228_800, users)
    gaps = rng.exponential(3 * 86_400.0, len(user_idx))
    total = np.cumsum(gaps)
    first = np.searchsorted(user_idx, user_idx, side="left")       # pairs grouped by user
    offset = total - (total[first] - gaps[first])
    return (start[user_idx] + offset).astype(np.int64)


def _users(rng, names: np.ndarray) -> pd.DataFrame:
    """Demographics with MovieLens 100k's marginals; zip codes are 5-digit strings."""
    n = len(names)
    ages, age_p = zip(*_AGE_BUCKETS)
    occupation_p = np.full(22, 1.0)
    occupation_p[[0, 12, 17, 18, 11]] = [4, 4, 10, 5, 4]  # educator, programmer, student...
    zips = rng.integers(0, 100_000, n)
    return conform({"user_id": names,
                    "user_gender": rng.random(n) < 0.71,
                    "bucketized_user_age": rng.choice(np.array(ages, np.float32), n, p=age_p),
                    "user_occupation_label": rng.choice(22, n, p=occupation_p / occupation_p.sum()),
                    "user_zip_code": np.array([f"{z:05d}" for z in zips], dtype=object)},
                   USER_COLUMNS)
