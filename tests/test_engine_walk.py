"""The threshold walk's machinery: safe recompute batch sizes, single-valued partitions,
candidate ordering, the activation cache, and refusal of non-finite activations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import everest_magic as em
from everest_magic.engine import query as Q
from everest_magic.engine.baselines import ReprocessAll, rank
from everest_magic.engine.cache import ActivationCache


@pytest.fixture(scope="module")
def session(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    s = em.Session(model, x, index=tmp_path_factory.mktemp("walk") / "i.h5", labels=y, batch_size=32)
    s.build_index(["conv1", "conv2", "fc1"], wait=True)
    yield s
    s.close()


class SizeDependent(nn.Module):
    """A model whose activations change (in the last bits) with the batch size, as some
    kernels do; batches of one size are still independent of their other inputs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.scale = nn.Identity()
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        h = self.inner.fc1(self.inner.conv2(self.inner.pool1(self.inner.conv1(x))))
        return self.scale(h * (1 + 1e-6 * x.shape[0]))


def test_batch_sizes_are_checked_on_real_inputs(session):
    sizes = session.batch_sizes("conv2")
    assert sizes[-1] == 32 and list(sizes) == sorted(sizes)
    assert all(b & (b - 1) == 0 for b in sizes[:-1])        # powers of two below batch_size
    v = session.view("conv2")
    ids = np.arange(40)
    ref = session.runner.views([v], ids, (32,))[0]
    for b in sizes:
        np.testing.assert_array_equal(session.runner.views([v], ids, (b,))[0], ref)


def test_a_batch_size_dependent_model_recomputes_in_full_batches_only(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    net = SizeDependent(model)
    s = em.Session(net, x, index=tmp_path / "d.h5", batch_size=16)
    assert s.batch_sizes("scale") == (16,) and 8 in net.sizes   # smaller batches were tried, and differ
    s.build_index("scale", wait=True)
    net.sizes.clear()
    A = ReprocessAll(s).all_activations("scale")
    for target in (3, 500, 1400):
        group = s.top_neurons(target, "scale", 5)
        r = s.knn(target, "scale", group, k=15)
        allowed = np.ones(s.n, bool)
        allowed[target] = False
        _, ids = rank(A[:, group], Q.knn_key(A[target, group], "l2"), 15, allowed)
        assert r.ids.tolist() == ids.tolist()
    assert set(net.sizes) == {16}
    s.close()


def test_walk_batches_follow_the_measured_batch_cost(session, monkeypatch):
    sizes = []   # the size of every batch the model runs
    real = session.runner.capture

    def spy(layers, batch, ids=None):
        sizes.append(len(batch))
        return real(layers, batch, ids)

    monkeypatch.setattr(session.runner, "capture", spy)
    session.cache.clear()
    A = ReprocessAll(session).all_activations("conv1")
    sizes.clear()
    group = np.argsort(-A[1000])[:10]
    r = session.knn(1000, "conv1", group, k=20)
    safe = session.batch_sizes("conv1")
    assert sizes[0] == safe[0]           # the target alone, in the smallest safe batch
    assert sizes[1:] and all(b in safe for b in sizes[1:]) and r.stats.batches == len(sizes)
    steps = session.walk_steps("conv1")
    plan = [next(steps) for _ in range(8)]
    stored = session.store.view("conv1").query["walk_first"]   # chosen once from the timings, kept in the index
    assert stored in (8, 32, 128) and plan[0] == next((b for b in safe if b >= stored), safe[-1])
    assert plan == sorted(plan) and plan[-1] == safe[-1]


def test_single_valued_partitions_answer_relu_bottomk_without_the_model(session):
    """A ReLU unit's zeros form one partition with min == max: its inputs are known exactly."""
    A = ReprocessAll(session).all_activations("conv2")
    zeros = (A == 0).sum(0)
    neurons = [int(j) for j in np.argsort(-np.where(zeros < session.n, zeros, 0))[:3]]
    assert min(zeros[neurons]) > session.n // 3
    for group in ([neurons[0]], neurons):
        session.cache.clear()
        r = session.bottomk("conv2", group, k=40)
        both_zero = np.flatnonzero((A[:, group] == 0).all(1))
        assert r.ids.tolist() == both_zero[:40].tolist()
        assert r.stats.inputs_recomputed == 0 and r.stats.inputs_exact_from_index >= len(both_zero)


def test_best_first_equals_a_full_sort_with_ties():
    rng = np.random.default_rng(0)
    ub = rng.integers(0, 50, 5000).astype(np.float64)      # many ties
    cand = np.sort(rng.choice(5000, 3000, replace=False))
    full = cand[np.lexsort((cand, -ub[cand]))]
    for chunk in (1, 7, 256, 5000):
        got = np.concatenate(list(Q.best_first(cand, ub, chunk)))
        assert got.tolist() == full.tolist()


def test_activation_cache_lru_budget_and_group_columns():
    c = ActivationCache(max_bytes=4 * 10 * 30)                # 30 rows of 10 floats
    rows = np.arange(500, dtype=np.float32).reshape(50, 10)
    c.put("a", np.arange(20), rows[:20])
    found, got = c.get("a", np.array([3, 25, 0]))
    assert found.tolist() == [True, False, True] and got.tolist() == [rows[3].tolist(), rows[0].tolist()]
    c.put("a", np.arange(20, 35), rows[20:35])               # 35 rows > 30: the 5 least recently used go
    assert len(c) == 30 and c.bytes == 4 * 10 * 30
    kept = set(c.group("a", [0])[0].tolist())
    assert {0, 3} <= kept and not {1, 2, 4, 5, 6} & kept
    ids, cols = c.group("a", [2, 7])
    np.testing.assert_array_equal(cols, rows[ids][:, [2, 7]])
    c.put("b", np.arange(3), np.ones((3, 20), np.float32))  # another view shares the budget
    assert c.bytes <= c.max_bytes and len(c.group("b", [0])[0]) == 3
    c.put("b", np.arange(3, 5), np.ones((2, 5), np.float32))  # "b" redefined with another width
    assert len(c.group("b", [0])[0]) == 2 and c.bytes <= c.max_bytes
    c.clear()
    assert len(c) == 0 and c.bytes == 0


def test_cached_rows_make_inputs_exact(session):
    session.cache.clear()
    group = session.top_neurons(77, "fc1", 4)
    first = session.knn(77, "fc1", group, k=10)
    again = session.knn(77, "fc1", group, k=10)
    assert again.ids.tolist() == first.ids.tolist() and again.stats.inputs_recomputed == 0


class NaNAt(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.out = nn.Identity()

    def forward(self, x):
        h = self.inner.fc1(self.inner.conv2(self.inner.pool1(self.inner.conv1(x))))
        return self.out(torch.where(x[:, :1, 0, :1].flatten(1) > 0.9, torch.nan, 1.0) * h)


def test_non_finite_activations_are_refused_and_leave_no_view(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    x = x.clone()
    x[7, 0, 0, 0] = 1.0
    s = em.Session(NaNAt(model), x, index=tmp_path / "nan.h5")
    with pytest.raises(em.QueryError, match=r"view 'out': neuron 0 has NaN or infinite activations"):
        s.build_index("out", wait=True).result()
    assert s.indexed() == {} and not list(tmp_path.glob("*.partial-*"))
    s.close()


def test_a_query_during_the_build_of_its_view_waits_for_it(digits_cnn, tmp_path):
    """A lazy query for a view being built uses that build instead of building it again."""
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "b.h5", batch_size=32)
    job = s.build_index("conv2")
    r = s.topk("conv2", [3], k=5)
    job.result(120)
    batches = -(-s.n // 32)
    assert len(r.ids) == 5 and s.runner.forward_passes < 1.5 * batches
    s.close()


def test_stats_count_every_row_run_and_the_walk_plan_is_reproducible(digits_cnn, tmp_path):
    """rows_run counts the batch-size check (paid by the first query) and padding; two
    sessions over the same index walk in the same batches."""
    model, x, _ = digits_cnn
    path = tmp_path / "idx"
    with em.Session(model, x, index=path, batch_size=16) as s:
        s.build_index(["conv2"], wait=True)
    answers = []
    for _ in range(2):
        s = em.Session(model, x, index=path, batch_size=16)
        first = s.knn(5, "conv2", [3, 30, 77], k=12)
        sizes = s.batch_sizes("conv2")
        check_rows = s.source.check_rows("conv2")
        assert check_rows >= 16
        assert first.stats.rows_run >= first.stats.inputs_recomputed + check_rows
        s.clear_caches()
        again = s.knn(5, "conv2", [3, 30, 77], k=12)
        assert again.stats.rows_run >= again.stats.inputs_recomputed and again.stats.rows_run % min(sizes) == 0
        assert "first batch" in again.stats.walk_plan
        answers.append((again.ids.tolist(), again.stats.inputs_recomputed, again.stats.rows_run, again.stats.walk_plan))
        s.close()
    assert answers[0] == answers[1]
