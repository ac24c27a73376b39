"""Tests for tfrs_movies.metrics: hand-worked examples, a brute-force cross-check, batching."""
import math
import subprocess
import sys

import numpy as np
import pytest

from tfrs_movies import metrics

# -- topk_from_scores ------------------------------------------------------------------------


def test_topk_sorted_ties_to_lower_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9],
                       [3.0, 1.0, 2.0, 0.0]])
    # row 0: 0.9 at items 1 and 3 tie -> 1 before 3, then 0.5 (item 2); row 1: 3, 2, 1.
    np.testing.assert_array_equal(metrics.topk_from_scores(scores, k=3), [[1, 3, 2], [0, 2, 1]])


def test_topk_exclusion_removes_items_and_pads_with_minus_one():
    scores = np.array([[0.1, 0.9, 0.5, 0.9],
                       [3.0, 1.0, 2.0, 0.0]])
    original = scores.copy()
    # exclude (0, 1) and (1, 0): row 0 -> 3 (0.9), 2 (0.5), 0 (0.1); row 1 -> 2, 1, 3.
    topk = metrics.topk_from_scores(scores, exclude=(np.array([0, 1]), np.array([1, 0])), k=3)
    np.testing.assert_array_equal(topk, [[3, 2, 0], [2, 1, 3]])
    np.testing.assert_array_equal(scores, original)  # the caller's array is not masked
    # only item 1 is left for k=2: the second slot is empty (-1), never an excluded item.
    topk = metrics.topk_from_scores([[1.0, 2.0, 3.0]], exclude=([0, 0], [0, 2]), k=2)
    np.testing.assert_array_equal(topk, [[1, -1]])


def test_topk_ties_at_the_boundary_keep_lowest_indices():
    # five items, four tied at 1.0 for two slots: items 0 and 1 win.
    np.testing.assert_array_equal(metrics.topk_from_scores([[1, 1, 1, 1, 0.0]], k=2), [[0, 1]])


@pytest.mark.parametrize("k", [1, 4, 9])
def test_topk_matches_a_full_stable_sort(k):
    # integer scores make many ties; a stable sort of -scores is the reference ordering.
    scores = np.random.default_rng(0).integers(0, 5, size=(30, 9)).astype(np.float64)
    topk = metrics.topk_from_scores(scores, k=k)
    np.testing.assert_array_equal(topk, np.argsort(-scores, axis=1, kind="stable")[:, :k])
    values = np.take_along_axis(scores, topk, axis=1)
    assert (np.diff(values, axis=1) <= 0).all()


# -- ranking_metrics -------------------------------------------------------------------------

# k = 3.  user 0: list [5, 2, 7], relevant {2, 9}       -> hits [0, 1, 0], R = 2
#         user 1: list [1, 3, 4], relevant {1, 4, 6, 8} -> hits [1, 0, 1], R = 4
#         user 2: list [0, 1, 2], relevant {9}          -> hits [0, 0, 0], R = 1
#         user 3: list [0, 1, 2], relevant {}           -> skipped
TOPK = np.array([[5, 2, 7], [1, 3, 4], [0, 1, 2], [0, 1, 2]])
RELEVANT = [np.array([2, 9]), np.array([1, 4, 6, 8]), np.array([9]), np.array([], int)]
L3 = 1 / math.log2(3)  # discount of rank 2; rank 1 is 1, rank 3 is 1 / log2(4) = 0.5


def test_ranking_metrics_hand_computed():
    got = metrics.ranking_metrics(TOPK, RELEVANT, k=3)
    ndcg = [L3 / (1 + L3),               # user 0: DCG 1/log2(3), IDCG over min(2, 3) = 2 hits
            (1 + 0.5) / (1 + L3 + 0.5),  # user 1: DCG 1 + 1/2, IDCG over min(4, 3) = 3 hits
            0.0]
    assert got == pytest.approx({
        "ndcg@3": sum(ndcg) / 3,                     # (0.386853 + 0.703918 + 0) / 3
        "precision@3": (1 / 3 + 2 / 3 + 0) / 3,      # hits / k
        "recall@3": (1 / 2 + 2 / 4 + 0) / 3,         # hits / R
        # user 0: P@2 = 1/2, / R=2 -> 1/4; user 1: (P@1 + P@3) / R = (1 + 2/3) / 4 = 5/12
        # (Spark's min(R, k) denominator would give 5/9 for user 1).
        "map@3": (1 / 4 + 5 / 12 + 0) / 3,           # = 2/9
        "hit_rate@3": 2 / 3,
        "users": 3,
    })


def test_ranking_metrics_perfect_ranking_and_cutoff():
    topk = np.array([[4, 2, 9, 0], [7, 1, 3, 5]])
    got = metrics.ranking_metrics(topk, [[4, 2], [7, 1, 3, 5, 8]], k=2)
    # user 0: both relevant at ranks 1, 2; user 1: 5 relevant, the first 2 slots are hits.
    assert got["ndcg@2"] == pytest.approx(1.0)
    assert got["precision@2"] == pytest.approx(1.0)
    assert got["recall@2"] == pytest.approx((1 + 2 / 5) / 2)
    assert got["map@2"] == pytest.approx((1 + 2 / 5) / 2)  # user 1: (1 + 1) / R=5


def test_ranking_metrics_ignores_duplicate_relevant_items_and_empty_slots():
    # relevant {3} given twice counts once (R = 1); -1 never matches anything.
    got = metrics.ranking_metrics(np.array([[-1, 3]]), [[3, 3]], k=2)
    assert got["recall@2"] == 1.0 and got["map@2"] == pytest.approx(0.5)


def _brute_force(topk, relevant, k):
    """Textbook per-user loops, the reference for the vectorised code."""
    sums, users = dict.fromkeys(["ndcg", "precision", "recall", "map", "hit_rate"], 0.0), 0
    for row, rel in zip(topk, relevant, strict=True):
        rel = {int(x) for x in rel}
        if not rel:
            continue
        users += 1
        hits = [int(row[i]) in rel for i in range(k)]
        dcg = sum(1 / math.log2(i + 2) for i in range(k) if hits[i])
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
        ap = sum(sum(hits[:i + 1]) / (i + 1) for i in range(k) if hits[i]) / len(rel)
        for name, value in (("ndcg", dcg / idcg), ("precision", sum(hits) / k),
                            ("recall", sum(hits) / len(rel)), ("map", ap),
                            ("hit_rate", float(any(hits)))):
            sums[name] += value
    return {**{f"{name}@{k}": s / users for name, s in sums.items()}, "users": users}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_users, num_items, k = 40, 12, 5
    topk = np.stack([rng.permutation(num_items)[:k] for _ in range(num_users)])
    relevant = [rng.choice(num_items, size=rng.integers(0, 9), replace=False)
                for _ in range(num_users)]  # sizes 0..8: some users skipped, some with R > k
    assert metrics.ranking_metrics(topk, relevant, k) == pytest.approx(
        _brute_force(topk, relevant, k))


# -- coverage, novelty, rating metrics -------------------------------------------------------


def test_catalogue_coverage():
    assert metrics.catalogue_coverage(np.array([[0, 1], [1, 2]]), num_items=10) == 0.3  # {0,1,2}
    assert metrics.catalogue_coverage(np.array([[4, -1]]), num_items=10) == 0.1  # -1 is no item


def test_novelty():
    # 4 train users; self-information -log2(pop / 4): item 0 -> 0, item 1 -> 1, item 2 (never
    # seen, counted once) -> 2, item 3 -> 2.  Mean over the 4 slots = 5 / 4.
    pop = np.array([4, 2, 0, 1])
    assert metrics.novelty(np.array([[0, 1], [2, 3]]), pop, num_users_train=4) == 1.25


def test_rating_metrics():
    # errors [1, 0, 0, -2]: rmse = sqrt(5 / 4), mae = 3 / 4.
    got = metrics.rating_metrics([1, 2, 3, 4], np.array([2.0, 2, 3, 2]))
    assert got == pytest.approx({"rmse": math.sqrt(1.25), "mae": 0.75})


# -- evaluate_topk ---------------------------------------------------------------------------

# items: 0 = (1, 0), 1 = (0, 1), 2 = (1, 1), 3 = (-1, 0); users: 0 = (1, 0.5), 1 = (0, 1).
# scores: user 0 -> [1, 0.5, 1.5, -1], user 1 -> [0, 1, 1, 0].
# train: (0, 2), (1, 1); test: (0, 0), (1, 2).
ITEMS = np.array([[1.0, 0], [0, 1], [1, 1], [-1, 0]])
USERS = np.array([[1.0, 0.5], [0, 1]])
TRAIN = (np.array([0, 1]), np.array([2, 1]))
TEST = (np.array([0, 1]), np.array([0, 2]))


def test_evaluate_topk_excludes_train_items():
    # masked: user 0 -> item 0 (hit), user 1 -> [0, -inf, 1, 0] -> item 2 (hit).
    got = metrics.evaluate_topk(USERS, ITEMS, TRAIN, TEST, k=1)
    assert got["hit_rate@1"] == 1.0 and got["ndcg@1"] == 1.0 and got["top1_accuracy"] == 1.0
    assert got["users"] == 2
    assert got["coverage@1"] == 0.5  # items {0, 2} of 4
    # popularity from train: item 0 -> 0 (counted 1), item 2 -> 1; 2 train users:
    # -log2(1 / 2) = 1 for both.
    assert got["novelty@1"] == 1.0


def test_evaluate_topk_without_exclusion_is_the_tfrs_protocol():
    # unmasked: user 0 -> item 2 (train item, miss); user 1 -> items 1, 2 tie at 1, the lower
    # index (1, a train item) wins: miss.
    got = metrics.evaluate_topk(USERS, ITEMS, TRAIN, TEST, k=1, exclude_train=False)
    assert got["hit_rate@1"] == 0.0 and got["top1_accuracy"] == 0.0


def test_evaluate_topk_item_bias_changes_the_ranking():
    # +3 on item 3 puts it first for both users (user 0: 2 > 1, user 1: 3 > 1): no hits.
    got = metrics.evaluate_topk(USERS, ITEMS, TRAIN, TEST, k=1, item_bias=np.array([0, 0, 0, 3]))
    assert got["hit_rate@1"] == 0.0


def test_evaluate_topk_batches_match_one_batch_and_dense_reference():
    rng = np.random.default_rng(7)
    num_users, num_items, dim, k = 23, 17, 4, 5
    user_emb, item_emb = rng.normal(size=(num_users, dim)), rng.normal(size=(num_items, dim))
    item_bias = rng.normal(size=num_items)
    train = (rng.integers(0, num_users, 120), rng.integers(0, num_items, 120))
    test = (rng.integers(0, num_users - 3, 30), rng.integers(0, num_items, 30))  # some untested
    kwargs = {"train_pairs": train, "test_pairs": test, "k": k, "item_bias": item_bias}
    small = metrics.evaluate_topk(user_emb, item_emb, batch_size=3, **kwargs)
    big = metrics.evaluate_topk(user_emb, item_emb, batch_size=1000, **kwargs)
    assert small == pytest.approx(big)

    topk = metrics.topk_from_scores(user_emb @ item_emb.T + item_bias, exclude=train, k=k)
    relevant = [test[1][test[0] == u] for u in range(num_users)]
    expected = metrics.ranking_metrics(topk, relevant, k)
    assert {name: small[name] for name in expected} == pytest.approx(expected)
    tested = np.unique(test[0])
    assert small[f"coverage@{k}"] == metrics.catalogue_coverage(topk[tested], num_items)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.rating_metrics([1, 2], [1]), "2 values but y_pred has 1"),
    (lambda: metrics.rating_metrics([], []), "empty"),
    (lambda: metrics.rating_metrics([1, 2], [1, np.nan]), r"y_pred\[1\] = nan"),
    (lambda: metrics.topk_from_scores(np.ones((2, 3)), k=4), "k must be an int in"),
    (lambda: metrics.topk_from_scores(np.ones((2, 3)), k=0), "got 0"),
    (lambda: metrics.topk_from_scores([[1, np.nan]], k=1), "non-finite"),
    (lambda: metrics.topk_from_scores(np.ones((2, 3)), ([0], [3]), k=1), r"cols\[0\] = 3"),
    (lambda: metrics.topk_from_scores(np.ones((2, 3)), ([0, 1], [0]), k=1), "differ in length"),
    (lambda: metrics.ranking_metrics(TOPK, RELEVANT[:2], k=3), "relevant has 2 users"),
    (lambda: metrics.ranking_metrics(TOPK, [[]] * 4, k=3), "no user has a relevant item"),
    (lambda: metrics.ranking_metrics(TOPK, RELEVANT, k=4), "k must be an int"),
    (lambda: metrics.catalogue_coverage([[0, 10]], num_items=10), "item 10"),
    (lambda: metrics.novelty([[0]], np.array([5]), num_users_train=4), "item_popularity"),
    (lambda: metrics.evaluate_topk(USERS, ITEMS[:, :1], TRAIN, TEST, k=1), "must share dim"),
    (lambda: metrics.evaluate_topk(USERS, ITEMS, TRAIN, ([0], [4]), k=1), r"test_pairs cols"),
    (lambda: metrics.evaluate_topk(USERS, ITEMS, TRAIN, TEST, k=1, batch_size=0), "batch_size"),
    (lambda: metrics.evaluate_topk(USERS * np.nan, ITEMS, TRAIN, TEST, k=1), "non-finite"),
])
def test_bad_input_raises_naming_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_metrics_module_does_not_import_tensorflow():
    code = "import sys, tfrs_movies.metrics; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
