"""The magics through a real IPython shell: commands compile into the right engine calls,
and user errors become one-line UsageErrors with line, column, caret and suggestion."""
from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from everest_magic.engine.baselines import ReprocessAll


@pytest.fixture(scope="module")
def ip(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    shell = InteractiveShell.instance()
    shell.user_ns.update(net=model, images=x, labels=y, idx=str(tmp_path_factory.mktemp("mg") / "i.h5"))
    shell.run_line_magic("load_ext", "everest_magic")
    shell.run_line_magic("everest", "use model=net data=images index={idx} labels=labels name=digits")
    shell.run_line_magic("everest", "index conv1 conv2 fc1 --wait")
    yield shell
    shell.run_line_magic("unload_ext", "everest_magic")


def cell(ip, line, body=None):
    return ip.run_cell_magic("everest", line, body) if body is not None else ip.run_line_magic("everest", line)


def session(ip):
    from everest_magic.magics import kernel_state
    return kernel_state().session()


def test_product_example_runs_exactly_as_written(ip):
    cell(ip, "topk 12 -o top --wait", "layer conv2\nneurons 5, 17, 201\nby sum")
    top = ip.user_ns["top"]
    brute = ReprocessAll(session(ip)).topk("conv2", [5, 17, 201], k=12)
    assert top.ids.tolist() == brute.ids.tolist()
    assert top.text.startswith("%%everest topk 12 -o top")


def test_background_query_binds_pending_then_result(ip):
    cell(ip, "knn 7 -o nn", "target 11\nlayer conv1\nneurons top 10 of input 11\nmetric l1")
    handle = ip.user_ns["nn"]
    r = handle.result(60)
    assert ip.user_ns["nn"] is r
    s = session(ip)
    group = s.top_neurons(11, "conv1", 10)
    assert r.ids.tolist() == ReprocessAll(s).knn(11, "conv1", group, k=7, metric="l1").ids.tolist()


@pytest.mark.parametrize("body, check", [
    ("layer conv2\nneurons (1, 0, 0), (2, 3, 3)\nby max",
     lambda s, r: r.neurons.tolist() == [16, 47]),
    ("layer conv2\nneurons 0:64:8\nby mean",
     lambda s, r: r.neurons.tolist() == list(range(0, 64, 8))),
    ("layer conv2\nchannels 3, 7",
     lambda s, r: r.view == "conv2:mean" and r.neurons.tolist() == [3, 7]),
    ("layer fc1\nneurons 0, 1, 2\nby weights 1, 0.5, 2",
     lambda s, r: r.params["by"] == [1.0, 0.5, 2.0]),
    ("layer fc1\nneurons 0, 1\nwhere labels == 7",
     lambda s, r: set(s.labels[r.ids]) == {7}),
    ("layer fc1\nneurons 0, 1\nwhere labels in (1, 2)",
     lambda s, r: set(s.labels[r.ids]) <= {1, 2}),
    ("layer {layer_name}\nneurons {group}\nwhere ids in {allowed}",
     lambda s, r: set(r.ids) <= set(range(100, 200)) and r.neurons.tolist() == [4, 9]),
])
def test_query_constructs(ip, body, check):
    ip.user_ns.update(layer_name="fc1", group=[4, 9], allowed=list(range(100, 200)))
    cell(ip, "topk 6 -o r --wait", body)
    r = ip.user_ns["r"]
    s = session(ip)
    assert check(s, r)
    brute = ReprocessAll(s).topk(r.view, r.neurons, k=6, by=r.params["by"],
                                 filter=_filter_for(s, body, ip.user_ns))
    assert r.ids.tolist() == brute.ids.tolist()


def _filter_for(s, body, ns):
    if "labels == 7" in body:
        return s.labels == 7
    if "labels in" in body:
        return np.isin(s.labels, [1, 2])
    if "ids in" in body:
        return np.array(ns["allowed"])
    return None


def test_bottomk_and_interpolated_k(ip):
    ip.user_ns["kk"] = 4
    cell(ip, "bottomk {kk} -o b --wait", "layer fc1\nneurons 0:5\nby mean")
    b = ip.user_ns["b"]
    assert len(b.ids) == 4 and b.kind == "bottomk"
    assert b.ids.tolist() == ReprocessAll(session(ip)).bottomk("fc1", range(5), k=4, by="mean").ids.tolist()


@pytest.mark.parametrize("line, body, expect", [
    ("topk 5", "layer conv22\nneurons 1", ["line 2, column 7", "unknown layer 'conv22'", "did you mean 'conv2'", "^^^^^^"]),
    ("topk 5", "layr conv2\nneurons 1", ["line 2, column 1", "did you mean 'layer'"]),
    ("topk 5", "layer conv2\nneurons 9999", ["line 3", "neuron 9999 is out of range"]),
    ("topk 0", "layer conv2\nneurons 1", ["line 1", "k"]),
    ("topk 5", "layer conv2\nneurons 1\nby weights -1", ["line 4", "negative"]),
    ("topk {undefined_thing}", "layer conv2\nneurons 1", ["line 1", "undefined_thing"]),
    ("tpok 5", "layer conv2\nneurons 1", ["line 1, column 1", "did you mean 'topk'"]),
    ("knn 5", "target 99999\nlayer conv2\nneurons 1", ["input id 99999 is out of range"]),
])
def test_user_errors_are_positioned(ip, line, body, expect):
    with pytest.raises(UsageError) as e:
        cell(ip, line + " --wait", body)
    msg = str(e.value)
    for part in expect:
        assert part in msg, msg


def test_session_management_and_status_verbs(ip, digits_cnn, tmp_path):
    model, x, y = digits_cnn
    ip.user_ns.update(x2=x[:500], idx2=str(tmp_path / "second.h5"))
    cell(ip, "use model=net data=x2 index={idx2} name=small")
    from everest_magic.magics import kernel_state
    st = kernel_state()
    assert st.current == "small" and set(st.sessions) >= {"digits", "small"}
    cell(ip, "use digits")
    assert st.current == "digits"
    layers = cell(ip, "layers")
    assert "conv2" in layers["layer"].tolist() and "conv2" in layers.set_index("layer").loc["conv2", "indexed"]
    assert "digits" in str(cell(ip, "status"))
    jobs = cell(ip, "jobs")
    assert {"id", "status", "description"} <= set(jobs.columns)
    assert "topk" in str(cell(ip, "help topk"))
    with pytest.raises(UsageError, match="unknown session 'nope'"):
        cell(ip, "use nope")


def test_history_records_queries(ip):
    from everest_magic.magics import kernel_state
    hist = kernel_state().history
    assert any(h.text.startswith("%%everest topk 12 -o top") for h in hist)
    assert all(h.status in ("done", "running", "failed", "cancelled") for h in hist)


def test_inspect_magic_scores_units_like_the_python_api(ip):
    from everest_magic.inspect import run_inspect
    ip.user_ns["parity"] = (ip.user_ns["labels"] % 2).astype(bool)
    cell(ip, "inspect -o sc --wait", "layer fc1, conv2:mean\nhypotheses class, ink, {parity}\n"
                                     "measures pearson, auroc\nearly_stop false\nmax_inputs none")
    frame = ip.user_ns["sc"]
    assert set(frame.hypothesis) == {"class", "ink", "parity"} and set(frame.layer) == {"fc1", "conv2:mean"}
    s = session(ip)
    same = run_inspect(s, ["fc1", "conv2:mean"], {"class": "class", "ink": "ink", "parity": ip.user_ns["parity"]},
                       ["pearson", "auroc"], early_stop=False, max_inputs=None)
    key = ["layer", "unit", "hypothesis", "label", "measure"]
    a = frame.sort_values(key).reset_index(drop=True)
    b = same.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(a.score.to_numpy(), b.score.to_numpy(), equal_nan=True)
    entry = __import__("everest_magic.magics", fromlist=["x"]).kernel_state().history[-1]
    assert entry.kind == "inspect" and entry.text.startswith("%%everest inspect")


@pytest.mark.parametrize("body, match", [
    ("layer fc1\nhypotheses inkk", r"line 3, column 12: unknown hypothesis 'inkk'.*did you mean 'ink'"),
    ("layer fc2x\nhypotheses ink", r"line 2, column 7: unknown layer 'fc2x'"),
    ("layer fc1\nhypotheses ink\nmeasures pearsn", r"line 4, column 10: unknown measure 'pearsn'.*'pearson'"),
    ("layer fc1\nhypotheses ink\nepsilonn 0.1", r"line 4, column 1: unknown keyword 'epsilonn'.*'epsilon'"),
])
def test_inspect_magic_errors_point_at_the_culprit(ip, body, match):
    with pytest.raises(UsageError, match=match):
        cell(ip, "inspect --wait", body)
