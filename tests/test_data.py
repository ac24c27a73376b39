"""Tests of tfrs_movies.data: sources, schema, validation errors, splits, synthetic data.

Unit tests use tiny seeded tables written to tmp_path; real-data tests read the MovieLens files
in ``../shared/data`` beside the repo (skipped when absent). The TFDS build test takes ~10 s;
set ``TFRS_MOVIES_SKIP_TFDS=1`` to skip it.
"""
from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tfrs_movies  # noqa: F401  sets TF_USE_LEGACY_KERAS before anything imports TensorFlow
from tfrs_movies.config import DataConfig
from tfrs_movies.data import (GENRES, OCCUPATIONS, MovieLensData, Split, carve_latest,
                               carve_validation, follows_in_time, load,
                              load_split, make_split, save_split)
from tfrs_movies.data.movielens import read_movielens_dir
from tfrs_movies.data.schema import MOVIE_COLUMNS, RATING_COLUMNS, USER_COLUMNS, conform
from tfrs_movies.data.synthetic import synthetic
from tfrs_movies.data.tabular import read_ratings_file
from tfrs_movies.errors import DataError, UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML100K = SHARED / "ml-100k"
LATEST_ZIP = SHARED / "ml-latest-small.zip"
needs_100k = pytest.mark.skipif(not (ML100K / "u.data").is_file(),
                                reason=f"MovieLens 100k not found at {ML100K}")
PAIR = ["user_id", "movie_id"]


def _pairs(frame: pd.DataFrame) -> set:
    return set(zip(frame["user_id"], frame["movie_id"]))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _assert_schema(data: MovieLensData) -> None:
    assert data.ratings.dtypes.to_dict() == {k: np.dtype(v) for k, v in RATING_COLUMNS.items()}
    assert list(data.movies.columns) == list(MOVIE_COLUMNS)
    assert all(data.movies[c].dtype == object for c in MOVIE_COLUMNS)
    for col in data.users.columns:
        assert data.users[col].dtype == np.dtype(USER_COLUMNS[col]), col
    assert isinstance(data.ratings["user_id"].iloc[0], str)
    assert isinstance(data.movies["movie_genres"].iloc[0], list)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    """A TFRS_MOVIES_DATA_DIR in the caller's environment must not redirect these tests."""
    monkeypatch.delenv("TFRS_MOVIES_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def ml100k() -> MovieLensData:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100k not found at {ML100K}")
    return load(DataConfig(dataset="movielens/100k", data_dir=str(ML100K)))


@pytest.fixture(scope="module")
def small() -> MovieLensData:
    return load(DataConfig(dataset="synthetic", synthetic_users=150, synthetic_movies=60,
                           synthetic_ratings=2500, seed=3))


# ---------------------------------------------------------------- MovieLens 100k (real data)

@needs_100k
def test_100k_counts_schema_and_known_values(ml100k):
    _assert_schema(ml100k)
    assert (len(ml100k.ratings), len(ml100k.users), len(ml100k.movies)) == (100_000, 943, 1682)
    assert ml100k.user_feature_columns == [c for c in USER_COLUMNS if c != "user_id"]
    r = ml100k.ratings.set_index(PAIR)
    assert r.loc[("196", "242"), "user_rating"] == 3.0
    assert r.loc[("196", "242"), "timestamp"] == 881250949
    toy = ml100k.movies.set_index("movie_id").loc["1"]
    assert toy["movie_title"] == "Toy Story (1995)"
    assert toy["movie_genres"] == [GENRES.index(g) for g in ("Animation", "Children", "Comedy")]
    user1 = ml100k.users.set_index("user_id").loc["1"]  # 1|24|M|technician|85711
    assert user1["bucketized_user_age"] == 18.0 and bool(user1["user_gender"])
    assert user1["user_occupation_label"] == OCCUPATIONS.index("technician/engineer")
    assert user1["user_zip_code"] == "85711"
    user2 = ml100k.users.set_index("user_id").loc["2"]  # 2|53|F|other|94043
    assert user2["bucketized_user_age"] == 50.0 and not bool(user2["user_gender"])
    assert user2["user_occupation_label"] == OCCUPATIONS.index("other/not specified")


@needs_100k
def test_100k_matches_tfds_parser(ml100k):
    """Our vectorised parse equals TFDS's own per-line parser (movies all, ratings a prefix)."""
    from tensorflow_datasets.structured import movielens_parsing as tp

    movies = ml100k.movies.set_index("movie_id")
    for _, ex in tp.parse_100k_movies_data(str(ML100K)):
        row = movies.loc[ex["movie_id"]]
        assert row["movie_title"] == ex["movie_title"]
        assert row["movie_genres"] == [GENRES.index(g) for g in ex["movie_genres"]]
    users = ml100k.users.set_index("user_id")
    ratings = ml100k.ratings
    for i, ex in tp.parse_100k_ratings_data(str(ML100K)):
        if i == 2000:
            break
        assert ratings["user_id"][i] == ex["user_id"] and ratings["movie_id"][i] == ex["movie_id"]
        assert ratings["user_rating"][i] == float(ex["user_rating"])
        user = users.loc[ex["user_id"]]
        assert user["bucketized_user_age"] == ex["bucketized_user_age"]
        assert user["user_gender"] == ex["user_gender"]
        assert OCCUPATIONS[user["user_occupation_label"]] == ex["user_occupation_label"]
        assert user["user_zip_code"] == ex["user_zip_code"]


@needs_100k
@pytest.mark.parametrize("how", ["folder", "parent", "env"])
def test_100k_data_dir_forms(how, monkeypatch):
    if how == "env":
        monkeypatch.setenv("TFRS_MOVIES_DATA_DIR", str(SHARED))
        cfg = DataConfig(dataset="movielens/100k")
    else:
        cfg = DataConfig(dataset="movielens/100k",
                         data_dir=str(ML100K if how == "folder" else SHARED))
    assert len(load(cfg).ratings) == 100_000


@needs_100k
def test_100k_folder_for_another_version_is_an_error():
    with pytest.raises(DataError, match=r"movielens/1m.*found .*100k format"):
        load(DataConfig(dataset="movielens/1m", data_dir=str(ML100K)))


@needs_100k
@pytest.mark.parametrize("dataset", ["csv", "movielens/100k"])
def test_u1_test_file_reproduces_u1_base(dataset):
    """``--test-ratings u1.test`` with u1.base (csv) or all of u.data (pairs left out)."""
    cfg = DataConfig(dataset=dataset, data_dir=str(ML100K) if dataset != "csv" else None,
                     ratings=str(ML100K / "u1.base") if dataset == "csv" else None,
                     test_ratings=str(ML100K / "u1.test"))
    split = make_split(load(cfg), cfg)
    base, test = read_ratings_file(ML100K / "u1.base"), read_ratings_file(ML100K / "u1.test")
    assert (len(split.train), len(split.test), len(split.fold_in)) == (80_000, 20_000, 0)
    assert _pairs(split.train) == _pairs(base) and _pairs(split.test) == _pairs(test)
    pd.testing.assert_frame_equal(split.test, test)


@needs_100k
def test_own_tables_read_back_as_side_files(ml100k, tmp_path):
    """Our movies/users tables saved as Parquet are valid --movies/--users files."""
    ml100k.movies.to_parquet(tmp_path / "movies.parquet")
    ml100k.users.to_parquet(tmp_path / "users.parquet")
    data = load(DataConfig(dataset="csv", ratings=str(ML100K / "u.data"),
                           movies=str(tmp_path / "movies.parquet"),
                           users=str(tmp_path / "users.parquet")))
    for table in ("ratings", "movies", "users"):
        pd.testing.assert_frame_equal(getattr(data, table), getattr(ml100k, table))


@needs_100k
def test_min_movie_ratings_on_100k(ml100k):
    data = load(DataConfig(dataset="movielens/100k", data_dir=str(ML100K), min_movie_ratings=20))
    counts = ml100k.ratings["movie_id"].value_counts()
    assert set(data.movies["movie_id"]) == set(counts.index[counts >= 20])
    assert len(data.ratings) == counts[counts >= 20].sum()
    assert set(data.users["user_id"]) == set(data.ratings["user_id"])


# ---------------------------------------------------------------- other raw formats

def test_dat_format_1m_mappings(tmp_path):
    """1m-style ``::`` files: Children's -> Children, occupation codes, both students merged."""
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    _write(folder / "ratings.dat", "1::10::5::978300760\n2::20::3::978302109\n3::10::4::97830\n")
    (folder / "movies.dat").write_bytes(
        "10::Caf\xe9 (1995)::Animation|Children's|Comedy\n20::Heat (1995)::Action|Crime\n"
        "30::Unrated (1999)::Drama\n".encode("latin-1"))
    _write(folder / "users.dat", "1::F::1::10::48067\n2::M::56::4::70072\n3::M::25::0::55117\n")
    data = load(DataConfig(dataset="movielens/1m", data_dir=str(tmp_path)))
    _assert_schema(data)
    movies = data.movies.set_index("movie_id")
    assert movies.loc["10", "movie_title"] == "Caf\xe9 (1995)"
    assert movies.loc["10", "movie_genres"] == [2, 3, 4]
    assert len(movies) == 3  # the unrated movie stays in the catalogue
    users = data.users.set_index("user_id")
    assert list(users["user_occupation_label"]) == [OCCUPATIONS.index("student")] * 2 + [
        OCCUPATIONS.index("other/not specified")]
    assert list(users["bucketized_user_age"]) == [1.0, 56.0, 25.0]
    assert list(users["user_gender"]) == [False, True, True]


def test_latest_small_raw_folder(tmp_path):
    if not LATEST_ZIP.is_file():
        pytest.skip(f"{LATEST_ZIP} not found")
    with zipfile.ZipFile(LATEST_ZIP) as z:
        z.extractall(tmp_path)
    data = load(DataConfig(dataset="movielens/latest-small", data_dir=str(tmp_path)))
    _assert_schema(data)
    assert (len(data.ratings), data.ratings["user_id"].nunique(), len(data.movies)) == (
        100_836, 610, 9742)
    assert list(data.users.columns) == ["user_id"]
    toy = data.movies.set_index("movie_id").loc["1"]
    assert toy["movie_genres"] == [GENRES.index(g) for g in
                                   ("Adventure", "Animation", "Children", "Comedy", "Fantasy")]


# ---------------------------------------------------------------- csv / parquet sources

def test_csv_ids_stay_strings_and_defaults(tmp_path):
    ratings = _write(tmp_path / "r.csv", "user_id,movie_id,rating\n007,0042,4\n7,42,3.5\n")
    movies = _write(tmp_path / "m.csv", "movie_id,title,genres\n0042,A (1999),Sci-Fi|children's\n")
    users = _write(tmp_path / "u.csv", "user_id,age,gender,occupation,zip_code\n"
                                       "007,17,m,Programmer,00501\n7,60,F,salesman,10001\n")
    data = load(DataConfig(dataset="csv", ratings=str(ratings), movies=str(movies),
                           users=str(users)))
    _assert_schema(data)
    assert list(data.ratings["user_id"]) == ["007", "7"]
    assert list(data.ratings["timestamp"]) == [0, 0]
    movies = data.movies.set_index("movie_id")
    assert movies.loc["0042", "movie_genres"] == [GENRES.index("Sci-Fi"), GENRES.index("Children")]
    assert movies.loc["42", "movie_title"] == "42" and movies.loc["42", "movie_genres"] == []
    users = data.users.set_index("user_id")
    assert list(users["bucketized_user_age"]) == [1.0, 56.0]
    assert list(users["user_occupation_label"]) == [OCCUPATIONS.index("programmer"),
                                                    OCCUPATIONS.index("sales/marketing")]
    assert users.loc["007", "user_zip_code"] == "00501"


def test_parquet_ratings(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"userId": [1, 2], "movieId": [5, 5], "rating": [4.0, 2.0],
                  "timestamp": [10, 20]}).to_parquet(path)
    table = read_ratings_file(path)
    assert list(table["user_id"]) == ["1", "2"] and table["user_id"].dtype == object
    assert table["timestamp"].dtype == np.int64 and list(table["timestamp"]) == [10, 20]


_HEADER = "user_id,movie_id,rating,timestamp\n"


@pytest.mark.parametrize("body, pattern", [
    ("1,1,5,0\n1,2,abc,0\n", r"r\.csv: line 3: rating 'abc' is not a number"),
    ("1,1,5,0\n1,2,,0\n", r"r\.csv: line 3: rating is empty"),
    ("1,1,5,0\n\n1,2,-1,0\n", r"r\.csv: line 4: rating '-1' is negative"),
    ("1,1,inf,0\n", r"r\.csv: line 2: rating 'inf' is not a finite number"),
    ("1,1,5,1.5\n", r"r\.csv: line 2: timestamp '1.5' is not a whole number"),
    ("1,1,5,0\n2,1,4,0\n1,1,3,0\n",
     r"r\.csv: line 4: duplicate rating of movie_id '1' by user_id '1' \(first at line 2\)"),
    (",1,5,0\n", r"r\.csv: line 2: empty user_id"),
    ("1,1,5,0,9\n", r"r\.csv: malformed file .*line 2"),
    ("", r"r\.csv: no ratings"),
    ("1,1,5,0\n1,2,4,0\n2,1,50,0\n", r"r\.csv: line 4: rating '50' is far outside the scale"),
    ("1,1,0.5,0\n1,2,45,0\n", r"r\.csv: line 3: rating '45' is far outside .*--rating-scale"),
])
def test_bad_ratings_file(tmp_path, body, pattern):
    path = _write(tmp_path / "r.csv", _HEADER + body)
    with pytest.raises(DataError, match=pattern) as err:
        load(DataConfig(dataset="csv", ratings=str(path)))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind, text, pattern", [
    ("ratings", None, r"nope\.csv: no such file"),
    ("ratings", "user,movie,rating\n1,1,5\n", r"missing column\(s\) user_id, movie_id"),
    ("movies", "movie_id,genres\n1,Comedy|Drama\n2,Comedy|Dramaa\n",
     r"m\.csv: line 3: unknown genre 'Dramaa'"),
    ("movies", "movie_id\n1\n1\n", r"m\.csv: line 3: duplicate movie_id '1' \(first at line 2\)"),
    ("users", "user_id,occupation\n1,astronaut\n", r"u\.csv: line 2: occupation 'astronaut' is "
                                                   r"unknown"),
    ("users", "user_id,gender\n1,M\n2,X\n", r"u\.csv: line 3: gender 'X' is unknown"),
    ("users", "user_id,age\n1,old\n", r"u\.csv: line 2: age 'old' is not a number"),
    ("users", "user_id,age\n1,30\n2,999\n", r"u\.csv: line 3: age '999' is not a plausible age"),
    ("users", "user_id,age\n1,1e9\n", r"u\.csv: line 2: age '1e9' is not a plausible age"),
    ("users", "user_id,gender\n2,M\n", r"u\.csv: no row for user_id '1'"),
])
def test_bad_side_files(tmp_path, kind, text, pattern):
    ratings = _write(tmp_path / "r.csv", "user_id,movie_id,rating\n1,1,5\n")
    files = {"ratings": str(ratings)}
    name = {"ratings": "nope.csv", "movies": "m.csv", "users": "u.csv"}[kind]
    files[kind] = str(tmp_path / name if text is None else _write(tmp_path / name, text))
    with pytest.raises(DataError, match=pattern) as err:
        load(DataConfig(dataset="csv", **files))
    assert "\n" not in str(err.value)


def test_rating_scale_inferred_or_given(tmp_path):
    # Real scales pass the inferred check, however few rows: 1-5, half stars, 0/1, 1-10.
    for body in ("1,1,1\n1,2,3\n", "1,1,0.5\n1,2,5\n", "1,1,0\n1,2,1\n", "1,1,2\n1,2,10\n"):
        path = _write(tmp_path / "r.csv", "user_id,movie_id,rating\n" + body)
        assert len(load(DataConfig(dataset="csv", ratings=str(path))).ratings) == 2
    # A 6 in a 1-5 file is not "far" outside; an explicit scale catches it, in every source.
    path = _write(tmp_path / "r.csv", "user_id,movie_id,rating\n1,1,5\n1,2,4\n\n2,1,6\n")
    with pytest.raises(DataError, match=r"r\.csv: line 5: rating '6' is outside the rating "
                                        r"scale 1,5 \(--rating-scale\)"):
        load(DataConfig(dataset="csv", ratings=str(path), rating_scale=(1, 5)))
    with pytest.raises(DataError, match=r"synthetic.*outside the rating scale 1,4"):
        load(DataConfig(dataset="synthetic", synthetic_users=20, synthetic_movies=10,
                        synthetic_ratings=100, rating_scale=(1, 4)))
    test = _write(tmp_path / "t.csv", "user_id,movie_id,rating\n1,1,9\n")
    with pytest.raises(DataError, match=r"t\.csv: line 2: rating '9' is outside"):
        make_split(load(DataConfig(dataset="csv", ratings=str(path))),
                   DataConfig(dataset="csv", ratings=str(path), test_ratings=str(test),
                              rating_scale=(1, 6)))
    # A value the inferred rule refuses is accepted inside an explicit scale.
    path = _write(tmp_path / "r.csv", "user_id,movie_id,rating\n1,1,5\n1,2,4\n2,1,50\n")
    data = load(DataConfig(dataset="csv", ratings=str(path), rating_scale=(0, 100)))
    assert data.ratings["user_rating"].max() == 50
    with pytest.raises(UserError, match="rating_scale must be two finite numbers LOW < HIGH"):
        DataConfig(rating_scale=(5, 1))


def test_rating_scale_flag():
    import argparse

    from trainer import flags

    parser = argparse.ArgumentParser()
    flags.add_data_flags(parser)
    values = vars(parser.parse_args(["--dataset", "csv", "--ratings", "r.csv",
                                     "--rating-scale", "0.5,5"]))
    assert flags.data_config(values).rating_scale == (0.5, 5.0)
    assert flags.data_config(vars(parser.parse_args([]))).rating_scale is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--rating-scale", "5"])


def test_parquet_datetime_timestamps_are_unix_seconds(tmp_path):
    path = tmp_path / "r.parquet"
    when = pd.Series([pd.Timestamp("2020-01-01 00:00:01.7"), pd.Timestamp(0)])
    frame = pd.DataFrame({"user_id": ["1", "2"], "movie_id": ["5", "5"], "rating": [4.0, 2.0],
                          "timestamp": when})
    for stamps in (when, when.dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")):
        frame.assign(timestamp=stamps).to_parquet(path)
        assert read_ratings_file(path)["timestamp"].tolist() == [1577836801, 0]
    frame.assign(timestamp=[when[0], pd.NaT]).to_parquet(path)
    with pytest.raises(DataError, match=r"r\.parquet: row 2: timestamp is empty"):
        read_ratings_file(path)


def test_mixed_utf8_and_latin1_lines_decode_per_line(tmp_path, caplog):
    path = tmp_path / "m.csv"
    path.write_bytes("movie_id,title\n1,Amélie (2001)\n".encode()
                     + "2,Café Society (1999)\n".encode("latin-1") + b"3,Heat (1995)\n")
    ratings = _write(tmp_path / "r.csv", "user_id,movie_id,rating\n1,1,5\n1,2,4\n")
    with caplog.at_level("WARNING"):
        data = load(DataConfig(dataset="csv", ratings=str(ratings), movies=str(path)))
    assert data.movies["movie_title"].tolist() == ["Amélie (2001)", "Café Society (1999)",
                                                   "Heat (1995)"]
    assert "m.csv: 1 line(s) are not valid UTF-8 (first: line 3)" in caplog.text


def test_bad_raw_folder_names_file_and_line(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    _write(folder / "u.data", "1\t1\t5\t100\n1\t2\tx\t100\n")
    with pytest.raises(DataError, match=r"u\.data: line 2: rating 'x' is not a number"):
        load(DataConfig(dataset="movielens/100k", data_dir=str(tmp_path)))
    _write(folder / "u.data", "1\t1\t5\t100\n")
    with pytest.raises(DataError, match=r"u\.item: no such file"):
        load(DataConfig(dataset="movielens/100k", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match=r"no such directory"):
        load(DataConfig(dataset="movielens/100k", data_dir=str(tmp_path / "nope")))


def test_everything_filtered_out_and_unknown_dataset(tmp_path):
    path = _write(tmp_path / "r.csv", "user_id,movie_id,rating\n1,1,5\n2,2,4\n")
    with pytest.raises(DataError, match=r"no ratings left after min_movie_ratings=3"):
        load(DataConfig(dataset="csv", ratings=str(path), min_movie_ratings=3))
    with pytest.raises(UserError, match="unknown dataset"):
        DataConfig(dataset="movielens/5m")


# ---------------------------------------------------------------- synthetic

@pytest.mark.parametrize("users, movies, ratings", [
    (150, 60, 2500),        # exact per-user sampling (small grid)
    (12, 10, 120),          # every pair
    (20_000, 1_001, 30_000),  # large grid: genre-then-movie draws with redraws
])
def test_synthetic_exact_unique_deterministic(users, movies, ratings):
    a, b = synthetic(users, movies, ratings, seed=7), synthetic(users, movies, ratings, seed=7)
    _assert_schema(a)
    assert len(a.ratings) == ratings and not a.ratings.duplicated(PAIR).any()
    pd.testing.assert_frame_equal(a.ratings, b.ratings)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert not a.ratings.equals(synthetic(users, movies, ratings, seed=8).ratings)
    assert set(a.ratings["user_rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (np.diff(a.ratings["timestamp"].to_numpy()) >= 0).all()
    assert a.ratings["user_id"].str.match(r"u\d+$").all()
    assert set(a.ratings["movie_id"]) <= set(a.movies["movie_id"])
    assert a.movies["movie_id"].iloc[0] == "m1" and a.users["user_id"].iloc[0] == "u1"
    assert a.movies["movie_title"].str.match(r"Synthetic Movie \d+ \(\d{4}\)$").all()
    assert a.movies["movie_genres"].map(len).between(1, 3).all()
    if ratings >= users:
        assert a.ratings["user_id"].nunique() == users


def test_synthetic_popularity_and_taste():
    data = synthetic(2000, 1000, 40_000, seed=1)
    counts = data.ratings["movie_id"].value_counts().to_numpy()
    assert counts[:100].sum() / counts.sum() > 0.3  # top 10% of movies: 3x a uniform share
    # Users concentrate on their genres: the share of a user's ratings in the user's top
    # genre beats the same statistic after shuffling which user rated what.
    genres = data.movies.set_index("movie_id")["movie_genres"]

    def top_share(frame):
        g = frame.assign(genre=frame["movie_id"].map(genres)).explode("genre")
        per = g.groupby(["user_id", "genre"]).size()
        return (per.groupby(level=0).max() / g.groupby("user_id").size()).mean()

    shuffled = data.ratings.assign(user_id=np.random.default_rng(0).permutation(
        data.ratings["user_id"].to_numpy()))
    assert top_share(data.ratings) > top_share(shuffled) + 0.04  # ml-100k: +0.03


def test_synthetic_fast_and_checked():
    start = time.perf_counter()
    synthetic(1000, 500, 20_000, seed=0)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(DataError, match=r"cannot draw 101 distinct ratings from 10 users x 10"):
        synthetic(10, 10, 101, seed=0)


# ---------------------------------------------------------------- splits

def _cfg(split: str, **kw) -> DataConfig:
    return DataConfig(dataset="synthetic", split=split, **kw)


@pytest.mark.parametrize("split", ["random", "user", "temporal", "leave-last", "strong"])
def test_split_partitions_and_is_seeded(small, split):
    s = make_split(small, _cfg(split, seed=5))
    parts = [s.train, s.test, s.fold_in]
    for part in parts:
        assert part.dtypes.to_dict() == small.ratings.dtypes.to_dict()
        assert part.index.equals(pd.RangeIndex(len(part)))
    assert sum(map(len, parts)) == len(small.ratings)
    assert set().union(*map(_pairs, parts)) == _pairs(small.ratings)
    assert len(s.test) > 0 and len(s.train) > 0
    again = make_split(small, _cfg(split, seed=5))
    for x, y in zip(parts, [again.train, again.test, again.fold_in]):
        pd.testing.assert_frame_equal(x, y)
    if split not in ("leave-last", "temporal"):  # these use the seed only to break ties
        assert not make_split(small, _cfg(split, seed=6)).test.equals(s.test)


def test_random_and_temporal_sizes(small):
    n = len(small.ratings)
    for split in ("random", "temporal"):
        assert len(make_split(small, _cfg(split, test_fraction=0.25)).test) == round(0.25 * n)
    s = make_split(small, _cfg("temporal"))
    assert s.train["timestamp"].max() <= s.test["timestamp"].min()


def _tiny() -> MovieLensData:
    """User a: 1 rating; b: 2; c: 5 (two share a timestamp); d: 10."""
    rows = [("a", "m1", 1)] + [("b", f"m{i}", i) for i in (1, 2)]
    rows += [("c", f"m{i}", t) for i, t in zip(range(1, 6), (5, 3, 3, 9, 1))]
    rows += [("d", f"m{i}", i) for i in range(1, 11)]
    ratings = conform({"user_id": np.array([r[0] for r in rows], dtype=object),
                       "movie_id": np.array([r[1] for r in rows], dtype=object),
                       "user_rating": np.full(len(rows), 4.0),
                       "timestamp": np.array([r[2] for r in rows])}, RATING_COLUMNS)
    return load_data_from(ratings)


def load_data_from(ratings: pd.DataFrame) -> MovieLensData:
    from tfrs_movies.data.loading import validate
    return validate(MovieLensData(ratings=ratings, movies=pd.DataFrame({"movie_id": []}),
                                  users=pd.DataFrame({"user_id": []}), name="tiny"))


def test_user_split_per_user_counts():
    data = _tiny()
    test = make_split(data, _cfg("user", test_fraction=0.3)).test
    assert test["user_id"].value_counts().to_dict() == {"b": 1, "c": 2, "d": 3}  # round(.3n)
    test = make_split(data, _cfg("user", test_fraction=0.9)).test
    assert test["user_id"].value_counts().to_dict() == {"b": 1, "c": 4, "d": 9}


def test_leave_last_takes_latest():
    s = make_split(_tiny(), _cfg("leave-last", leave_last=2))
    assert sorted(_pairs(s.test)) == [("c", "m1"), ("c", "m4"), ("d", "m10"), ("d", "m9")]
    s = make_split(_tiny(), _cfg("leave-last", leave_last=1))
    assert sorted(_pairs(s.test)) == [("b", "m2"), ("c", "m4"), ("d", "m10")]


@pytest.mark.parametrize("fold_in_fraction", [0.0, 0.5])
def test_strong_holds_out_users(small, fold_in_fraction):
    s = make_split(small, _cfg("strong", test_fraction=0.2, fold_in_fraction=fold_in_fraction))
    train_users, test_users = set(s.train["user_id"]), set(s.test["user_id"])
    assert not train_users & test_users
    assert len(test_users) == round(0.2 * small.ratings["user_id"].nunique())
    assert set(s.fold_in["user_id"]) <= test_users
    if fold_in_fraction == 0:
        assert len(s.fold_in) == 0
    else:
        share = len(s.fold_in) / (len(s.fold_in) + len(s.test))
        assert 0.4 < share < 0.6


def test_carve_validation_per_user(small):
    train = make_split(small, _cfg("random")).train
    fit, val = carve_validation(train, 0.1, seed=1)
    assert len(fit) + len(val) == len(train) and not _pairs(fit) & _pairs(val)
    assert set(val["user_id"]) <= set(fit["user_id"])  # every user keeps train ratings
    pd.testing.assert_frame_equal(val, carve_validation(train, 0.1, seed=1)[1])
    assert len(carve_validation(train, 0.0, seed=1)[1]) == 0
    assert len(carve_validation(_tiny().ratings, 0.9, seed=0)[0]) == 4  # 1 left per user


def test_carve_latest_holds_out_each_users_latest_ratings(small):
    train = make_split(small, _cfg("random")).train
    fit, latest = carve_latest(train, 0.25, seed=1)
    assert len(fit) + len(latest) == len(train) and not _pairs(fit) & _pairs(latest)
    assert set(latest["user_id"]) <= set(fit["user_id"])
    # Per user, nothing held out is older than what is kept: the test follows train.
    assert follows_in_time(fit, latest) and not follows_in_time(latest, fit)
    counts = train.groupby("user_id").size()
    held = latest.groupby("user_id").size().reindex(counts.index, fill_value=0)
    assert (held == np.minimum(np.round(0.25 * counts), counts - 1)).all()
    assert not follows_in_time(*carve_validation(train, 0.25, seed=1))  # at random: no
    assert not follows_in_time(fit, latest.iloc[:0])  # no user in both
    from tfrs_movies.reranker_lists import folds_for
    assert folds_for("auto", Split(fit, latest, fit.iloc[:0])) == "latest"
    assert folds_for("auto", make_split(small, _cfg("random"))) == "random"
    assert folds_for("random", Split(fit, latest, fit.iloc[:0])) == "random"
    # Ratings without times (every timestamp 0) say nothing of order.
    timeless = Split(fit.assign(timestamp=0), latest.assign(timestamp=0), fit.iloc[:0])
    assert not follows_in_time(timeless.train, timeless.test)
    assert folds_for("auto", timeless) == "random"


@pytest.mark.parametrize("split", ["random", "strong"])
def test_save_load_split_round_trip(small, split, tmp_path):
    s = make_split(small, _cfg(split))
    folder = save_split(s, tmp_path / "run")
    assert sorted(p.name for p in folder.iterdir()) == ["fold_in.parquet", "test.parquet",
                                                        "train.parquet"]
    back = load_split(tmp_path / "run")
    assert isinstance(back, Split)
    for part in ("train", "test", "fold_in"):
        pd.testing.assert_frame_equal(getattr(back, part), getattr(s, part))
    with pytest.raises(DataError, match="no such file"):
        load_split(tmp_path / "elsewhere")


# ---------------------------------------------------------------- TFDS (offline)

def test_tfds_offline_without_zip_says_what_to_pass(tmp_path, monkeypatch):
    from tfrs_movies.data import tfds_source
    monkeypatch.setattr(tfds_source, "_online", lambda *a, **k: False)
    with pytest.raises(DataError, match=r"--tfds-manual-dir DIR .*--data-dir DIR") as err:
        load(DataConfig(dataset="movielens/latest-small", tfds_manual_dir=str(tmp_path),
                        tfds_data_dir=str(tmp_path / "tfds")))
    assert "ml-latest-small.zip" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not in TFDS"):
        load(DataConfig(dataset="movielens/10m"))


@pytest.mark.skipif(os.environ.get("TFRS_MOVIES_SKIP_TFDS") == "1",
                    reason="TFRS_MOVIES_SKIP_TFDS=1 (the TFDS build takes ~10 s)")
def test_tfds_latest_small_offline_equals_raw_folder(tmp_path):
    if not LATEST_ZIP.is_file():
        pytest.skip(f"{LATEST_ZIP} not found")
    cfg = DataConfig(dataset="movielens/latest-small", tfds_manual_dir=str(SHARED),
                     tfds_data_dir=str(tmp_path / "tfds"))
    start = time.perf_counter()
    via_tfds = load(cfg)
    print(f"TFDS latest-small build + load: {time.perf_counter() - start:.1f}s")
    _assert_schema(via_tfds)
    with zipfile.ZipFile(LATEST_ZIP) as z:
        z.extractall(tmp_path / "raw")
    raw = read_movielens_dir(tmp_path / "raw", "latest-small")
    for table, key in (("ratings", PAIR), ("movies", ["movie_id"]), ("users", ["user_id"])):
        a = getattr(via_tfds, table).sort_values(key).reset_index(drop=True)
        b = getattr(raw, table).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
