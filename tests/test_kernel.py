"""The magics in a real Jupyter kernel (ipykernel 7 through jupyter_client).

Background jobs must never block the kernel; their progress (widget trait updates sent
from worker threads) and results must really reach the front end as iopub messages.
"""
from __future__ import annotations

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
    assert r2.status == "ok" and "2" in text_of(r2)
    free = time.perf_counter() - t0
    # the build is still running while the next cell has already completed
    state = kernel.value("[j.status for j in __import__('everest_magic.magics', fromlist=['x']).kernel_state().jobs.jobs.values()]")
    assert "running" in state, (state, free)
    kernel.wait_for("'conv2' in __import__('everest_magic.magics', fromlist=['x']).kernel_state().session().indexed()", 300)
    kernel.drain(0.5)
    values = [v for v in comm_updates(kernel.iopub, "value") if isinstance(v, (int, float))]
    assert len(values) >= 3, "progress updates from the worker thread never reached iopub"
    assert any(0 < v < max(values) for v in values), values


def test_query_result_arrives_and_output_is_bound(kernel):
    r = kernel.run("%%everest topk 12 -o top\nlayer conv2\nneurons 5, 17, 101\nby sum")
    assert r.status == "ok", r.error
    kernel.wait_for("type(top).__name__ == 'Result'", 120)
    ids = kernel.value("top.ids.tolist()")
    brute = kernel.value(
        "__import__('everest_magic.engine.baselines', fromlist=['x']).ReprocessAll("
        "__import__('everest_magic.magics', fromlist=['x']).kernel_state().session()).topk('conv2', [5, 17, 101], k=12).ids.tolist()")
    assert ids == brute
    assert kernel.value("top.text.splitlines()[0]") == "'%%everest topk 12 -o top'"
    kernel.drain(0.5)
    # the gallery's items were pushed to the front end from the worker thread
    levels = comm_updates(kernel.iopub, "levels")
    assert levels and any(str(i) in str(levels[-1]) for i in eval(ids)[:3])


def test_cancel_leaves_session_usable(kernel):
    r = kernel.run("%everest index conv1 conv2 --rebuild")   # the views from before stay
    assert r.status == "ok", r.error
    job_id = kernel.value("max(__import__('everest_magic.magics', fromlist=['x']).kernel_state().jobs.jobs)")
    kernel.wait_for(f"__import__('everest_magic.magics', fromlist=['x']).kernel_state().jobs.get({job_id}).done > 0", 60)
    r = kernel.run(f"%everest cancel {job_id}")
    assert "cancelled job" in text_of(r)
    kernel.wait_for(f"__import__('everest_magic.magics', fromlist=['x']).kernel_state().jobs.get({job_id}).status == 'cancelled'", 60)
    assert kernel.value("sorted(__import__('everest_magic.magics', fromlist=['x']).kernel_state().session().indexed())") == "['conv1', 'conv2']"
    r = kernel.run("%%everest knn 5 --wait -o nn\ntarget 3\nlayer conv1\nneurons top 5 of input 3")
    assert r.status == "ok", r.error
    assert kernel.value("len(nn.ids)") == "5"


def test_user_error_is_one_line_with_position(kernel):
    r = kernel.run("%%everest topk 5\nlayer conv22\nneurons 1")
    text = text_of(r)
    assert "UsageError" in text and "line 2, column 7" in text and "did you mean 'conv2'" in text
    assert "Traceback" not in text


def test_inspect_runs_in_background_and_its_table_arrives(kernel):
    start = len(kernel.iopub)
    r = kernel.run("%%everest inspect -o sc\nlayer fc1\nhypotheses class, ink\nmeasures pearson, auroc")
    assert r.status == "ok", r.error
    kernel.wait_for("type(sc).__name__ == 'DataFrame'", 300)
    assert kernel.value("sorted(set(sc.hypothesis))") == "['class', 'ink']"
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
        assert any(row["name"] == "s" and row["origin"] == "python" and row["session_name"] == "mine"
                   and row["n"] == 1797 for snap in snaps for row in snap["sessions"]), snaps
    finally:
        k.close()
