"""Sweep of the index settings (partitions P, top-list ratio, partition scheme).

For each setting: index size vs full float32 materialisation, and the median fraction of
inputs recomputed by kNN (k=20, groups of the 3 and 10 most activated neurons of random
targets) and top-k (k=20, same groups). Every answer is checked against brute force.

    python benchmarks/sweep.py --out benchmarks/out/sweep.json [--n 50000] [--queries 20]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

import everest_magic as em
from everest_magic import examples as ex
from everest_magic.engine import query as Q
from everest_magic.engine.baselines import ReprocessAll, rank


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/sweep.json")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--views", default="conv2,fc1")
    ap.add_argument("--P", default="4,8,16,32,64")
    ap.add_argument("--ratio", default="0,0.002,0.01")
    ap.add_argument("--scheme", default="tails,equi")
    ap.add_argument("--workdir", default="benchmarks/out")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model, x, y = ex.trained_mnist_cnn(cache=work / "mnist_cnn.pt")
    x = x[: a.n]
    views = a.views.split(",")
    rows = []
    full = None
    for P, ratio, scheme in itertools.product([int(p) for p in a.P.split(",")], [float(r) for r in a.ratio.split(",")],
                                              a.scheme.split(",")):
        s = em.Session(model, x, index=work / "sweep.h5", rebuild=True, partitions=P, ratio=ratio, scheme=scheme,
                       batch_size=128, cache_bytes=0)
        t0 = time.perf_counter()
        s.build_index(views, wait=True)
        build_s = time.perf_counter() - t0
        if full is None:
            full = {v: ReprocessAll(s).all_activations(v) for v in views}
        for v in views:
            info = s.indexed()[v]
            A = full[v]
            rng = np.random.default_rng(0)
            rec = {"knn3": [], "knn10": [], "topk3": [], "topk10": []}
            for _ in range(a.queries):
                tid = int(rng.integers(s.n))
                for g in (3, 10):
                    grp = np.lexsort((np.arange(A.shape[1]), -A[tid]))[:g]
                    r = s.knn(tid, v, grp, k=20)
                    allowed = np.ones(s.n, bool)
                    allowed[tid] = False
                    key_of = Q.knn_key(A[tid, grp], "l2")
                    assert r.ids.tolist() == rank(A[:, grp], key_of, 20, allowed)[1].tolist()
                    rec[f"knn{g}"].append(r.stats.inputs_recomputed - 1)   # minus the target itself
                    r = s.topk(v, grp, k=20)
                    key_of = Q.topk_key(Q.make_aggregation("sum", g), False)
                    assert r.ids.tolist() == rank(A[:, grp], key_of, 20, np.ones(s.n, bool))[1].tolist()
                    rec[f"topk{g}"].append(r.stats.inputs_recomputed)
            row = {"P": P, "ratio": ratio, "scheme": scheme, "view": v, "n": s.n, "neurons": info.neurons,
                   "size_ratio": info.size_ratio, "bytes": info.bytes_on_disk, "build_s": build_s,
                   **{f"median_{key}_pct": 100 * float(np.median(val)) / s.n for key, val in rec.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
        s.close()
    Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
