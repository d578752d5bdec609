"""How long a query cell keeps the notebook busy, and how long until its result shows.

Runs the quickstart notebook's query cells in a real kernel (ipykernel via jupyter_client)
and measures, per cell, from sending execute_request to
- the execute_reply (the cell is free again: the user can run the next cell), and
- the first message that puts the result on screen (the gallery's items arriving as a
  widget update or the display update replacing the progress bar).

    python benchmarks/notebook_latency.py [--out benchmarks/out/notebook_latency.json] [--n 50000]
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kernel_util import Kernel  # noqa: E402

SETUP = """
import torch
from everest_magic import examples as ex
model, x, y = ex.trained_mnist_cnn(cache={weights!r})
x, y = x[:{n}], y[:{n}]
%load_ext everest_magic
%everest use model=model data=x index={index!r} labels=y batch_size=128 rebuild=True
%everest index conv2 fc1 --wait
"""

CELLS = {
    "topk conv2 [5, 17, 301] by sum": "%%everest topk 12 -o top\nlayer conv2\nneurons 5, 17, 301\nby sum",
    "bottomk fc1 0:10 by mean": "%%everest bottomk 8 -o low\nlayer fc1\nneurons 0:10\nby mean",
    "knn 20 of 4711, top 10 neurons": "%%everest knn 20 -o nn\ntarget 4711\nlayer conv2\nneurons top 10 of input 4711",
    "topk single neuron (top list)": "%%everest topk 20 -o one\nlayer fc1\nneurons 7",
}


def shown(msg: dict) -> bool:
    """Does this iopub message put a result on screen?"""
    if msg["msg_type"] == "update_display_data":
        return True
    if msg["msg_type"] == "comm_msg":
        state = msg["content"].get("data", {}).get("state", {})
        levels = state.get("levels")
        return bool(levels) and bool(levels[0].get("items"))
    return False


def measure(k: Kernel, code: str, timeout: float = 300) -> dict:
    t0 = time.perf_counter()
    msg_id = k.kc.execute(code)
    free = result = None
    while free is None or result is None:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(code)
        try:
            m = k.kc.get_shell_msg(timeout=0.001)
            if m["parent_header"].get("msg_id") == msg_id:
                free = time.perf_counter() - t0
                if m["content"]["status"] != "ok":
                    raise RuntimeError(m["content"])
        except queue.Empty:
            pass
        try:
            m = k.kc.get_iopub_msg(timeout=0.001)
        except queue.Empty:
            continue
        if result is None and shown(m):
            result = time.perf_counter() - t0
    return {"cell_free_ms": 1000 * free, "result_shown_ms": 1000 * result}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/notebook_latency.json")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent.resolve()
    k = Kernel(cwd=str(work))
    try:
        r = k.run(SETUP.format(weights=str(work / "mnist_cnn.pt"), n=a.n, index=str(work / "latency_index.h5")), timeout=900)
        assert r.status == "ok", r.error
        rows = []
        for name, code in CELLS.items():
            for rep in range(a.repeats):
                k.run("from everest_magic.magics import kernel_state as _ks; [s.clear_caches() for s in _ks().sessions.values()]")
                m = measure(k, code)
                rows.append({"query": name, "repeat": rep, **m})
                print(f"{name:34s} cell free {m['cell_free_ms']:7.1f} ms   result shown {m['result_shown_ms']:7.1f} ms", flush=True)
    finally:
        k.close()
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
