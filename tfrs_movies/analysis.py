"""Embedding analysis of a trained run: the ``analyze`` job's plots, report and projector files.

``analyze(run, output_dir)`` writes::

    OUT/report.md              tables and findings, linking the plots below
    OUT/neighbours.png         popularity of each seed movie's neighbours, dot product vs cosine
    OUT/norm_popularity.png    movie embedding norm against train ratings (log), correlations
    OUT/tsne.png               2-D t-SNE of the movie embeddings, coloured by genre
    OUT/loss_curves.png        train and validation loss per epoch (the mean over the epoch's
                               batches), one panel per model, from the TensorBoard logs
    OUT/projector/             vectors.tsv, metadata.tsv, projector_config.pbtxt: load in the
                               TensorBoard Projector (``tensorboard --logdir OUT/projector``)

Only movies with train ratings are analysed: every other movie shares the OOV embedding of
an id table. Dot product and cosine disagree exactly where the norm matters, and the norm
usually tracks popularity, which is what the neighbour, norm and recommendation sections show.
Needs the ``analysis`` extra (matplotlib, scikit-learn).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_movies.data.schema import GENRES
from tfrs_movies.errors import UserError
from tfrs_movies.inference import embed
from tfrs_movies.recommend import resolve_run_movies

# t-SNE is quadratic-ish in memory and slow beyond a few thousand points: the most rated ones.
TSNE_MAX_MOVIES = 1000
_COLOURED_GENRES = 12
_SEEDS = 3


def _plotting():
    try:
        from matplotlib.figure import Figure
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise UserError(f"analyze needs matplotlib and scikit-learn ({e.name} is missing): "
                        "pip install 'tfrs-movies[analysis]'") from None
    return Figure, TSNE


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _md_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency); floats with 3 decimals."""
    def cell(v):
        text = f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")
    rows = [list(frame.columns), ["---"] * len(frame.columns)]
    rows += [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows) + "\n"


class _Movies:
    """The analysed movies (train vocabulary) with titles, genres, popularity, embeddings."""

    def __init__(self, run, model):
        vocab = run.vocab
        self.ids = np.asarray(vocab.movie_ids, dtype=str)
        self.popularity = np.asarray(vocab.movie_counts, np.int64)
        catalogue = dict(zip(vocab.catalogue_movies,
                             zip(vocab.catalogue_titles, vocab.catalogue_genres)))
        self.titles = [catalogue.get(m, ("", []))[0] for m in self.ids]
        genre_lists = [catalogue.get(m, ("", []))[1] for m in self.ids]
        self.genres = ["|".join(GENRES[g] for g in gs) for gs in genre_lists]
        # Colour by a movie's least common genre: "Drama|Romance" is a romance for the map, as
        # nearly everything is a drama.
        frequency = pd.Series([g for gs in genre_lists for g in gs], dtype="int64").value_counts()
        self.label = np.asarray([GENRES[min(gs, key=lambda g: (frequency[g], g))] if gs else "none"
                                 for gs in genre_lists])
        self.position = {m: i for i, m in enumerate(self.ids)}
        self.emb = embed(model.movie_embedding, self.ids) if len(self.ids) else np.zeros((0, 1))
        self.unit = _normalize(self.emb)
        self.norm = np.linalg.norm(self.emb, axis=1)

    def table(self, index: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"rank": np.arange(1, len(index) + 1), "movie_id": self.ids[index],
                             "title": [self.titles[i] for i in index],
                             "score": scores.astype(np.float64),
                             "ratings": self.popularity[index]})


def _top(scores: np.ndarray, k: int, excluded=()) -> np.ndarray:
    scores = scores.astype(np.float64).copy()
    scores[list(excluded)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return top[np.isfinite(scores[top])]


def _seeds(run, movies: _Movies, queries) -> list[str]:
    if not queries:
        return list(movies.ids[np.argsort(-movies.popularity, kind="stable")[:_SEEDS]])
    seeds = resolve_run_movies(run, list(queries))
    for query, seed in zip(queries, seeds):
        if seed not in movies.position:
            raise UserError(f"--movie {query!r} ({seed}) has no train ratings in this run, so no "
                            "embedding of its own: pick a rated movie")
    return seeds


def _sample_user(run, user: str | None) -> str:
    if user is not None:
        user = str(user)
        if user not in set(run.vocab.user_ids) and user not in set(run.vocab.catalogue_users):
            raise UserError(f"--user {user!r} is not in this run's data (train users or the "
                            "users table)")
        return user
    # A typical user: the median train activity among users with test ratings.
    test_users = pd.unique(run.split.test["user_id"])
    counts = run.split.train["user_id"].value_counts().reindex(test_users).fillna(0)
    if not len(counts):
        counts = run.split.train["user_id"].value_counts()
    counts = counts.sort_values(kind="stable")
    return str(counts.index[len(counts) // 2])


# TensorBoard tags of the epoch loss, best first: the mean over the epoch's batches
# (``training.EpochMeans``), else (runs trained before it) the last batch's loss.
LOSS_TAGS = ("epoch_mean_loss", "epoch_loss")


def read_loss_curves(run_dir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{kind: {"train"|"validation": [(epoch, loss), ...]}}`` from ``RUN/logs/KIND/``'s
    TensorBoard event files: the first of ``LOSS_TAGS`` a part has (a resumed run's later
    writes win). Each curve's tag is in ``curves[kind]["tags"][part]``."""
    curves: dict = {}
    logs = Path(run_dir) / "logs"
    for kind_dir in sorted(p for p in logs.glob("*") if p.is_dir()):
        for part in ("train", "validation"):
            points: dict[str, dict[int, tuple[float, float]]] = {tag: {} for tag in LOSS_TAGS}
            for path in sorted((kind_dir / part).glob("events.out.tfevents.*")):
                for record in tf.data.TFRecordDataset(str(path)):
                    event = tf.compat.v1.Event.FromString(record.numpy())
                    for value in event.summary.value:
                        if value.tag not in points:
                            continue
                        loss = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                                else float(value.simple_value))
                        seen = points[value.tag]
                        if event.step not in seen or seen[event.step][0] <= event.wall_time:
                            seen[event.step] = (event.wall_time, loss)
            tag = next((t for t in LOSS_TAGS if points[t]), None)
            if tag:
                kind = curves.setdefault(kind_dir.name, {"tags": {}})
                kind[part] = [(step, loss) for step, (_, loss) in sorted(points[tag].items())]
                kind["tags"][part] = tag
    return curves


def _plot_neighbours(Figure, path: Path, movies: _Movies, neighbours: dict):
    """Bars of the neighbours' median popularity per seed; returns the saved figure."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    names = [movies.titles[movies.position[s]][:28] for s in neighbours]
    x = np.arange(len(names))
    medians = {measure: [float(np.median(t[measure]["ratings"])) if len(t[measure]) else 0.0
                         for t in neighbours.values()] for measure in ("dot", "cosine")}
    for offset, (measure, heights) in zip((-0.2, 0.2), medians.items()):
        bars = ax.bar(x + offset, heights, width=0.4, label=measure)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, names, rotation=15, ha="right", fontsize=8)
    # Log axis from 1 (every analysed movie has >= 1 train rating), so bar heights compare:
    # an axis fitted to the bars starts near the smallest one, which then looks like zero.
    ax.set_yscale("log")
    ax.set_ylim(1, 3 * max([1.0, *medians["dot"], *medians["cosine"]]))
    ax.set_ylabel("median train ratings of the neighbours")
    ax.set_title("Nearest neighbours: dot product vs cosine")
    ax.legend(loc="upper center", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def _plot_norms(Figure, path: Path, movies: _Movies, pearson: float, spearman: float) -> None:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ax.scatter(movies.popularity, movies.norm, s=6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("train ratings (log)")
    ax.set_ylabel("embedding norm")
    ax.set_title(f"Norm vs popularity: Pearson (log) {pearson:.2f}, Spearman {spearman:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_tsne(Figure, TSNE, path: Path, movies: _Movies, seed: int) -> int:
    order = np.argsort(-movies.popularity, kind="stable")[:TSNE_MAX_MOVIES]
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    if len(order) >= 4:
        perplexity = float(min(30.0, (len(order) - 1) / 3))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                      learning_rate="auto").fit_transform(movies.emb[order].astype(np.float64))
        labels = movies.label[order]
        shown = list(pd.Series(labels).value_counts().index[:_COLOURED_GENRES])
        other = ~np.isin(labels, shown)
        ax.scatter(points[other, 0], points[other, 1], s=5, c="lightgrey", label="other")
        colours = [f"C{i}" if i < 10 else ("black", "olive")[i - 10] for i in range(len(shown))]
        for genre, colour in zip(shown, colours):
            mask = labels == genre
            ax.scatter(points[mask, 0], points[mask, 1], s=6, color=colour, label=genre)
        ax.legend(fontsize=7, markerscale=2, loc="best")
    else:
        ax.text(0.5, 0.5, "too few movies for t-SNE", ha="center")
    ax.set_title(f"t-SNE of {len(order)} movie embeddings, by (least common) genre")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return len(order)


def _plot_losses(Figure, path: Path, curves: dict):
    """One panel per model (their losses differ in kind and scale), train and validation;
    returns the saved figure."""
    fig = Figure(figsize=(5 * max(1, len(curves)), 4))
    axes = fig.subplots(1, max(1, len(curves)), squeeze=False)[0]
    for ax, (kind, parts) in zip(axes, curves.items()):
        for part, style in (("train", "-"), ("validation", "--")):
            if part in parts:
                steps, losses = zip(*parts[part])
                mean = parts["tags"][part] == "epoch_mean_loss"
                ax.plot(np.asarray(steps) + 1, losses, style, marker="o",
                        label=part + ("" if mean else " (last batch)"))
        ax.legend()
        ax.set_title(kind)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("loss")
    if not curves:
        axes[0].text(0.5, 0.5, "no TensorBoard logs in this run", ha="center",
                     transform=axes[0].transAxes)
    fig.suptitle("Loss per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def _write_projector(folder: Path, movies: _Movies) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    vectors, metadata, config = (folder / "vectors.tsv", folder / "metadata.tsv",
                                 folder / "projector_config.pbtxt")
    np.savetxt(vectors, movies.emb, delimiter="\t", fmt="%.6g")

    def clean(text: str) -> str:
        return text.replace("\t", " ").replace("\n", " ")

    lines = ["title\tgenres\tpopularity"] + [
        f"{clean(t)}\t{clean(g)}\t{p}" for t, g, p in zip(movies.titles, movies.genres,
                                                             movies.popularity)]
    metadata.write_text("\n".join(lines) + "\n")
    # Paths are relative to the config's folder, as the Projector plugin resolves them.
    config.write_text('embeddings {\n  tensor_name: "movie_embeddings"\n'
                      '  tensor_path: "vectors.tsv"\n  metadata_path: "metadata.tsv"\n}\n')
    return [vectors, metadata, config]


def _user_recommendations(run, model, movies: _Movies, user: str, k: int):
    """(history table, {"dot": table, "cosine": table}) for ``user``'s unseen train movies."""
    seen_rows = pd.concat([run.split.train, run.split.fold_in])
    mine = seen_rows[seen_rows["user_id"] == user]
    seen = [movies.position[m] for m in mine["movie_id"] if m in movies.position]
    query = embed(model.user_embedding, np.asarray([user]))[0]
    tables = {"dot": movies.table(*_scored(movies.emb @ query, k, seen)),
              "cosine": movies.table(*_scored(movies.unit @ _normalize(query), k, seen))}
    if model.rates:
        for table in tables.values():
            ids = table["movie_id"].to_numpy(str)
            table["predicted"] = (model.predict_rating(tf.constant([user] * len(ids)),
                                                       tf.constant(ids)).numpy().astype(np.float64)
                                  if len(ids) else np.zeros(0))
    titles = dict(zip(run.vocab.catalogue_movies, run.vocab.catalogue_titles))
    history = mine.sort_values(["user_rating", "timestamp"], ascending=[False, False])[:k]
    history = pd.DataFrame({"movie_id": history["movie_id"],
                            "title": [titles.get(m, "") for m in history["movie_id"]],
                            "rating": history["user_rating"].astype(np.float64)})
    return history, tables, len(mine)


def _scored(scores: np.ndarray, k: int, excluded) -> tuple[np.ndarray, np.ndarray]:
    top = _top(scores, k, excluded)
    return top, scores[top]


def _progress_lines(report: Callable[[str], None] | None) -> Callable[[str], None]:
    """``step(text)`` reports ``[analyze 12.3s] text`` (seconds since the start)."""
    start = time.perf_counter()

    def step(text: str) -> None:
        if report is not None:
            report(f"[analyze {time.perf_counter() - start:5.1f}s] {text}")
    return step


def analyze(run, output_dir: str | Path, movies: list[str] | None = None,
            user: str | None = None, kind: str | None = None, k: int = 10,
            progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Writes the plots, ``report.md`` and ``projector/`` for ``run`` (a ``runs.Run``).

    ``movies``: ids or titles whose neighbours to list (default: the most rated three);
    ``user``: whose recommendations to list (default: a median-activity test user);
    ``kind``: which of the run's models (default: the one ``similar`` uses); ``progress``
    gets a line as each step starts (the CLI prints them). Returns name -> path of every
    file written.
    """
    step = _progress_lines(progress)
    step("loading matplotlib and scikit-learn")
    Figure, TSNE = _plotting()
    if k < 1:
        raise UserError(f"-k must be >= 1, got {k}")
    if kind is None:
        model = run.embedding_model()
        kind = next(name for name, m in run.models.items() if m is model)
    elif kind not in run.models:
        raise UserError(f"--kind {kind!r}: this run has {', '.join(run.models) or 'no models'}")
    model = run.models[kind]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    step(f"embedding the {len(run.vocab.movie_ids):,} rated movies with the {kind} model")
    data = _Movies(run, model)
    if len(data.ids) < 2:
        raise UserError(f"{run.path}: fewer than 2 movies with train ratings, nothing to analyse")
    paths = {}

    neighbours = {}
    seeds = _seeds(run, data, movies)
    step(f"neighbours of {len(seeds)} movies -> neighbours.png")
    for seed in seeds:
        i = data.position[seed]
        neighbours[seed] = {"dot": data.table(*_scored(data.emb @ data.emb[i], k, [i])),
                            "cosine": data.table(*_scored(data.unit @ data.unit[i], k, [i]))}
    paths["neighbours"] = out / "neighbours.png"
    _plot_neighbours(Figure, paths["neighbours"], data, neighbours)

    log_pop = np.log1p(data.popularity)
    pearson = float(np.corrcoef(log_pop, data.norm)[0, 1]) if data.norm.std() > 0 else 0.0
    spearman = float(pd.Series(data.popularity).corr(pd.Series(data.norm), method="spearman"))
    paths["norm_popularity"] = out / "norm_popularity.png"
    step("norm against popularity -> norm_popularity.png")
    _plot_norms(Figure, paths["norm_popularity"], data, pearson, spearman)

    paths["tsne"] = out / "tsne.png"
    step(f"t-SNE of {min(len(data.ids), TSNE_MAX_MOVIES):,} movies -> tsne.png (the slow step)")
    tsne_count = _plot_tsne(Figure, TSNE, paths["tsne"], data, run.train.seed)

    step("loss curves from the TensorBoard logs -> loss_curves.png")
    curves = read_loss_curves(run.path)
    paths["loss_curves"] = out / "loss_curves.png"
    _plot_losses(Figure, paths["loss_curves"], curves)

    user = _sample_user(run, user)
    step(f"recommendations for user {user}; projector/ and report.md")
    history, recommendations, seen_count = _user_recommendations(run, model, data, user, k)

    for path in _write_projector(out / "projector", data):
        paths[f"projector/{path.name}"] = path

    paths["report"] = out / "report.md"
    _write_report(paths["report"], run, kind, model, data, neighbours, (pearson, spearman),
                  tsne_count, curves, user, history, recommendations, seen_count)
    return paths


def _write_report(path: Path, run, kind, model, data: _Movies, neighbours, correlations,
                  tsne_count, curves, user, history, recommendations, seen_count) -> None:
    pearson, spearman = correlations
    width = data.emb.shape[1]
    parts = [
        f"# Embedding analysis: {run.path} ({kind})\n",
        f"Model `{kind}` ({type(model).__name__}), {len(data.ids):,} movies with train ratings, "
        f"embeddings of width {width}. "
        + ("Its towers score by dot product (it retrieves)."
           if model.retrieves else
           "Its towers do not score by dot product (it does not retrieve): the dot-product "
           "tables below show the geometry, not the model's own ranking.") + "\n\n",
    ]
    metrics_path = run.path / "metrics.json"
    if metrics_path.exists():
        section = json.loads(metrics_path.read_text()).get(kind, {})
        if section:
            parts.append(_md_table(pd.DataFrame({"metric": list(section),
                                                 "value": [float(v) for v in section.values()]})))
    parts.append("\n## Nearest neighbours: dot product vs cosine\n\n"
                 "Dot product favours long (often popular) vectors; cosine compares directions "
                 "only. `ratings` is the neighbour's train rating count.\n\n"
                 "![neighbours](neighbours.png)\n")
    for seed, tables in neighbours.items():
        parts.append(f"\n### {data.titles[data.position[seed]]} (`{seed}`)\n")
        for measure, table in tables.items():
            parts.append(f"\n{measure}:\n\n" + _md_table(table.drop(columns="movie_id")))
    top_norm = np.argsort(-data.norm, kind="stable")[:5]
    parts.append(
        "\n## Embedding norm vs popularity\n\n"
        f"Correlation of the norm with log(1 + train ratings): Pearson {pearson:.3f}; with the "
        f"rating count: Spearman {spearman:.3f}.\n\n![norm vs popularity](norm_popularity.png)\n\n"
        "Largest norms:\n\n" + _md_table(pd.DataFrame({
            "title": [data.titles[i] for i in top_norm], "norm": data.norm[top_norm],
            "ratings": data.popularity[top_norm]})))
    parts.append(f"\n## t-SNE\n\nThe {tsne_count:,} most rated movies, coloured by their least "
                 "common genre.\n\n![t-SNE](tsne.png)\n")
    parts.append("\n## Loss curves\n\n![loss curves](loss_curves.png)\n\n"
                 "Each point is the mean of the epoch's batch losses, one panel per model "
                 "(runs trained before that was logged show the loss of the epoch's last "
                 "batch, marked so).\n\n")
    if curves:
        rows = [(kind_, part, len(parts_[part]), parts_[part][-1][1],
                 "mean" if parts_["tags"][part] == "epoch_mean_loss" else "last batch")
                for kind_, parts_ in curves.items() for part in ("train", "validation")
                if part in parts_]
        parts.append(_md_table(pd.DataFrame(rows, columns=["model", "split", "epochs",
                                                           "final loss", "loss of"])))
    else:
        parts.append("No TensorBoard logs in this run.\n")
    parts.append(f"\n## Recommendations for user `{user}`\n\n{seen_count} movies seen in train "
                 "(and fold-in), excluded below. Their highest rated:\n\n"
                 + _md_table(history.drop(columns="movie_id")))
    for measure, table in recommendations.items():
        parts.append(f"\nBy {measure}:\n\n" + _md_table(table.drop(columns="movie_id")))
    parts.append("\n## Projector\n\n`projector/` holds `vectors.tsv`, `metadata.tsv` (title, "
                 "genres, popularity) and `projector_config.pbtxt`: run `tensorboard --logdir "
                 f"{path.parent / 'projector'}` and open the Projector tab, or load the two TSV "
                 "files at https://projector.tensorflow.org.\n")
    path.write_text("".join(parts))
