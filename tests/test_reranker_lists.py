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
