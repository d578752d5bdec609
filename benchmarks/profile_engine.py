"""Where the engine's time goes: the index build and the queries, on the benchmark's workloads.

    python benchmarks/profile_engine.py [--n 50000] [--queries 10] [--minilm 5000] [--threads 1]

1. The build (MNIST conv1, conv2, fc1): a bare inference pass, then the build under
   cProfile (its calling thread: buffer allocation, model forward, rows into the buffers,
   waiting for the partition workers, chunk writes, commit), and the partition work of one
   block of real neurons on one thread, step by step.
2. Queries: cProfile of each query family (both caches cleared before every query): model
   forward, index reads, bounds of all inputs, best-first ordering, merges.
3. Recompute cost by batch size: the batch sizes each view's activations are bit-identical
   at, and the time of one padded batch of each size (fixed cost vs cost per input).
4. MiniLM (``--minilm N`` sentences, 0 skips): the same for its FFN view.

Writes ``--out`` (JSON) and prints a summary. Every answer is checked against brute force.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import everest_magic as em  # noqa: E402
from everest_magic.engine import partition as PT  # noqa: E402
from everest_magic.engine.baselines import ReprocessAll  # noqa: E402
from everest_magic.engine.store import compress_rows  # noqa: E402

import queries as QS  # noqa: E402
import workloads as W  # noqa: E402
from systems import reference  # noqa: E402

CASES = [("conv2", "topk-g3-top"), ("fc1", "topk-g10-rand"), ("conv2", "knn-g3-top"), ("fc1", "knn-g10-top"),
         ("conv1", "bottomk-g3-top"), ("conv1", "bottomk-g3-rand"), ("fc1", "bottomk-g3-rand")]

QUERY_STEPS = {  # label -> (file suffix, function names): cumulative seconds in the profile
    "whole query (Session call)": ("engine/session.py", "topk|knn"),
    "model forward (Runner.views)": ("engine/model.py", "views"),
    "index rows read + decoded (IndexStore.pids, extremes)": ("engine/store.py", "pids|extremes"),
    "bounds of all inputs (query.bounds)": ("engine/query.py", "bounds"),
    "best-first ordering (query.best_first)": ("engine/query.py", "best_first"),
    "exact keys + best-k merges (Scoring.__call__, merge_best)": ("engine/query.py", "__call__|merge_best"),
    "activation cache (get, put, group)": ("engine/cache.py", "get|put|group"),
}
BUILD_STEPS = {
    "whole build (build_views)": ("engine/build.py", "build_views"),
    "inference: buffer allocation, pages faulted in (_Activations.__init__)": ("engine/build.py", "__init__"),
    "inference: model forward (Runner.views)": ("engine/model.py", "views"),
    "inference: rows transposed into the buffers (_Activations.add)": ("engine/build.py", "add"),
    "partition: waiting for the workers (Future.result)": ("concurrent/futures/_base.py", "result"),
    "partition: chunk writes (IndexWriter.write_rows)": ("engine/store.py", "write_rows"),
    "partition: small arrays (IndexWriter.finish_view)": ("engine/store.py", "finish_view"),
    "commit: flush, fsync, rename, reopen": ("engine/store.py", "commit"),
}


def steps(prof: cProfile.Profile, table: dict) -> dict[str, float]:
    st = pstats.Stats(prof)
    out = {}
    for label, (suffix, names) in table.items():
        out[label] = sum(ct for (fname, _l, func), (_cc, _nc, _tt, ct, _c) in st.stats.items()
                         if fname.replace("\\", "/").endswith(suffix) and func in names.split("|"))
    return out


def top_functions(prof: cProfile.Profile, count: int = 12) -> str:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(count)
    text = s.getvalue()
    return text[text.find("ncalls"):] if "ncalls" in text else text


def run_specs(s, specs, A, profile: bool = False) -> dict:
    prof = cProfile.Profile() if profile else None
    lat, rec, batches, ok = [], [], [], True
    for q in specs:
        ref = reference(q, A)[1]
        s.clear_caches()
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        r = q.run(s)
        lat.append(time.perf_counter() - t0)
        if prof:
            prof.disable()
        rec.append(r.stats.inputs_recomputed)
        batches.append(r.stats.batches)
        ok &= r.ids.tolist() == ref.tolist()
    out = {"queries": len(specs), "median_ms": 1000 * float(np.median(lat)), "p90_ms": 1000 * float(np.percentile(lat, 90)),
           "median_recomputed": float(np.median(rec)), "p90_recomputed": float(np.percentile(rec, 90)),
           "median_batches": float(np.median(batches)), "answers_match": bool(ok)}
    if prof:
        out["steps_s"] = steps(prof, QUERY_STEPS)
        out["top_functions"] = top_functions(prof)
    return out


def partition_parts(A: np.ndarray, P: int, t: int, neurons: int = 256) -> dict[str, float]:
    """Milliseconds a neuron, one thread, of each step of the build's work on a block of
    real neurons (the steps `partition.partition_block` and the chunk compression run)."""
    n = A.shape[0]
    V = np.ascontiguousarray(A[:, np.linspace(0, A.shape[1] - 1, neurons).astype(int)].T)
    fractions, sample = PT.cut_fractions(P), PT.sample_ids(n)
    T: dict[str, float] = {}

    def clock(label, fn):
        t0 = time.perf_counter()
        r = fn()
        T[label] = 1000 * (time.perf_counter() - t0) / neurons
        return r

    S = clock("sort of the cut sample", lambda: np.sort(V if sample is None else V[:, sample], axis=1))
    cuts = clock("cut values", lambda: PT.cut_values(S, fractions))[0]
    pids = np.empty(V.shape, PT.pid_dtype(P))
    clock("partition ids (P-1 comparisons, 16 rows at a time)",
          lambda: [PT.partition_ids(V[s:s + 16], cuts[s:s + 16], pids[s:s + 16]) for s in range(0, neurons, 16)])
    clock("whole partition_block (ids, counts, exact bounds, lists)", lambda: PT.partition_block(V, fractions, t, sample))
    clock("compress partition ids (blosc zstd 1)", lambda: compress_rows(pids))
    return T


def batch_costs(s, view: str, reps: int = 5) -> dict:
    """The bit-identical batch sizes of a view and the time of one padded batch of each."""
    v = s.view(view)
    sizes = s.batch_sizes(view)
    out = {"bit_identical_sizes": list(sizes), "ms_per_batch": {}}
    for b in sizes:
        ids = np.arange(b)
        s.runner.views([v], ids, (b,))
        t0 = time.perf_counter()
        for _ in range(reps):
            s.runner.views([v], ids, (b,))
        out["ms_per_batch"][b] = 1000 * (time.perf_counter() - t0) / reps
    return out


def profile_queries(s, A: dict, cases, count: int, out: dict, label: str) -> None:
    for v, f in cases:
        qs = QS.draw(A[v].shape, A[v].__getitem__, v, f, count, seed=11)
        r = run_specs(s, qs, A[v], profile=True)
        out[f"{v} {f}"] = r
        print(f"\n== {label} {v} {f}: median {r['median_ms']:.1f} ms (p90 {r['p90_ms']:.1f}), median recomputed "
              f"{r['median_recomputed']:.0f} in {r['median_batches']:.0f} batches, answers ok: {r['answers_match']}")
        whole = r["steps_s"]["whole query (Session call)"] or 1.0
        for name, sec in r["steps_s"].items():
            print(f"   {name:62s} {1000 * sec / len(qs):8.2f} ms a query  {100 * sec / whole:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "out" / "profile.json"))
    ap.add_argument("--minilm", type=int, default=5000, help="MiniLM sentences (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (as benchmarks/run.py)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out: dict = {"n": a.n, "queries": a.queries, "threads": a.threads}
    tmp = tempfile.TemporaryDirectory(prefix="everest-profile-")

    # 1. the build
    w = W.mnist(a.n, HERE / "out" / "mnist_cnn.pt")
    with torch.inference_mode():
        w.bare_forward(next(iter(w.bare_batches())))
        t0 = time.perf_counter()
        for b in w.bare_batches():
            w.bare_forward(b)
    out["bare_pass_s"] = time.perf_counter() - t0
    s = em.Session(w.model, w.data, index=Path(tmp.name) / "index.h5", batch_size=w.batch_size)
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    s.build_index(w.views, wait=True)
    out["build_wall_s"] = time.perf_counter() - t0
    prof.disable()
    out["build_steps_s"] = steps(prof, BUILD_STEPS)
    out["build_top_functions"] = top_functions(prof, 14)
    print(f"bare inference pass {out['bare_pass_s']:.1f} s; build of {w.views}: {out['build_wall_s']:.1f} s "
          f"({out['build_wall_s'] / out['bare_pass_s']:.1f}x)")
    for label, sec in out["build_steps_s"].items():
        print(f"   {label:75s} {sec:7.2f} s")
    info = s.indexed()
    out["index"] = {v: {"P": i.partitions, "t": i.list_length, "size_ratio": i.size_ratio, "build": i.build} for v, i in info.items()}
    ra = ReprocessAll(s)
    views = sorted({v for v, _ in CASES})
    A = {v: ra.all_activations(v) for v in views}
    out["partition_ms_per_neuron"] = {}
    for v in ("conv1", "fc1"):
        out["partition_ms_per_neuron"][v] = T = partition_parts(A[v], info[v].partitions, info[v].list_length, min(256, A[v].shape[1]))
        print(f"partition work on {v}, one thread (ms a neuron): " + ", ".join(f"{k} {x:.2f}" for k, x in T.items()))

    # 2. queries, 3. recompute cost by batch size
    out["profiles"] = {}
    profile_queries(s, A, CASES, a.queries, out["profiles"], "mnist")
    out["batch_costs"] = {v: batch_costs(s, v) for v in views}
    for v, c in out["batch_costs"].items():
        print(f"\n{v}: bit-identical batch sizes {c['bit_identical_sizes']}; ms a padded batch: "
              + ", ".join(f"{b}: {ms:.1f}" for b, ms in c["ms_per_batch"].items()))
    s.close()
    del A

    # 4. MiniLM
    if a.minilm:
        w = W.minilm(a.minilm, batch_size=32)
        v = W.MINILM_VIEW
        s = em.Session(w.model, w.data, collate=w.collate, index=Path(tmp.name) / "minilm.h5", batch_size=32)
        t0 = time.perf_counter()
        s.build_index([v], wait=True)
        out["minilm"] = {"n": w.n, "build_s": time.perf_counter() - t0,
                         "size_ratio": s.indexed()[v].size_ratio, "P": s.indexed()[v].partitions, "t": s.indexed()[v].list_length}
        A = {v: ReprocessAll(s).all_activations(v)}
        out["minilm"]["profiles"] = {}
        cases = [(v, f) for f in ("topk-g1-top", "topk-g3-top", "knn-g10-top")]
        profile_queries(s, A, cases, max(3, a.queries // 2), out["minilm"]["profiles"], "minilm")
        out["minilm"]["batch_costs"] = c = batch_costs(s, v, reps=2)
        print(f"\nMiniLM: bit-identical batch sizes {c['bit_identical_sizes']}; ms a padded batch: "
              + ", ".join(f"{b}: {ms:.0f}" for b, ms in c["ms_per_batch"].items()))
        s.close()

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
