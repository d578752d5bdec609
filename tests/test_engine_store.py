"""The index file: persistence, staleness, interrupted builds, spilling, format."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tables
import torch

import everest_magic as em
from everest_magic.engine.baselines import ReprocessAll


def _queries(s):
    out = []
    for view in ["conv1", "fc1"]:
        out.append(s.topk(view, [1, 5, 9], k=15).ids.tolist())
        out.append(s.bottomk(view, [2, 3], k=7, by="max").ids.tolist())
        out.append(s.knn(17, view, [1, 5, 9, 11], k=12, metric="l1").ids.tolist())
    return out


def test_close_and_reopen_gives_identical_answers(digits_cnn, tmp_path):
    model, x, y = digits_cnn
    path = tmp_path / "idx.h5"
    s = em.Session(model, x, index=path)
    s.build_index(["conv1", "fc1"], wait=True)
    before = _queries(s)
    s.close()
    s2 = em.Session(model, x, index=path, lazy=False)
    assert set(s2.indexed()) == {"conv1", "fc1"}
    assert _queries(s2) == before
    s2.close()


def test_changed_model_or_data_is_refused_with_rebuild_advice(digits_cnn, tmp_path):
    model, x, y = digits_cnn
    path = tmp_path / "idx.h5"
    with em.Session(model, x, index=path) as s:
        s.build_index("fc1", wait=True)
    other = type(model)()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.fc2.bias[0] += 1e-3
    with pytest.raises(em.StaleIndexError, match="different model.*rebuild=True"):
        em.Session(other, x, index=path)
    x2 = x.clone()
    x2[3, 0, 4, 4] += 0.5
    with pytest.raises(em.StaleIndexError, match="different data.*rebuild=True"):
        em.Session(model, x2, index=path)
    with pytest.raises(em.StaleIndexError, match="different data"):
        em.Session(model, x[:-1], index=path)
    s = em.Session(other, x, index=path, rebuild=True)
    assert s.indexed() == {}
    s.close()


def test_not_an_index_is_refused(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(em.IndexFormatError, match="not a readable HDF5 index"):
        em.Session(model, x, index=bad)
    plain = tmp_path / "plain.h5"
    with tables.open_file(str(plain), "w") as h:
        h.create_array("/", "a", np.arange(3))
    with pytest.raises(em.IndexFormatError, match="not an everest index"):
        em.Session(model, x, index=plain)


def test_cancelled_build_leaves_previous_index_untouched(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    path = tmp_path / "idx.h5"
    s = em.Session(model, x, index=path, batch_size=8)
    s.build_index("fc1", wait=True)
    before = path.read_bytes()
    job = s.build_index(["conv1", "conv2"])
    while job.done == 0 and not job.is_done():
        time.sleep(0.005)
    assert job.cancel()
    with pytest.raises(em.JobCancelled):
        job.result(60)
    assert job.status == "cancelled"
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.partial-*")) and not list(tmp_path.glob(".everest-spill-*"))
    assert set(s.indexed()) == {"fc1"}
    # the session stays usable
    assert len(s.topk("fc1", [0, 1], k=5).ids) == 5
    s.close()


def test_killed_build_never_reads_as_complete(digits_cnn, tmp_path):
    """SIGKILL in the middle of a build: the index file is absent or lacks the view."""
    path = tmp_path / "idx.h5"
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {os.getcwd()!r})
        import everest_magic as em
        from everest_magic import examples as ex
        model, x, y = ex.trained_digits_cnn(epochs=1)
        torch.save(model.state_dict(), {str(tmp_path / 'w.pt')!r})
        s = em.Session(model, x, index={str(path)!r}, batch_size=4)
        job = s.build_index(["conv1", "conv2", "fc1"])
        while job.done < 200:
            time.sleep(0.001)
        print("building", flush=True)
        time.sleep(30)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "building"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    from everest_magic import examples as ex
    model = ex.DigitsCNN()
    model.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x, _ = ex.load_digits()
    s = em.Session(model, x, index=path, lazy=False)
    assert s.indexed() == {}
    with pytest.raises(em.QueryError, match="not indexed"):
        s.topk("conv1", [0], k=3)
    s.close()


def test_spilled_build_equals_in_memory_build(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    a = em.Session(model, x, index=tmp_path / "ram.h5")
    sa = a.build_index(["conv1", "conv2:mean"], wait=True).result()
    b = em.Session(model, x, index=tmp_path / "spill.h5", memory_budget=200_000)
    sb = b.build_index(["conv1", "conv2:mean"], wait=True).result()
    assert not sa["conv1"]["spilled"] and sb["conv1"]["spilled"]
    with tables.open_file(str(tmp_path / "ram.h5")) as ha, tables.open_file(str(tmp_path / "spill.h5")) as hb:
        for g in ha.root.views:
            gb = hb.get_node("/views", g._v_name)
            for leaf in g._f_iter_nodes("Leaf"):
                np.testing.assert_array_equal(leaf[:], gb._f_get_child(leaf.name)[:])
    a.close(), b.close()


def test_index_layout_partitions_and_lists(digits_cnn, tmp_path):
    """Partition ids of every input, partitions ordered by value with exact bounds, exact lists."""
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "i.h5", partitions=16, ratio=0.05)
    s.build_index(["conv2"], wait=True)
    A = ReprocessAll(s).all_activations("conv2")
    counts, bounds = s.store.summary("conv2")
    info = s.store.view("conv2")
    assert info.t == int(np.ceil(0.05 * s.n))
    for neuron in [0, 17, 100, 255]:
        pids = s.store.pids("conv2", neuron)
        assert pids.dtype == np.uint8 and pids.shape == (s.n,)
        assert np.bincount(pids, minlength=16).tolist() == counts[neuron].tolist()
        for j in range(16):
            ids = s.store.partition("conv2", neuron, j)
            assert ids.tolist() == np.flatnonzero(pids == j).tolist()
            if len(ids):
                vals = A[ids, neuron]
                assert vals.min() == bounds[neuron, j, 0] and vals.max() == bounds[neuron, j, 1]
            else:
                assert np.isnan(bounds[neuron, j]).all()
        # partitions are ordered by value, and equal values share a partition
        nz = counts[neuron] > 0
        assert np.all(bounds[neuron, nz, 1][:-1] < bounds[neuron, nz, 0][1:])
        top_ids, top_vals = s.store.extremes("conv2", neuron)
        order = np.lexsort((np.arange(s.n), -A[:, neuron]))[: info.t]
        assert top_ids.tolist() == order.tolist()
        np.testing.assert_array_equal(top_vals, A[order, neuron])
        bot_ids, bot_vals = s.store.extremes("conv2", neuron, highest=False)
        order = np.lexsort((np.arange(s.n), A[:, neuron]))[: info.t]
        assert bot_ids.tolist() == order.tolist()
        np.testing.assert_array_equal(bot_vals, A[order, neuron])
    # a ReLU unit that is 0 for many inputs: the zeros get partition 0 to themselves
    zeros = (A == 0).sum(0)
    neuron = int(np.argmax(np.where(zeros < s.n, zeros, 0)))
    assert zeros[neuron] > s.n // 4
    assert counts[neuron, 0] == zeros[neuron] and bounds[neuron, 0].tolist() == [0.0, 0.0]
    meta = s.store._h.root._v_attrs
    assert meta["format_version"] == 2 and meta["model_fingerprint"] == s.model_fingerprint
    assert info.build["seconds_total"] > 0 and info.definition["layer"] == "conv2"
    s.close()


def test_partition_ids_are_stored_compressed_and_readable_by_plain_pytables(digits_cnn, tmp_path):
    """The chunks written directly are ordinary blosc-filtered HDF5 data."""
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "i.h5")
    s.build_index(["conv1"], wait=True)
    key = s.store.view("conv1").key
    mine = np.stack([s.store.pids("conv1", j) for j in range(s.store.view("conv1").m)])
    s.close()
    with tables.open_file(str(tmp_path / "i.h5")) as h:
        node = h.get_node(f"/views/{key}/pids")
        assert node.filters.complib == "blosc:zstd" and node.chunkshape == (1, len(x))
        np.testing.assert_array_equal(node[:], mine)
        assert node.size_on_disk < node.size_in_memory / 2


def test_small_lists_hold_at_least_min_list_inputs(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "i.h5", ratio=0.002)   # ceil(0.002 n) = 4
    s.build_index(["fc1"], wait=True)
    assert s.store.view("fc1").t == 32
    r = s.topk("fc1", [3], k=30)      # a single neuron, k within its list: no model run
    assert r.stats.inputs_recomputed == 0
    s2 = em.Session(model, x, index=tmp_path / "j.h5", ratio=0.0)
    s2.build_index(["fc1"], wait=True)
    assert s2.store.view("fc1").t == 0
    s.close(), s2.close()


def test_lazy_build_on_first_query(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "lazy.h5")
    assert s.indexed() == {}
    r = s.topk("conv2:max", [3], k=4)
    assert "conv2:max" in s.indexed() and len(r.ids) == 4
    s.close()


def test_partitions_default_to_the_largest_that_fit_the_size_budget(digits_cnn, tmp_path):
    from everest_magic.engine.build import P_CANDIDATES
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "auto.h5")
    s.build_index(["conv1", "fc1"], wait=True)
    for v, info in s.indexed().items():
        assert info.P in P_CANDIDATES and info.build["partitions"] == "auto"
        assert info.size_ratio <= 0.15, (v, info.P, info.size_ratio)
        assert 0.8 * info.size_ratio < info.build["estimated_size_ratio"] < 1.5 * info.size_ratio   # conservative
    Ps = []
    for budget in (0.08, 0.3):
        with em.Session(model, x, index=tmp_path / f"b{budget}.h5", size_budget=budget) as b:
            b.build_index(["conv1"], wait=True)
            Ps.append(b.indexed()["conv1"].P)
    assert Ps[0] < s.indexed()["conv1"].P < Ps[1]
    s.close()
