"""In-process build vs a Dask LocalCluster of worker processes, on the quickstart MNIST CNN.

    python benchmarks/cluster_build.py                 # MNIST 50,000 and 200,000 (4 noisy copies)
    python benchmarks/cluster_build.py --sizes 5000    # a quick look

For each dataset size: one bare inference pass over the same views (in process, all cores),
the in-process build, then `cluster="local"` with 2 worker processes of 1 thread each: the
cluster's start, the build, and where the build's time went (sample pass and cuts in the
session's process, the workers' model and fold seconds, the session's merge and writes).
Both builds must store the same arrays (checked here). Results: benchmarks/out/cluster_build.json.
Run it on a quiet machine: the timings are wall clock.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tables
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import everest_magic as em  # noqa: E402
from everest_magic import examples as ex  # noqa: E402

VIEWS = ["conv1", "conv2", "fc1"]
OUT = ROOT / "benchmarks" / "out"


def dataset(n: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The first n training images; beyond 50,000, copies of them with Gaussian noise (sd 0.05)."""
    model, x, _ = ex.trained_mnist_cnn(cache=OUT / "mnist_cnn.pt")
    g = torch.Generator().manual_seed(0)
    parts, left = [], n
    while left > 0:
        take = x[:min(left, len(x))]
        parts.append(take if not parts else take + 0.05 * torch.randn(take.shape, generator=g))
        left -= len(take)
    return model, torch.cat(parts).contiguous()


def bare_pass(s: em.Session) -> float:
    views = [s.view(v) for v in VIEWS]
    t0 = time.perf_counter()
    for b in range(0, s.n, s.runner.batch_size):
        s.runner.view_tensors(views, np.arange(b, min(s.n, b + s.runner.batch_size)))
    return time.perf_counter() - t0


def arrays(s: em.Session, view: str) -> dict[str, np.ndarray]:
    info = s.store.view(view)
    out = {"pids": np.stack([s.store.pids(view, j) for j in range(0, info.neurons, max(1, info.neurons // 64))])}
    with tables.open_file(str(s.index_path / info.segments[0].file)) as h:
        for name in ("cuts", "counts", "bounds", "top_ids", "top_vals", "bot_ids", "bot_vals"):
            out[name] = h.get_node("/" + name)[:]
    return out


def measure(n: int, workers: int, batch_size: int, folder: Path) -> dict:
    model, x = dataset(n)
    res: dict = {"n": n, "views": VIEWS, "workers": workers, "batch_size": batch_size,
                 "torch_threads": torch.get_num_threads()}
    local = em.Session(model, x, index=folder / f"local{n}", batch_size=batch_size, rebuild=True)
    res["bare_pass_s"] = bare_pass(local)
    t0 = time.perf_counter()
    stats = local.build_index(VIEWS, wait=True).result()
    res["in_process_s"] = time.perf_counter() - t0
    res["in_process"] = {k: stats["fc1"][k] for k in ("seconds_sample", "seconds_pass", "seconds_inference",
                                                        "seconds_fold", "seconds_write_wait", "block_inputs")}
    t0 = time.perf_counter()
    dist = em.Session(model, x, index=folder / f"dask{n}", batch_size=batch_size, rebuild=True,
                      cluster=f"local:{workers}")
    res["cluster_start_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = dist.build_index(VIEWS, wait=True).result()
    res["cluster_s"] = time.perf_counter() - t0
    b = stats["fc1"]
    res["cluster"] = {k: b[k] for k in ("seconds_sample", "seconds_pass", "block_inputs", "cluster_tasks",
                                        "seconds_worker_tasks", "bytes_from_workers", "bytes_summaries",
                                        "seconds_merge_write")}
    res["cluster"]["worker_model_s"] = b["seconds_inference"] - b["seconds_sample"]
    res["cluster"]["worker_fold_s"] = b["seconds_fold"]
    same = all(np.array_equal(a, c, equal_nan=a.dtype.kind == "f")
               for v in VIEWS for a, c in zip(arrays(local, v).values(), arrays(dist, v).values()))
    res["same_arrays"] = bool(same)
    res["speedup"] = res["in_process_s"] / res["cluster_s"]
    res["build_over_bare"] = {"in_process": res["in_process_s"] / res["bare_pass_s"],
                              "cluster": res["cluster_s"] / res["bare_pass_s"]}
    dist.close()
    local.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="everest-cluster-bench-"))
    rows = []
    try:
        for n in args.sizes:
            r = measure(n, args.workers, args.batch_size, folder)
            rows.append(r)
            print(json.dumps(r, indent=1), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    (OUT / "cluster_build.json").write_text(json.dumps(rows, indent=1))
    print("\n| n | bare pass | in process | cluster start | cluster build | speedup | same arrays |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['bare_pass_s']:.1f} s | {r['in_process_s']:.1f} s | {r['cluster_start_s']:.1f} s "
              f"| {r['cluster_s']:.1f} s | {r['speedup']:.2f}x | {r['same_arrays']} |")


if __name__ == "__main__":
    main()
