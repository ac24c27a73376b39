"""tfrs-movies: a MovieLens recommender on TensorFlow Recommenders.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported, because
TFRS 0.7.7 only works with tf-keras (Keras 2); with it ``tf.keras`` is tf-keras everywhere.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfrs_movies import quiet  # noqa: E402  (TensorFlow-free)
from tfrs_movies.errors import DataError, UserError  # noqa: E402

quiet.library_default()  # C++ info lines off; the CLIs hide more (tfrs_movies.quiet)

__all__ = ["DataError", "UserError"]
__version__ = "0.1.0"
