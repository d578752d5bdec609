"""Widgets on a real trained model and real data: thumbnails, gallery drill-down, progress, histogram."""
from __future__ import annotations

import base64
import io
import re
import threading
import zlib

import ipywidgets
import numpy as np
import pytest
import torch
from PIL import Image

import everest_magic as em
from everest_magic import examples as ex
from everest_magic.engine.errors import QueryError
from everest_magic.engine.baselines import ReprocessAll
from everest_magic.widgets import Gallery, JobProgress, is_image, result_histogram, snippet, static_html, thumbnail_png
from everest_magic.widgets.histogram import score_bounds

K = 8
VIEW = "conv2"
GROUP = [5, 17, 100]
TIMEOUT = 120


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture(scope="module")
def digits():
    return ex.trained_digits_cnn(epochs=5)


@pytest.fixture(scope="module")
def session(digits, tmp_path_factory):
    model, x, y = digits
    s = em.Session(model, x, index=tmp_path_factory.mktemp("widgets") / "i.h5", labels=y)
    yield s
    s.close()


@pytest.fixture(scope="module")
def top(session):
    return session.topk(VIEW, GROUP, k=K)


@pytest.fixture()
def no_worker_widgets(monkeypatch):
    """Records the threads on which widgets are constructed: all must be the main thread."""
    threads: list[str] = []
    monkeypatch.setattr(ipywidgets.Widget, "_widget_construction_callback",
                        lambda w: threads.append(threading.current_thread().name))
    yield threads
    assert set(threads) <= {threading.main_thread().name}, threads


# -- thumbnails ------------------------------------------------------------------------------
def test_thumbnail_grayscale_upscaled_crisply():
    a = np.arange(64, dtype=np.float32).reshape(8, 8) / 63.0
    img = png(thumbnail_png(a, size=96))
    assert img.size == (96, 96) and img.mode == "L"
    px = np.asarray(img)
    assert px.min() == 0 and px.max() == 255
    # nearest neighbour by an integer factor: each source pixel is a flat 12x12 block
    assert np.all(px.reshape(8, 12, 8, 12) == px[::12, ::12][:, None, :, None])
    assert png(thumbnail_png(torch.from_numpy(a)[None], size=96)).size == (96, 96)       # (1, H, W) tensor
    assert png(thumbnail_png(torch.from_numpy(a)[None, None], size=40)).size == (40, 40)  # factor 5


def test_thumbnail_rgb_layouts_and_value_ranges():
    rng = np.random.default_rng(0)
    chw = torch.randn(3, 10, 12) * 50 - 7        # any range
    img = png(thumbnail_png(chw, size=96))
    assert img.mode == "RGB" and img.size == (96, 80)   # factor 8 (96 // 12), width x height
    hwc = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    assert png(thumbnail_png(hwc, size=96)).size == (96, 80)
    big = rng.random((300, 200, 3))
    assert max(png(thumbnail_png(big, size=96)).size) == 96   # large images are reduced to fit


def test_thumbnail_constant_and_nonfinite_images():
    for value in (0.0, 1.0, 7.0, -3.0):
        img = png(thumbnail_png(np.full((8, 8), value, np.float32)))
        assert img.size == (96, 96) and len(set(np.asarray(img).ravel())) == 1
    assert np.asarray(png(thumbnail_png(np.ones((8, 8))))).max() == 255
    a = np.zeros((8, 8))
    a[0, 0], a[1, 1] = np.nan, 1.0
    assert png(thumbnail_png(a)).size == (96, 96)


def test_is_image_and_snippet():
    assert is_image(torch.zeros(1, 8, 8)) and is_image(np.zeros((8, 8, 3))) and is_image(np.zeros((8, 8)))
    assert not is_image("a sentence") and not is_image(torch.zeros(10)) and not is_image(np.zeros((5, 8, 8)))
    assert snippet("  a \n b\tc  ") == "a b c"
    long = snippet("word " * 100, max_chars=30)
    assert len(long) == 30 and long.endswith("…")
    with pytest.raises(ValueError):
        thumbnail_png("not an image")


# -- gallery -----------------------------------------------------------------------------------
def test_gallery_levels_from_real_topk(session, top, digits):
    _, _, y = digits
    g = Gallery(top, session)
    assert len(g.levels) == 1 and g.selected == {} and g.status == "" and g.error == ""
    level = g.levels[0]
    assert level["kind"] == "topk" and level["view"] == VIEW
    assert [it["id"] for it in level["items"]] == top.ids.tolist()
    for it, score, label in zip(level["items"], top.scores, y[top.ids]):
        assert it["score"] == pytest.approx(float(score))
        assert it["score_text"] == f"{float(score):.4g}"
        assert it["label"] == int(label)
        assert it["text"] is None
        assert png(it["thumb"]).size == (96, 96)
    head = level["description"]
    st = top.stats
    for part in ("top-k", f"view {VIEW}", f"{len(GROUP)} neurons", f"k={K}",
                 f"{st.inputs_recomputed}/{session.n} inputs recomputed", " ms"):
        assert part in head, (part, head)
    # the synced state is JSON-friendly apart from the thumbnail bytes ipywidgets sends as buffers
    state = g.get_state()
    assert isinstance(state["levels"][0]["items"][0]["thumb"], bytes)
    assert g._esm.strip() and "render" in str(g._esm) and ".everest-gallery" in str(g._css)


def test_select_runs_knn_and_appends_level(session, top, no_worker_widgets):
    g = Gallery(top, session)
    seen = []
    g.on_select(lambda level, index, item_id, action, job: seen.append((level, index, item_id)))
    job = g.select(0)
    assert g.wait(TIMEOUT) and job.status == "done", (job, job.traceback)
    expected = session.knn(int(top.ids[0]), VIEW, top.neurons, K)
    assert len(g.levels) == 2
    assert [it["id"] for it in g.levels[1]["items"]] == expected.ids.tolist()
    assert g.results[1].kind == "knn" and g.results[1].params["metric"] == "l2"
    assert np.array_equal(g.results[1].neurons, top.neurons)
    assert seen == [(0, 0, int(top.ids[0]))]
    assert g.selected == {"level": 0, "index": 0, "id": int(top.ids[0]), "action": "knn"}
    assert g.status == "" and g.error == ""
    assert g.levels[1]["title"] == f"kNN #{int(top.ids[0])}"
    # a kNN from an item of the new level goes one level deeper
    g.select(2, level=1)
    assert g.wait(TIMEOUT)
    deeper = session.knn(int(expected.ids[2]), VIEW, top.neurons, K)
    assert len(g.levels) == 3 and [it["id"] for it in g.levels[2]["items"]] == deeper.ids.tolist()
    # selecting in level 0 again replaces every level after it
    g.select(1, level=0)
    assert g.wait(TIMEOUT)
    assert len(g.levels) == 2 and g.levels[1]["title"] == f"kNN #{int(top.ids[1])}"


def test_most_activated_neurons_action(session, top, no_worker_widgets):
    g = Gallery(top, session)
    item_id = int(top.ids[3])
    job = g.select(3, action="neurons")
    assert g.wait(TIMEOUT) and job.status == "done"
    expected = session.top_neurons(item_id, VIEW, 10)
    level = g.levels[-1]
    assert level["kind"] == "neurons" and level["items"] == [] and g.results[-1] is None
    assert level["neurons"] == expected.tolist()
    shown = [int(m) for m in re.findall(r"neuron (\d+)", level["text"])]
    assert shown == expected.tolist()
    with pytest.raises(QueryError):   # a text level has nothing to click
        g.select(0, level=-1)


def test_topk_of_most_activated_neurons_action(session, top, no_worker_widgets):
    g = Gallery(top, session)
    item_id = int(top.ids[1])
    job = g.select(1, action="topk")
    assert g.wait(TIMEOUT) and job.status == "done"
    neurons = session.top_neurons(item_id, VIEW, 10)
    expected = session.topk(VIEW, neurons, K, by="sum")
    assert [it["id"] for it in g.levels[-1]["items"]] == expected.ids.tolist()
    assert np.array_equal(g.results[-1].neurons, neurons)
    assert "10 neurons" in g.levels[-1]["description"]


def test_messages_select_and_breadcrumb_back(session, top, no_worker_widgets):
    g = Gallery(top, session)
    # the way a comm message from gallery.js arrives: Widget._handle_custom_msg(content, buffers)
    g._handle_custom_msg({"event": "select", "level": 0, "index": 2, "action": "knn"}, [])
    assert g.wait(TIMEOUT)
    g._handle_custom_msg({"event": "select", "level": 1, "index": 0, "action": "neurons"}, [])
    assert g.wait(TIMEOUT)
    assert [lv["kind"] for lv in g.levels] == ["topk", "knn", "neurons"]
    g._handle_custom_msg({"event": "back", "level": 1}, [])
    assert [lv["kind"] for lv in g.levels] == ["topk", "knn"] and len(g.results) == 2
    g._handle_custom_msg({"event": "back", "level": 0}, [])
    assert len(g.levels) == 1 and g.selected == {} and g.error == ""
    # bad messages show in the error trait instead of raising in the comm handler
    g._handle_custom_msg({"event": "select", "level": 0, "index": 99, "action": "knn"}, [])
    assert "out of range" in g.error
    g._handle_custom_msg({"event": "select", "level": 0, "index": 0, "action": "explode"}, [])
    assert "unknown gallery action" in g.error and len(g.levels) == 1


def test_failed_drilldown_shows_error(session, top):
    g = Gallery(top, session)

    def failing(item):
        raise RuntimeError("renderer broke")

    g.render = failing
    job = g.select(0)
    assert g.wait(TIMEOUT) and job.status == "failed"
    assert "renderer broke" in g.error and g.status == "" and len(g.levels) == 1


def test_injected_submit_and_custom_render(session, top):
    g = Gallery(top, session, submit=session.submit, render=lambda item: f"mean {float(item.mean()):.3f}")
    assert all(it["thumb"] is None and it["text"].startswith("mean ") for it in g.levels[0]["items"])
    job = g.select(0)
    assert job.id in session.jobs.jobs   # ran on the session's job queue
    assert g.wait(TIMEOUT) and job.status == "done"
    assert g.levels[-1]["items"][0]["text"].startswith("mean ")


def test_text_dataset_gallery(tmp_path):
    sentences = ex.python_sentences(300)
    vocab = 997

    def collate(texts):
        ids, offsets = [], []
        for t in texts:
            offsets.append(len(ids))
            ids += [zlib.crc32(w.encode()) % vocab for w in t.lower().split()] or [0]
        return {"input": torch.tensor(ids), "offsets": torch.tensor(offsets)}

    class BagModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(vocab, 16, mode="mean")
            self.fc = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU())

        def forward(self, input, offsets):   # a mapping batch is passed as keyword arguments
            return self.fc(self.bag(input, offsets))

    torch.manual_seed(0)
    with em.Session(BagModel().eval(), sentences, index=tmp_path / "t.h5", collate=collate) as s:
        r = s.topk("fc", [0, 3], k=5)
        g = Gallery(r, s)
        for it, i in zip(g.levels[0]["items"], r.ids):
            assert it["thumb"] is None and it["label"] is None
            assert it["text"] == snippet(sentences[i])
        g.select(0)
        assert g.wait(TIMEOUT)
        assert [it["id"] for it in g.levels[1]["items"]] == s.knn(int(r.ids[0]), "fc", r.neurons, 5).ids.tolist()
        html = static_html(r, s)
        assert all(f'data-id="{i}"' in html for i in r.ids)


# -- histogram and static HTML ---------------------------------------------------------------------
def test_histogram_from_index_partitions(session, top):
    g = Gallery(top, session)
    img = png(g.histogram_png)
    assert img.size == (360, 120)
    assert png(g.histogram()).size == (360, 120)
    assert png(g.histogram(int(GROUP[1]), width=200, height=80)).size == (200, 80)
    px = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert ((px[:, 0] > 180) & (px[:, 1] < 80) & (px[:, 2] < 80)).any()   # red ticks of the result items
    with pytest.raises(IndexError):
        g.histogram(10 ** 6)


@pytest.mark.parametrize("by", ["sum", "mean", "max", "l2", [0.5, 2.0, 1.0]])
def test_score_bounds_contain_every_exact_aggregate(session, by):
    """The group histogram's per-input [lower, upper] from the index holds each input's exact
    aggregate (brute force over all inputs), and the listed scores sit inside their intervals."""
    r = session.topk(VIEW, GROUP, k=K, by=by)
    lo, hi, what = score_bounds(session, r)
    acts = ReprocessAll(session).all_activations(VIEW)[:, GROUP].astype(np.float64)
    w = np.asarray(by) if isinstance(by, list) else None
    exact = {"sum": acts.sum(1), "mean": acts.mean(1), "max": acts.max(1),
             "l2": np.sqrt((acts ** 2).sum(1))}.get(by) if w is None else acts @ w
    tol = 1e-4 * (1 + np.abs(exact))
    assert np.all(lo - tol <= exact) and np.all(exact <= hi + tol)
    assert np.all(hi >= lo) and (hi - lo).mean() < (exact.max() - exact.min())   # bounds say something
    assert np.allclose(exact[r.ids], r.scores, rtol=1e-4, atol=1e-5)
    assert what.endswith(f"of {len(GROUP)} neurons")


@pytest.mark.parametrize("metric", ["l2", "l1", "linf"])
def test_score_bounds_contain_every_knn_distance(session, top, metric):
    r = session.knn(int(top.ids[0]), VIEW, GROUP, k=K, metric=metric)
    lo, hi, what = score_bounds(session, r)
    acts = ReprocessAll(session).all_activations(VIEW)[:, GROUP].astype(np.float64)
    diff = np.abs(acts - acts[int(top.ids[0])])
    exact = {"l2": np.sqrt((diff ** 2).sum(1)), "l1": diff.sum(1), "linf": diff.max(1)}[metric]
    tol = 1e-4 * (1 + exact)
    assert np.all(lo - tol <= exact) and np.all(exact <= hi + tol)
    assert what.startswith(f"{metric.upper()} distance to #{int(top.ids[0])}")


def test_group_histogram_marks_the_listed_scores(session, top):
    """The gallery's histogram spans the aggregate's range: the red ticks (the listed scores) lie
    where the scores are on an axis that holds them, not at one neuron's activations."""
    g = Gallery(top, session)
    lo, hi, _ = score_bounds(session, top)
    img = np.asarray(png(g.histogram_png).convert("RGB")).astype(int)
    red = (img[:, :, 0] > 180) & (img[:, :, 1] < 80) & (img[:, :, 2] < 80)
    cols = np.flatnonzero(red[-26:-16].any(axis=0))           # the tick row under the axis
    left, right = 6, img.shape[1] - 6
    lo_all, hi_all = min(lo.min(), top.scores.min()), max(hi.max(), top.scores.max())
    expected = left + np.round((top.scores - lo_all) / (hi_all - lo_all) * (right - left - 1))
    assert set(cols) == set(expected.astype(int)), (sorted(set(cols)), sorted(set(expected.astype(int))))
    assert g.histogram_png == result_histogram(session, top)


def test_static_html_and_mimebundle(session, top):
    html = static_html(top, session)
    for i in top.ids:
        assert f'data-id="{i}"' in html and f"#{i} " in html
    uris = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == K + 1   # the histogram and the thumbnails
    assert png(base64.b64decode(uris[0])).size == (360, 120)
    assert all(png(base64.b64decode(u)).size == (96, 96) for u in uris[1:])
    assert "top-k" in html and f"k={K}" in html and "<script" not in html
    g = Gallery(top, session)
    data, _meta = g._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == g.model_id
    assert all(f'data-id="{i}"' in data["text/html"] for i in top.ids)


# -- job progress --------------------------------------------------------------------------------
def test_job_progress_reaches_done(session, no_worker_widgets):
    job = session.build_index(["fc1"])
    p = JobProgress(job)
    assert p.wait(TIMEOUT) and job.status == "done"
    assert p.bar.value == p.bar.max and p.bar.max == max(job.total, 1)
    assert p.bar.bar_style == "success" and p.cancel_button.disabled
    assert "done" in p.label.value and "index fc1" in p.label.value
    assert "fc1" in session.indexed()


def test_job_progress_cancel_button_cancels_running_build(digits, tmp_path, no_worker_widgets):
    model, x, y = digits
    running, gate = threading.Event(), threading.Event()
    # the build's first forward pass waits at this hook until the test has pressed Cancel
    hook = model.conv1.register_forward_hook(lambda *_: gate.wait(TIMEOUT) and None)
    try:
        with em.Session(model, x, index=tmp_path / "c.h5", labels=y) as s:
            job = s.build_index(["conv1", "conv2"])
            job.on_change(lambda j: j.status == "running" and running.set())
            p = JobProgress(job)
            assert job.status == "running" or running.wait(TIMEOUT)   # listener first, then the check
            assert not p.cancel_button.disabled
            p.cancel_button.click()
            gate.set()
            assert p.wait(TIMEOUT)
            assert job.status == "cancelled"
            assert p.bar.bar_style == "warning" and p.cancel_button.disabled and "cancelled" in p.label.value
            assert "conv1" not in s.indexed()
    finally:
        gate.set()
        hook.remove()


# -- text: token shading ---------------------------------------------------------------------------
def test_text_gallery_shades_each_sentence_by_token(tmp_path):
    """A MiniLM top-k over a token-mean view: each item is its sentence cut into the tokens the
    model saw, each token with the group's activation there (from the layer's per-token output)."""
    model, tok, collate = ex.minilm(max_length=48)
    sentences = ex.python_sentences(limit=120)
    view = "encoder.layer.1.intermediate:token_mean"
    group = [10, 200, 1000]
    with em.Session(model, sentences, collate=collate, index=tmp_path / "t.h5", batch_size=40) as s:
        r = s.topk(view, group, k=4, by="sum")
        g = Gallery(r, s)
        level = g.levels[0]
        assert "sum of the 3 neurons at each token" in level["token_note"]
        outs = {}
        hook = s.runner.module("encoder.layer.1.intermediate").register_forward_hook(
            lambda m, i, o: outs.__setitem__("x", o))
        try:
            for it, i in zip(level["items"], r.ids):
                text = sentences[int(i)]
                assert "".join(p for p, _ in it["tokens"]) == text
                enc = tok(text, truncation=True, max_length=48)
                words = [w for w in tok.convert_ids_to_tokens(enc["input_ids"]) if w not in tok.all_special_tokens]
                shaded = [(p, v) for p, v in it["tokens"] if v is not None]
                assert len(shaded) == len(words)
                with torch.inference_mode():
                    model(**collate([text]))
                per_token = outs["x"][0, 1:1 + len(words)][:, group].sum(1).numpy()   # after [CLS]
                np.testing.assert_allclose([v for _, v in shaded], per_token, rtol=1e-3, atol=1e-3)
        finally:
            hook.remove()
        assert level["token_scale"] == pytest.approx(max(abs(v) for it in level["items"]
                                                         for _, v in it["tokens"] if v is not None))
        html = static_html(r, s)
        assert html.count("<span title=") == sum(v is not None for it in level["items"] for _, v in it["tokens"])


def test_training_shows_progress_and_time_left(capsys):
    """The demo's training loop reports batches done, the rate and the time left (tqdm)."""
    x, y = ex.load_digits()
    ex.train(ex.DigitsCNN(), x, y, epochs=2, batch_size=256, progress="training digits")
    err = capsys.readouterr().err
    assert "training digits" in err and "16/16" in err and "batch/s" in err and "<" in err   # elapsed<left
    ex.train(ex.DigitsCNN(), x, y, epochs=1, batch_size=256)   # no description: silent
    assert capsys.readouterr().err == ""
