"""Deep neural inspection on real models and real data: scores equal scipy/scikit-learn, early
stopping stays within the full-data confidence intervals, bad input gives clear errors, the job
reports progress and can be cancelled, the widget's select works, the demo notebook runs."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

import everest_magic as em
from everest_magic.engine.errors import EverestError, JobCancelled, QueryError, UnknownNameError
from everest_magic.inspect import (GROUP, InputFunction, detectors, hypothesis_cache, inspect, inspect_job,
                                   library as lib, run_inspect)

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-6
VIEWS = ["conv2:mean", "fc1"]


@pytest.fixture(scope="module")
def digits(digits_cnn):
    """A session over the digits CNN, and the data."""
    model, x, y = digits_cnn
    s = em.Session(model, x, labels=y, batch_size=64)
    yield s, x, y
    s.close()


@pytest.fixture(scope="module")
def full(digits):
    """Every unit of two views x class, ink and "is a 3", on all inputs, without early stopping."""
    s, x, y = digits
    is3 = y == 3
    df = run_inspect(s, VIEWS, {"class": "class", "ink": "ink", "is3": is3},
                     measures=["pearson", "auroc", "mi", "probe"], early_stop=False, max_inputs=None)
    return df


def _ink(x):
    return (x[:, 0].numpy() > 0.5).reshape(len(x), -1).mean(1)


def _bins(v, b=10):
    """The documented quantile bins: floor(b * (number of smaller values) / N)."""
    return ((rankdata(v, method="min") - 1) * b) // len(v)


def _rows(df, layer, hyp, measure, label=None):
    f = df[(df.layer == layer) & (df.hypothesis == hyp) & (df.measure == measure)]
    f = f[f.label.isna()] if label is None else f[f.label == str(label)]
    return f.set_index("unit")


def _close(ours, ref):
    return (np.isnan(ours) and np.isnan(ref)) or abs(ours - ref) <= TOL


# -- exactness -----------------------------------------------------------------------------------

def test_scores_equal_scipy_and_sklearn(digits, full):
    s, x, y = digits
    ids = np.arange(s.n)
    ink, is3 = _ink(x), (y == 3).astype(float)
    assert full.attrs["inspect"].inputs_seen == s.n and set(full.stop_reason) == {"complete"}
    checked = 0
    for view in VIEWS:
        acts = s.fetch(view, ids)
        pe_ink, pe_3 = _rows(full, view, "ink", "pearson"), _rows(full, view, "is3", "pearson")
        au_3, mi_ink, mi_cls = _rows(full, view, "is3", "auroc"), _rows(full, view, "ink", "mi"), \
            _rows(full, view, "class", "mi")
        for u in range(acts.shape[1]):
            a = acts[:, u].astype(np.float64)
            const = a.min() == a.max()
            ref = np.nan if const else pearsonr(a, ink)[0]
            assert _close(pe_ink.score[u], ref), (view, u)
            assert _close(pe_3.score[u], np.nan if const else pearsonr(a, is3)[0])
            assert abs(au_3.score[u] - roc_auc_score(is3, a)) <= TOL
            assert abs(mi_ink.score[u] - mutual_info_score(_bins(ink), _bins(a))) <= TOL
            assert abs(mi_cls.score[u] - mutual_info_score(y, _bins(a))) <= TOL
            for c in (0, 7):
                assert abs(_rows(full, view, "class", "auroc", c).score[u] - roc_auc_score(y == c, a)) <= TOL
                assert _close(_rows(full, view, "class", "pearson", c).score[u],
                              np.nan if const else pearsonr(a, (y == c).astype(float))[0])
            checked += 1
    assert checked == 16 + 32
    # CI bounds bracket the score, n_inputs counts inputs
    ok = full.score.notna()
    assert (full.ci_low[ok] <= full.score[ok] + 1e-12).all() and (full.score[ok] <= full.ci_high[ok] + 1e-12).all()
    assert set(full.n_inputs) == {s.n}


def test_probe_equals_logistic_regression(digits, full):
    s, x, y = digits
    acts = s.fetch("fc1", np.arange(s.n))
    uniq = np.arange(s.n)
    test_ids = np.random.default_rng(0).permutation(uniq)[: int(np.ceil(0.2 * s.n))]
    test = np.isin(uniq, test_ids)
    scaler = StandardScaler().fit(acts[~test])
    clf = LogisticRegression(max_iter=300).fit(scaler.transform(acts[~test]), y[~test])
    acc = (clf.predict(scaler.transform(acts[test])) == y[test]).mean()
    rows = full[(full.layer == "fc1") & (full.hypothesis == "class") & (full.unit == GROUP)].set_index("measure")
    assert abs(rows.score["probe"] - acc) <= TOL
    labels, counts = np.unique(y[~test], return_counts=True)
    assert abs(rows.score["probe_majority"] - (y[test] == labels[np.argmax(counts)]).mean()) <= TOL
    assert rows.score["probe"] > 0.8 and rows.score["probe_selectivity"] > 0.5
    assert rows.ci_low["probe"] < rows.score["probe"] < rows.ci_high["probe"]


def test_iou_and_mask_pearson_follow_network_dissection(digits):
    s, x, y = digits
    df = run_inspect(s, ["conv1", "conv2"], {"ink": "ink_mask", "top": "top_region"}, measures=["iou", "pearson"],
                     early_stop=False, max_inputs=None)
    assert set(df.layer) == {"conv1:mean", "conv2:mean"}
    ids = np.arange(s.n)
    concept = x[:, 0].numpy() > 0.5                                     # (n, 8, 8)
    for layer, channels in (("conv1", 8), ("conv2", 16)):
        raw = s.fetch(layer, ids).reshape(s.n, channels, *s.shape(layer)[1:])
        up = torch.nn.functional.interpolate(torch.from_numpy(raw), size=(8, 8), mode="bilinear",
                                             align_corners=False).numpy()
        iou = _rows(df, f"{layer}:mean", "ink", "iou")
        pear = _rows(df, f"{layer}:mean", "ink", "pearson")
        for c in range(channels):
            t = np.quantile(raw[:, c].ravel(), 1 - 0.005)                 # top quantile of the raw maps
            on = up[:, c] >= t
            ref = (on & concept).sum() / (on | concept).sum()
            assert abs(iou.score[c] - ref) <= TOL, (layer, c)
            a = up[:, c].ravel().astype(np.float64)
            assert _close(pear.score[c], np.nan if a.min() == a.max() else pearsonr(a, concept.ravel())[0])
    det = detectors(df)
    assert (det.score >= 0.04).all() and not det.duplicated(["layer", "unit"]).any()


# -- early stopping --------------------------------------------------------------------------------

def test_early_stopped_scores_fall_inside_full_data_intervals(digits):
    """Over repeated shuffles, early-stopped scores lie inside the full-data 95% CI for >= 95% of pairs.

    The early sample must hold a good share of the data for that (the early estimate deviates
    from the full-data one by sd * sqrt(1/n - 1/N)); epsilon = 0.125 stops at about 70% of the
    1,837 inputs. The early CIs also cover the full-data scores.
    """
    s, x, y = digits
    hyps = {"class": "class", "ink": "ink"}
    kw = dict(measures=["pearson", "auroc"], max_inputs=None)
    ref = run_inspect(s, VIEWS, hyps, early_stop=False, **kw)
    key = ["layer", "unit", "hypothesis", "label", "measure"]
    inside = covered = total = 0
    for seed in range(1, 5):
        early = run_inspect(s, VIEWS, hyps, epsilon=0.125, patience=None, min_inputs=400, seed=seed, **kw)
        st = early.attrs["inspect"]
        assert st.stop_reason == "epsilon" and st.inputs_seen < s.n
        assert early.converged[early.score.notna()].all()
        m = early.merge(ref, on=key, suffixes=("", "_full")).dropna(subset=["score", "score_full"])
        inside += ((m.score >= m.ci_low_full) & (m.score <= m.ci_high_full)).sum()
        covered += ((m.score_full >= m.ci_low) & (m.score_full <= m.ci_high)).sum()
        total += len(m)
    assert total > 1000
    assert inside / total >= 0.95, inside / total
    assert covered / total >= 0.95, covered / total


def test_stops_when_top_units_are_stable_and_at_the_cap(digits):
    s, x, y = digits
    df = run_inspect(s, "fc1", {"zero": y == 0}, measures="auroc", epsilon=1e-9, top=1, patience=2,
                     min_inputs=200)
    st = df.attrs["inspect"]
    assert st.stop_reason == "stable" and st.inputs_seen < s.n and st.checkpoints >= 3
    capped = run_inspect(s, "fc1", {"zero": y == 0}, measures="auroc", epsilon=1e-9, patience=None, max_inputs=300)
    assert capped.attrs["inspect"].stop_reason == "max_inputs" and set(capped.n_inputs) == {300}


def test_activations_and_hypotheses_are_cached(digits):
    s, x, y = digits
    calls = []

    def dark(img):
        calls.append(1)
        return float(img.mean()) < 0.2

    first = run_inspect(s, "fc1", {"dark": dark}, measures="auroc", early_stop=False, max_inputs=500)
    n_first = len(calls)
    again = run_inspect(s, "fc1", {"dark": dark}, measures="auroc", early_stop=False, max_inputs=500)
    assert n_first >= 500 and len(calls) == n_first                     # hypothesis outputs reused
    assert again.attrs["inspect"].inputs_from_cache == 500              # activations reused
    assert np.allclose(first.score, again.score, equal_nan=True)
    hypothesis_cache(s).clear()


def test_hypothesis_cache_is_bounded_by_bytes():
    from everest_magic.inspect.hypotheses import HypothesisCache
    cache = HypothesisCache(max_bytes=10_000)
    for i in range(10):
        cache.put("mask", i, np.zeros(1000, np.uint8))
    assert cache.bytes <= 10_000 and len(cache) == 9
    assert cache.get("mask", 0) is None and cache.get("mask", 9) is not None   # the oldest went first
    cache.put("big", 0, np.zeros(20_000, np.uint8))                          # larger than the cache: not kept
    assert cache.get("big", 0) is None and len(cache) == 9


# -- errors ------------------------------------------------------------------------------------------

def _boom(img):
    raise ValueError("no ink here")


@pytest.mark.parametrize("args, kwargs, message", [
    (("fc9", "ink"), {}, "unknown layer 'fc9'; did you mean 'fc2', 'fc1'"),
    (("fc1", "inkk"), {}, "unknown hypothesis 'inkk'; did you mean 'ink'"),
    (("fc1", {"short": np.zeros(10)}), {}, "has 10 values; the session has"),
    (("fc1", "ink"), {"measures": ["pearsn"]}, "did you mean 'pearson'"),
    (("fc1", "ink"), {"measures": ["auroc"]}, "auroc needs a binary or categorical hypothesis"),
    (("fc1", "ink_mask"), {}, "concept masks need a conv layer"),
    (("fc1", "ink"), {"epsilon": 0}, "epsilon must be > 0"),
    (("fc1", {"boom": _boom}), {}, "hypothesis 'boom' failed on input"),
    (("fc1", "ink"), {"units": [3, 99]}, "unit 99 is out of range: 'fc1' has 32 units"),
    (("fc1", ["ink", lib.ink(0.3)]), {}, "names must be unique"),
    (("fc1", {"text": "keyword:return"}), {}, "token hypotheses need a (tokens, features) layer"),
    ((["fc1"], {"x": {1, 2}}), {}, "a hypothesis must be a name"),
    (([], "ink"), {}, "no views to inspect"),
])
def test_bad_input_raises_clear_errors(digits, args, kwargs, message):
    s, x, y = digits
    with pytest.raises(EverestError) as e:
        run_inspect(s, *args, **kwargs)
    assert message in str(e.value)


def test_errors_for_missing_labels_and_options(digits_cnn):
    model, x, y = digits_cnn
    with em.Session(model, x[:100], batch_size=50) as s:
        with pytest.raises(QueryError, match="the session has none"):
            run_inspect(s, "fc1", "class")
        with pytest.raises(UnknownNameError, match="did you mean 'epsilon'"):
            inspect_job(s, "fc1", "ink", epsilonn=0.1)


# -- jobs ---------------------------------------------------------------------------------------------

def test_job_reports_progress_and_returns_the_frame(digits):
    s, x, y = digits
    seen = []
    job = inspect(s, VIEWS, {"ink": "ink"}, wait=False, early_stop=False, max_inputs=600, chunk=64)
    job.on_change(lambda j: seen.append((j.done_units, j.total)))
    df = job.result(120)
    assert job.status == "done" and job.progress == 1.0 and len(df) == 16 + 32
    assert job.total == 600 and job.done_units == 600
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))


def test_job_can_be_cancelled(digits):
    s, x, y = digits
    started = threading.Event()

    def slow(img):
        started.set()
        time.sleep(0.003)
        return float(img.mean())

    job = inspect_job(s, "fc1", {"slow": InputFunction(slow, "slow", "numeric")}, early_stop=False,
                      max_inputs=None, chunk=64)
    assert started.wait(30)
    deadline = time.time() + 60
    while job.done_units == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert 0 < job.progress < 1
    assert job.cancel()
    assert job.wait(60) and job.status == "cancelled"
    with pytest.raises(JobCancelled):
        job.result()


# -- text ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_session():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from everest_magic import examples as ex
    model, tok, collate = ex.minilm(max_length=32)
    sentences = ex.python_sentences(limit=48)
    s = em.Session(model, sentences, collate=collate, batch_size=16)
    yield s, tok, sentences
    s.close()


def test_token_hypotheses_equal_scipy_on_aligned_tokens(text_session):
    s, tok, sentences = text_session
    layer = "encoder.layer.0.output"
    df = run_inspect(s, layer, {"quotes": "quotes", "pos": "position"}, measures=["pearson", "auroc"],
                     tokenizer=tok, early_stop=False, units=range(0, 384, 24))
    assert set(df.layer) == {f"{layer}:token_mean"}
    raw = s.fetch(layer, np.arange(s.n)).reshape(s.n, 32, 384)
    acts, quotes, pos = [], [], []
    for i, text in enumerate(sentences):
        enc = tok(text, return_offsets_mapping=True, truncation=True, max_length=32)
        spans = [(a, b) for a, b in enc["offset_mapping"] if b > a]
        idx = [j for j, (a, b) in enumerate(enc["offset_mapping"]) if b > a]
        inside = np.zeros(len(text), bool)
        for m in re.finditer(r'"([^"\n]*)"|`([^`\n]*)`|(?<![\w\'])\'([^\'\n]*)\'(?![\w])', text):
            inside[m.start() + 1:m.end() - 1] = True
        quotes += [inside[a:b].any() for a, b in spans]
        pos += list(range(len(spans)))
        acts.append(raw[i, idx])
    acts = np.concatenate(acts)
    quotes, pos = np.array(quotes, float), np.array(pos, float)
    assert 0 < quotes.mean() < 1
    for u in range(0, 384, 24):
        a = acts[:, u].astype(np.float64)
        assert abs(_rows(df, f"{layer}:token_mean", "pos", "pearson").score[u] - pearsonr(a, pos)[0]) <= TOL
        assert abs(_rows(df, f"{layer}:token_mean", "quotes", "auroc").score[u] - roc_auc_score(quotes, a)) <= TOL
    with pytest.raises(QueryError, match="need tokenizer="):
        run_inspect(s, layer, "quotes")


def test_library_text_annotations():
    from everest_magic.inspect.hypotheses import Tokens

    def tokens(text):
        words = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]
        return Tokens(text, [text[a:b] for a, b in words], np.array(words), np.arange(len(words)), np.zeros(len(words)))

    text = 'Call os.path.join() with "a b" (or [x]) and don\'t Return my_var.'
    t = tokens(text)

    def flagged(h):
        return [s for s, f in zip(t.strings, h.fn(text, t)) if f]

    assert flagged(lib.inside_quotes()) == ["a", "b"]
    assert flagged(lib.inside_brackets()) == ["or", "x"]
    assert flagged(lib.keyword("return")) == ["Return"]
    assert flagged(lib.capitalised()) == ["Call", "Return"]
    assert set(flagged(lib.code_like())) >= {"os", "path", "join", "my_var"}
    assert flagged(lib.punctuation())[:2] == [".", "."]


# -- widget and packaging -------------------------------------------------------------------------------

def test_table_select_opens_the_gallery_or_the_frame(digits, full, monkeypatch):
    from everest_magic.widgets import inspect_table as W
    s, x, y = digits
    table = W.InspectTable(full, s, rows=5, k=6)
    assert set(table.hypotheses) == {"class", "ink", "is3"}
    picked = []
    table.on_select(lambda row, shown: picked.append(row))
    row = int(table.rows_for("ink").index[0])
    shown = table.select(row)
    assert type(shown).__name__ in ("Gallery", "DataFrame") and picked == [row] and table.output.outputs
    monkeypatch.setattr(W, "_gallery", lambda result, session: result.to_frame())
    frame = table.select(row)
    r = table.frame.loc[row]
    assert list(frame.id) == list(s.topk(r.layer, [int(r.unit)], k=6).ids)
    group = int(table.frame.index[table.frame.unit == GROUP][0])
    assert set(table.select(group).measure) == {"probe", "probe_majority", "probe_selectivity"}


def test_inspect_package_imports_no_ipython_or_widgets():
    code = ("import sys, everest_magic.inspect; "
            "bad = [m for m in ('IPython', 'ipywidgets', 'anywidget') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_notebook_runs_and_prints_its_findings(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    src = ROOT / "notebooks" / "03-inspect.ipynb"
    nb = nbformat.read(src, as_version=4)
    cache = ROOT / "benchmarks" / "out" / "mnist_cnn.pt"
    if cache.exists():
        shutil.copy(cache, tmp_path / "mnist_cnn.pt")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.get("output_type") == "stream")
    found = re.findall(r"^SUMMARY (.*)$", text, flags=re.M)
    assert found, text[-2000:]
    summary = json.loads(found[-1])
    assert summary["mnist_class_probe"] > 0.9
    assert summary["mnist_class_best_auroc"] > 0.9
    assert summary["mnist_ink_best_abs_r"] > 0.5
    assert summary["mnist_ink_detectors"] >= 1
    assert summary["mnist_inputs_seen"] <= summary["mnist_inputs"]
    assert summary["text_quotes_best_auroc"] > 0.7
    assert summary["text_code_best_auroc"] > 0.7
    assert summary["text_position_best_abs_r"] > 0.5


def test_benchmark_smoke_run_writes_its_tables(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cache = ROOT / "benchmarks" / "out" / "mnist_cnn.pt"
    if cache.exists():
        shutil.copy(cache, tmp_path / "mnist_cnn.pt")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inspect_bench.py"), "--smoke", "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "inspect_bench_smoke.json").read_text())
    exact = result["runs"][0]
    assert exact["max_abs_diff_vs_naive"] < 1e-9 and exact["speedup"] > 1
    assert "| exact (all inputs) |" in (tmp_path / "inspect_bench_smoke.md").read_text()
