"""The magics in a real Jupyter kernel (ipykernel 7 through jupyter_client).

Background jobs must never block the kernel; their progress (widget trait updates sent
from worker threads) and results must really reach the front end as iopub messages.
"""
from __future__ import annotations

import ast
import time

import pytest

from kernel_util import Kernel, comm_updates, text_of

SETUP = """
import torch, numpy as np
from everest_magic import examples as ex
model, x, y = ex.trained_digits_cnn(epochs=3)
x = torch.cat([x] * 6)          # ~10k inputs so that a build takes a few seconds
y = np.concatenate([y] * 6)
%load_ext everest_magic
%everest use model=model data=x index=idx.h5 labels=y batch_size=8
"""


STATE = "__import__('everest_magic.magics', fromlist=['x']).kernel_state()"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = Kernel(cwd=str(tmp_path_factory.mktemp("kernel")))
    r = k.run(SETUP)
    assert r.status == "ok", r.error
    yield k
    k.close()


def test_build_runs_in_background_and_kernel_stays_free(kernel):
    r = kernel.run("%everest index conv1 conv2")
    assert r.status == "ok", r.error
    t0 = time.perf_counter()
    r2 = kernel.run("1 + 1")
    assert r2.status == "ok" and text_of(r2) == "2"
    free = time.perf_counter() - t0
    # the build is still running while the next cell has already completed
    state = kernel.value(f"[(j.description, j.status) for j in {STATE}.jobs.jobs.values()]")
    assert ast.literal_eval(state) == [("index conv1 conv2", "running")], (state, free)
    kernel.wait_for("'conv2' in __import__('everest_magic.magics', fromlist=['x']).kernel_state().session().indexed()", 300)
    kernel.drain(0.5)
    values = [v for v in comm_updates(kernel.iopub, "value") if isinstance(v, (int, float))]
    assert len(values) >= 3, "progress updates from the worker thread never reached iopub"
    assert any(0 < v < max(values) for v in values), values


def test_query_result_arrives_and_output_is_bound(kernel):
    start = len(kernel.iopub)
    r = kernel.run("%%everest topk 12 -o top\nlayer conv2\nneurons 5, 17, 101\nby sum")
    assert r.status == "ok", r.error
    kernel.wait_for("type(top).__name__ == 'Result'", 120)
    ids = ast.literal_eval(kernel.value("top.ids.tolist()"))
    brute = ast.literal_eval(kernel.value(
        "__import__('everest_magic.engine.baselines', fromlist=['x']).ReprocessAll("
        f"{STATE}.session()).topk('conv2', [5, 17, 101], k=12).ids.tolist()"))
    assert len(ids) == 12 and ids == brute
    assert ast.literal_eval(kernel.value("top.text")) == "%%everest topk 12 -o top\nlayer conv2\nneurons 5, 17, 101\nby sum\n"
    kernel.drain(0.5)
    # the gallery's items were pushed to the front end from the worker thread: one level, the
    # result's ids in order
    levels = comm_updates(kernel.iopub[start:], "levels")
    assert levels, "the gallery's levels never reached iopub"
    [level] = levels[-1]
    assert (level["kind"], level["view"], level["neurons"]) == ("topk", "conv2", [5, 17, 101])
    assert [it["id"] for it in level["items"]] == ids


def test_cancel_leaves_session_usable(kernel):
    r = kernel.run("%everest index conv1 conv2 --rebuild")   # the views from before stay
    assert r.status == "ok", r.error
    job_id = int(kernel.value(f"max({STATE}.jobs.jobs)"))
    assert ast.literal_eval(kernel.value(f"{STATE}.jobs.get({job_id}).description")) == "index conv1 conv2"
    kernel.wait_for(f"{STATE}.jobs.get({job_id}).done_units > 0", 60)
    r = kernel.run(f"%everest cancel {job_id}")
    assert text_of(r) == f"'cancelled job {job_id}'"
    kernel.wait_for(f"{STATE}.jobs.get({job_id}).status == 'cancelled'", 60)
    assert ast.literal_eval(kernel.value(f"sorted({STATE}.session().indexed())")) == ["conv1", "conv2"]
    r = kernel.run("%%everest knn 5 --wait -o nn\ntarget 3\nlayer conv1\nneurons top 5 of input 3")
    assert r.status == "ok", r.error
    ids = ast.literal_eval(kernel.value("nn.ids.tolist()"))
    brute = ast.literal_eval(kernel.value(
        f"(lambda s: __import__('everest_magic.engine.baselines', fromlist=['x']).ReprocessAll(s).knn("
        f"3, 'conv1', s.top_neurons(3, 'conv1', 5), k=5).ids.tolist())({STATE}.session())"))
    assert len(ids) == 5 and ids == brute


def test_user_error_is_one_line_with_position(kernel):
    r = kernel.run("%%everest topk 5\nlayer conv22\nneurons 1")
    assert text_of(r) == ("UsageError: line 2, column 7: unknown layer 'conv22'; other close names: conv2.1, "
                          "conv2.0 (did you mean 'conv2'?)\n    layer conv22\n          ^^^^^^\n")


def test_inspect_runs_in_background_and_its_table_arrives(kernel):
    start = len(kernel.iopub)
    r = kernel.run("%%everest inspect -o sc\nlayer fc1\nhypotheses class, ink\nmeasures pearson, auroc")
    assert r.status == "ok", r.error
    kernel.wait_for("type(sc).__name__ == 'DataFrame'", 300)
    assert ast.literal_eval(kernel.value("sorted(set(sc.hypothesis))")) == ["class", "ink"]
    assert ast.literal_eval(kernel.value("sorted(set(sc.layer))")) == ["fc1"]
    kernel.drain(1.0)
    msgs = kernel.iopub[start:]
    # the job's thread replaced the progress bar by the ranked table: new widget models were
    # opened and the box's children were updated, after the cell had ended
    opened = [m for m in msgs if m["msg_type"] == "comm_open"]
    children = comm_updates(msgs, "children")
    assert children and len(opened) > 10, (len(children), len(opened))
    assert any("Tab" in str(m["content"]["data"].get("state", {}).get("_model_name", "")) for m in opened)


def test_python_made_session_reaches_the_sidebar_without_load_ext(tmp_path):
    """`import everest_magic` in a kernel opens the sidebar channel and, after each cell, lists the
    sessions bound to names of the notebook, also those made with `em.Session(...)`."""
    k = Kernel(cwd=str(tmp_path))
    try:
        r = k.run("import everest_magic as em\nfrom everest_magic import examples as ex\n"
                  "x, y = ex.load_digits()\ns = em.Session(ex.DigitsCNN(), x, labels=y, name='mine')")
        assert r.status == "ok", r.error
        k.drain(0.3)
        opened = [m for m in k.iopub if m["msg_type"] == "comm_open"
                  and m["content"].get("target_name") == "everest_magic"]
        assert opened, "the import opened no sidebar channel"
        snaps = [m["content"]["data"]["state"] for m in k.iopub if m["msg_type"] == "comm_msg"
                 and m["content"]["data"].get("type") == "snapshot"]
        assert snaps, "no snapshot reached the sidebar"
        index = ast.literal_eval(k.value("str(s.index_path)"))
        assert snaps[-1] == {"sessions": [{"name": "s", "session_name": "mine", "origin": "python", "current": False,
                                           "model": "DigitsCNN", "data": "Tensor of 1797", "n": 1797,
                                           "index": index, "device": "cpu", "views": []}],
                             "jobs": [], "history": []}, snaps[-1]
    finally:
        k.close()
