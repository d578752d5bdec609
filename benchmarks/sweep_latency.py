"""Sweep of the index settings with latency: partitions P, top-list ratio, partition scheme.

`benchmarks/sweep.py` measures index size and recompute fractions over a wide grid
(conv2 and fc1); this sweep adds measured query latency at the same n, on a view cheap
enough to rebuild once per setting inside the benchmark's time budget: every 8th neuron
of conv2 (784 neurons spread over all 32 channels and positions). Each setting is a real
build (one inference pass + partitioning) and real queries (activation cache cleared
before each), every answer checked against brute force.

    python benchmarks/sweep_latency.py [--n 50000] [--queries 5]   # standalone
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import everest_magic as em  # noqa: E402

import queries as QS  # noqa: E402
import workloads as W  # noqa: E402
from systems import CapturingReprocessAll, reference, timed  # noqa: E402

VIEW = "conv2_every8"
INDEX_NAME = "bench_sweep_index"
FAMILIES = ("topk-g3-top", "topk-g10-rand", "knn-g3-top", "knn-g10-top")


def conv2_every8(out, batch):
    """Every 8th element of conv2's flattened output (784 of 6,272 neurons)."""
    return out.flatten(1)[:, ::8]


def _session(w: W.Workload, path: Path, P: int, ratio: float, scheme: str, batch_size: int) -> em.Session:
    s = em.Session(w.model, w.data, index=path, batch_size=batch_size, partitions=P, ratio=ratio, scheme=scheme,
                   rebuild=True)
    s.add_view(VIEW, "conv2", conv2_every8)
    return s


def run(cfg, weights: Path, out: Path, bar=None) -> dict:
    """Build and query once per setting of `cfg.sweep_settings`; returns rows and checks."""
    w = W.mnist(cfg.sweep_n, weights, ["conv2"], cfg.batch_size)
    path = out / INDEX_NAME
    rows = []
    A = None
    reprocess_s = None
    specs: list[QS.QuerySpec] = []
    for P, ratio, scheme in cfg.sweep_settings:
        if bar is not None:
            bar.stage(f"sweep: P={P} ratio={ratio} {scheme}")
        s = _session(w, path, P, ratio, scheme, cfg.batch_size)
        if A is None:   # brute-force rows of the view, from one ReprocessAll query
            ra = CapturingReprocessAll(s)
            first = QS.draw((s.n, int(np.prod(s.shape(VIEW)))), None, VIEW, "topk-g10-rand", 1, cfg.seed)[0]
            t0 = time.perf_counter()
            first.run(ra)
            reprocess_s = time.perf_counter() - t0
            A = ra.captured.pop(VIEW)
            specs = [q for fam in FAMILIES for q in QS.draw(A.shape, A.__getitem__, VIEW, fam, cfg.sweep_queries, cfg.seed)]
            if bar is not None:
                bar.step()
        t0 = time.perf_counter()
        build = s.build_index([VIEW], wait=True).result()[VIEW]
        build_s = time.perf_counter() - t0
        info = s.indexed()[VIEW]
        per_family: dict[str, dict] = {}
        mismatches = []
        lat_all = []
        for q in specs:
            ref = reference(q, A)[1]
            s.clear_caches()
            o = timed("engine", lambda: q.run(s), ref)
            if not o.match:
                mismatches.append(f"sweep P={P} ratio={ratio} {scheme} {q.family} group={q.group.tolist()} target={q.target}")
            d = per_family.setdefault(q.family, {"seconds": [], "recomputed": []})
            d["seconds"].append(o.seconds)
            d["recomputed"].append(o.recomputed)
            lat_all.append(o.seconds)
        row = {"P": P, "ratio": ratio, "scheme": scheme, "view": VIEW, "n": s.n, "neurons": info.neurons, "t": info.list_length,
               "bytes": info.bytes_on_disk, "size_ratio": info.size_ratio, "build_seconds": build_s,
               "build_partition_seconds": build["seconds_partition"], "build_inference_seconds": build["seconds_inference"],
               "median_ms": 1000 * float(np.median(lat_all)), "p90_ms": 1000 * float(np.percentile(lat_all, 90)),
               "families": {f: {"median_ms": 1000 * float(np.median(d["seconds"])),
                                "p90_ms": 1000 * float(np.percentile(d["seconds"], 90)),
                                "median_recomputed_pct": 100 * float(np.median(d["recomputed"])) / s.n,
                                "p90_recomputed_pct": 100 * float(np.percentile(d["recomputed"], 90)) / s.n}
                            for f, d in per_family.items()},
               "answers": len(specs), "mismatches": mismatches}
        rows.append(row)
        s.close()
        shutil.rmtree(path, ignore_errors=True)
        if bar is not None:
            bar.note(f"P={P} ratio={ratio}: {100 * info.size_ratio:.1f}% size, median {row['median_ms']:.0f} ms")
            bar.step()
    result = {"view": VIEW, "view_note": "every 8th neuron of MNIST conv2 (784 neurons)", "n": w.n,
              "queries_per_family": cfg.sweep_queries, "families": list(FAMILIES),
              "reprocess_all_seconds": reprocess_s, "rows": rows}
    # benchmarks/sweep.py's size / recompute grid (no latency), when it was run: its JSON,
    # or the JSON lines of a partial run
    for earlier in (HERE / "out" / "sweep.json", HERE / "out" / "sweep_partial.log"):
        if earlier.exists():
            try:
                text = earlier.read_text()
                rows = json.loads(text) if earlier.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
                result["sweep_py"] = {"path": str(earlier.relative_to(HERE.parent)), "mtime": time.strftime(
                    "%Y-%m-%dT%H:%M:%S", time.localtime(earlier.stat().st_mtime)), "rows": rows}
                break
            except (ValueError, OSError):
                continue
    return result


if __name__ == "__main__":
    import argparse

    from bench_config import Config
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "out"))
    a = ap.parse_args()
    cfg = Config.full()
    cfg.sweep_n, cfg.sweep_queries = a.n, a.queries
    res = run(cfg, HERE / "out" / "mnist_cnn.pt", Path(a.out))
    Path(a.out, "sweep_latency.json").write_text(json.dumps(res, indent=1))
    for r in res["rows"]:
        print(json.dumps({k: v for k, v in r.items() if k != "families"}))
