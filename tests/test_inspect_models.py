"""Deep neural inspection over several models in one pass (real models on the sklearn digits):
the scores of each model equal the model inspected alone and scipy/scikit-learn, each
hypothesis is computed once per input and each batch loaded once for all the models, early
stopping over all the models keeps the interval guarantees, `compare` sets models side by
side, the table opens a unit's gallery in its own model, and the `%%everest inspect` magic
takes a `models` line. The checkpoint notebook runs headless."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

import everest_magic as em
from everest_magic import examples as ex
from everest_magic.engine.errors import QueryError, UnknownNameError
from everest_magic.inspect import COLUMNS, GROUP, compare, run_inspect
from everest_magic.magics import parser as P

ROOT = Path(__file__).resolve().parent.parent
VIEWS = {"final": ["conv2:mean", "fc1"], "early": ["conv2:mean", "fc1"], "mlp": ["hidden"]}
MEASURES = ["pearson", "auroc", "mi", "probe"]
KEY = ["model", "layer", "unit", "hypothesis", "label", "measure"]
SAME = 1e-12    # a model inspected with others vs alone
REF = 1e-9      # vs scipy / scikit-learn on the same float64 arrays


def _sessions(nets: dict, x, y) -> dict:
    return {name: em.Session(net, x, labels=y, batch_size=64, name=name) for name, net in nets.items()}


@pytest.fixture(scope="module")
def nets(digits_cnn, digits_mlp):
    """Three models over the same digits: the CNN, the same architecture after 2 epochs, an MLP."""
    model, x, y = digits_cnn
    torch.manual_seed(0)
    early = ex.train(ex.DigitsCNN(), x, y, epochs=2, batch_size=64, seed=1)
    return {"final": model, "early": early, "mlp": digits_mlp[0]}, x, y


@pytest.fixture(scope="module")
def sessions(nets):
    nets, x, y = nets
    ss = _sessions(nets, x, y)
    yield ss
    for s in ss.values():
        s.close()


def _hyps(y):
    return {"class": "class", "ink": "ink", "is3": y == 3}


@pytest.fixture(scope="module")
def together(nets, sessions):
    """Every unit of every model x class, ink and "is a 3", on all inputs, in one pass."""
    _, x, y = nets
    return run_inspect(sessions, VIEWS, _hyps(y), MEASURES, early_stop=False, max_inputs=None)


# -- exactness ----------------------------------------------------------------------------------

def test_each_model_scores_as_if_inspected_alone(nets, together):
    nets, x, y = nets
    assert list(together.columns) == ["model"] + COLUMNS
    assert list(dict.fromkeys(together.model)) == ["final", "early", "mlp"]
    assert together.attrs["inspect"].models == ["final", "early", "mlp"]
    for name, net in nets.items():
        with em.Session(net, x, labels=y, batch_size=64) as s:     # a fresh session: nothing cached
            alone = run_inspect(s, VIEWS[name], _hyps(y), MEASURES, early_stop=False, max_inputs=None)
        assert list(alone.columns) == COLUMNS                    # one model: the frame is as before
        mine = together[together.model == name].drop(columns="model").reset_index(drop=True)
        assert len(mine) == len(alone) > 0
        ids = ["layer", "unit", "hypothesis", "label", "measure"]
        assert mine[ids].fillna("").equals(alone[ids].fillna(""))
        for col in ("score", "ci_low", "ci_high"):
            a, b = mine[col].to_numpy(), alone[col].to_numpy()
            assert np.array_equal(np.isnan(a), np.isnan(b))
            ok = ~np.isnan(a)
            assert np.abs(a[ok] - b[ok]).max() <= SAME, (name, col)
        assert (mine.n_inputs == alone.n_inputs).all() and (mine.converged == alone.converged).all()


def _bins(v, b=10):
    return ((rankdata(v, method="min") - 1) * b) // len(v)


def _score(df, model, layer, hyp, measure, unit, label=None):
    f = df[(df.model == model) & (df.layer == layer) & (df.hypothesis == hyp) & (df.measure == measure)
           & (df.unit == unit)]
    f = f[f.label.isna()] if label is None else f[f.label == str(label)]
    assert len(f) == 1
    return float(f.score.iloc[0])


def _near(ours, ref):
    return (np.isnan(ours) and np.isnan(ref)) or abs(ours - ref) <= REF


def test_each_model_equals_scipy_and_sklearn(nets, sessions, together):
    _, x, y = nets
    ink = (x[:, 0].numpy() > 0.5).reshape(len(x), -1).mean(1)
    is3 = (y == 3).astype(float)
    checked = 0
    for name, views in VIEWS.items():
        s = sessions[name]
        for view in views:
            acts = s.fetch(view, np.arange(s.n)).astype(np.float64)
            for u in range(acts.shape[1]):
                a = acts[:, u]
                const = a.min() == a.max()
                r_ink = np.nan if const else pearsonr(a, ink)[0]
                assert _near(_score(together, name, view, "ink", "pearson", u), r_ink)
                assert _near(_score(together, name, view, "is3", "auroc", u), roc_auc_score(is3, a))
                assert _near(_score(together, name, view, "class", "auroc", u, 7), roc_auc_score(y == 7, a))
                assert _near(_score(together, name, view, "ink", "mi", u), mutual_info_score(_bins(ink), _bins(a)))
                assert _near(_score(together, name, view, "class", "mi", u), mutual_info_score(y, _bins(a)))
                checked += 1
            # the linear probe of the whole view
            test = np.isin(np.arange(s.n), np.random.default_rng(0).permutation(s.n)[: int(np.ceil(0.2 * s.n))])
            scaler = StandardScaler().fit(acts[~test])
            clf = LogisticRegression(max_iter=300).fit(scaler.transform(acts[~test]), y[~test])
            acc = (clf.predict(scaler.transform(acts[test])) == y[test]).mean()
            assert abs(_score(together, name, view, "class", "probe", GROUP) - acc) <= 1e-6
    assert checked == 2 * (16 + 32) + 64


MEANS: list[float] = []   # the calls of _dark


def _dark(img) -> bool:
    MEANS.append(float(img.mean()))
    return MEANS[-1] < 0.2


def test_each_hypothesis_is_computed_once_and_each_batch_loaded_once(nets):
    from everest_magic.inspect.plan import InspectOptions, build_plan
    from everest_magic.inspect.scorer import run_plan
    nets, x, y = nets
    del MEANS[:]
    ss = _sessions(nets, x, y)
    plan = build_plan(ss, VIEWS, {"dark": _dark, "ink": "ink"}, ["pearson", "auroc"],
                      options=InspectOptions(early_stop=False, max_inputs=None))
    loads = dict.fromkeys(ss, 0)
    for name, s in ss.items():
        def counted(ids, name=name, batch=s.data.batch):
            loads[name] += 1
            return batch(ids)
        s.data.batch = counted
    passes = {name: s.runner.forward_passes for name, s in ss.items()}
    df = run_plan(plan)
    n, batches = len(x), -(-len(x) // 64)
    assert df.attrs["inspect"].inputs_seen == n
    assert len(MEANS) == n                                 # once per input, not once per model
    first, *others = ss
    assert loads[first] == batches                         # each batch of the pass loaded once...
    assert all(loads[name] == 0 for name in others)        # ... and the other models ran on it
    assert all(s.runner.forward_passes - passes[name] == batches for name, s in ss.items())
    for s in ss.values():
        s.close()


# -- early stopping --------------------------------------------------------------------------------

def test_early_stopping_over_several_models_covers_the_full_data_scores(nets, sessions):
    """As for one model (tests/test_inspect.py): over shuffles, early-stopped scores of every model
    lie inside the full-data 95% intervals, and their own intervals cover the full-data scores,
    for >= 95% of unit x hypothesis pairs; the pass stops only when every model's intervals are
    narrow, and all models are scored on the same sample."""
    _, x, y = nets
    hyps = {"class": "class", "ink": "ink"}
    kw = dict(measures=["pearson", "auroc"], max_inputs=None)
    ref = run_inspect(sessions, VIEWS, hyps, early_stop=False, **kw)
    pairs = []
    for seed in range(1, 4):
        early = run_inspect(sessions, VIEWS, hyps, epsilon=0.125, patience=None, min_inputs=400, seed=seed, **kw)
        st = early.attrs["inspect"]
        assert st.stop_reason == "epsilon" and st.inputs_seen < len(x)
        assert set(early.n_inputs) == {st.inputs_seen} and set(early.model) == set(VIEWS)
        assert early.converged[early.score.notna()].all()
        pairs.append(early.merge(ref, on=KEY, suffixes=("", "_full")).dropna(subset=["score", "score_full"]))
    m = pd.concat(pairs)
    assert len(m) > 1500
    inside = ((m.score >= m.ci_low_full) & (m.score <= m.ci_high_full)).mean()
    covered = ((m.score_full >= m.ci_low) & (m.score_full <= m.ci_high)).mean()
    assert inside >= 0.95 and covered >= 0.95, (inside, covered)


# -- compare, views per model, errors -----------------------------------------------------------------

def test_compare_sets_each_models_best_unit_and_passing_count_side_by_side(together):
    table = compare(together, "class", "auroc")
    assert list(table.columns.get_level_values("model").unique()) == ["final", "early", "mlp"]
    assert len(table) == 10 and set(table.index.get_level_values("label")) == {str(c) for c in range(10)}
    for model in ("final", "early", "mlp"):
        rows = together[(together.model == model) & (together.hypothesis == "class") & (together.measure == "auroc")]
        for label, f in rows.groupby("label"):
            strength = np.maximum(f.score, 1 - f.score)
            best = f.loc[strength.idxmax()]
            got = table.loc[("class", label, "auroc")]
            assert got[("score", model)] == best.score and got[("unit", model)] == best.unit
            assert got[("layer", model)] == best.layer
            assert got[("passing", model)] == int((strength >= 0.9).sum())
    strict = compare(together, "class", "auroc", threshold=0.99)
    assert (strict["passing"] <= table["passing"]).all().all()
    ink = compare(together, "ink", "pearson", layer="fc1")
    assert list(ink.index) == [("ink", "", "pearson")] and np.isnan(ink[("score", "mlp")].iloc[0])
    one = compare(together[together.model == "final"].drop(columns="model"), "ink")
    assert list(one.columns.get_level_values("model").unique()) == [""]


def test_views_differ_per_model(together):
    layers = together.groupby("model").layer.unique()
    assert set(layers["mlp"]) == {"hidden"} and set(layers["final"]) == {"conv2:mean", "fc1"}


def test_sessions_given_as_a_list_are_named_by_their_session(sessions):
    kw = dict(measures="auroc", early_stop=False, max_inputs=300)
    listed = run_inspect(list(sessions.values()), VIEWS, "class", **kw)
    named = run_inspect(sessions, VIEWS, "class", **kw)
    assert list(dict.fromkeys(listed.model)) == list(sessions)
    assert listed[KEY].fillna("").equals(named[KEY].fillna("")) and listed.score.equals(named.score)


def test_bad_requests_over_several_models_raise_clear_errors(nets, sessions):
    nets, x, y = nets
    with em.Session(nets["final"], x[:100], labels=y[:100], batch_size=64, name="small") as other:
        with pytest.raises(QueryError, match="must read the same data: model 'small' has 100 inputs"):
            run_inspect({"final": sessions["final"], "small": other}, "fc1", "class")
    with em.Session(nets["early"], x, labels=y, batch_size=64, name="final") as twin:
        with pytest.raises(QueryError, match="'final' appears more than once"):
            run_inspect([sessions["final"], twin], "fc1", "class")
    with pytest.raises(UnknownNameError, match="unknown model 'erly'; did you mean 'early'"):
        run_inspect(sessions, {"final": "fc1", "erly": "fc1", "mlp": "hidden"}, "class")
    with pytest.raises(QueryError, match="must name every model; 'mlp' has none"):
        run_inspect(sessions, {"final": "fc1", "early": "fc1"}, "class")
    with pytest.raises(QueryError, match="given by its everest_magic Session"):
        run_inspect({"final": nets["final"]}, "fc1", "class")
    with pytest.raises(UnknownNameError, match="unknown layer 'hidden'"):
        run_inspect(sessions, "hidden", "class")          # the CNNs have no such layer


def test_table_opens_a_units_gallery_in_its_own_model(sessions, together, monkeypatch):
    from everest_magic.widgets import inspect_table as W
    table = W.InspectTable(together, sessions, rows=5, k=6)
    keys = table._keys("ink")
    assert {k[0] for k in keys} == {"final", "early", "mlp"} and all(len(k) == 4 for k in keys)
    monkeypatch.setattr(W, "_gallery", lambda result, session: result.to_frame())
    for model in ("early", "mlp"):
        key = next(k for k in keys if k[0] == model)
        row = int(table.rows_for("ink", key).index[0])
        r = table.frame.loc[row]
        assert r.model == model
        shown = table.select(row)
        assert list(shown.id) == list(sessions[model].topk(r.layer, [int(r.unit)], k=6).ids)
    group = int(table.frame.index[(table.frame.unit == GROUP) & (table.frame.model == "mlp")][0])
    assert set(table.select(group).model) == {"mlp"}


# -- the magic ---------------------------------------------------------------------------------------

def test_models_line_parses_with_positions():
    c = P.parse_cell("inspect -o sc", "layer fc1\nhypotheses class\nmodels epoch1, epoch2 epoch4")
    assert c.models == ["epoch1", "epoch2", "epoch4"] and c.session is None
    assert P.parse_cell("inspect", "layer fc1\nhypotheses class").models is None
    for body, where, message in [
        ("layer fc1\nhypotheses class\nmodels", (4, 7), "expected session names"),
        ("layer fc1\nhypotheses class\nmodels a, {b}", (4, 11), "models are session names"),
        ("layer fc1\nhypotheses class\nmodels a, a", (4, 11), "named twice"),
        ("layer fc1\nhypotheses class\nmodels a\nin session b", (4, 1), "drop the session"),
        ("layer fc1\nhypotheses class\nmodles a", (4, 1), "did you mean 'models'"),
    ]:
        with pytest.raises(P.QuerySyntaxError) as e:
            P.parse_cell("inspect", body)
        assert (e.value.line, e.value.column) == where and message in str(e.value), str(e.value)


@pytest.fixture(scope="module")
def ip(nets):
    from IPython.core.interactiveshell import InteractiveShell
    nets, x, y = nets
    shell = InteractiveShell.instance()
    shell.user_ns.update(final_net=nets["final"], early_net=nets["early"], images=x, labels=y, few=x[:50])
    shell.run_line_magic("load_ext", "everest_magic")
    shell.run_line_magic("everest", "use model=early_net data=images labels=labels name=early batch_size=64")
    shell.run_line_magic("everest", "use model=final_net data=few name=few batch_size=64")
    shell.run_line_magic("everest", "use model=final_net data=images labels=labels name=final batch_size=64")
    yield shell
    shell.run_line_magic("unload_ext", "everest_magic")


def test_inspect_magic_models_line_runs_one_pass_over_the_sessions(ip, nets):
    from everest_magic.magics import kernel_state
    ip.run_cell_magic("everest", "inspect -o sc --wait",
                      "layer conv2:mean, fc1\nhypotheses class, ink\nmeasures pearson, auroc\n"
                      "early_stop false\nmodels final, early")
    frame = ip.user_ns["sc"]
    assert list(dict.fromkeys(frame.model)) == ["final", "early"]
    state = kernel_state()
    same = run_inspect({"final": state.session("final"), "early": state.session("early")}, ["conv2:mean", "fc1"],
                       {"class": "class", "ink": "ink"}, ["pearson", "auroc"], early_stop=False)
    a, b = frame.sort_values(KEY).reset_index(drop=True), same.sort_values(KEY).reset_index(drop=True)
    assert a[KEY].fillna("").equals(b[KEY].fillna(""))
    assert np.abs(a.score - b.score).max() <= SAME
    assert state.history[-1].kind == "inspect" and "models final, early" in state.history[-1].text


@pytest.mark.parametrize("body, match", [
    ("layer fc1\nhypotheses class\nmodels final, nope", r"line 4, column 8: unknown session 'nope'"),
    ("layer fc1\nhypotheses ink\nmodels final, few", r"line 4, column 8: models inspected together must read the "
                                                     r"same data"),
    ("layer fc1\nhypotheses ink\nmodels final\nsession early", r"line 4, column 1: a 'models' line names"),
])
def test_inspect_magic_models_errors_point_at_the_line(ip, body, match):
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match=match):
        ip.run_cell_magic("everest", "inspect --wait", body)


# -- the checkpoint notebook --------------------------------------------------------------------------

def test_checkpoint_notebook_runs_and_prints_its_findings(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(ROOT / "notebooks" / "04-checkpoints.ipynb", as_version=4)
    for epoch in (1, 2, 4):    # the benchmark's cached checkpoints, when there (else the notebook trains)
        cached = ROOT / "benchmarks" / "out" / f"mnist_cnn_epoch{epoch}.pt"
        if cached.exists():
            (tmp_path / "checkpoints").mkdir(exist_ok=True)
            shutil.copy(cached, tmp_path / "checkpoints" / cached.name)
    os.environ["HF_HUB_OFFLINE"] = "1"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    found = re.findall(r"^SUMMARY (.*)$", text, flags=re.M)
    assert found, text[-2000:]
    summary = json.loads(found[-1])
    assert summary["models"] == ["epoch1", "epoch2", "epoch4"]
    assert summary["inputs_seen"] <= summary["inputs"]
    assert all(len(v) == 3 for v in summary["best_class_auroc"].values()) and len(summary["best_class_auroc"]) == 10
    assert min(max(v) for v in summary["best_class_auroc"].values()) > 0.85     # every digit has a unit by the end
    assert np.median([max(v) for v in summary["best_class_auroc"].values()]) > 0.95
    assert any("image/png" in o.get("data", {}) for o in outputs)                # the plot across checkpoints
    assert summary["gallery_model"] == "epoch4"
    assert summary["gallery_ids"] == summary["topk_ids"]                         # the click's gallery, in epoch4
    assert summary["gallery_labels"].count(3) >= 8                               # the unit most active on 3s
