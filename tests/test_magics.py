"""The magics through a real IPython shell: commands compile into the right engine calls,
and user errors become one-line UsageErrors with line, column, caret and suggestion."""
from __future__ import annotations

import re
import time

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
    assert top.text == "%%everest topk 12 -o top --wait\nlayer conv2\nneurons 5, 17, 201\nby sum"


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
    assert b.kind == "bottomk" and b.view == "fc1" and b.neurons.tolist() == [0, 1, 2, 3, 4]
    assert b.ids.tolist() == ReprocessAll(session(ip)).bottomk("fc1", range(5), k=4, by="mean").ids.tolist()


@pytest.mark.parametrize("line, body, expect", [
    ("topk 5", "layer conv22\nneurons 1",
     "line 2, column 7: unknown layer 'conv22'; other close names: conv2.1, conv2.0 (did you mean 'conv2'?)\n"
     "    layer conv22\n"
     "          ^^^^^^"),
    ("topk 5", "layr conv2\nneurons 1",
     "line 2, column 1: unknown keyword 'layr' (did you mean 'layer'?)\n"
     "    layr conv2\n"
     "    ^^^^"),
    ("topk 5", "layer conv2\nneurons 9999",
     "line 3, column 9: neuron 9999 is out of range: view 'conv2' has 256 neurons (shape (16, 4, 4))\n"
     "    neurons 9999\n"
     "            ^^^^"),
    ("topk 0", "layer conv2\nneurons 1",
     "line 1, column 6: k must be a positive integer, got '0'\n"
     "    topk 0 --wait\n"
     "         ^"),
    ("topk 5", "layer conv2\nneurons 1\nby weights -1",
     "line 4, column 12: weights must be non-negative, got -1\n"
     "    by weights -1\n"
     "               ^^"),
    ("topk {undefined_thing}", "layer conv2\nneurons 1",
     "line 1, column 6: {undefined_thing} failed: NameError: name 'undefined_thing' is not defined\n"
     "    topk {undefined_thing} --wait\n"
     "         ^^^^^^^^^^^^^^^^^"),
    ("tpok 5", "layer conv2\nneurons 1",
     "line 1, column 1: unknown command 'tpok' (did you mean 'topk'?)\n"
     "    tpok 5 --wait\n"
     "    ^^^^"),
    ("knn 5", "target 99999\nlayer conv2\nneurons 1",
     "line 2, column 8: input id 99999 is out of range [0, 1837)\n"
     "    target 99999\n"
     "           ^^^^^"),
])
def test_user_errors_are_positioned(ip, line, body, expect):
    with pytest.raises(UsageError) as e:
        cell(ip, line + " --wait", body)
    assert str(e.value) == expect


def test_session_management_and_status_verbs(ip, digits_cnn, tmp_path):
    model, x, y = digits_cnn
    ip.user_ns.update(x2=x[:500], idx2=str(tmp_path / "second.h5"))
    cell(ip, "use model=net data=x2 index={idx2} name=small")
    from everest_magic.magics import kernel_state
    st = kernel_state()
    assert st.current == "small" and set(st.sessions) >= {"digits", "small"}
    cell(ip, "use digits")
    assert st.current == "digits"
    digits = st.session("digits")
    layers = cell(ip, "layers")
    assert layers["layer"].tolist() == ["conv1", "conv1.0", "conv1.1", "pool1", "conv2", "conv2.0", "conv2.1",
                                        "fc1", "fc1.0", "fc1.1", "fc1.2", "fc2"]
    for layer, indexed in zip(layers["layer"], layers["indexed"]):
        assert indexed == ", ".join(v for v, info in digits.indexed().items() if info.definition["layer"] == layer)
    assert layers.set_index("layer").loc["conv2", "indexed"].split(", ")[0] == "conv2"
    status = str(cell(ip, "status")).split("\n")
    expected = []
    for name, s in st.sessions.items():
        expected.append(f"{'*' if name == 'digits' else ' '} {name}: DigitsCNN on cpu, {s.n} inputs, index {s.index_path}")
        expected += [f"    {v}: {j['neurons']} neurons, {j['bytes'] / 1e6:.1f} MB ({100 * j['size_ratio']:.1f}% of float32)"
                     for v, j in ((v, info.to_json()) for v, info in s.indexed().items())]
        expected.append("cache")
    statuses = [j.status for j in st.jobs.jobs.values()]
    expected.append(f"jobs: {statuses.count('pending') + statuses.count('running')} running, "
                    f"{statuses.count('done')} done, {statuses.count('failed') + statuses.count('cancelled')} "
                    "failed or cancelled")
    assert [line if not line.startswith("    cache: ") else "cache" for line in status] == expected, status
    assert all(re.fullmatch(r"    cache: \d+ rows, \d+\.\d MB of \d+ MB", line) for line in status if "cache:" in line)
    assert status[0] == f"* digits: DigitsCNN on cpu, 1837 inputs, index {digits.index_path}"
    jobs = cell(ip, "jobs")
    assert list(jobs.columns) == ["id", "description", "status", "phase", "done_units", "total", "seconds", "error"]
    assert jobs.to_dict("records") == [{k: row[k] for k in jobs.columns} for row in st.job_rows()]
    assert str(cell(ip, "help topk")) == (
        "%%everest topk K [-o VAR] [--wait]\n  layer VIEW\n  neurons 5, 17, 301 | channels 3, 7\n"
        "  [by sum|mean|max|l2|weights w1, w2, ...]\n  [where labels == 7]\n"
        "the K inputs with the highest aggregate activation of the neuron group.")
    with pytest.raises(UsageError, match="unknown session 'nope'"):
        cell(ip, "use nope")


def test_history_records_queries(ip):
    from everest_magic.magics import kernel_state
    state = kernel_state()
    hist = state.history
    assert [h.id for h in hist] == list(range(1, len(hist) + 1))
    assert hist[0].text == "%everest index conv1 conv2 fc1 --wait" and hist[0].kind == "index"
    assert hist[0].status == "done" and re.fullmatch(r"\d+\.\d s", hist[0].summary)
    [top] = [h for h in hist if h.text == "%%everest topk 12 -o top --wait\nlayer conv2\nneurons 5, 17, 201\nby sum"]
    assert (top.kind, top.session, top.status) == ("topk", "digits", "done")
    assert re.fullmatch(r"12 results, \d+ recomputed, \d+ ms", top.summary), top.summary
    assert state.jobs.get(top.job_id).description == "%%everest topk 12 -o top --wait"
    [bad] = [h for h in hist if h.text == "%%everest knn 5 --wait\ntarget 99999\nlayer conv2\nneurons 1"]
    assert (bad.kind, bad.status) == ("knn", "failed")
    assert bad.summary == "line 2, column 8: input id 99999 is out of range [0, 1837)\n    target 99999\n           ^^^^^"
    for h in hist:
        job = state.all_jobs().get(h.job_id)
        assert h.status == (job.status if job is not None else h.status) and h.status != "running", h


def test_history_is_bounded_and_ids_stay_unique(monkeypatch):
    from everest_magic.magics import state as st
    monkeypatch.setattr(st, "HISTORY_LIMIT", 3)
    state = st.KernelState()
    entries = [state.record(f"%everest layers {i}", "layers", "s") for i in range(5)]
    assert [h.id for h in state.history] == [3, 4, 5]
    assert [h["text"] for h in state.snapshot()["history"]] == [e.text for e in entries[2:]]


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
    assert entry.kind == "inspect" and entry.status == "done"
    assert entry.text == ("%%everest inspect -o sc --wait\nlayer fc1, conv2:mean\nhypotheses class, ink, {parity}\n"
                          "measures pearson, auroc\nearly_stop false\nmax_inputs none")


@pytest.mark.parametrize("body, match", [
    ("layer fc1\nhypotheses inkk", r"line 3, column 12: unknown hypothesis 'inkk'.*did you mean 'ink'"),
    ("layer fc2x\nhypotheses ink", r"line 2, column 7: unknown layer 'fc2x'"),
    ("layer fc1\nhypotheses ink\nmeasures pearsn", r"line 4, column 10: unknown measure 'pearsn'.*'pearson'"),
    ("layer fc1\nhypotheses ink\nepsilonn 0.1", r"line 4, column 1: unknown keyword 'epsilonn'.*'epsilon'"),
])
def test_inspect_magic_errors_point_at_the_culprit(ip, body, match):
    with pytest.raises(UsageError, match=match):
        cell(ip, "inspect --wait", body)


def _wait_done(entry, timeout=30.0):
    deadline = time.time() + timeout
    while entry.status == "running" and time.time() < deadline:
        time.sleep(0.01)
    return entry.status


def test_gallery_drilldowns_record_the_magic_that_reproduces_them(ip):
    """Each drill-down enters the history as a finished "drill-down" whose magic, run again,
    shows exactly what the drill-down showed (not the group of the level it came from)."""
    from everest_magic.magics import kernel_state
    from everest_magic.magics.show import result_widget
    state = kernel_state()
    s = session(ip)
    g = result_widget(s.topk("conv2", [5, 17, 18, 19, 40], k=6), s, None, state)
    item = g.levels[0]["items"][1]["id"]
    where = " in session digits" if len(state.sessions) > 1 else ""   # named when there are several
    expected = {   # the group of level 0 runs as ranges
        "knn": f"%%everest knn 6\ntarget {item}\nlayer conv2\nneurons 5, 17:20, 40\nmetric l2" + where.replace(" ", "\n", 1),
        "neurons": f"%everest neurons top 10 of input {item} layer conv2" + where,
        "topk": f"%%everest topk 6\nlayer conv2\nneurons top 10 of input {item}\nby sum" + where.replace(" ", "\n", 1),
    }
    for action, text in expected.items():
        job = g.select(1, level=0, action=action)
        job.result(60)
        entry = state.history[-1]
        assert _wait_done(entry) == "done", entry
        assert (entry.kind, entry.job_id, entry.text, entry.session) == ("drill-down", job.id, text, "digits")
        shown = g.levels[-1]
        n_before = len(state.history)
        out = ip.run_cell(entry.text).result
        if action == "neurons":
            assert entry.summary == "10 neurons"
            assert str(out) == shown["text"]       # the same lines: ids and activations
        else:
            again = state.jobs.get(state.history[n_before].job_id).result(60)
            assert again.ids.tolist() == [it["id"] for it in shown["items"]]
            assert again.neurons.tolist() == g.results[-1].neurons.tolist()
            assert re.fullmatch(r"6 results, \d+ recomputed, \d+ ms", entry.summary), entry.summary


def test_where_label_and_id_are_accepted_spellings(ip):
    cell(ip, "topk 6 -o a --wait", "layer fc1\nneurons 0, 1\nwhere label == 7")
    cell(ip, "topk 6 -o b --wait", "layer fc1\nneurons 0, 1\nwhere labels == 7")
    cell(ip, "topk 6 -o c --wait", "layer fc1\nneurons 0, 1\nwhere id in (3, 4, 5)")
    s = session(ip)
    brute = ReprocessAll(s)
    assert ip.user_ns["a"].ids.tolist() == ip.user_ns["b"].ids.tolist() == \
        brute.topk("fc1", [0, 1], k=6, filter=s.labels == 7).ids.tolist()
    assert set(s.labels[ip.user_ns["a"].ids]) == {7}
    assert ip.user_ns["c"].ids.tolist() == brute.topk("fc1", [0, 1], k=6, filter=np.array([3, 4, 5])).ids.tolist()
    assert sorted(ip.user_ns["c"].ids.tolist()) == [3, 4, 5]


def test_cancel_unknown_job_names_the_jobs_there_are(ip):
    from everest_magic.magics import kernel_state
    ids = sorted(kernel_state().all_jobs())
    with pytest.raises(UsageError) as e:
        cell(ip, "cancel 99999")
    assert ids == list(range(ids[0], ids[-1] + 1))
    assert str(e.value) == (f"line 1, column 8: no job 99999 in this kernel: its jobs are {ids[0]}-{ids[-1]} "
                            "(see %everest jobs)\n    cancel 99999\n           ^^^^^")


def test_pending_result_prints_like_the_result_once_done(ip):
    cell(ip, "knn 5 -o nn5", "target 3\nlayer conv2\nneurons 1, 2, 3")
    handle = ip.user_ns["nn5"]
    r = handle.result(60)
    assert repr(handle) == repr(r) == str(handle)
    head = ", ".join(f"{i}:{v:.4g}" for i, v in zip(r.ids, r.scores))
    assert re.fullmatch(rf"<Result knn k=5 view='conv2' neurons=3 \[{re.escape(head)}\] recomputed=\d+/1837 "
                        r"via \S+ in \d+\.\d ms>", repr(r)), repr(r)


def test_query_on_a_view_not_indexed_shows_the_build_progress(ip, digits_cnn, tmp_path):
    """The query's job names the build it waits for and carries its done/total; `%everest jobs`
    shows them too."""
    from everest_magic.magics import kernel_state
    model, x, _ = digits_cnn
    st = kernel_state()
    ip.user_ns.update(x3=x[:600], idx3=str(tmp_path / "lazy.h5"))
    cell(ip, "use model=net data=x3 index={idx3} name=lazy batch_size=16")
    seen: list[tuple] = []
    st.jobs.on_change(lambda j: seen.append((j.description, j.phase, j.done_units, j.total, j.status)))
    cell(ip, "topk 5 -o lz", "layer conv1\nneurons 3, 4")
    r = ip.user_ns["lz"].result(120)
    q = [e for e in seen if e[0] == "%%everest topk 5 -o lz"]
    building = [e for e in q if e[1].startswith("building the index of conv1")]
    assert building and any(0 < d < t for _, _, d, t, _ in building), q
    assert q[-1][4] == "done" and q[-1][2] == q[-1][3] > 0, q[-1]
    assert q[-1][1].startswith("built the index of conv1"), q[-1][1]
    jobs = cell(ip, "jobs")
    [row] = jobs[jobs.description == "%%everest topk 5 -o lz"].to_dict("records")
    assert row["done_units"] == row["total"] == q[-1][3] and row["status"] == "done" and row["error"] == ""
    s = session(ip)
    assert list(s.indexed()) == ["conv1"]
    assert r.ids.tolist() == ReprocessAll(s).topk("conv1", [3, 4], k=5).ids.tolist()
    cell(ip, "use digits")


def test_python_sessions_are_discovered_for_the_sidebar(ip, digits_cnn, tmp_path):
    import everest_magic as em
    from everest_magic.magics import kernel_state
    model, x, _ = digits_cnn
    st = kernel_state()
    ip.user_ns["py_s"] = em.Session(model, x[:300], index=tmp_path / "py.h5", name="mine")
    ip.run_cell("1 + 1")    # the post_run_cell hook looks at the namespace
    rows = {r["name"]: r for r in st.snapshot()["sessions"]}
    assert list(rows) == [*st.sessions, "py_s"]
    py_s = ip.user_ns["py_s"]
    assert rows["py_s"] == {"name": "py_s", "session_name": "mine", "origin": "python", "current": False,
                            "model": "DigitsCNN", "data": "Tensor of 300", "n": 300, "index": str(py_s.index_path),
                            "device": "cpu", "views": []}
    assert (rows["digits"]["origin"], rows["digits"]["current"]) == ("magic", st.current == "digits")
    assert rows["digits"]["views"] == [info.to_json() for info in st.session("digits").indexed().values()]
    job = py_s.build_index(["fc1"])
    job.result(60)
    ip.run_cell("2 + 2")
    snap = st.snapshot()
    assert st.all_jobs()[job.id] is job
    assert [r for r in snap["jobs"] if r["id"] == job.id] == [job.to_json()]
    assert job.to_json()["status"] == "done" and job.to_json()["done_units"] == job.to_json()["total"] > 0
    assert [r["id"] for r in snap["jobs"]] == sorted(st.all_jobs())
    assert {r["name"]: r for r in snap["sessions"]}["py_s"]["views"] == [py_s.indexed()["fc1"].to_json()]
    ip.user_ns.pop("py_s").close()
    ip.run_cell("3 + 3")
    assert "py_s" not in {r["name"] for r in st.snapshot()["sessions"]}


def test_index_again_says_so_rebuild_builds_and_extend_grows(ip, capsys, tmp_path):
    from everest_magic.magics import kernel_state
    state = kernel_state()
    previous = state.session().name
    x, y = ip.user_ns["images"], ip.user_ns["labels"]
    ip.user_ns.update(grow_idx=str(tmp_path / "grow"), grow_x=x[:1500], grow_y=y[:1500], more_x=x[1500:],
                      more_y=y[1500:])
    cell(ip, "use model=net data=grow_x labels=grow_y index={grow_idx} name=grow")
    try:
        cell(ip, "index fc1 conv2:mean --wait")
        files = sorted(p.name for p in (tmp_path / "grow" / "views").iterdir())
        capsys.readouterr()
        table = cell(ip, "index fc1 conv2:mean --wait")
        assert capsys.readouterr().out.strip() == ("already indexed: fc1, conv2:mean "
                                                   "(nothing to do; --rebuild builds again)")
        s = state.session("grow")
        assert list(table.columns) == ["view", "neurons", "MB on disk", "% of float32", "partitions",
                                       "list fraction", "inputs", "files", "build s"]
        for row, v in zip(table.to_dict("records"), ["fc1", "conv2:mean"]):
            j = s.indexed()[v].to_json()
            assert row == {"view": v, "neurons": j["neurons"], "MB on disk": round(j["bytes"] / 1e6, 2),
                           "% of float32": round(100 * j["size_ratio"], 1), "partitions": j["partitions"],
                           "list fraction": j["list_fraction"], "inputs": 1500, "files": 1,
                           "build s": round(j["build_seconds"], 1)}
        assert table["neurons"].tolist() == [32, 16]
        assert sorted(p.name for p in (tmp_path / "grow" / "views").iterdir()) == files
        cell(ip, "index fc1 --rebuild --wait")
        now = sorted(p.name for p in (tmp_path / "grow" / "views").iterdir())
        assert len(now) == 2 and now != files
        table = cell(ip, "extend more_x labels more_y --wait")
        s = state.session("grow")
        assert s.n == len(ip.user_ns["images"]) and table["inputs"].tolist() == [s.n, s.n]
        assert table["files"].tolist() == [2, 2] and table["view"].tolist() == ["fc1", "conv2:mean"]
        brute = ReprocessAll(s)
        for view, group in (("fc1", [3, 7, 11]), ("conv2:mean", [1, 4])):
            assert s.topk(view, group, k=9).ids.tolist() == brute.topk(view, group, k=9).ids.tolist()
            assert s.knn(1700, view, group, k=6).ids.tolist() == brute.knn(1700, view, group, k=6).ids.tolist()
        with pytest.raises(UsageError, match="line 1, column 8: .*new inputs"):
            cell(ip, "extend 17")
    finally:
        cell(ip, f"use {previous}")
