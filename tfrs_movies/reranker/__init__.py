"""The served recommender's re-ranker: a listwise model that orders the retrieved candidates.

The served ``recommender`` retrieves ``K`` candidates and orders them by this model's score,
from features the two towers cannot express on their own (``features``: retrieval score and
rank, item-item, session and latest EASE scores, popularity, recent popularity, predicted stars,
each z-scored within the user's list). Modules, bottom up:

  config     ``ReRankerConfig``, the feature names and families, EASE's size limits
  item_item  EASE and the session family's sittings (closed form, numpy)
  recency    the recent family's time bins
  features   ``FeatureTables`` (one builder) and ``FeatureLookup`` (one TensorFlow path) used
             by the training lists and the serving graph alike
  model      the MLP, its losses, ``train_on`` lists, top-N metrics
  bundle     the trained model with its ``Recent`` and ``Sittings``, saved and loaded as one

The lists it learns from (fold models that never saw their targets) are built one layer up,
in ``tfrs_movies.reranker_lists``. Its features, width, epochs, learning rate and loss were
chosen on a validation split carved from train, never the test split
(``benchmarks/reranker_validation.py``; docs/quality.md).
"""
from tfrs_movies.reranker.bundle import Bundle, load, save, weights_path
from tfrs_movies.reranker.config import (FAMILIES, FEATURES, MAX_EASE_CELLS, MAX_EASE_MOVIES,
                                         ReRankerConfig, ease_fits)
from tfrs_movies.reranker.features import (FeatureLookup, FeatureTables, features,
                                           with_item_item)
from tfrs_movies.reranker.item_item import (Sittings, ease_fit, ease_scores, latest_weights,
                                            most_rated, session_fit, session_scores)
from tfrs_movies.reranker.model import (LOSSES, Lists, ReRanker, build, listwise_loss,
                                        pairwise_loss, top_n, train_on)
from tfrs_movies.reranker.recency import MAX_RECENT_BINS, RECENT_BIN_DAYS, Recent, recent_counts

__all__ = ["Bundle", "FAMILIES", "FEATURES", "FeatureLookup", "FeatureTables", "LOSSES",
           "Lists", "MAX_EASE_CELLS", "MAX_EASE_MOVIES", "MAX_RECENT_BINS",
           "RECENT_BIN_DAYS", "ReRanker", "ReRankerConfig", "Recent", "Sittings", "build",
           "ease_fit", "ease_fits", "ease_scores", "features", "latest_weights",
           "listwise_loss", "load", "most_rated", "pairwise_loss", "recent_counts", "save",
           "session_fit", "session_scores", "top_n", "train_on", "weights_path",
           "with_item_item"]
