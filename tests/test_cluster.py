"""Scale-out on Dask: a real LocalCluster of two worker processes builds indexes equal array for
array to the in-process build, recomputes many inputs remotely, survives a killed worker, and
cancels cleanly."""
from __future__ import annotations

import functools
import os
import signal
import time

import numpy as np
import pytest
import torch

import everest_magic as em
from everest_magic import examples as ex
from everest_magic.inspect import inspect
from test_engine_store import ARRAYS, assert_exact, files, referenced, view_arrays

distributed = pytest.importorskip("distributed", reason="Dask distributed is part of the test extra")
from distributed import Client, LocalCluster, get_task_stream  # noqa: E402

VIEWS = ["fc1", "conv2", "conv2:mean"]


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def reference(digits_cnn, tmp_path_factory):
    """The in-process build of VIEWS, and its arrays."""
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path_factory.mktemp("ref") / "idx", batch_size=8)
    s.build_index(VIEWS, wait=True)
    yield s, {v: view_arrays(s, v) for v in VIEWS}
    s.close()


@pytest.fixture(scope="module")
def big_reference(digits_cnn, tmp_path_factory):
    """Four noisy copies of the digits (7,348 inputs: eight blocks of 1,024 on two workers, so
    that blocks are sent after others came back), its in-process build of conv2 and its arrays."""
    model, x, _ = digits_cnn
    big = torch.cat([x + 0.01 * k for k in range(4)])
    s = em.Session(model, big, index=tmp_path_factory.mktemp("bigref") / "idx", batch_size=8)
    s.build_index(["conv2"], wait=True)
    yield big, {"conv2": view_arrays(s, "conv2")}
    s.close()


def assert_same_index(s, expected, views=VIEWS):
    for v in views:
        got = view_arrays(s, v)
        for name in ARRAYS:
            np.testing.assert_array_equal(got[name], expected[v][name], err_msg=f"{v}/{name}")


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def one_copy(client, future, timeout_s: float = 30) -> None:
    """Wait for Dask's memory manager to drop all but one copy of a broadcast future (as it
    does within seconds): Dask then sends every task that needs it to that one worker unless
    told otherwise."""
    deadline = time.monotonic() + timeout_s
    while len(client.who_has([future])[future.key]) > 1:
        assert time.monotonic() < deadline, "the memory manager kept every copy of the model"
        time.sleep(0.2)


def test_distributed_build_equals_the_in_process_build(digits_cnn, reference, client, tmp_path):
    """Same arrays, same answers (ids and order) for every query kind, and both worker
    processes ran blocks of the pass (seen by the scheduler's task stream), even when only
    one of them holds the model."""
    model, x, y = digits_cnn
    ref, expected = reference
    with get_task_stream(client) as ts:
        with em.Session(model, x, index=tmp_path / "idx", batch_size=8, labels=y, cluster=client) as s:
            one_copy(client, s.cluster.payload)
            stats = s.build_index(VIEWS, wait=True).result()
            assert_same_index(s, expected)
            rng = np.random.default_rng(3)
            for _ in range(6):
                view = VIEWS[int(rng.integers(len(VIEWS)))]
                m = int(np.prod(s.shape(view)))
                group = rng.choice(m, int(rng.integers(1, 9)), replace=False).tolist()
                k, target = int(rng.integers(1, 30)), int(rng.integers(s.n))
                assert s.topk(view, group, k=k).ids.tolist() == ref.topk(view, group, k=k).ids.tolist()
                assert s.bottomk(view, group, k=k, by="max").ids.tolist() == \
                    ref.bottomk(view, group, k=k, by="max").ids.tolist()
                assert s.knn(target, view, group, k=k).ids.tolist() == ref.knn(target, view, group, k=k).ids.tolist()
            assert_exact(s, "conv2", count=2)
    blocks = [t for t in ts.data if t["key"].startswith("_block_task")]
    n_blocks = -(-len(x) // stats["fc1"]["block_inputs"])
    assert len(blocks) == n_blocks > 1
    assert {t["worker"] for t in blocks} == set(client.scheduler_info()["workers"])   # both did work
    assert sorted(stats["fc1"]["cluster_tasks"]) == sorted(
        sum(t["worker"] == w for t in blocks) for w in client.scheduler_info()["workers"])


@pytest.mark.parametrize("variant", ["by_value", "factory", "load_shard", "list"])
def test_a_model_class_from_a_notebook_and_data_loaded_on_the_workers(digits_cnn, reference, client, tmp_path,
                                                                       variant):
    """A model class the workers cannot import (defined here, as in a notebook cell) travels
    by value; `model_factory` sends only the state dict; `load_shard` loads inputs on the
    worker; a plain list of inputs is scattered once. Every variant builds the same index."""
    model, x, _ = digits_cnn
    _, expected = reference

    class LocalCNN(ex.DigitsCNN):   # not importable by name: pickled by value
        pass

    torch.save(x, tmp_path / "inputs.pt")
    kw = {"model": model, "data": x}
    if variant == "by_value":
        kw["model"] = LocalCNN()
        kw["model"].load_state_dict(model.state_dict())
    elif variant == "factory":
        kw["model_factory"] = ex.DigitsCNN
    elif variant == "load_shard":
        kw["load_shard"] = functools.partial(_read_rows, tmp_path / "inputs.pt")
    else:
        kw["data"] = list(x)
    with em.Session(index=tmp_path / "idx", batch_size=8, cluster=client, **kw) as s:
        s.build_index(["conv2"], wait=True)
        assert_same_index(s, expected, ["conv2"])


def _read_rows(path, start: int, stop: int) -> torch.Tensor:
    """Inputs start..stop read from a file on the worker (as a user's loader would)."""
    return torch.load(path)[start:stop]


def test_large_recomputes_run_on_the_cluster(digits_cnn, reference, client, tmp_path):
    """Runner.views of at least `min_inputs` inputs runs on the workers, with the same bits;
    inspection goes through it too."""
    model, x, y = digits_cnn
    ref, _ = reference
    with em.Session(model, x, index=tmp_path / "idx", batch_size=8, labels=y, cluster=client) as s:
        s.cluster.min_inputs = 500
        one_copy(client, s.cluster.payload)
        views = [s.view("conv2"), s.view("fc1")]
        ids = np.random.default_rng(0).permutation(len(x))[:1200]
        with get_task_stream(client) as ts:
            remote = s.runner.views(views, ids)
            small = s.runner.views(views, ids[:100])     # below the threshold: here
        local = ref.runner.views([ref.view("conv2"), ref.view("fc1")], ids)
        for a, b in zip(remote, local):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(small[0], local[0][:100])
        tasks = [t for t in ts.data if t["key"].startswith("_views_task")]
        assert len(tasks) >= 2 and len({t["worker"] for t in tasks}) == 2
        s.cluster.min_inputs = 64
        with get_task_stream(client) as ts:
            df = inspect(s, ["fc1"], {"is 3": y == 3}, ["pearson"], early_stop=False)
        alone = inspect(ref, ["fc1"], {"is 3": y == 3}, ["pearson"], early_stop=False)
        np.testing.assert_allclose(df["score"].to_numpy(), alone["score"].to_numpy(), rtol=0, atol=1e-12)
        assert any(t["key"].startswith("_views_task") for t in ts.data)


def test_blocks_sent_later_carry_only_list_entries_that_can_still_enter(digits_cnn, big_reference, client,
                                                                        tmp_path):
    """Blocks sent after others came back get the merged lists' worst entries and return
    only entries that beat them: fewer bytes, the same lists (ties by id included: the data
    holds exact duplicates)."""
    model, _, _ = digits_cnn
    big, expected = big_reference
    with em.Session(model, big, index=tmp_path / "idx", batch_size=8, cluster=client) as s:
        stats = s.build_index(["conv2"], wait=True).result()["conv2"]
        info = s.store.view("conv2")
        assert_same_index(s, expected, ["conv2"])
    blocks = -(-len(big) // stats["block_inputs"])
    full = blocks * info.neurons * 2 * info.list_length * 8                    # every block sending both whole lists
    lists = stats["bytes_summaries"] - blocks * info.neurons * info.partitions * 12   # less counts (4 B) and bounds (8 B)
    assert blocks == 8 and lists < full, (lists, full)


def holders(client, future) -> list[int]:
    """Pids of the worker processes holding a future's data."""
    pids = client.run(os.getpid)
    return [pids[a] for a in client.who_has([future])[future.key]]


def test_a_worker_killed_mid_build_reruns_its_blocks(digits_cnn, big_reference, tmp_path):
    """SIGKILL, while the build runs, a worker process holding the model Dask was sent (the
    memory manager may have dropped the other copy): Dask reruns its blocks on the other (and
    the restarted) worker, the model is sent again; the index equals the in-process build."""
    model, _, _ = digits_cnn
    big, expected = big_reference
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    try:
        s = em.Session(model, big, index=tmp_path / "idx", batch_size=8, cluster=c)
        before = worker_pids(c)
        job = s.build_index(["conv2"])
        while "Dask" not in job.phase and not job.is_done():   # the pass's blocks are on the workers
            time.sleep(0.01)
        started = job.done_units
        while job.done_units == started and not job.is_done():       # and a first one came back
            time.sleep(0.01)
        assert not job.is_done() and job.done_units < job.total
        os.kill(holders(c, s.cluster.payload)[0], signal.SIGKILL)
        stats = job.result(timeout=300)
        assert worker_pids(c) != before                        # one worker died (and was restarted)
        assert "n" in stats["conv2"]
        assert_same_index(s, expected, ["conv2"])
        assert files(s.index_path) == referenced(s.index_path)
        s.close()
    finally:
        c.close()
        cluster.close()


def test_a_session_outlives_the_death_of_every_worker(digits_cnn, reference, tmp_path):
    """SIGKILL both workers (their nannies start new, empty ones) after the session sent its
    model and inputs: the next recompute and the next build send them again and equal the
    in-process answers."""
    model, x, _ = digits_cnn
    ref, expected = reference
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    try:
        with em.Session(model, list(x), index=tmp_path / "idx", batch_size=8, cluster=c) as s:
            s.cluster.min_inputs = 100
            sent = (s.cluster.payload.key, s.cluster._source.key)
            for pid in worker_pids(c):
                os.kill(pid, signal.SIGKILL)
            c.wait_for_workers(2, timeout=120)
            ids = np.arange(0, len(x), 3)
            remote = s.runner.views([s.view("conv2")], ids)[0]
            np.testing.assert_array_equal(remote, ref.runner.views([ref.view("conv2")], ids)[0])
            assert (s.cluster.payload.key, s.cluster._source.key) != sent       # sent again
            assert len(c.who_has([s.cluster.payload])[s.cluster.payload.key]) >= 1
            s.build_index(["conv2"], wait=True)
            assert_same_index(s, expected, ["conv2"])
    finally:
        c.close()
        cluster.close()


def test_cancel_stops_the_cluster_build_and_commits_nothing(digits_cnn, big_reference, client, tmp_path):
    model, _, _ = digits_cnn
    big, _ = big_reference
    with em.Session(model, big, index=tmp_path / "idx", batch_size=8, cluster=client) as s:
        job = s.build_index(["conv2", "fc1"])
        while "Dask" not in job.phase and not job.is_done():
            time.sleep(0.01)
        job.cancel()
        job.wait(120)
        assert job.status == "cancelled"
        assert s.indexed() == {}
        assert not any(f.endswith(".partial") for f in files(s.index_path))
        deadline = time.time() + 30     # the cancelled blocks leave the scheduler
        while time.time() < deadline and any(k.startswith("_block_task") for k in client.who_has()):
            time.sleep(0.1)
        assert not any(k.startswith("_block_task") for k in client.who_has())


def test_cluster_errors_are_clear(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    with pytest.raises(em.QueryError, match="cluster must be 'local', a scheduler address"):
        em.Session(model, x, index=tmp_path / "a", cluster=3.5)
    with pytest.raises(em.QueryError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'"):
        em.Session(model, x, index=tmp_path / "b", cluster="tcp://127.0.0.1:1")


def test_the_use_magic_takes_a_cluster(digits_cnn, reference, client, tmp_path):
    """`%everest use ... cluster=ADDRESS` connects the session to the scheduler; `%everest
    index` then builds on the workers, and the answers equal the in-process index's."""
    from IPython.core.interactiveshell import InteractiveShell
    from everest_magic.magics import kernel_state
    model, x, y = digits_cnn
    ref, expected = reference
    ip = InteractiveShell.instance()
    ip.user_ns.update(net=model, images=x, labels=y)
    ip.run_line_magic("load_ext", "everest_magic")
    address = client.scheduler.address
    ip.run_line_magic("everest", f"use model=net data=images index={tmp_path / 'idx'} labels=labels "
                                 f"batch_size=8 name=dask cluster={address}")
    s = kernel_state().session("dask")
    assert s.cluster is not None and s.cluster.client.scheduler.address == address
    with get_task_stream(client) as ts:
        ip.run_line_magic("everest", "index conv2 --wait")
    assert any(t["key"].startswith("_block_task") for t in ts.data)
    assert_same_index(s, expected, ["conv2"])
    ip.run_cell_magic("everest", "topk 9 -o top --wait", "layer conv2\nneurons 5, 17, 201\nby sum")
    assert ip.user_ns["top"].ids.tolist() == ref.topk("conv2", [5, 17, 201], k=9, by="sum").ids.tolist()
    ip.run_line_magic("unload_ext", "everest_magic")
