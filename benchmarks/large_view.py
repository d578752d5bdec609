"""A view that does not fit in RAM: build its index on this machine and check 20 queries.

A wide convolution (1 -> 256 channels, 3x3, ReLU; seeded random weights) over the 50,000
real MNIST training images: 256 x 28 x 28 = 200,704 neurons, 40 GB of float32 activations,
on a 24 GiB machine. The build streams once over the data under `--memory-budget`; the
queries (top-k, bottom-k, kNN over random groups) are checked against brute force computed
in one extra pass that keeps only the queried neurons' columns.

    python benchmarks/large_view.py [--n 50000] [--memory-budget-gib 6] [--out DIR]
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
import psutil
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import everest_magic as em  # noqa: E402
from everest_magic import examples as ex  # noqa: E402
from everest_magic.engine import query as Q  # noqa: E402
from everest_magic.engine.baselines import rank  # noqa: E402


def wide_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("wide", torch.nn.Sequential(torch.nn.Conv2d(1, 256, 3, padding=1), torch.nn.ReLU()))
    return model.eval()


def columns(model: torch.nn.Module, x: torch.Tensor, neurons: np.ndarray, batch: int = 256) -> np.ndarray:
    """Activations (n, len(neurons)) of the wide layer: the brute-force reference."""
    out = np.empty((len(x), len(neurons)), np.float32)
    idx = torch.as_tensor(neurons)
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            out[s:s + batch] = model(x[s:s + batch]).flatten(1)[:, idx].numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--memory-budget-gib", type=float, default=6.0)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--out", default=None, help="folder of the index (default: a temporary one, removed)")
    a = ap.parse_args()
    x, _ = ex.load_mnist("train")
    x = x[:a.n].clone()
    model = wide_model()
    m = 256 * 28 * 28
    tmp = None if a.out else tempfile.mkdtemp(prefix="everest-large-")
    path = Path(a.out or tmp) / "wide_index"
    proc = psutil.Process()
    s = em.Session(model, x, index=path, batch_size=128, memory_budget=int(a.memory_budget_gib * 2**30), rebuild=True)
    base = proc.memory_info().rss
    peak = [base]
    done = []

    def sample_rss():
        while not done:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)
    import threading
    threading.Thread(target=sample_rss, daemon=True).start()
    t0 = time.perf_counter()
    job = s.build_index(["wide"])
    while not job.wait(10):
        print(f"  build {100 * job.progress:.0f}% after {time.perf_counter() - t0:.0f} s", flush=True)
    stats = job.result()["wide"]
    wall = time.perf_counter() - t0
    done.append(True)
    info = s.indexed()["wide"]
    rng = np.random.default_rng(0)
    specs = []
    for q in range(a.queries):
        g = rng.choice(m, int(rng.integers(1, 11)), replace=False)
        specs.append((("topk", "bottomk", "knn")[q % 3], g, int(rng.integers(5, 30)), int(rng.integers(a.n))))
    union = np.unique(np.concatenate([g for _, g, _, _ in specs]))
    t1 = time.perf_counter()
    A = columns(model, x, union)
    brute_s = time.perf_counter() - t1
    col = {int(j): i for i, j in enumerate(union)}
    rows, ok = [], 0
    for kind, g, k, target in specs:
        X = A[:, [col[int(j)] for j in g]]
        allowed = np.ones(a.n, bool)
        tq = time.perf_counter()
        if kind == "knn":
            r = s.knn(target, "wide", g, k=k)
            allowed[target] = False
            _, ref = rank(X, Q.knn_key(X[target], "l2"), k, allowed)
        else:
            r = s.topk("wide", g, k=k, lowest=kind == "bottomk")
            _, ref = rank(X, Q.topk_key(Q.make_aggregation("sum", len(g)), kind == "bottomk"), k, allowed)
        same = r.ids.tolist() == ref.tolist()
        ok += same
        rows.append({"kind": kind, "group": len(g), "k": k, "exact": same, "ms": 1000 * (time.perf_counter() - tq),
                     "recomputed": r.stats.inputs_recomputed})
    result = {"n": a.n, "neurons": m, "float32_bytes": 4 * a.n * m, "memory_budget": int(a.memory_budget_gib * 2**30),
              "build_wall_seconds": wall, "rss_before_bytes": base, "rss_peak_bytes": peak[0],
              "rss_peak_increase_bytes": peak[0] - base, "index_bytes": info.bytes_on_disk,
              "size_ratio": info.size_ratio, "P": info.partitions, "cut_sample": stats["cut_sample"],
              "block_inputs": stats["block_inputs"], "planned_bytes": stats["planned_bytes"],
              "seconds": {k: stats[k] for k in ("seconds_sample", "seconds_pass", "seconds_inference",
                                                "seconds_fold", "seconds_write_wait")},
              "brute_force_pass_seconds": brute_s, "queries_exact": ok, "queries": rows}
    print(json.dumps({k: v for k, v in result.items() if k != "queries"}, indent=1))
    print(f"{ok}/{len(rows)} queries exact; median {np.median([r['ms'] for r in rows]):.0f} ms, "
          f"median recomputed {np.median([r['recomputed'] for r in rows]):.0f}")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "large_view.json").write_text(json.dumps(result, indent=1))
    s.close()
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
