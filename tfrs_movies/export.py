"""Serving modules and the TF Serving export layout (the serving contract of DESIGN.md).

``export(run, export_dir, config)`` writes::

    DIR/models.config              model_config_list for the models below
    DIR/retrieval/N/               user_id [B], exclude_movie_ids [B,E] -> movie_ids, scores [B,K]
    DIR/ranking/N/                 user_id [B], movie_id [B] -> rating [B]
    DIR/recommender/N/             as retrieval -> movie_ids, titles, scores, ratings [B,n]
    DIR/similar_movies/N/          movie_ids [B,E] ("" pads) -> movie_ids, scores [B,K] (cosine)

Every signature is ``serving_default`` with named outputs. Users, movies and their features are
looked up in-graph (``FeatureSpace``), so clients send ids. Retrieval and the recommender leave
out the movies each user rated in the run's train data (frozen at export; ``exclude_seen``)
as well as the ids the client excludes. Unknown users (no id, no history) and rows with no
known seed movie get the most popular movies; excluded ids never come back.
Candidate embeddings are non-trainable variables (no 2 GB GraphDef limit at 10^6 movies).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_movies.config import ExportConfig
from tfrs_movies.errors import UserError
from tfrs_movies.evaluation import embed
from tfrs_movies.model_config import models_config, record_export  # noqa: F401 (re-export)

MODELS = ("retrieval", "ranking", "recommender", "similar_movies")
# The ScaNN index is asked for k + this many neighbours, so up to this many excluded hits can
# be dropped and k results still remain.
SCANN_EXCLUSION_SLACK = 100
# ... plus the longest known history (seen movies are dropped too), up to this many.
SCANN_MAX_SEEN = 1000
_NEG = float("-inf")


def _id_table(ids: np.ndarray) -> tf.lookup.StaticHashTable:
    """String id -> its position in ``ids``; unknown ids (and "") -> -1."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)),
        default_value=-1)


def _mask(scores: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """Sets ``scores[b, positions[b, e]]`` to -inf for every position >= 0.

    O(batch x exclusions) scatter, never a catalogue x exclusions comparison.
    """
    hit = tf.where(positions >= 0)  # [H, 2]: (row, column in positions)
    index = tf.stack([hit[:, 0], tf.gather_nd(positions, hit)], axis=1)
    return tf.tensor_scatter_nd_update(scores, index, tf.fill([tf.shape(index)[0]], _NEG))


def scann_index(k: int, num_candidates: int) -> tfrs.layers.factorized_top_k.ScaNN:
    """A ScaNN layer sized for the catalogue: about sqrt(M) partitions (leaves), enough of them
    searched to hold about 4k candidates (at least a tenth), and exact re-scoring of the best
    ``max(10k, 200)`` of those."""
    leaves = max(2, min(2000, int(np.sqrt(num_candidates))))
    searched = int(np.ceil(leaves * min(1.0, 4.0 * k / num_candidates)))
    return tfrs.layers.factorized_top_k.ScaNN(
        k=k, distance_measure="dot_product", num_leaves=leaves,
        num_leaves_to_search=min(leaves, max(1, leaves // 10, searched)),
        training_iterations=12, dimensions_per_block=2,
        num_reordering_candidates=max(10 * k, 200))


def _pad(scores: tf.Tensor, ids: tf.Tensor, width: int):
    """Pads [B, w] hits to at least ``width`` columns with (-inf, "")."""
    missing = tf.maximum(width - tf.shape(scores)[1], 0)
    return (tf.pad(scores, [[0, 0], [0, missing]], constant_values=_NEG),
            tf.pad(ids, [[0, 0], [0, missing]], constant_values=""))


class PopularFallback(tf.Module):
    """The top ``k`` catalogue positions by popularity, each row's exclusions masked out.

    Only the ``k + E`` most popular movies can be among them (E: exclusions per row), so only
    those are scored: O(batch x (k + E)), never a [batch, catalogue] matrix.
    """

    def __init__(self, popularity: np.ndarray):
        super().__init__()
        order = np.argsort(-popularity, kind="stable")  # ties keep catalogue order
        self.order = tf.constant(order, tf.int64)
        self.scores = tf.constant(np.log1p(popularity[order]).astype(np.float32))
        self.rank = tf.constant(np.argsort(order, kind="stable"), tf.int64)  # position -> rank

    def __call__(self, excluded, k):
        """[B, E] catalogue positions (-1: none), k <= catalogue -> (scores, positions) [B, k]."""
        width = tf.minimum(tf.shape(self.order)[0], k + tf.shape(excluded)[1])
        scores = tf.tile(self.scores[None, :width], [tf.shape(excluded)[0], 1])
        ranks = tf.gather(self.rank, tf.maximum(excluded, 0))
        ranks = tf.where((excluded >= 0) & (ranks < tf.cast(width, tf.int64)), ranks, -1)
        scores, top = tf.math.top_k(_mask(scores, ranks), k)
        return scores, tf.gather(self.order, top)


class _Retriever(tf.Module):
    """Top-k catalogue movies for [B] users, with exclusions and a popularity fallback."""

    def __init__(self, model, movie_ids: np.ndarray, popularity: np.ndarray, k: int,
                 index: str, exclude_seen: bool):
        super().__init__()
        self.model = model
        self.k = min(k, len(movie_ids))
        self.movie_ids = tf.constant(movie_ids)
        self.positions = _id_table(movie_ids)
        embeddings = embed(model.movie_embedding, movie_ids)
        self.embeddings = tf.Variable(embeddings, trainable=False, name="candidate_embeddings")
        # Users the model knows nothing about get the most popular allowed movies.
        self.fallback = PopularFallback(popularity)
        # Catalogue positions of each known user's rated movies (row 0: unknown user), so the
        # served lists hold unseen movies without the client sending the whole history.
        self.seen = None
        longest = 0
        if exclude_seen:
            position = {m: i for i, m in enumerate(movie_ids)}
            seen = [[]] + [[position[m] for m in h if m in position]
                           for h in model.space.vocab.history]
            longest = max(map(len, seen))
            self.seen = tf.RaggedTensor.from_row_lengths(
                tf.constant([p for row in seen for p in row], tf.int64),
                tf.constant([len(row) for row in seen], tf.int64))
        self.index = None
        if index == "scann":
            fetch = self.k + SCANN_EXCLUSION_SLACK + min(longest, SCANN_MAX_SEEN)
            self.index = scann_index(min(fetch, len(movie_ids)), len(movie_ids))
            self.index.index(tf.constant(embeddings), tf.constant(movie_ids))

    def known(self, user_id):
        space = self.model.space
        return (space.user_lookup(user_id) > 0) | (space.catalog_user_lookup(user_id) > 0)

    def __call__(self, user_id, exclude_movie_ids):
        """[B], [B, E] -> (ids [B, k] string, scores [B, k]); excluded slots never returned."""
        excluded = self.positions.lookup(exclude_movie_ids)
        if self.seen is not None:
            rows = self.model.space.catalog_user_lookup(user_id)
            seen = tf.gather(self.seen, rows).to_tensor(default_value=-1)
            excluded = tf.concat([excluded, seen], axis=1)
        query = self.model.user_embedding(user_id)
        known = self.known(user_id)[:, None]
        if self.index is None:
            scores = tf.matmul(query, self.embeddings, transpose_b=True)
            scores, top = tf.math.top_k(_mask(scores, excluded), self.k)
            pop_scores, pop_top = self.fallback(excluded, self.k)
            scores = tf.where(known, scores, pop_scores)
            ids = tf.gather(self.movie_ids, tf.where(known, top, tf.cast(pop_top, top.dtype)))
        else:
            # Over-fetch from the approximate index, then drop excluded hits (exact masking).
            hit_scores, hit_ids = _pad(*self.index(query), self.k)
            hit_positions = self.positions.lookup(hit_ids)  # padding "" -> -1, already -inf
            dropped = tf.reduce_any(hit_positions[:, :, None] == excluded[:, None, :], axis=2)
            hit_scores = tf.where(dropped, _NEG, hit_scores)
            pop_scores, pop_top = self.fallback(excluded, tf.shape(hit_scores)[1])
            hit_scores = tf.where(known, hit_scores, pop_scores)
            hit_ids = tf.where(known, hit_ids, tf.gather(self.movie_ids, pop_top))
            scores, top = tf.math.top_k(hit_scores, self.k)
            ids = tf.gather(hit_ids, top, batch_dims=1)
        # Fewer than k allowed movies: the missing slots are "" with score -inf.
        return tf.where(tf.math.is_inf(scores), "", ids), scores


class RetrievalModule(tf.Module):
    def __init__(self, retriever: _Retriever):
        super().__init__()
        self.retriever = retriever

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string, name="exclude_movie_ids")])
    def serve(self, user_id, exclude_movie_ids):
        ids, scores = self.retriever(user_id, exclude_movie_ids)
        return {"movie_ids": ids, "scores": scores}


class RankingModule(tf.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None], tf.string, name="movie_id")])
    def serve(self, user_id, movie_id):
        return {"rating": self.model.predict_rating(user_id, movie_id)}


class RecommenderModule(tf.Module):
    """Retrieve k candidates, rank them with the rating model, return the best n."""

    def __init__(self, retriever: _Retriever, ranker, n: int):
        super().__init__()
        self.retriever = retriever
        self.ranker = ranker
        self.n = min(n, retriever.k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string, name="exclude_movie_ids")])
    def serve(self, user_id, exclude_movie_ids):
        ids, scores = self.retriever(user_id, exclude_movie_ids)
        k = tf.shape(ids)[1]
        ratings = self.ranker.predict_rating(tf.repeat(user_id, k), tf.reshape(ids, [-1]))
        ratings = tf.where(ids == "", _NEG, tf.reshape(ratings, tf.shape(ids)))
        ratings, top = tf.math.top_k(ratings, self.n)
        ids = tf.gather(ids, top, batch_dims=1)
        return {"movie_ids": ids, "titles": self.ranker.space.titles_of(ids),
                "scores": tf.gather(scores, top, batch_dims=1), "ratings": ratings}


class SimilarMoviesModule(tf.Module):
    """Cosine neighbours of the mean of the normalized embeddings of up to E seed movies."""

    def __init__(self, model, movie_ids: np.ndarray, popularity: np.ndarray, k: int):
        super().__init__()
        self.k = min(k, len(movie_ids))
        self.movie_ids = tf.constant(movie_ids)
        self.positions = _id_table(movie_ids)
        emb = embed(model.movie_embedding, movie_ids)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self.embeddings = tf.Variable(emb, trainable=False, name="normalized_embeddings")
        self.popularity = tf.constant(np.log1p(popularity).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="movie_ids")])
    def serve(self, movie_ids):
        seeds = self.positions.lookup(movie_ids)
        valid = tf.cast(seeds >= 0, tf.float32)[:, :, None]
        vectors = tf.gather(self.embeddings, tf.maximum(seeds, 0)) * valid
        query = tf.math.l2_normalize(tf.reduce_sum(vectors, axis=1), axis=1)
        scores = tf.matmul(query, self.embeddings, transpose_b=True)
        has_seed = tf.reduce_any(seeds >= 0, axis=1)[:, None]
        scores = tf.where(has_seed, scores, self.popularity[None, :])
        scores, top = tf.math.top_k(_mask(scores, seeds), self.k)
        ids = tf.where(tf.math.is_inf(scores), "", tf.gather(self.movie_ids, top))
        return {"movie_ids": ids, "scores": scores}


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _save(module: tf.Module, model_dir: Path, version: int, scann: bool) -> Path:
    """Saves into a hidden sibling and renames it into place: a polling server never sees
    half a version, and an existing version is never touched."""
    final = model_dir / str(version)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if scann else None)
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve},
                        options=options)
    try:
        os.rename(tmp, final)  # fails rather than overwrite if another writer got there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{final} already exists: versions are never overwritten") from None
    return final


def export(run, export_dir: str | Path, config: ExportConfig) -> dict[str, Path]:
    """Writes every model the run supports into ``export_dir``; returns name -> version dir."""
    export_dir = Path(export_dir)
    retrieval, ranking = run.retrieval_model(), run.ranking_model()
    movie_ids = np.asarray(run.vocab.catalog_movies, dtype=str)
    counts = dict(zip(run.vocab.movie_ids, run.vocab.movie_counts))
    popularity = np.asarray([counts.get(m, 0) for m in movie_ids], np.float64)
    modules = {}
    if retrieval is not None:
        retriever = _Retriever(retrieval, movie_ids, popularity, config.k, config.index,
                               config.exclude_seen)
        modules["retrieval"] = RetrievalModule(retriever)
        if ranking is not None:
            modules["recommender"] = RecommenderModule(retriever, ranking, config.n)
    if ranking is not None:
        modules["ranking"] = RankingModule(ranking)
    modules["similar_movies"] = SimilarMoviesModule(run.embedding_model(), movie_ids,
                                                    popularity, config.k)
    if config.version is not None:
        taken = [n for n in modules if (export_dir / n / str(config.version)).exists()]
        if taken:
            raise UserError(f"version {config.version} already exists for {', '.join(taken)} in "
                            f"{export_dir}: versions are never overwritten; omit --version to "
                            "write the next one")
    written = {}
    for name in MODELS:
        if name not in modules:
            continue
        model_dir = export_dir / name
        model_dir.mkdir(parents=True, exist_ok=True)
        version = config.version or next_version(model_dir)
        start = time.perf_counter()
        if config.index == "scann" and name in ("retrieval", "recommender"):
            modules[name].serve(tf.constant([""]), tf.constant([[""]]))  # builds the index once
        written[name] = _save(modules[name], model_dir, version, config.index == "scann")
        print(f"[{name}] wrote {written[name]} ({time.perf_counter() - start:.1f}s)")
    for notice in record_export(export_dir, {n: int(p.name) for n, p in written.items()},
                                config.label, config.serving_root):
        print(notice)
    return written
