"""The serving modules: one ``tf.Module`` per exported model, built from a trained run.

Signatures are ``tfrs_movies.contract``'s; ``export`` writes these modules to TF Serving's
layout, and ``evaluation`` and ``recommend`` call them in memory, so a run answers exactly as
its export would.

    retrieval      user_id [B], exclude_movie_ids [B,E] -> movie_ids, scores [B,K]
    ranking        user_id [B], movie_id [B] -> rating [B]
    recommender    as retrieval -> movie_ids, titles, scores, ratings, rank_scores [B,n]
                   (ordered by the learned re-ranker)
    similar_movies movie_ids [B,E] ("" pads) -> movie_ids, scores [B,K] (cosine)

Retrieval, the recommender and similar movies also say per row whether it was answered from
the model or is the popularity fallback (``known`` [B]), and every model has a second
signature, ``lookup``: a movie id or title -> the catalogue movies it names (``_Catalogue.find``).

Retrieval and the recommender have a third, ``with_history`` (``serve_with_history``): the same
answer from the history the request brings (``_History``). There the user towers run in the
graph on the stored history followed by the request's (``FeatureSpace.user_features``), the
rating head runs on the K candidates, and the re-ranker's item-item and session scores add the
request's new movies times their weights (``FeatureLookup``). An unseen id answered from
its history, and a known user whose request brings new movies, get the best item-item movies
of their history among their candidates (``RecommenderModule._with_item_item``), ordered by
the re-ranker learned on such lists.

Towers are computed once, here: every known user's query embedding and rating representation
and every catalogue movie's candidate embedding and rating representation are stored as
non-trainable variables (no 2 GB GraphDef limit at 10^6 movies). Every user the run knows (the
users table and the train users) has a row; row 0 is the unknown user, whose representation is
what the towers give an unknown id. A ``serving_default`` request is id lookups, gathers, one
index search, top-k, one ``[B, K]`` call of the rating head and one of the re-ranker; no tower
runs in it.

Retrieval and the recommender leave out the movies each user rated in the run's train data
(``exclude_seen``) as well as the ids the client excludes. Unknown users (no row) and rows with
no known seed movie get the most popular allowed movies. Requests are processed in chunks of
``contract.MAX_ROWS_PER_CALL`` rows, so one call's memory is bounded by the chunk.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import contract, reranker
from tfrs_movies.config import ExportConfig
from tfrs_movies.index import NEG as _NEG
from tfrs_movies.index import BruteForce, Popular, make_index
from tfrs_movies.inference import embed, gather_cells, latest_distinct, position_of

MODELS = contract.MODELS
# The largest [user rows, catalogue] table the export freezes (the re-ranker's EASE and
# session scores obey the same bound: ``reranker.ease_fits``); beyond, the head runs per call.
MAX_TABLE_CELLS = reranker.MAX_EASE_CELLS
_DTYPES = {"string": tf.string, "float32": tf.float32, "int32": tf.int32, "bool": tf.bool}
# RE2 metacharacters, escaped so a lookup's query matches as plain text.
_REGEX_SPECIAL = r"([\\.+*?()|\[\]{}^$])"


def input_specs(model: str | contract.Signature) -> list[tf.TensorSpec]:
    """The contract's inputs of ``model`` as TensorSpecs, every dimension dynamic."""
    signature = contract.signature(model) if isinstance(model, str) else model
    return [tf.TensorSpec([None] * len(t.shape), _DTYPES[t.dtype], name=t.name)
            for t in signature.inputs]


def _known() -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.bool)


def _id_table(ids: np.ndarray, first: int = 0) -> tf.lookup.StaticHashTable:
    """String id -> ``first`` + its position in ``ids``; unknown ids (and "") -> ``first - 1``."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids, tf.string), tf.range(first, first + len(ids), dtype=tf.int64)),
        default_value=first - 1)


def _chunked(fn, inputs: list[tf.Tensor], outputs: dict[str, tf.TensorSpec],
             rows: int = contract.MAX_ROWS_PER_CALL) -> dict[str, tf.Tensor]:
    """``fn(*inputs)`` on at most ``rows`` rows at a time; every input is [B, ...].

    A request of up to ``rows`` rows runs as one call; a larger one is padded to a multiple
    of ``rows`` (strings with "", an unknown id) and mapped over its chunks one after the
    other, so its memory is that of one chunk plus the outputs.
    """
    b = tf.shape(inputs[0])[0]

    def in_chunks():
        n = (b + rows - 1) // rows
        parts = []
        for t in inputs:
            padding = [[0, n * rows - b]] + [[0, 0]] * (t.shape.rank - 1)
            t = tf.pad(t, padding, constant_values="" if t.dtype == tf.string else 0)
            parts.append(tf.reshape(t, tf.concat([[n, rows], tf.shape(t)[1:]], 0)))
        out = tf.map_fn(lambda xs: fn(*xs), parts, fn_output_signature=outputs,
                        parallel_iterations=1)
        return {k: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0))[:b]
                for k, v in out.items()}

    return tf.cond(b <= rows, lambda: fn(*inputs), in_chunks)


def _same_rows(a: tf.Tensor, b: tf.Tensor, a_name: str, b_name: str):
    """Asserts that the request's two inputs have as many rows, naming both."""
    return tf.debugging.assert_equal(
        tf.shape(a)[0], tf.shape(b)[0],
        message=f"{a_name} and {b_name} must have the same number of rows (B); got "
                f"{a_name} rows, {b_name} rows")


def _history_rows(user_id, history_movie_ids, exclude_movie_ids):
    """The row checks of a ``with_history`` request: each input against ``user_id``."""
    return [_same_rows(user_id, history_movie_ids, "user_id", "history_movie_ids"),
            _same_rows(user_id, exclude_movie_ids, "user_id", "exclude_movie_ids")]


def user_rows(vocab) -> np.ndarray:
    """The ids of the per-user tables' rows: "" (row 0: the unknown user; "" is unknown
    everywhere, so the towers give it the OOV representation), then every user the run knows
    (the users table and the train users), sorted."""
    return np.concatenate([[""], sorted(set(vocab.catalogue_users) | set(vocab.user_ids))]
                          ).astype(str)


def rerank_tables(bundle: reranker.Bundle, vocab) -> reranker.FeatureTables:
    """The re-ranker's ``FeatureTables`` for the serving graph: every user row's, from their
    train (and fold-in) history; ``bundle.tables`` when they are those."""
    rows, movies = user_rows(vocab), np.asarray(vocab.catalogue_movies, str)
    if bundle.tables is not None and bundle.tables.fits(rows, movies, bundle.config.ease_movies):
        return bundle.tables
    known = pd.DataFrame([(u, m) for u, h in zip(vocab.catalogue_users, vocab.history)
                          for m in h], columns=["user_id", "movie_id"])
    return reranker.FeatureTables.build(known, rows, movies, bundle.config, bundle.recent,
                                        bundle.sittings)


class _Users(tf.Module):
    """Every user the run knows -> a row (1..U) of the per-user tables; unknown -> 0."""

    def __init__(self, vocab):
        super().__init__()
        self.with_unknown = user_rows(vocab)
        self.ids = self.with_unknown[1:]
        self.rows = _id_table(self.ids, first=1)

    def table(self, fn, name: str) -> tf.Variable:
        """``fn`` ([B] ids -> [B, D]) of every row, as a [U + 1, D] non-trainable variable."""
        return tf.Variable(embed(fn, self.with_unknown), trainable=False, name=name)


class _Catalogue(tf.Module):
    """Catalogue movies: id -> position (-1 unknown), titles, popularity, seen lists; `find`
    is the ``lookup`` signature of every model."""

    def __init__(self, vocab):
        super().__init__()
        self.ids_np = np.asarray(vocab.catalogue_movies, dtype=str)
        self.ids = tf.constant(self.ids_np)
        self.titles = tf.constant(np.asarray(vocab.catalogue_titles, dtype=str))
        self.lowered = tf.constant(tf.strings.lower(self.titles, encoding="utf-8").numpy())
        self.positions = _id_table(self.ids_np)
        counts = dict(zip(vocab.movie_ids, vocab.movie_counts))
        self.popularity = np.asarray([counts.get(m, 0) for m in self.ids_np], np.float64)
        m = min(contract.LOOKUP_MATCHES, len(self.ids_np))
        self._found = {"movie_ids": tf.TensorSpec([None, m], tf.string),
                       "titles": tf.TensorSpec([None, m], tf.string),
                       "match": tf.TensorSpec([None], tf.int32),
                       "count": tf.TensorSpec([None], tf.int32)}

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        return self.positions.lookup(ids)

    def _find(self, query):
        """query [B] -> the movies it names (`contract.LOOKUP`): the id, else the titles equal
        to it ignoring case, else the titles containing it ignoring case."""
        n = len(self.ids_np)
        positions = tf.range(n, dtype=tf.int64)
        by_id = tf.equal(self.lookup(query)[:, None], positions[None, :])
        lowered = tf.strings.lower(query, encoding="utf-8")
        whole = tf.equal(lowered[:, None], self.lowered[None, :])

        def has(mask):
            return tf.reduce_any(mask, axis=1)

        def parts():  # [B, N] regex matches: only when some query is neither an id nor a title
            patterns = "(?s).*" + tf.strings.regex_replace(lowered, _REGEX_SPECIAL,
                                                           r"\\\1") + ".*"
            return tf.map_fn(lambda p: tf.strings.regex_full_match(self.lowered, p), patterns,
                             fn_output_signature=tf.TensorSpec([n], tf.bool))

        part = tf.cond(tf.reduce_all(has(by_id) | has(whole)),
                       lambda: tf.zeros_like(whole), parts)

        match = tf.where(has(by_id), 3, tf.where(has(whole), 2, tf.where(has(part), 1, 0)))
        mask = tf.where((match == 3)[:, None], by_id, tf.where((match == 2)[:, None], whole, part))
        # The M most rated matches (ties in catalogue order: top_k keeps the first).
        popularity = tf.constant(self.popularity.astype(np.float32))
        first = tf.math.top_k(tf.where(mask, popularity[None, :], _NEG),
                              self._found["titles"].shape[1])
        return {"movie_ids": self.strings(self.ids, first.indices, first.values),
                "titles": self.strings(self.titles, first.indices, first.values),
                "match": tf.cast(match, tf.int32),
                "count": tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)}

    @tf.function(input_signature=input_specs(contract.LOOKUP))
    def find(self, query):
        return _chunked(self._find, [query], self._found)

    def strings(self, table: tf.Tensor, positions: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
        """``table[positions]``, "" where the slot is empty (score -inf)."""
        return tf.where(tf.math.is_inf(scores), "", tf.gather(table, tf.maximum(positions, 0)))


def _seen(users: _Users, vocab, catalogue: _Catalogue) -> tf.RaggedTensor:
    """Per user row, the catalogue positions of the movies they rated (row 0: none)."""
    position = position_of(catalogue.ids_np).to_dict()
    history = dict(zip(vocab.catalogue_users, vocab.history))
    rows = [[]] + [[position[m] for m in history.get(u, []) if m in position] for u in users.ids]
    return tf.RaggedTensor.from_row_lengths(
        tf.constant([p for row in rows for p in row], tf.int64),
        tf.constant([len(row) for row in rows], tf.int64))


class _History(tf.Module):
    """A request's history (``with_history``) in catalogue positions: ``positions(sent [B, H])
    -> [B, L]`` keeps each known movie once, the latest ``limit`` (the towers' ``max_history``),
    -1 pads; ``new(rows, positions)`` leaves out (-1) the movies a user row's stored history
    already holds, which the frozen tables count."""

    def __init__(self, users: _Users, vocab, catalogue: _Catalogue, limit: int):
        super().__init__()
        self.limit = limit
        self.n = len(catalogue.ids_np)
        position = position_of(catalogue.ids_np).to_dict()
        row = position_of(users.with_unknown).to_dict()
        keys = [row[u] * self.n + position[m] for u, h in zip(vocab.catalogue_users, vocab.history)
                for m in h if m in position and u in row]
        keys = np.asarray(keys or [-1], np.int64)
        self.stored = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int64)), 0)

    def positions(self, sent: tf.Tensor) -> tf.Tensor:
        """[B, H] the request's history in catalogue positions (-1: unknown) -> [B, L]."""
        return latest_distinct(sent, self.limit, -1)

    def new(self, rows: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
        keys = tf.cast(rows, tf.int64)[:, None] * self.n + positions
        stored = self.stored.lookup(keys) > 0
        return tf.where(stored | (positions < 0), tf.constant(-1, tf.int64), positions)


class _Retriever(tf.Module):
    """Top-k catalogue positions for user rows, with exclusions and the popularity fallback."""

    def __init__(self, model, users: _Users, catalogue: _Catalogue, config: ExportConfig):
        super().__init__()
        self.k = min(config.k, len(catalogue.ids_np))
        self.queries = users.table(model.user_embedding, "query_embeddings")
        self.seen = _seen(users, model.space.vocab, catalogue) if config.exclude_seen else None
        longest = int(tf.reduce_max(self.seen.row_lengths())) if self.seen is not None else 0
        candidates = embed(model.movie_embedding, catalogue.ids_np)
        self.index = make_index(config.index, candidates, self.k, longest)
        self.popular = Popular(catalogue.popularity)
        # What a with_history request runs: the user tower and its feature tables (tracked
        # here, so the export saves them; not the whole model: a bound method is not tracked).
        self.user_tower, self.space = model.user_tower, model.space
        self._query_from = model.query_from

    def query(self, features: dict) -> tf.Tensor:
        """User features (``space.user_features``) -> [B, D] query embeddings (the tower
        runs)."""
        return self._query_from(features)

    def __call__(self, rows: tf.Tensor, excluded: tf.Tensor, queries: tf.Tensor | None = None,
                 unknown: tf.Tensor | None = None):
        """rows [B] user rows, excluded [B, E] positions (-1: none) -> (scores, positions)
        [B, k]; empty slots (fewer than k allowed movies) score -inf. ``queries`` [B, D]
        (default: the rows' stored ones) and ``unknown`` [B] (default: rows 0), the rows
        answered by the popularity fallback."""
        if self.seen is not None:
            excluded = tf.concat([excluded, tf.gather(self.seen, rows).to_tensor(-1)], axis=1)
        if queries is None:
            queries = tf.gather(self.queries, rows)
        scores, positions = self.index(queries, excluded, self.k)
        unknown = rows <= 0 if unknown is None else unknown
        return _fallback(unknown, self.popular, excluded, scores, positions, self.k)


def _fallback(unknown: tf.Tensor, popular: Popular, excluded: tf.Tensor, scores: tf.Tensor,
              positions: tf.Tensor, k: int):
    """(scores, positions) with the ``unknown`` rows [B] replaced by the popular movies their
    exclusions allow; computed for those rows only, and not at all when there are none."""
    def replace():
        rows = tf.where(unknown)
        popular_scores, popular_positions = popular(
            tf.zeros([tf.shape(rows)[0], 1]), tf.gather_nd(excluded, rows), k)
        return (tf.tensor_scatter_nd_update(scores, rows, popular_scores),
                tf.tensor_scatter_nd_update(positions, rows, popular_positions))

    return tf.cond(tf.reduce_any(unknown), replace, lambda: (scores, positions))


class _Rating(tf.Module):
    """The rating head on stored representations: user rows [B] x positions [B, K] -> [B, K]."""

    def __init__(self, model, users: _Users, catalogue: _Catalogue):
        super().__init__()
        self.head = model.head
        self.users = users.table(model.rating_user, "rating_users")
        # Row 0 is the unknown movie (what the towers give an unknown id), then the catalogue.
        ids = np.concatenate([[""], catalogue.ids_np])
        self.movies = tf.Variable(embed(model.rating_movie, ids), trainable=False,
                                  name="rating_movies")
        # What a with_history request runs: the rating model's user tower and its tables.
        self.user_tower, self.space = model.user_tower, model.space
        self._user_from = model.rating_user_from

    def __call__(self, rows: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
        return self.of_users(tf.gather(self.users, rows), positions)

    def of_users(self, users: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
        """[B, Du] user representations, [B, K] positions -> [B, K] predicted stars."""
        movies = tf.gather(self.movies, positions + 1)
        return self.head.rating(self.head(users, movies, training=False))

    def user_of(self, features: dict) -> tf.Tensor:
        """User features (``space.user_features``) -> [B, Du] (the tower runs)."""
        return self._user_from(features)


class _Stars(tf.Module):
    """The recommender's candidates' predicted stars: ``candidates(rows [B], positions [B, K])
    -> [B, K]``.

    With ``table`` (a catalogue and user count within ``MAX_TABLE_CELLS``), every user row's
    stars for every catalogue movie are computed once, here, and gathered: the K candidates
    then cost a gather, not K runs of the head's MLP (about 16k multiply-adds each at ML-100K's
    defaults, 15 times retrieval's work per user). The values are the head's own, computed in
    chunks of user rows. Only the recommender holds this module, so the ``ranking`` export
    (one pair a row) carries no table.
    """

    def __init__(self, rating: _Rating, users: int, movies: int, table: bool):
        super().__init__()
        self.rating = rating
        self.table = None
        if table:
            self.table = tf.Variable(self._every_pair(users, movies), trainable=False,
                                     name="predicted_stars")

    def candidates(self, rows: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
        """The stars of the candidates ``positions`` [B, K] (>= 0) of ``rows`` [B]."""
        if self.table is None:
            return self.rating(rows, positions)
        return gather_cells(self.table, rows, positions)

    def _every_pair(self, users: int, movies: int, cells: int = 1 << 17) -> np.ndarray:
        """[users, movies] float32: the head on every (user row, catalogue position)."""
        chunk = max(1, cells // max(movies, 1))
        every = tf.range(movies, dtype=tf.int64)
        call = tf.function(lambda rows: self.rating(rows, tf.tile(every[None],
                                                                  [tf.size(rows), 1])))
        return np.concatenate([call(tf.range(start, min(start + chunk, users), dtype=tf.int64))
                               .numpy() for start in range(0, users, chunk)])




class _ReRank(tf.Module):
    """The re-ranker (``reranker``) on tables frozen here: its ``FeatureTables`` from every
    user row's train (and fold-in) history, built by the same code as its training lists, and
    its MLP; user rows [B], candidates [B, K], their retrieval scores and predicted ratings
    -> [B, K] scores (-inf on empty slots)."""

    def __init__(self, bundle: reranker.Bundle, vocab):
        super().__init__()
        self.model = bundle.model
        self.new_users = bundle.new_users
        self.features = reranker.FeatureLookup(rerank_tables(bundle, vocab))
        self.config = bundle.config
        # Whether the model of the lists a history brings reads the candidates' stars: when
        # not, such requests run the rating head on the n returned alone.
        self.second_reads_stars = (self.new_users is None
                                   or "stars_z" in self.new_users.config_.used_features)

    def __call__(self, rows, positions, scores, ratings, history=None, mixed=None):
        """``history`` [B, L]: a request's movies the rows' tables do not hold (``_History``);
        ``mixed`` [B]: the rows whose candidates hold item-item movies (an unseen id's, or a
        known user's with new movies: ``RecommenderModule._with_item_item``), which the
        ``new_users`` model, learned on such lists, orders where there is one."""
        x = self.features(rows, positions, scores, ratings, history)

        def first():
            return self.model(x, training=False)

        def second():
            return self.new_users(x, training=False)

        if mixed is None or self.new_users is None:
            out = first()
        else:  # each model runs only where some row reads it
            out = tf.cond(tf.reduce_all(mixed), second, lambda: tf.cond(
                tf.reduce_any(mixed), lambda: tf.where(mixed[:, None], second(), first()),
                first))
        return tf.where(scores > _NEG, out, _NEG)


class _Retrieved(NamedTuple):
    """What `_retrieve_with_history` found: user rows, the history's catalogue positions
    (``_History.positions``), ``known``, the user feature dict the towers read, the
    candidates' scores and positions, the excluded positions (the request's and its
    history's) and the query embeddings."""

    rows: tf.Tensor
    history: tf.Tensor
    known: tf.Tensor
    features: dict
    scores: tf.Tensor
    positions: tf.Tensor
    excluded: tf.Tensor
    queries: tf.Tensor

    @property
    def alone(self) -> tf.Tensor:
        """[B] the rows answered from the request's history alone (an unseen id's)."""
        return (self.rows == 0) & self.known


def _retrieve_with_history(module, user_id, history_movie_ids, exclude_movie_ids) -> _Retrieved:
    """The retrieval step of a ``with_history`` request on ``module`` (retrieval or the
    recommender): the query tower on the stored history followed by the request's, the
    history's movies excluded; a row is answered by the model when its user or a movie of its
    history is known, else by the popularity fallback."""
    rows = module.users.rows.lookup(user_id)
    sent = module.catalogue.lookup(history_movie_ids)
    history = module.history.positions(sent)
    known = (rows > 0) | tf.reduce_any(history >= 0, axis=1)
    # Every movie of the history is excluded, the older ones past the towers' limit too.
    excluded = tf.concat([module.catalogue.lookup(exclude_movie_ids), sent], axis=1)
    features = module.retriever.space.user_features(user_id,
                                                    history_movie_ids=history_movie_ids)
    queries = module.retriever.query(features)
    scores, positions = module.retriever(rows, excluded, queries, ~known)
    return _Retrieved(rows, history, known, features, scores, positions, excluded, queries)


def _history_chunks(module, user_id, history_movie_ids, exclude_movie_ids):
    """``module._serve_history`` on a ``with_history`` request, its rows checked and chunked."""
    with tf.control_dependencies(_history_rows(user_id, history_movie_ids, exclude_movie_ids)):
        return _chunked(module._serve_history, [user_id, history_movie_ids, exclude_movie_ids],
                        module._outputs)


class RetrievalModule(tf.Module):
    """The contract's ``retrieval`` model: the top k unseen catalogue movies of each user."""

    def __init__(self, users: _Users, catalogue: _Catalogue, retriever: _Retriever,
                 history: _History):
        super().__init__()
        self.users, self.catalogue, self.retriever = users, catalogue, retriever
        self.history = history
        k = retriever.k
        self._outputs = {"movie_ids": tf.TensorSpec([None, k], tf.string),
                         "scores": tf.TensorSpec([None, k], tf.float32), "known": _known()}

    def _serve(self, user_id, exclude_movie_ids):
        rows = self.users.rows.lookup(user_id)
        scores, positions = self.retriever(rows, self.catalogue.lookup(exclude_movie_ids))
        return {"movie_ids": self.catalogue.strings(self.catalogue.ids, positions, scores),
                "scores": scores, "known": rows > 0}

    @tf.function(input_signature=input_specs("retrieval"))
    def serve(self, user_id, exclude_movie_ids):
        with tf.control_dependencies([_same_rows(user_id, exclude_movie_ids, "user_id",
                                                 "exclude_movie_ids")]):
            return _chunked(self._serve, [user_id, exclude_movie_ids], self._outputs)

    def _serve_history(self, user_id, history_movie_ids, exclude_movie_ids):
        got = _retrieve_with_history(self, user_id, history_movie_ids, exclude_movie_ids)
        return {"movie_ids": self.catalogue.strings(self.catalogue.ids, got.positions,
                                                    got.scores),
                "scores": got.scores, "known": got.known}

    @tf.function(input_signature=input_specs(contract.signature("retrieval",
                                                                contract.WITH_HISTORY)))
    def serve_with_history(self, user_id, history_movie_ids, exclude_movie_ids):
        return _history_chunks(self, user_id, history_movie_ids, exclude_movie_ids)


class RatingModule(tf.Module):
    """The contract's ``ranking`` model: the predicted stars of (user, movie) pairs."""

    def __init__(self, users: _Users, catalogue: _Catalogue, rating: _Rating):
        super().__init__()
        self.users, self.catalogue, self.rating = users, catalogue, rating

    def _serve(self, user_id, movie_id):
        ratings = self.rating(self.users.rows.lookup(user_id),
                              self.catalogue.lookup(movie_id)[:, None])
        return {"rating": ratings[:, 0]}

    @tf.function(input_signature=input_specs("ranking"))
    def serve(self, user_id, movie_id):
        with tf.control_dependencies([_same_rows(user_id, movie_id, "user_id", "movie_id")]):
            return _chunked(self._serve, [user_id, movie_id],
                            {"rating": tf.TensorSpec([None], tf.float32)})


class RecommenderModule(tf.Module):
    """Retrieve k candidates, order them by the learned re-ranker (``rerank``; without one, by
    predicted rating), return the best n with their predicted ratings."""

    def __init__(self, users: _Users, catalogue: _Catalogue, retriever: _Retriever,
                 stars: _Stars, history: _History, n: int, rerank: _ReRank | None = None):
        super().__init__()
        self.users, self.catalogue = users, catalogue
        self.retriever, self.stars, self.rerank = retriever, stars, rerank
        self.history = history
        self.n = min(n, retriever.k)
        self._outputs = {t.name: tf.TensorSpec([None, self.n][:len(t.shape)], _DTYPES[t.dtype])
                         for t in contract.signature("recommender").outputs}
        # [U + 1, N] bool: each user row's rated movies, which `_with_item_item` leaves out of
        # the item-item candidates (one gather and a select: 6x cheaper than scattering the
        # rows' ragged lists at B = 256 on ML-100K). Only where the item-item candidates run:
        # the re-ranker's tables then hold [U + 1, N] floats, a table 4x this one's size.
        self.seen = None
        if (rerank is not None and rerank.features.ease_left is not None
                and retriever.seen is not None):
            mask = np.zeros((len(users.with_unknown), len(catalogue.ids_np)), bool)
            seen = retriever.seen
            mask[np.repeat(np.arange(len(mask)), seen.row_lengths().numpy()),
                 seen.flat_values.numpy()] = True
            self.seen = tf.Variable(mask, trainable=False, name="seen_movies")

    def _serve(self, user_id, exclude_movie_ids):
        rows = self.users.rows.lookup(user_id)
        scores, positions = self.retriever(rows, self.catalogue.lookup(exclude_movie_ids))
        ratings = tf.where(tf.math.is_inf(scores), _NEG,
                           self.stars.candidates(rows, tf.maximum(positions, 0)))
        return self._best(rows, scores, positions, ratings, rows > 0)

    def _serve_history(self, user_id, history_movie_ids, exclude_movie_ids):
        got = _retrieve_with_history(self, user_id, history_movie_ids, exclude_movie_ids)
        new = self.history.new(got.rows, got.history)
        scores, positions, merged = self._with_item_item(got, new)
        got = got._replace(scores=scores, positions=positions)
        rating, features = self.stars.rating, got.features
        if rating.space is not self.retriever.space:  # models trained on other feature tables
            features = rating.space.user_features(user_id, history_movie_ids=history_movie_ids)
        users = rating.user_of(features)

        def stars_of(scores, positions):  # [B, P] -> the candidates' stars, NEG on empty slots
            return tf.where(tf.math.is_inf(scores), _NEG,
                            rating.of_users(users, tf.maximum(positions, 0)))

        def every():
            return self._best(got.rows, got.scores, got.positions,
                              stars_of(got.scores, got.positions), got.known, new, merged)

        if self.rerank is None or self.rerank.second_reads_stars:
            return every()

        def returned():  # every row ordered by the second model, which reads no stars
            return self._best(got.rows, got.scores, got.positions,
                              tf.zeros_like(got.scores), got.known, new, merged, stars_of)

        return tf.cond(tf.reduce_all(merged), returned, every)

    def _with_item_item(self, got: _Retrieved, new: tf.Tensor
                        ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The candidates (scores, positions) of a ``with_history`` request, and [B] the rows
        whose candidates changed: an unseen id answered from its history, and a known user
        whose request brings movies their tables do not hold (``new`` [B, L]), get the
        re-ranker's ``ease_candidates`` best item-item movies in the place of retrieval's
        last (``reranker.with_item_item``, the code the training lists of unseen ids ran);
        the unseen id's from its history's EASE scores, the known user's from their stored
        history's and the request's (``FeatureLookup.row_scores``). Other rows keep
        retrieval's."""
        lookup = None if self.rerank is None else self.rerank.features
        extra = 0 if lookup is None else self.rerank.config.ease_candidates(self.retriever.k)
        if not extra or lookup.ease_left is None:
            return got.scores, got.positions, got.alone
        alone = got.alone
        merge = alone | ((got.rows > 0) & tf.reduce_any(new >= 0, axis=1))
        vectors = self.retriever.index.vectors

        def merged():
            item_item = lookup.row_scores(got.rows, new, alone)
            if self.seen is not None:  # a known user's rated movies are never served
                item_item = tf.where(tf.gather(self.seen, got.rows), _NEG, item_item)
            scores, positions = reranker.with_item_item(
                got.scores, got.positions, item_item, got.excluded, extra,
                lambda p: tf.einsum("bd,bmd->bm", got.queries, vectors(p)))
            return (tf.where(merge[:, None], scores, got.scores),
                    tf.where(merge[:, None], positions, got.positions))

        scores, positions = tf.cond(tf.reduce_any(merge), merged,
                                    lambda: (got.scores, got.positions))
        return scores, positions, merge

    def _best(self, rows, scores, positions, ratings, known, history=None, mixed=None,
              stars_of=None):
        """The best n of the candidates, by the re-ranker (``history``: a request's new
        movies, for its item-item features; ``mixed``: the rows whose candidates hold
        item-item movies) or by predicted rating. ``stars_of(scores, positions) -> stars``
        [B, n]: the re-ranker reads no ``ratings``, and the n returned get theirs from it."""
        if self.rerank is not None:  # the predicted ratings are one of its features
            order, top = tf.math.top_k(
                self.rerank(rows, positions, scores, ratings, history, mixed), self.n)
            ratings = tf.gather(ratings, top, batch_dims=1)
        else:
            order, top = tf.math.top_k(ratings, self.n)
            ratings = order
        positions = tf.gather(positions, top, batch_dims=1)
        scores = tf.gather(scores, top, batch_dims=1)
        if stars_of is not None:
            ratings = stars_of(scores, positions)
        return {"movie_ids": self.catalogue.strings(self.catalogue.ids, positions, order),
                "titles": self.catalogue.strings(self.catalogue.titles, positions, order),
                "scores": scores, "ratings": ratings, "rank_scores": order, "known": known}

    @tf.function(input_signature=input_specs("recommender"))
    def serve(self, user_id, exclude_movie_ids):
        with tf.control_dependencies([_same_rows(user_id, exclude_movie_ids, "user_id",
                                                 "exclude_movie_ids")]):
            return _chunked(self._serve, [user_id, exclude_movie_ids], self._outputs)

    @tf.function(input_signature=input_specs(contract.signature("recommender",
                                                                contract.WITH_HISTORY)))
    def serve_with_history(self, user_id, history_movie_ids, exclude_movie_ids):
        return _history_chunks(self, user_id, history_movie_ids, exclude_movie_ids)


class SimilarMoviesModule(tf.Module):
    """Cosine neighbours of the mean of the normalized embeddings of up to E seed movies."""

    def __init__(self, model, catalogue: _Catalogue, k: int):
        super().__init__()
        self.catalogue = catalogue
        self.k = min(k, len(catalogue.ids_np))
        emb = embed(model.movie_embedding, catalogue.ids_np)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self.index = BruteForce(emb, name="normalized_embeddings")
        self.popular = Popular(catalogue.popularity)
        self._outputs = {"movie_ids": tf.TensorSpec([None, self.k], tf.string),
                         "scores": tf.TensorSpec([None, self.k], tf.float32), "known": _known()}

    def _serve(self, movie_ids):
        seeds = self.catalogue.lookup(movie_ids)
        valid = tf.cast(seeds >= 0, tf.float32)[:, :, None]
        vectors = self.index.vectors(tf.maximum(seeds, 0)) * valid
        query = tf.math.l2_normalize(tf.reduce_sum(vectors, axis=1), axis=1)
        scores, positions = self.index(query, seeds, self.k)
        known = tf.reduce_any(seeds >= 0, axis=1)
        scores, positions = _fallback(~known, self.popular, seeds, scores, positions, self.k)
        return {"movie_ids": self.catalogue.strings(self.catalogue.ids, positions, scores),
                "scores": scores, "known": known}

    @tf.function(input_signature=input_specs("similar_movies"))
    def serve(self, movie_ids):
        return _chunked(self._serve, [movie_ids], self._outputs)


def catalogue_of(vocab) -> _Catalogue:
    """The serving catalogue of ``vocab`` alone (its ``find`` resolves ids and titles)."""
    return _Catalogue(vocab)


def build_modules(run, config: ExportConfig, freeze_stars: bool = True) -> dict[str, tf.Module]:
    """The serving modules ``run`` supports, by contract name (in memory, not saved).

    ``freeze_stars`` computes the recommender's [user rows, catalogue] stars table (`_Stars`)
    where it fits: worth it for an export that answers many requests, not for one pass over
    the users (evaluation: 17 times more pairs than the candidates at ML-100K) or one user
    (``trainer recommend``), which run the head on their candidates and get the same answers.
    """
    vocab = run.vocab
    retrieval, rating_model = run.retrieval_model(), run.rating_model()
    users, catalogue = _Users(vocab), _Catalogue(vocab)
    modules = {}
    rating = _Rating(rating_model, users, catalogue) if rating_model is not None else None
    if retrieval is not None:
        retriever = _Retriever(retrieval, users, catalogue, config)
        history = _History(users, vocab, catalogue, retrieval.space.max_history)
        modules["retrieval"] = RetrievalModule(users, catalogue, retriever, history)
        if rating is not None:
            rows, movies = len(users.with_unknown), len(catalogue.ids_np)
            stars = _Stars(rating, rows, movies,
                           table=freeze_stars and rows * movies <= MAX_TABLE_CELLS)
            rerank = None if run.reranker is None else _ReRank(run.reranker, vocab)
            modules["recommender"] = RecommenderModule(users, catalogue, retriever, stars,
                                                       history, config.n, rerank)
    if rating is not None:
        modules["ranking"] = RatingModule(users, catalogue, rating)
    modules["similar_movies"] = SimilarMoviesModule(run.embedding_model(), catalogue, config.k)
    return {name: modules[name] for name in MODELS if name in modules}
