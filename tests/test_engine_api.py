"""The engine's public surface: bad input, adapters, views, cache, jobs, layering."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import everest_magic as em
from everest_magic.engine.baselines import PreprocessAll, ReprocessAll


@pytest.fixture(scope="module")
def session(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    s = em.Session(model, x, index=tmp_path_factory.mktemp("api") / "i.h5", labels=y)
    s.build_index(["conv2", "fc1"], wait=True)
    yield s
    s.close()


@pytest.mark.parametrize("call, match", [
    (lambda s: s.topk("conv3", [0]), r"unknown layer 'conv3'; did you mean 'conv2', 'conv1'"),
    (lambda s: s.topk("fc", [0]), r"unknown layer 'fc'.*'fc1'"),
    (lambda s: s.topk("conv2:avg", [0]), r"unknown view reduction 'avg'"),
    (lambda s: s.topk("conv2", [256]), r"neuron 256 is out of range: view 'conv2' has 256 neurons \(shape \(16, 4, 4\)\)"),
    (lambda s: s.topk("conv2", [-1]), r"neuron -1 is out of range"),
    (lambda s: s.topk("conv2", [(16, 0, 0)]), r"index 16 on axis 0 is out of range \[0, 16\)"),
    (lambda s: s.topk("conv2", [(1, 2)]), r"has 2 indices; view 'conv2' has shape \(16, 4, 4\)"),
    (lambda s: s.topk("conv2", []), r"the neuron group is empty"),
    (lambda s: s.topk("conv2", ["a"]), r"a neuron must be an int or an index tuple"),
    (lambda s: s.topk("conv2", [1], k=0), r"k must be >= 1, got 0"),
    (lambda s: s.topk("conv2", [1], k=-5), r"k must be >= 1"),
    (lambda s: s.topk("conv2", [1], k=2.5), r"k must be a positive int"),
    (lambda s: s.topk("conv2", [1, 2], by=[1.0, -0.5]), r"weight 1 is negative \(-0.5\)"),
    (lambda s: s.topk("conv2", [1, 2], by=[1.0]), r"1 weights given for a group of 2 neurons"),
    (lambda s: s.topk("conv2", [1], by="summ"), r"unknown aggregation 'summ'; did you mean 'sum'"),
    (lambda s: s.knn("seven", "conv2", [1]), r"knn target must be an input id .* got str"),
    (lambda s: s.knn(10**6, "conv2", [1]), r"input id 1000000 is out of range"),
    (lambda s: s.knn(torch.zeros(3, 3), "conv2", [1]), r"target tensor has shape \(3, 3\); an input of this dataset has shape \(1, 8, 8\)"),
    (lambda s: s.knn(3, "conv2", [1], metric="l3"), r"unknown metric 'l3'"),
    (lambda s: s.topk("conv2", [1], filter=[5000]), r"input ids must lie in"),
    (lambda s: s.topk("conv2", [1], filter=np.ones(3, bool)), r"a boolean filter needs one entry per input"),
])
def test_bad_input_gets_a_clear_error(session, call, match):
    with pytest.raises(em.EverestError, match=match):
        call(session)


def test_bad_session_arguments(digits_cnn):
    model, x, y = digits_cnn
    with pytest.raises(em.QueryError, match="model must be a torch.nn.Module"):
        em.Session("net", x)
    with pytest.raises(em.QueryError, match="labels for"):
        em.Session(model, x, labels=y[:10])
    with pytest.raises(em.QueryError, match="dataset is empty"):
        em.Session(model, x[:0])


def test_unknown_layer_error_lists_names(session):
    with pytest.raises(em.UnknownNameError) as e:
        session.view("conv")
    assert "conv1" in e.value.suggestions and "conv2" in e.value.suggestions


def test_results_as_data(session):
    r = session.topk("conv2", [(1, 0, 0), (2, 1, 1)], k=5, by="mean")
    assert r.neurons.tolist() == [16, 37]
    df = r.to_frame()
    assert list(df.columns) == ["rank", "id", "score", "label"]
    assert df["id"].tolist() == r.ids.tolist()
    assert (df["label"].to_numpy() == session.labels[r.ids]).all()
    assert np.all(np.diff(r.scores) <= 0)
    assert r.stats.as_dict()["n"] == session.n
    assert "topk k=5" in repr(r)
    b = session.bottomk("conv2", [16, 37], k=5, by="mean")
    assert np.all(np.diff(b.scores) >= 0)


def test_single_neuron_topk_within_top_list_runs_no_model(session):
    info = session.store.view("fc1")
    assert info.list_length >= 3
    passes = session.runner.forward_passes
    r = session.topk("fc1", [7], k=info.list_length)
    assert r.stats.inputs_recomputed == 0 and session.runner.forward_passes == passes
    r = session.bottomk("fc1", [7], k=info.list_length, by="max")
    assert r.stats.inputs_recomputed == 0


def test_cache_is_reused_and_bounded(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "c.h5", cache_bytes=1 << 20)
    s.build_index("conv1", wait=True)
    group = s.top_neurons(11, "conv1", 10)
    first = s.knn(11, "conv1", group, k=20)
    again = s.knn(11, "conv1", group, k=20)
    assert first.stats.inputs_recomputed > 0 and again.stats.inputs_recomputed == 0
    assert again.stats.inputs_from_cache > 0 and again.ids.tolist() == first.ids.tolist()
    s.knn(12, "conv1", s.top_neurons(12, "conv1", 10), k=200)
    assert s.cache.bytes <= 1 << 20 and len(s.cache) > 0
    s.close()


def test_history_keeps_the_latest_results(session, monkeypatch):
    monkeypatch.setattr(session, "history", type(session.history)(maxlen=3))
    results = [session.topk("fc1", [j], k=2) for j in range(5)]
    assert list(session.history) == results[-3:]


def test_activation_source_is_shared_by_queries_and_fetches(session):
    """The session's source serves queries (batch sizes checked once per view) and any view by id."""
    v = session.view("fc1")
    sizes = session.batch_sizes("fc1")
    assert session.source.batch_sizes(v) == sizes and sizes[-1] == session.runner.batch_size
    assert session.source.is_checked("fc1") and session.source.check_rows("fc1") >= sizes[-1]
    ids = np.array([5, 3, 900])
    rows = session.source.fetch(v, ids)
    assert np.array_equal(rows, session.activations("fc1", ids))
    assert np.array_equal(rows, ReprocessAll(session).all_activations("fc1")[ids])
    assert session.allowed([1, 4]).nonzero()[0].tolist() == [1, 4] and session.input_id(np.int64(7)) == 7


def test_shapes_of_views_not_indexed_come_from_the_layer_shape(digits_cnn, tmp_path):
    """A built-in view's shape is derived from its layer's output shape (one input through the
    model once per layer), equal to running the view on a whole batch; a user function's view
    still runs it."""
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "i.h5", batch_size=16)
    s.add_view("conv2_top", "conv2", lambda out, batch: out[:, :3, 0])
    try:
        names = ("conv1", "conv1:mean", "conv2", "conv2:mean", "conv2:max", "fc1", "conv2_top")
        shapes = {name: s.shape(name) for name in names}
        for name in names:
            assert shapes[name] == s.runner.view_shapes([s.view(name)])[0], name
        assert shapes["conv2"] == (16, 4, 4) and shapes["conv2:max"] == (16,) and shapes["conv2_top"] == (3, 4)
        passes = s.runner.forward_passes
        assert [s.shape(name) for name in names[:-1]] == [shapes[n] for n in names[:-1]]   # layers seen: no pass
        assert s.runner.forward_passes == passes
        assert s.shape("conv2_top") == (3, 4) and s.runner.forward_passes == passes + 1
        mixed = [s.view(name) for name in ("conv2", "conv2_top", "fc1", "conv2_top")]   # as inspect asks
        assert s.source.view_shapes(mixed) == [shapes["conv2"], (3, 4), shapes["fc1"], (3, 4)]
        assert s.runner.forward_passes == passes + 2                                   # one batch for both
    finally:
        s.close()


def test_job_progress_and_result(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    s = em.Session(model, x, index=tmp_path / "j.h5", batch_size=16)
    seen = []
    job = s.build_index(["conv1"], wait=False)
    job.on_change(lambda j: seen.append(j.done_units))
    stats = job.result(120)
    assert job.status == "done" and job.progress == 1.0 and stats["conv1"]["n"] == s.n
    assert job.total == s.n + stats["conv1"]["cut_sample"] and seen and max(seen) == job.total
    assert not job.cancel()
    s.close()


def test_baselines_answer_the_same(session, tmp_path):
    pre = PreprocessAll(session, tmp_path / "full.h5")
    pre.materialise(["conv2"])
    assert pre.size("conv2") > session.store.view("conv2").bytes_on_disk
    rep = ReprocessAll(session)
    for q in [lambda o: o.topk("conv2", [3, 40, 77], k=9, by="max"),
              lambda o: o.bottomk("conv2", [3, 40], k=30),
              lambda o: o.knn(99, "conv2", [3, 40, 77, 100], k=12, metric="linf")]:
        a, b, c = q(session), q(pre), q(rep)
        assert a.ids.tolist() == b.ids.tolist() == c.ids.tolist()
        assert c.stats.inputs_recomputed == session.n and b.stats.inputs_recomputed == 0


def test_torch_dataset_and_custom_view(digits_cnn, tmp_path):
    model, x, y = digits_cnn

    class Digits(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], int(y[i])

    s = em.Session(model, Digits(), index=tmp_path / "d.h5")
    s.add_view("conv1:energy", "conv1", lambda out, batch: (out ** 2).sum(dim=(2, 3)))
    assert s.shape("conv1:energy") == (8,)
    r = s.topk("conv1:energy", [2], k=5)
    A = ReprocessAll(s).all_activations("conv1:energy")
    assert r.ids.tolist() == np.lexsort((np.arange(s.n), -A[:, 2]))[:5].tolist()
    layers = {row["layer"]: row for row in s.layers()}
    assert layers["conv2"]["shape"] == (16, 4, 4) and layers["conv1"]["indexed"] == ["conv1:energy"]
    s.close()


def test_engine_imports_no_ipython_or_widgets():
    code = ("import sys, everest_magic, everest_magic.engine, everest_magic.engine.baselines;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipywidgets', 'ipykernel', 'anywidget')];"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
