"""The re-ranker's learning lists: candidates, labels, targets and features of each user."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies import reranker, reranker_lists


def test_candidate_lists_label_held_out_movies_and_keep_every_target():
    # 2 users x 4 movies; the stub scores movie "1" > "2" > "3" > "4" for every user.
    stub = types.SimpleNamespace(
        user_embedding=lambda ids: tf.ones([tf.shape(ids)[0], 1]),
        movie_embedding=lambda ids: -tf.strings.to_number(ids)[:, None])
    known = pd.DataFrame({"user_id": ["u1", "u2"], "movie_id": ["1", "2"], "timestamp": [0, 0]})
    held_out = pd.DataFrame({"user_id": ["u1", "u1"], "movie_id": ["3", "4"]})
    found = reranker_lists.candidate_lists(stub, known, held_out, np.asarray(["u1", "u2"]),
                                           np.asarray(["1", "2", "3", "4"]),
                                           reranker.ReRankerConfig(candidates=2, use_ease=False))
    assert found.positions.tolist() == [[1, 2], [0, 2]]  # the known movie left out
    assert found.labels.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert [t.tolist() for t in found.targets] == [[2, 3], []]  # "4": held out, not retrieved
    assert found.features.shape == (2, 2, len(reranker.FEATURES))
    assert found.rows(np.asarray([False, True])).positions.tolist() == [[0, 2]]
    stars = found.features[..., reranker.FEATURES.index("stars_z")]
    assert not stars.any()  # no rating model
    # A rating stub: u1 rates by movie number, u2 the other way round.
    rating = types.SimpleNamespace(predict_rating=lambda users, movies: tf.where(
        users == "u1", 1.0, -1.0) * tf.strings.to_number(movies))
    stars = reranker_lists.candidate_lists(
        stub, known, held_out, np.asarray(["u1", "u2"]), np.asarray(["1", "2", "3", "4"]),
        reranker.ReRankerConfig(candidates=2, use_ease=False),
        rating).features[..., reranker.FEATURES.index("stars_z")]
    np.testing.assert_allclose(stars, [[-1.0, 1.0], [1.0, -1.0]], atol=1e-4)


def test_new_user_lists_are_what_a_history_request_of_an_unseen_id_gets():
    """``new_users``: the query and stars come from the towers asked for an unseen id ("")
    bringing the user's known movies as its history, oldest first; the recent family reads
    the last time bin, as the serving graph's unknown row does."""
    asked = []

    def user_embedding(ids, history_movie_ids=None):
        asked.append(None if history_movie_ids is None else
                     (ids.numpy().tolist(), history_movie_ids.numpy().tolist()))
        # Known ids prefer the highest movie number; a history request the lowest.
        sign = -1.0 if history_movie_ids is None else 1.0
        return tf.fill([tf.shape(ids)[0], 1], sign)

    stub = types.SimpleNamespace(
        user_embedding=user_embedding,
        movie_embedding=lambda ids: -tf.strings.to_number(ids)[:, None])
    known = pd.DataFrame({"user_id": ["u1", "u2", "u2"], "movie_id": ["1", "3", "2"],
                          "timestamp": [0, 20 * 86400 * 7, 86400 * 7]})
    held_out = pd.DataFrame({"user_id": ["u2"], "movie_id": ["4"]})
    config = reranker.ReRankerConfig(candidates=2, use_ease=False)
    found = reranker_lists.candidate_lists(stub, known, held_out, np.asarray(["u1", "u2"]),
                                           np.asarray(["1", "2", "3", "4"]), config,
                                           new_users=np.asarray([False, True]))
    assert asked[-1] == ([b""], [[b"2", b"3", b""]])  # u2's movies, oldest first
    assert found.positions.tolist() == [[3, 2], [0, 3]]  # its own "2" and "3" left out
    assert found.labels.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    # Where the export keeps no EASE weights for a request's history (here: the fits see 3
    # of the 4 movies), an unseen id's item-item and session scores are 0, as served.
    more = pd.concat([known, pd.DataFrame({"user_id": ["u1", "u3", "u3", "u4", "u4"],
                                           "movie_id": ["4", "1", "4", "2", "1"],
                                           "timestamp": [60, 120, 180, 240, 300]})])
    columns = [reranker.FEATURES.index(name) for name in ("ease_z", "session_z")]
    for ease_movies, served in ((4, True), (3, False)):
        config = reranker.ReRankerConfig(candidates=2, ease_movies=ease_movies)
        found = reranker_lists.candidate_lists(
            stub, more, held_out, np.asarray(["u1", "u2", "u3", "u4"]),
            np.asarray(["1", "2", "3", "4"]), config,
            new_users=np.asarray([False, True, True, False]))
        assert found.features[1:3][..., columns].any() == served
