"""Exactness: every accelerated answer equals brute force, across many random queries.

Brute force runs the model over the whole dataset (ReprocessAll) and ranks with the same
tie rule (score, then smaller id). The data contains exact duplicate images, so ties
between different inputs occur, and ReLU layers add massive ties at zero.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import everest_magic as em
from everest_magic.engine import query as Q
from everest_magic.engine.baselines import ReprocessAll, rank

CONFIGS = [(2, 0.0, "equi"), (16, 0.0, "tails"), (16, 0.01, "equi"), (64, 0.002, "tails"),
           (256, 0.01, "tails"), (256, 0.0, "equi")]
VIEWS = ["conv1", "conv2", "conv2:mean", "fc1"]


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"P{c[0]}-r{c[1]}-{c[2]}")
def indexed(request, digits_cnn, tmp_path_factory):
    P, ratio, scheme = request.param
    model, x, y = digits_cnn
    path = tmp_path_factory.mktemp("idx") / "digits.h5"
    s = em.Session(model, x, index=path, labels=y, partitions=P, ratio=ratio, scheme=scheme,
                   batch_size=32, cache_bytes=2 << 20)
    s.build_index(VIEWS, wait=True)
    full = {v: ReprocessAll(s).all_activations(v) for v in VIEWS}
    yield s, full, request.param
    s.close()


def brute_topk(A, group, k, by, lowest, allowed):
    agg = Q.make_aggregation(by, len(group))
    key_of = Q.topk_key(agg, lowest)
    keys, ids = rank(A[:, group], key_of, k, allowed)
    return ids, (-keys if lowest else keys)


def brute_knn(A, group, k, t, metric, allowed):
    key_of = Q.knn_key(t, metric)
    keys, ids = rank(A[:, group], key_of, k, allowed)
    return ids, Q.knn_distance(keys, metric)


def random_group(rng, s, view, A):
    m = A.shape[1]
    g = int(rng.integers(1, min(20, m) + 1))
    how = rng.integers(3)
    if how == 0:   # the most activated neurons of a random input
        row = A[rng.integers(len(A))]
        return np.lexsort((np.arange(m), -row))[:g]
    if how == 1:   # random neurons
        return rng.choice(m, g, replace=False)
    return np.sort(rng.choice(m, g, replace=False))[: max(1, g // 2)]


def random_k(rng, n):
    return int(rng.choice([1, 2, 5, 10, 20, 50, 100, n + 7]))


def random_filter(rng, s):
    r = rng.random()
    if r < 0.7:
        return None
    if r < 0.85:
        return np.flatnonzero(s.labels == rng.integers(10))
    return rng.choice(s.n, int(rng.integers(1, 300)), replace=False)


def allowed_of(s, f):
    return s.allowed(f)


def test_topk_and_bottomk_equal_brute_force(indexed):
    s, full, cfg = indexed
    rng = np.random.default_rng(hash(cfg) % 2**32)
    checked = 0
    for view, lowest in itertools.product(VIEWS, [False, True]):
        A = full[view]
        for _ in range(12):
            group = random_group(rng, s, view, A)
            k = random_k(rng, s.n)
            by = rng.choice(["sum", "mean", "max", "l2", "weights"])
            by = list(rng.random(len(group)) * (rng.random(len(group)) > 0.2)) if by == "weights" else str(by)
            f = random_filter(rng, s)
            r = s.topk(view, group, k=k, by=by, lowest=lowest, filter=f)
            ids, scores = brute_topk(A, group, k, by, lowest, allowed_of(s, f))
            assert r.ids.tolist() == ids.tolist(), (view, group, k, by, lowest)
            np.testing.assert_array_equal(r.scores, scores)
            assert r.stats.method == "index"
            checked += 1
    assert checked == 96


def test_knn_equals_brute_force(indexed):
    s, full, cfg = indexed
    rng = np.random.default_rng(hash(cfg) % 2**32 + 1)
    for view in VIEWS:
        A = full[view]
        for i in range(12):
            group = random_group(rng, s, view, A)
            k = random_k(rng, s.n)
            metric = str(rng.choice(["l2", "l1", "linf"]))
            f = random_filter(rng, s)
            include = bool(rng.random() < 0.3)
            target = int(rng.integers(s.n))
            r = s.knn(target, view, group, k=k, metric=metric, include_target=include, filter=f)
            allowed = allowed_of(s, f)
            if not include:
                allowed[target] = False
            ids, dist = brute_knn(A, group, k, A[target, group], metric, allowed)
            assert r.ids.tolist() == ids.tolist(), (view, group, k, metric, target)
            np.testing.assert_array_equal(r.scores, dist)
            assert include or target not in r.ids.tolist()


def test_knn_external_target_equals_brute_force(indexed, digits_cnn):
    s, full, cfg = indexed
    _, x, _ = digits_cnn
    rng = np.random.default_rng(7)
    for view in VIEWS:
        A = full[view]
        for _ in range(4):
            # a new image: an existing one with noise, not in the dataset
            img = (x[rng.integers(len(x))] + 0.05 * torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(3))).clamp(0, 1)
            group = random_group(rng, s, view, A)
            k = random_k(rng, s.n)
            r = s.knn(img, view, group, k=k)
            t = s.external_activations(view, img)[group]
            ids, dist = brute_knn(A, group, k, t, "l2", np.ones(s.n, bool))
            assert r.ids.tolist() == ids.tolist()
            np.testing.assert_array_equal(r.scores, dist)


def test_duplicates_tie_and_break_by_id(indexed, digits_cnn):
    """An input and its exact duplicate are at distance 0 and ordered by id."""
    s, full, _ = indexed
    n0 = 1797
    dup_of = {}
    x = digits_cnn[1]
    for j in range(n0, s.n):
        orig = int(np.flatnonzero((x[:n0] == x[j]).flatten(1).all(1))[0])
        dup_of[j] = orig
    j, orig = next(iter(dup_of.items()))
    group = np.arange(10)
    r = s.knn(orig, "conv1", group, k=3)
    assert r.ids[0] == j and r.scores[0] == 0.0
    r = s.knn(orig, "conv1", group, k=3, include_target=True)
    assert r.ids[:2].tolist() == [orig, j] and r.scores[1] == 0.0
    # bottom-k of a ReLU layer: many exact zeros, the smallest ids win
    A = full["conv2"]
    neuron = int(np.argmax((A == 0).sum(0)))
    r = s.bottomk("conv2", [neuron], k=25)
    zeros = np.flatnonzero(A[:, neuron] == 0)
    assert len(zeros) > 25
    assert r.ids.tolist() == zeros[:25].tolist()


def test_fallback_scans_are_exact_and_say_so(digits_mlp, tmp_path):
    model, x, y = digits_mlp
    s = em.Session(model, x, index=tmp_path / "mlp.h5", batch_size=32)
    A = ReprocessAll(s).all_activations("hidden")
    rng = np.random.default_rng(0)
    for _ in range(20):
        group = rng.choice(64, int(rng.integers(2, 12)), replace=False)
        k = int(rng.integers(1, 40))
        # tanh activations are signed: l2 top-k cannot be bounded, it scans
        r = s.topk("hidden", group, k=k, by="l2")
        ids, scores = brute_topk(A, group, k, "l2", False, np.ones(s.n, bool))
        assert r.stats.method == "scan" and "not monotone" in r.stats.reason
        assert r.ids.tolist() == ids.tolist()
        # sums of signed activations are monotone: index path
        r = s.topk("hidden", group, k=k, by="sum", lowest=bool(rng.random() < 0.5))
        ids, _ = brute_topk(A, group, k, "sum", r.kind == "bottomk", np.ones(s.n, bool))
        assert r.stats.method == "index" and r.ids.tolist() == ids.tolist()
        target = int(rng.integers(s.n))
        r = s.knn(target, "hidden", group, k=k, metric="cosine")
        allowed = np.ones(s.n, bool)
        allowed[target] = False
        ids, dist = brute_knn(A, group, k, A[target, group], "cosine", allowed)
        assert r.stats.method == "scan" and "cosine" in r.stats.reason
        assert r.ids.tolist() == ids.tolist()
        np.testing.assert_allclose(r.scores, dist)
        # and the L2 kNN of the second architecture through the index
        r = s.knn(target, "hidden", group, k=k)
        ids, _ = brute_knn(A, group, k, A[target, group], "l2", allowed)
        assert r.stats.method == "index" and r.ids.tolist() == ids.tolist()
    s.close()


def test_scores_match_an_independent_computation(indexed):
    """The shared scoring functions agree with plain numpy/torch formulas."""
    s, full, _ = indexed
    A = full["conv1"].astype(np.float64)
    group = [3, 100, 200]
    r = s.topk("conv1", group, k=10, by="mean")
    np.testing.assert_allclose(r.scores, A[r.ids][:, group].mean(1), rtol=1e-12)
    r = s.knn(5, "conv1", group, k=10, metric="l2")
    np.testing.assert_allclose(r.scores, np.linalg.norm(A[r.ids][:, group] - A[5, group], axis=1), rtol=1e-12)
    top = np.sort(A[:, group].max(1))[::-1][:10]
    np.testing.assert_allclose(s.topk("conv1", group, k=10, by="max").scores, top)
