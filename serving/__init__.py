"""Serving side of tfrs-movies: TF Serving deployment files and the Python client."""
from serving.backends import GrpcBackend, LocalBackend, RestBackend, ServingError
from serving.client import Recommendation, RecommenderClient, make_client

__all__ = ["GrpcBackend", "LocalBackend", "Recommendation", "RecommenderClient", "RestBackend",
           "ServingError", "make_client"]
