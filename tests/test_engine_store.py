"""The index folder: persistence, staleness, format errors, cancelled and killed builds,
two processes, damaged bytes, a full disk, memory bounds, extend, and the build backends."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tables
import torch

import everest_magic as em
from everest_magic.engine.baselines import ReprocessAll
from everest_magic.engine.build import build_views

ROOT = str(Path(__file__).resolve().parents[1])
ARRAYS = ("pids", "cuts", "counts", "bounds", "top_ids", "top_vals", "bot_ids", "bot_vals")


def _queries(s):
    out = []
    for view in ["conv1", "fc1"]:
        out.append(s.topk(view, [1, 5, 9], k=15).ids.tolist())
        out.append(s.bottomk(view, [2, 3], k=7, by="max").ids.tolist())
        out.append(s.knn(17, view, [1, 5, 9, 11], k=12, metric="l1").ids.tolist())
    return out


def assert_exact(s, view, seed=0, count=6):
    """Random top-k, bottom-k and kNN queries of `view` equal brute force (ids and order)."""
    rng = np.random.default_rng(seed)
    rep = ReprocessAll(s)
    m = int(np.prod(s.shape(view)))
    for _ in range(count):
        group = rng.choice(m, int(rng.integers(1, min(m, 12) + 1)), replace=False).tolist()
        k = int(rng.integers(1, 40))
        target = int(rng.integers(s.n))
        for mine, ref in ((s.topk(view, group, k=k), rep.topk(view, group, k=k)),
                          (s.bottomk(view, group, k=k, by="max"), rep.topk(view, group, k=k, by="max", lowest=True)),
                          (s.knn(target, view, group, k=k), rep.knn(target, view, group, k=k))):
            assert mine.ids.tolist() == ref.ids.tolist(), (view, group, k)


def view_arrays(s, view):
    """Every stored array of a view, read back through the store."""
    info = s.store.view(view)
    out = {"pids": np.stack([s.store.pids(view, j) for j in range(info.neurons)])}
    for seg in info.segments:
        with tables.open_file(str(s.index_path / seg.file)) as h:
            for name in ARRAYS[1:]:
                out[name] = h.get_node("/" + name)[:]
    return out


def files(path: Path) -> set[str]:
    return {p.name for p in (path / "views").iterdir()} if (path / "views").exists() else set()


def referenced(path: Path) -> set[str]:
    if not (path / "index.json").exists():   # nothing committed yet
        return set()
    doc = json.loads((path / "index.json").read_text())
    return {Path(seg["file"]).name for v in doc["views"].values() for seg in v["segments"]}


def test_close_and_reopen_gives_identical_answers(digits_cnn, tmp_path):
    model, x, y = digits_cnn
    path = tmp_path / "idx"
    s = em.Session(model, x, index=path)
    s.build_index(["conv1", "fc1"], wait=True)
    before = _queries(s)
    s.close()
    assert (path / "index.json").exists() and len(files(path)) == 2
    s2 = em.Session(model, x, index=path, lazy=False)
    assert set(s2.indexed()) == {"conv1", "fc1"}
    assert _queries(s2) == before
    s2.close()


def test_a_manifest_with_the_old_keys_still_opens(digits_cnn, tmp_path):
    """The manifest names a view's settings neurons, partitions, list_fraction, list_length; one
    written before (m, P, ratio, t) opens with the same settings and the same answers."""
    model, x, _ = digits_cnn
    path = tmp_path / "idx"
    s = em.Session(model, x, index=path, partitions=16, ratio=0.05)   # lists of 92 inputs
    s.build_index(["conv1", "fc1"], wait=True)
    before, infos = _queries(s), s.indexed()
    s.close()
    doc = json.loads((path / "index.json").read_text())
    renames = {"neurons": "m", "partitions": "P", "list_fraction": "ratio", "list_length": "t"}
    for entry in doc["views"].values():
        assert {k: entry[k] for k in renames} == {"neurons": 512 if entry["name"] == "conv1" else 32,
                                                  "partitions": 16, "list_fraction": 0.05, "list_length": 92}
        for new, old in renames.items():
            entry[old] = entry.pop(new)
    (path / "index.json").write_text(json.dumps(doc))
    s2 = em.Session(model, x, index=path, lazy=False)
    assert s2.indexed() == infos
    assert _queries(s2) == before
    s2.close()


def test_view_to_json_is_the_one_wire_format(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    with em.Session(model, x, index=tmp_path / "idx", partitions=8, ratio=0.05) as s:
        s.build_index(["fc1"], wait=True)
        info = s.indexed()["fc1"]
        assert info.to_json() == {
            "name": "fc1", "neurons": 32, "inputs": s.n, "partitions": 8, "scheme": info.scheme,
            "list_length": 92, "list_fraction": 0.05, "bytes": info.bytes_on_disk,
            "full_bytes": 4 * 32 * s.n, "size_ratio": info.bytes_on_disk / (4 * 32 * s.n), "files": 1,
            "build_seconds": info.build["seconds_total"]}
        assert json.loads(json.dumps(info.to_json())) == info.to_json()


def test_complete_views_are_not_built_again_unless_asked(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "idx")
    s.build_index(["fc1"], wait=True)
    first = files(tmp_path / "idx")
    stats = s.build_index(["fc1", "conv2:mean"], wait=True).result()
    assert stats["fc1"] == {"skipped": "already indexed"} and stats["conv2:mean"]["n"] == s.n
    assert first < files(tmp_path / "idx")            # fc1's file untouched, one more view
    again = s.build_index(["fc1"], wait=True, rebuild=True).result()
    assert again["fc1"]["n"] == s.n
    assert not first & files(tmp_path / "idx")         # the rebuilt view's old file is gone
    assert_exact(s, "fc1")
    s.close()


def test_changed_model_or_data_is_refused_with_rebuild_advice(digits_cnn, tmp_path):
    model, x, y = digits_cnn
    path = tmp_path / "idx"
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
    with pytest.raises(em.StaleIndexError, match="extend"):   # more inputs than indexed: extend is suggested
        em.Session(model, torch.cat([x, x[:3]]), index=path)
    s = em.Session(other, x, index=path, rebuild=True)
    assert s.indexed() == {}
    s.close()


def test_files_and_folders_that_are_not_an_index_are_refused(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(em.IndexFormatError, match="is a file, not an everest index folder.*rebuild=True"):
        em.Session(model, x, index=bad)
    plain = tmp_path / "plain.h5"
    with tables.open_file(str(plain), "w") as h:
        h.create_array("/", "a", np.arange(3))
    with pytest.raises(em.IndexFormatError, match="HDF5 file that is not an everest index"):
        em.Session(model, x, index=plain)
    old = tmp_path / "old.h5"
    with tables.open_file(str(old), "w") as h:
        h.root._v_attrs["format_version"] = 2
    with pytest.raises(em.IndexFormatError, match="single-file everest index of format 2.*rebuild=True"):
        em.Session(model, x, index=old)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(em.IndexFormatError, match="folder that is not an everest index"):
        em.Session(model, x, index=folder)
    with pytest.raises(em.IndexFormatError, match="does not delete folders"):
        em.Session(model, x, index=folder, rebuild=True)
    assert (folder / "notes.txt").read_text() == "keep me"
    for path in (bad, plain, old):   # rebuild=True replaces a file with an index folder
        with em.Session(model, x, index=path, rebuild=True) as s:
            s.build_index("fc1", wait=True)
            assert path.is_dir() and set(s.indexed()) == {"fc1"}
    (old / "index.json").write_text("{not json")
    with pytest.raises(em.IndexFormatError, match="index.json is damaged.*rebuild=True"):
        em.Session(model, x, index=old)


def test_a_build_killed_before_its_first_commit_leaves_an_index_that_opens(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    path = tmp_path / "idx"
    (path / "views").mkdir(parents=True)
    (path / "locks").mkdir()
    (path / ".lock").write_text("")
    (path / "views" / "v_fc1_ac1556de.0123456789ab.h5.partial").write_bytes(b"half a file")
    with em.Session(model, x, index=path) as s:
        assert s.indexed() == {} and files(path) == set()
        s.build_index("fc1", wait=True)
        assert set(s.indexed()) == {"fc1"}


def test_cancelled_build_leaves_previous_views_untouched(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    path = tmp_path / "idx"
    s = em.Session(model, x, index=path, batch_size=8)
    s.build_index("fc1", wait=True)
    before = {f: (path / "views" / f).read_bytes() for f in files(path)}
    manifest = (path / "index.json").read_bytes()
    job = s.build_index(["conv1", "conv2"])
    while job.done_units < 300 and not job.is_done():
        time.sleep(0.005)
    assert job.cancel()
    with pytest.raises(em.JobCancelled):
        job.result(60)
    assert job.status == "cancelled"
    assert {f: (path / "views" / f).read_bytes() for f in files(path)} == before
    assert (path / "index.json").read_bytes() == manifest
    assert set(s.indexed()) == {"fc1"}
    assert len(s.topk("fc1", [0, 1], k=5).ids) == 5   # the session stays usable
    s.close()


SCRIPT_HEAD = """
import sys, json, torch
sys.path.insert(0, {root!r})
import everest_magic as em
from everest_magic import examples as ex
model = ex.DigitsCNN()
model.load_state_dict(torch.load({weights!r}, weights_only=True))
x = torch.load({data!r})
s = em.Session(model, x, index={index!r}, batch_size=8)
"""
KILL_SCRIPT = SCRIPT_HEAD + """
print("ready", flush=True)
views = ["fc1", "conv2:mean", "conv1", "conv2"]
for i in range(int(sys.argv[1]), 1000):   # each run starts with another view
    s.build_index([views[i % 4]], wait=True, rebuild=True)
"""


def test_sigkill_at_random_moments_never_leaves_a_wrong_or_partial_view(digits_cnn, tmp_path):
    """20+ builds killed with SIGKILL at random moments: after the next open no partial or
    unreferenced file remains, every view present equals a clean build of it array for array
    (so it is exact), and building again resumes with the missing views."""
    model, x, _ = digits_cnn
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save(x, tmp_path / "x.pt")
    path = tmp_path / "killed"
    views = ["fc1", "conv2:mean", "conv1", "conv2"]
    ref = em.Session(model, x, index=tmp_path / "ref", batch_size=8)
    ref.build_index(views, wait=True)
    expected = {v: view_arrays(ref, v) for v in views}
    script = KILL_SCRIPT.format(root=ROOT, weights=str(tmp_path / "w.pt"), data=str(tmp_path / "x.pt"), index=str(path))
    rng = random.Random(7)
    seen_views, partial_seen = set(), 0
    for run in range(21):
        p = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        if run % 2:    # a random moment: a view is often not being written then (sample pass, commit)
            time.sleep(rng.uniform(0.0, 2.5))
        else:          # while a view file is being written, whatever this machine's speed
            until = time.time() + 60
            while not any(f.endswith(".partial") for f in files(path)) and time.time() < until:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        partial_seen += any(f.endswith(".partial") for f in files(path))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        s = em.Session(model, x, index=path, batch_size=8, lazy=False)
        assert not any(f.endswith(".partial") for f in files(path))
        assert files(path) == referenced(path)
        for v in s.indexed():
            got = view_arrays(s, v)
            for name, arr in expected[v].items():
                np.testing.assert_array_equal(got[name], arr, err_msg=f"{v}/{name}")
            seen_views.add(v)
        s.close()
    assert partial_seen >= 5 and len(seen_views) >= 2, (partial_seen, seen_views)   # kills landed mid-write; builds finished
    s = em.Session(model, x, index=path, batch_size=8)
    s.build_index(views, wait=True)                # resumes: builds only what is missing
    for v in views:
        assert_exact(s, v, count=2)
    s.close(), ref.close()


PROC_SCRIPT = SCRIPT_HEAD + """
stats = s.build_index([sys.argv[1]], wait=True).result()
print(json.dumps({{v: sorted(d) for v, d in stats.items()}}), flush=True)
"""


def test_two_processes_on_one_index(digits_cnn, tmp_path):
    """Different views built at once both land; the same view is built once (the other waits
    and then skips it); a query during another process's build works."""
    model, x, _ = digits_cnn
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save(x, tmp_path / "x.pt")
    path = tmp_path / "shared"
    script = PROC_SCRIPT.format(root=ROOT, weights=str(tmp_path / "w.pt"), data=str(tmp_path / "x.pt"), index=str(path))
    s = em.Session(model, x, index=path, batch_size=8)
    s.build_index("fc1", wait=True)
    procs = [subprocess.Popen([sys.executable, "-c", script, v], stdout=subprocess.PIPE, text=True)
             for v in ("conv1", "conv2", "conv2:mean", "conv2:mean")]
    answers = []
    while any(p.poll() is None for p in procs):   # queries meanwhile
        answers.append(s.topk("fc1", [1, 2], k=5).ids.tolist())
        time.sleep(0.05)
    outs = [json.loads(p.stdout.read()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(map(tuple, answers))) == 1
    same = [o["conv2:mean"] for o in outs[2:]]
    assert sorted(keys == ["skipped"] for keys in same) == [False, True], same   # built once
    assert "n" in outs[0]["conv1"] and "n" in outs[1]["conv2"]
    s.store.refresh()
    assert set(s.indexed()) == {"fc1", "conv1", "conv2", "conv2:mean"}
    assert files(path) == referenced(path)
    for v in ("conv1", "conv2", "conv2:mean"):
        assert_exact(s, v, count=2)
    s.close()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


@pytest.mark.parametrize("array", ARRAYS)
def test_a_flipped_byte_in_any_array_is_an_error_never_a_wrong_answer(digits_cnn, tmp_path, array):
    model, x, _ = digits_cnn
    path = tmp_path / "idx"
    with em.Session(model, x, index=path, batch_size=8) as s:
        s.build_index(["conv2"], wait=True)
        seg = s.store.view("conv2").segments[0]
    file = path / seg.file
    with tables.open_file(str(file)) as h:
        node = h.get_node("/" + array)
        coords = (17, 0) + (0,) * (node.ndim - 2) if array == "pids" else (0,) * node.ndim
        info = node.chunk_info(coords)
    _flip(file, info.offset + info.size // 2)
    s = em.Session(model, x, index=path, batch_size=8)
    with pytest.raises(em.IndexFormatError, match=r"views/.*conv2.*damaged.*rebuild=True") as e:
        s.store.verify("conv2")
    assert len(str(e.value).splitlines()) == 1 and "HDF5-DIAG" not in str(e.value)
    rep = ReprocessAll(s)
    for group in ([17], [17, 3, 200], list(range(0, 256, 9))):   # never a wrong answer
        for run in (lambda o: o.topk("conv2", group, k=10), lambda o: o.knn(5, "conv2", group, k=10)):
            try:
                got = run(s).ids.tolist()
            except em.IndexFormatError:
                continue
            assert got == run(rep).ids.tolist()
    if array == "cuts":
        with pytest.raises(em.IndexFormatError):
            s.extend(x[:5])
    s.close()


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_gives_a_clear_error_and_keeps_earlier_views(digits_cnn, tiny_disk, monkeypatch):
    model, x, _ = digits_cnn
    path = tiny_disk / "idx"
    s = em.Session(model, x, index=path, batch_size=8)
    s.build_index("fc1", wait=True)
    before = _queries_fc1(s)
    with pytest.raises(em.IndexWriteError, match=r"not enough disk space.*conv1.*MB needed.*MB free.*intact") as e:
        s.build_index(["conv1", "conv2"], wait=True).result()
    assert str(path) in str(e.value)
    # without the estimate, the write itself hits the full disk
    monkeypatch.setattr("everest_magic.engine.build._check_space", lambda *a: None)
    with pytest.raises(em.IndexWriteError, match=r"disk space.*idx.*intact"):
        s.build_index(["conv1", "conv2"], wait=True).result()
    assert not any(f.endswith(".partial") for f in files(path))
    assert set(s.indexed()) == {"fc1"} and _queries_fc1(s) == before
    s.close()
    with em.Session(model, x, index=path, batch_size=8) as again:
        assert set(again.indexed()) == {"fc1"} and _queries_fc1(again) == before


def _queries_fc1(s):
    return [s.topk("fc1", [1, 5], k=9).ids.tolist(), s.knn(3, "fc1", [0, 2, 4], k=7).ids.tolist()]


def test_a_read_only_index_answers_but_does_not_build(digits_cnn, tmp_path):
    if os.geteuid() == 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("root ignores permissions and cannot mount here")
    else:
        ro = tmp_path / "ro"
    model, x, _ = digits_cnn
    path = ro / "idx"
    with em.Session(model, x, index=path, batch_size=8) as s:
        s.build_index("fc1", wait=True)
        before = _queries_fc1(s)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        s = em.Session(model, x, index=path, batch_size=8)
        assert _queries_fc1(s) == before
        with pytest.raises(em.QueryError, match="view 'conv1' is not in the index and the index .* is read-only"):
            s.topk("conv1", [0], k=3)
        with pytest.raises(em.EverestError, match="read-only"):
            s.build_index("conv1", wait=True).result()
        s.close()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)


RSS_SCRIPT = """
import sys, resource, torch, numpy as np
sys.path.insert(0, {root!r})
import everest_magic as em
from everest_magic import examples as ex
x, _ = ex.load_mnist("train")
x = x[:20000].clone()
torch.manual_seed(0)
model = ex.MnistCNN().eval()
s = em.Session(model, x, index={index!r}, memory_budget={budget})
s.build_index(["fc1"], wait=True)          # warm: the kernels, the allocator, one full pass

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")   # reset the peak
base = rss("VmRSS:")
stats = s.build_index(["conv1"], wait=True).result()["conv1"]
print(rss("VmHWM:") - base, stats["planned_bytes"], stats["cut_sample"], stats["block_inputs"], flush=True)
"""


def test_a_view_larger_than_the_memory_budget_builds_within_it(tmp_path):
    """conv1 of the MNIST CNN over 20,000 images is 1.0 GB of float32, over 4x a 192 MB budget."""
    budget = 192 << 20
    script = RSS_SCRIPT.format(root=ROOT, index=str(tmp_path / "idx"), budget=budget)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    growth, planned, sample, width = map(int, out.stdout.split())
    assert 12544 * 20000 * 4 > 4 * budget
    assert planned <= budget and sample < 8192
    assert growth < budget + (96 << 20), (growth / 2**20, planned / 2**20)


def test_extend_adds_inputs_without_a_rebuild(digits_cnn, tmp_path):
    model, x, y = digits_cnn
    path = tmp_path / "grow"
    s = em.Session(model, x[:1500], index=path, labels=y[:1500], batch_size=8)
    s.build_index(["conv1", "conv2:mean", "fc1"], wait=True)
    cuts = s.store.cuts("conv1")
    stats = s.extend(x[1500:], labels=y[1500:]).result()
    assert set(stats) == {"conv1", "conv2:mean", "fc1"} and s.n == len(x) and len(s.labels) == len(x)
    assert [len(v.segments) for v in s.indexed().values()] == [2, 2, 2]
    np.testing.assert_array_equal(s.store.cuts("conv1"), cuts)        # the cuts stay
    for v in ("conv1", "conv2:mean", "fc1"):
        counts, _ = s.store.summary(v)
        assert (counts.sum(axis=1) == len(x)).all()
        assert_exact(s, v, seed=3, count=4)
    assert s.topk("fc1", [3], k=5).labels is not None
    s.close()
    with pytest.raises(em.StaleIndexError, match="different data"):
        em.Session(model, x[:1500], index=path)
    with em.Session(model, x, index=path, batch_size=8) as again:   # the grown data opens it
        assert_exact(again, "conv1", seed=4, count=2)


def test_torch_backend_equals_the_numba_backend(digits_cnn, tmp_path):
    """The device code path (used on CUDA) run on CPU tensors gives the same arrays."""
    model, x, _ = digits_cnn
    arrays = []
    for backend in ("numba", "torch"):
        s = em.Session(model, x, index=tmp_path / backend, batch_size=8, ratio=0.01)
        build_views(s.runner, s.store, [s.view(v) for v in ("conv1", "conv2:max", "fc1")], backend=backend,
                    memory_budget=8 << 20)
        assert {i.build["backend"] for i in s.indexed().values()} == {backend}
        arrays.append({v: view_arrays(s, v) for v in ("conv1", "conv2:max", "fc1")})
        s.close()
    for v in arrays[0]:
        for name in arrays[0][v]:
            np.testing.assert_array_equal(arrays[0][v][name], arrays[1][v][name], err_msg=f"{v}/{name}")


def test_index_layout_partitions_and_lists(digits_cnn, tmp_path):
    """Partition ids of every input, partitions ordered by value with exact bounds, exact lists."""
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "i", partitions=16, ratio=0.05, memory_budget=1 << 20)
    s.build_index(["conv2"], wait=True)
    A = ReprocessAll(s).all_activations("conv2")
    counts, bounds = s.store.summary("conv2")
    info = s.store.view("conv2")
    assert info.list_length == int(np.ceil(0.05 * s.n))
    assert info.segments[0].width < s.n     # several chunks a row under this budget
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
        nz = counts[neuron] > 0   # partitions are ordered by value, and equal values share one
        assert np.all(bounds[neuron, nz, 1][:-1] < bounds[neuron, nz, 0][1:])
        top_ids, top_vals = s.store.extremes("conv2", neuron)
        order = np.lexsort((np.arange(s.n), -A[:, neuron]))[: info.list_length]
        assert top_ids.tolist() == order.tolist()
        np.testing.assert_array_equal(top_vals, A[order, neuron])
        bot_ids, bot_vals = s.store.extremes("conv2", neuron, highest=False)
        order = np.lexsort((np.arange(s.n), A[:, neuron]))[: info.list_length]
        assert bot_ids.tolist() == order.tolist()
        np.testing.assert_array_equal(bot_vals, A[order, neuron])
    zeros = (A == 0).sum(0)   # a ReLU unit that is 0 for many inputs: its zeros get partition 0
    neuron = int(np.argmax(np.where(zeros < s.n, zeros, 0)))
    assert zeros[neuron] > s.n // 4
    assert counts[neuron, 0] == zeros[neuron] and bounds[neuron, 0].tolist() == [0.0, 0.0]
    doc = json.loads((tmp_path / "i" / "index.json").read_text())
    assert doc["format_version"] == 3 and doc["model_fingerprint"] == s.model_fingerprint and doc["n"] == s.n
    assert info.build["seconds_total"] > 0 and info.definition["layer"] == "conv2"
    s.close()


def test_partition_ids_are_readable_by_plain_pytables(digits_cnn, tmp_path):
    """The chunks written directly are ordinary blosc-filtered HDF5 data."""
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "i", memory_budget=4 << 20)
    s.build_index(["conv1"], wait=True)
    info = s.store.view("conv1")
    mine = np.stack([s.store.pids("conv1", j) for j in range(info.neurons)])
    s.close()
    with tables.open_file(str(tmp_path / "i" / info.segments[0].file)) as h:
        node = h.root.pids
        assert node.filters.complib == "blosc:zstd" and node.chunkshape == (1, info.segments[0].width)
        np.testing.assert_array_equal(node[:], mine)
        assert node.size_on_disk < node.size_in_memory / 2
        assert all(h.get_node("/" + a).filters.fletcher32 for a in ARRAYS)


def test_a_small_memory_budget_plans_a_smaller_sample_and_stays_exact(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "small", memory_budget=1 << 20, batch_size=8)
    stats = s.build_index(["conv1", "conv2:mean"], wait=True).result()
    assert stats["conv1"]["cut_sample"] < s.n and stats["conv1"]["block_inputs"] < s.n
    for v in ("conv1", "conv2:mean"):
        assert_exact(s, v, seed=5, count=3)
    s.close()


def test_small_lists_hold_at_least_min_list_inputs(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "i", ratio=0.002)   # ceil(0.002 n) = 4
    s.build_index(["fc1"], wait=True)
    assert s.store.view("fc1").list_length == 32
    r = s.topk("fc1", [3], k=30)      # a single neuron, k within its list: no model run
    assert r.stats.inputs_recomputed == 0
    s2 = em.Session(model, x, index=tmp_path / "j", ratio=0.0)
    s2.build_index(["fc1"], wait=True)
    assert s2.store.view("fc1").list_length == 0
    assert_exact(s2, "fc1", count=2)
    s.close(), s2.close()


def test_lazy_build_on_first_query(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "lazy")
    assert s.indexed() == {}
    r = s.topk("conv2:max", [3], k=4)
    assert "conv2:max" in s.indexed() and len(r.ids) == 4
    s.close()


def test_partitions_default_to_the_largest_that_fit_the_size_budget(digits_cnn, tmp_path):
    from everest_magic.engine.build import P_CANDIDATES
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "auto")
    s.build_index(["conv1"], wait=True)
    info = s.indexed()["conv1"]
    assert info.partitions in P_CANDIDATES and info.build["partitions"] == "auto"
    assert info.size_ratio <= 0.15, (info.partitions, info.size_ratio)
    assert 0.6 * info.size_ratio < info.build["estimated_size_ratio"] < 1.5 * info.size_ratio
    Ps = []
    for budget in (0.08, 0.3):
        with em.Session(model, x, index=tmp_path / f"b{budget}", size_budget=budget) as b:
            b.build_index(["conv1"], wait=True)
            Ps.append(b.indexed()["conv1"].partitions)
    assert Ps[0] < info.partitions < Ps[1]
    s.close()


def test_fletcher32_matches_hdf5(tmp_path):
    """The checksum written with direct chunk writes is the one HDF5's own filter computes."""
    from everest_magic.engine.kernels import fletcher32
    rng = np.random.default_rng(0)
    with tables.open_file(str(tmp_path / "f.h5"), "w") as h:
        for i, width in enumerate((1, 2, 719, 720, 721, 5000)):
            a = h.create_carray("/", f"a{i}", obj=rng.integers(0, 256, (1, width), dtype=np.uint8),
                                filters=tables.Filters(fletcher32=True))
            h.flush()
            raw = a.read_chunk((0, 0))
            assert raw[-4:] == int(fletcher32(np.frombuffer(raw[:-4], np.uint8))).to_bytes(4, "little"), width
