"""Data sources, schema and splits; see ``schema.py`` for the tables (ARCHITECTURE.md, "Data")."""
from tfrs_movies.data.loading import load
from tfrs_movies.data.schema import GENRES, OCCUPATIONS, MovieLensData
from tfrs_movies.data.splits import (Split, carve_latest, carve_validation, follows_in_time,
                                     load_split, make_split, save_split)

__all__ = ["load", "make_split", "carve_validation", "carve_latest", "follows_in_time",
           "save_split", "load_split", "Split",
           "MovieLensData", "GENRES", "OCCUPATIONS"]
