"""Where the engine's time goes, and what-if measurements for the targets it misses.

    python benchmarks/profile_engine.py [--n 50000] [--queries 10] [--index PATH]

On the MNIST workload (the benchmark's model and data):

1. cProfile of query families (activation cache cleared before each query): wall time,
   model batches, and the cumulative time of the engine's steps (model forward, batch
   assembly, index reads and bounds, cache, walk).
2. What-if "single-valued partitions are exact": `query.intervals` patched so that an
   input in a partition whose min == max gets that value as an exact point (as the top
   and bottom lists already do). Measures recomputation and latency of bottom-k on ReLU
   layers (dominated by ties at 0) with and without, answers checked against brute force.
3. What-if "smaller recompute batches": the same index queried from a Session with a
   smaller `batch_size` after checking that this model's activations are bit-identical
   across batch sizes; answers checked.
4. The build: one inference pass vs the partition step, `partition_block` profiled on a
   block of real neurons (single thread) and the HDF5 write of its arrays.

Writes ``--out`` (JSON) and prints a readable summary. Engine code is not modified: the
what-ifs patch functions in this process only.
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
from everest_magic.engine import query as Q  # noqa: E402
from everest_magic.engine.baselines import ReprocessAll  # noqa: E402

import queries as QS  # noqa: E402
import workloads as W  # noqa: E402
from systems import reference  # noqa: E402

CASES = [("conv2", "topk-g3-top"), ("fc1", "topk-g10-rand"), ("conv2", "knn-g3-top"), ("fc1", "knn-g10-top"),
         ("conv1", "bottomk-g3-top"), ("conv1", "bottomk-g3-rand"), ("fc1", "bottomk-g3-rand")]

STEPS = {  # label -> (file suffix, function name): cumulative seconds in the profile
    "model forward + batch assembly (Runner.views)": ("engine/model.py", "views"),
    "  of which batch assembly (DataAdapter.batch)": ("engine/data.py", "batch"),
    "index reads + per-input intervals (query.intervals)": ("engine/query.py", "intervals"),
    "  of which members read + delta decode (IndexStore.members)": ("engine/store.py", "members"),
    "bounds of all inputs (bound_of)": ("engine/query.py", "bound_of"),
    "best-k merges (merge_best)": ("engine/query.py", "merge_best"),
    "cache put": ("engine/cache.py", "put"),
    "cache get": ("engine/cache.py", "get"),
    "fetch (cache + model + copies)": ("engine/session.py", "fetch"),
    "whole query (Session call)": ("engine/session.py", "topk|knn"),
}


def step_times(prof: cProfile.Profile) -> dict[str, float]:
    st = pstats.Stats(prof)
    out = {}
    for label, (suffix, names) in STEPS.items():
        total = 0.0
        for (fname, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
            if fname.replace("\\", "/").endswith(suffix) and func in names.split("|"):
                total += ct
        out[label] = total
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
        s.cache.clear()
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
           "total_s": float(sum(lat)), "median_recomputed": float(np.median(rec)), "p90_recomputed": float(np.percentile(rec, 90)),
           "median_batches": float(np.median(batches)), "answers_match": bool(ok)}
    if prof:
        out["steps_s"] = step_times(prof)
        out["top_functions"] = top_functions(prof)
    return out


# -- what-if: single-valued partitions are exact ---------------------------------------------------

def intervals_constant_exact(ctx, view, neurons):
    """`query.intervals`, plus: an input in a partition with min == max is known exactly."""
    n, g = ctx.n, len(neurons)
    counts, bounds = ctx.store.summary(view)
    info = ctx.store.view(view)
    LO = np.empty((n, g), np.float64)
    HI = np.empty((n, g), np.float64)
    known = np.zeros((n, g), bool)
    for j, neuron in enumerate(neurons):
        b = bounds[neuron].astype(np.float64)
        eps = ctx.tolerance * float(np.nanmax(np.abs(b))) if np.any(np.isfinite(b)) else 0.0
        p = PT.partition_of(ctx.store.members(view, neuron), counts[neuron])
        LO[:, j] = b[p, 0] - eps
        HI[:, j] = b[p, 1] + eps
        if info.t > 0:
            top_ids, top_vals = ctx.store.extremes(view, neuron, highest=True)
            bot_ids, bot_vals = ctx.store.extremes(view, neuron, highest=False)
            np.minimum(HI[:, j], float(top_vals[-1]) + eps, out=HI[:, j])
            np.maximum(LO[:, j], float(bot_vals[-1]) - eps, out=LO[:, j])
            for ids, vals in ((top_ids, top_vals), (bot_ids, bot_vals)):
                LO[ids, j] = vals
                HI[ids, j] = vals
                known[ids, j] = True
        single = b[:, 0] == b[:, 1]            # the change: a one-valued partition is exact
        if single.any():
            hit = single[p]
            LO[hit, j] = b[p[hit], 0]
            HI[hit, j] = b[p[hit], 0]
            known[hit, j] = True
    exact = known.all(axis=1)
    from_lists = int(exact.sum())
    cached = ctx.cache.ids(view)
    if len(cached):
        found, rows = ctx.cache.get(view, cached)
        if rows:
            X = np.stack(rows)[:, neurons].astype(np.float64)
            ids = cached[found]
            LO[ids] = X
            HI[ids] = X
            exact[ids] = True
    return LO, HI, exact, from_lists


# -- the build ---------------------------------------------------------------------------------------

def profile_partition(A: np.ndarray, P: int, ratio: float, scheme: str, neurons: int) -> dict:
    """partition_block on `neurons` real neurons (single thread), and the HDF5 write of its output."""
    n = A.shape[0]
    V = np.ascontiguousarray(A[:, :neurons].T)
    fractions = PT.cut_fractions(P, scheme)
    t = int(np.ceil(ratio * n))
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    arrays = PT.partition_block(V, fractions, t)
    part_s = time.perf_counter() - t0
    prof.disable()
    st = pstats.Stats(prof)
    parts = {}
    for (fname, _l, func), (_cc, _nc, tt, ct, _c) in st.stats.items():
        if fname.replace("\\", "/").endswith("engine/partition.py"):
            parts[f"partition.{func}"] = ct
        elif func in ("sort", "argsort", "lexsort", "nonzero", "searchsorted", "concatenate"):
            parts[f"numpy.{func}"] = parts.get(f"numpy.{func}", 0.0) + ct
        elif "method 'sort'" in func or "method 'argsort'" in func:
            parts["ndarray.sort/argsort (C)"] = parts.get("ndarray.sort/argsort (C)", 0.0) + tt
    sorts = dict(sorted(parts.items(), key=lambda kv: -kv[1]))
    # the write, as IndexWriter does it (zstd + bitshuffle members, lz4 floats)
    from everest_magic.engine.store import IndexStore
    with tempfile.TemporaryDirectory() as d:
        store = IndexStore(Path(d) / "w.h5", "m", "d", n)
        w = store.writer()
        g = w.create_view("x", {}, (neurons,), neurons, n, P, scheme, fractions, ratio, t)
        t0 = time.perf_counter()
        w.write_rows(g, 0, arrays)
        w.h.flush()
        write_s = time.perf_counter() - t0
        w.abort()
    return {"neurons": neurons, "n": n, "partition_block_s": part_s, "per_neuron_ms": 1000 * part_s / neurons,
            "write_s": write_s, "write_per_neuron_ms": 1000 * write_s / neurons, "functions_s": sorts,
            "top_functions": top_functions(prof, 14)}


def partition_components(A: np.ndarray, P: int, ratio: float, scheme: str, neurons: int) -> dict:
    """Milliseconds a neuron of each step of `partition.partition_block` (a timing replica of its code)."""
    n = A.shape[0]
    cols = np.linspace(0, A.shape[1] - 1, neurons).astype(int)   # spread over the layer
    V = np.ascontiguousarray(A[:, cols].T)
    fractions = PT.cut_fractions(P, scheme)
    t = int(np.ceil(ratio * n))
    b = len(V)
    T = {}
    t0 = time.perf_counter()
    S = np.sort(V, axis=1)
    T["np.sort of values"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    part = np.empty((b, n), np.uint8)
    cuts = np.empty((b, P - 1), np.float32)
    rest = PT._rescale(fractions, P - 1)
    inner = fractions[1:-1]
    for i in range(b):
        s_ = S[i]
        z = int(np.searchsorted(s_, s_[0], side="right"))
        ranks = np.concatenate([[z], z + np.round(rest * (n - z))]) if (P > 2 and z < n and z >= max(2, fractions[1] * n)) \
            else np.round(inner * n)
        cuts[i] = s_[np.clip(ranks.astype(np.int64), 0, n - 1)]
    T["cuts, counts, bounds (per-row loop)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    part[:] = 0
    for j in range(P - 1):
        part += V >= cuts[:, j:j + 1]
    T["partition ids (P-1 comparisons)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    members = np.argsort(part, axis=1, kind="stable")
    T["members: stable argsort of partition ids"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    PT._extreme_lists(V, S, t, True)
    PT._extreme_lists(V, S, t, False)
    T["top and bottom lists"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    PT.encode_members(members)
    T["delta-encode members"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    PT.partition_block(V, fractions, t)
    T["whole partition_block"] = time.perf_counter() - t0
    return {k: 1000 * x / b for k, x in T.items()}


BUILD_STEPS = {  # label -> (file suffix, function names): cumulative seconds on the build's calling thread
    "whole build (build_views)": ("engine/build.py", "build_views"),
    "inference phase: model forward (Runner.views)": ("engine/model.py", "views"),
    "inference phase: rows into the neuron-major buffers (_Activations.add)": ("engine/build.py", "add"),
    "partition phase: block gather for the workers (_Activations.neurons)": ("engine/build.py", "neurons"),
    "partition phase: HDF5 writes, compression included (IndexWriter.write_rows)": ("engine/store.py", "write_rows"),
    "partition phase: waiting for a worker's partition_block (Future.result)": ("concurrent/futures/_base.py", "result"),
    "commit: flush, rename, reopen (IndexWriter.commit)": ("engine/store.py", "commit"),
}


def build_steps(prof: cProfile.Profile) -> dict[str, float]:
    st = pstats.Stats(prof)
    out = {}
    for label, (suffix, names) in BUILD_STEPS.items():
        out[label] = sum(ct for (fname, _l, func), (_cc, _nc, _tt, ct, _c) in st.stats.items()
                         if fname.replace("\\", "/").endswith(suffix) and func in names.split("|"))
    return out


def members_whatif(index_path: Path, sample: int = 256) -> dict:
    """Size of the stored members vs the same information as one partition id (uint8) per input.

    For a sample of neurons of every view: the members row decoded into partition ids,
    written with a few HDF5 filters (chunk per neuron), against the members' own size;
    and the entropy of the partition sizes (the floor for any encoding of that partition).
    """
    import tables
    from everest_magic.engine.store import INT_FILTERS
    out = {}
    with tables.open_file(str(index_path), "r") as h, tempfile.TemporaryDirectory() as d, \
            tables.open_file(str(Path(d) / "p.h5"), "w") as o:
        for g in h.root.views._f_iter_nodes("Group"):
            m, n = g.members.shape
            sel = np.linspace(0, m - 1, min(m, sample)).astype(int)
            C = g.counts[:]
            parts = np.stack([PT.partition_of(PT.decode_members(g.members[i]), C[i]) for i in sel]).astype(np.uint8)
            full = len(sel) * n * 4
            row = {"P": int(g._v_attrs["P"]), "n": n, "neurons": m, "members_dtype": str(g.members.dtype),
                   "members_pct_of_float32": 100 * g.members.size_on_disk / (m * n * 4),
                   "index_pct_of_float32": 100 * sum(x.size_on_disk for x in g._f_iter_nodes("Leaf")) / (m * n * 4)}
            for label, filt in (("partition ids, blosc zstd 1 + bitshuffle (the index's filter)", INT_FILTERS),
                                ("partition ids, blosc zstd 5, no shuffle", tables.Filters(5, "blosc:zstd", shuffle=False)),
                                ("partition ids, zlib 9", tables.Filters(9, "zlib"))):
                node = o.create_carray("/", f"p{len(o.root._v_children)}", obj=parts, chunkshape=(1, n), filters=filt)
                row[label + " (% of float32)"] = 100 * node.size_on_disk / full
            freq = [np.bincount(p, minlength=1) / n for p in parts]
            row["entropy floor (% of float32)"] = 100 * float(np.mean([-(f[f > 0] * np.log2(f[f > 0])).sum() for f in freq])) / 32
            out[str(g._v_attrs["name"])] = row
    return out


class target_alone:
    """Patch `Session.fetch` so that a single missing input (a kNN target) runs in a batch of 1."""

    def __init__(self, runner):
        self.runner = runner

    def __enter__(self):
        self.orig = orig = em.Session.fetch
        small = self.runner

        def fetch(session, view, ids, stats=None):
            ids = np.asarray(ids, np.int64)
            name = session.view(view).name
            if len(ids) == 1 and not session.cache.get(name, ids)[0].all():
                row = small.views([session.view(view)], ids)[0]
                session.cache.put(name, ids, row)
                if stats is not None:
                    stats.inputs_recomputed += 1
                    stats.batches += 1
                return row
            return orig(session, view, ids, stats)

        em.Session.fetch = fetch
        return self

    def __exit__(self, *exc):
        em.Session.fetch = self.orig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--index", default=None, help="an index of conv1, conv2, fc1 for this model and data (built if missing)")
    ap.add_argument("--out", default=str(HERE / "out" / "profile.json"))
    ap.add_argument("--small-batches", default="16")
    ap.add_argument("--minilm", type=int, default=5000, help="MiniLM sentences for its what-ifs (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (as benchmarks/run.py)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out: dict = {"n": a.n, "queries": a.queries, "threads": a.threads}
    w = W.mnist(a.n, HERE / "out" / "mnist_cnn.pt")
    tmp = tempfile.TemporaryDirectory(prefix="everest-profile-")
    index = Path(a.index) if a.index else Path(tmp.name) / "index.h5"

    # 0. the bare pass, then the build under cProfile (its calling thread: inference, writes, waits)
    with torch.inference_mode():
        w.bare_forward(next(iter(w.bare_batches())))
        t0 = time.perf_counter()
        for b in w.bare_batches():
            w.bare_forward(b)
    out["bare_pass_s"] = time.perf_counter() - t0
    s = em.Session(w.model, w.data, index=index, batch_size=w.batch_size)
    todo = [v for v in w.views if v not in s.indexed()]
    if todo:
        prof = cProfile.Profile()
        prof.enable()
        t0 = time.perf_counter()
        s.build_index(todo, wait=True)
        out["build_wall_s"] = time.perf_counter() - t0
        prof.disable()
        out["build_steps_s"] = build_steps(prof)
        out["build_top_functions"] = top_functions(prof, 14)
        print(f"bare inference pass {out['bare_pass_s']:.1f} s; build of {todo}: {out['build_wall_s']:.1f} s", flush=True)
        for label, sec in out["build_steps_s"].items():
            print(f"   {label:80s} {sec:7.2f} s")
    info = s.indexed()
    out["build_recorded"] = {v: info[v].build for v in info}
    out["index"] = {v: {"P": info[v].P, "t": info[v].t, "size_ratio": info[v].size_ratio} for v in info}
    out["members_whatif"] = members_whatif(index)
    print("\nmembers encoding (% of the view's float32 size):")
    for v, row in out["members_whatif"].items():
        print(f"   {v}: " + ", ".join(f"{k} {x:.1f}" for k, x in row.items() if isinstance(x, float)))

    ra = ReprocessAll(s)
    views = sorted({v for v, _ in CASES})
    A = {v: ra.all_activations(v) for v in views}
    specs = {(v, f): QS.draw(A[v].shape, A[v].__getitem__, v, f, a.queries, seed=11) for v, f in CASES}
    # 1. profiles
    out["profiles"] = {}
    for (v, f), qs in specs.items():
        r = run_specs(s, qs, A[v], profile=True)
        out["profiles"][f"{v} {f}"] = r
        print(f"\n== {v} {f}: median {r['median_ms']:.0f} ms, median recomputed {r['median_recomputed']:.0f} "
              f"({r['median_batches']:.0f} batches), answers ok: {r['answers_match']}")
        whole = r["steps_s"]["whole query (Session call)"] or 1.0
        for label, sec in r["steps_s"].items():
            print(f"   {label:62s} {sec:7.2f} s  {100 * sec / whole:5.1f}%")
    # one model batch alone, per view
    out["one_batch_ms"] = {}
    for v in views:
        ids = np.arange(w.batch_size)
        s.runner.views([s.view(v)], ids)
        t0 = time.perf_counter()
        for _ in range(5):
            s.runner.views([s.view(v)], ids)
        out["one_batch_ms"][v] = 1000 * (time.perf_counter() - t0) / 5
    print("\none recompute batch of", w.batch_size, "inputs (ms):", {k: round(x, 1) for k, x in out["one_batch_ms"].items()})

    # 2. what-if: single-valued partitions exact
    out["whatif_constant_partitions"] = {}
    orig = Q.intervals
    for (v, f), qs in specs.items():
        if not f.startswith("bottomk"):
            continue
        before = out["profiles"][f"{v} {f}"]
        Q.intervals = intervals_constant_exact
        try:
            after = run_specs(s, qs, A[v])
        finally:
            Q.intervals = orig
        out["whatif_constant_partitions"][f"{v} {f}"] = {"before": {k: before[k] for k in after}, "after": after}
        print(f"what-if exact one-valued partitions, {v} {f}: median recomputed {before['median_recomputed']:.0f} -> "
              f"{after['median_recomputed']:.0f}, median {before['median_ms']:.0f} -> {after['median_ms']:.0f} ms, "
              f"answers ok: {after['answers_match']}")

    # 3. what-if: smaller recompute batches (same index)
    out["whatif_batch"] = {}
    probe = np.arange(0, a.n, max(1, a.n // 512))[:512]
    for bs in [int(b) for b in a.small_batches.split(",") if b]:
        s2 = em.Session(w.model, w.data, index=index, batch_size=bs)
        same = all(np.array_equal(s2.activations(v, probe), A[v][probe]) for v in views)
        res = {"bit_identical_to_batch_128": bool(same)}
        if same:
            for (v, f), qs in specs.items():
                if f.startswith("bottomk"):
                    continue
                r = run_specs(s2, qs, A[v])
                res[f"{v} {f}"] = r
                base = out["profiles"][f"{v} {f}"]
                print(f"what-if batch_size={bs}, {v} {f}: median {base['median_ms']:.0f} -> {r['median_ms']:.0f} ms, "
                      f"recomputed {base['median_recomputed']:.0f} -> {r['median_recomputed']:.0f}, answers ok: {r['answers_match']}")
        else:
            print(f"batch_size={bs}: activations differ from batch 128, what-if skipped")
        out["whatif_batch"][str(bs)] = res
        s2.close()

    # 3b. what-if: a kNN target computed in the smallest batch that reproduces its values bit
    #     for bit (not padded to 128)
    out["whatif_knn_target_batch1"] = {}
    from everest_magic.engine.model import Runner
    probe1 = np.arange(0, a.n, max(1, a.n // 64))[:64]
    same1, small = False, None
    for size in (1, 2, 4, 8, 16):
        small = Runner(w.model, s.data, device="cpu", batch_size=size)
        same1 = all(np.array_equal(np.concatenate([small.views([s.view(v)], [i])[0] for i in probe1]), A[v][probe1])
                    for v in views)
        out["whatif_knn_target_batch1"][f"batch {size} bit-identical to batch {w.batch_size}"] = bool(same1)
        if same1:
            out["whatif_knn_target_batch1"]["target_batch"] = size
            break
    if same1:
        with target_alone(small):
            for (v, f), qs in specs.items():
                if f.startswith("knn"):
                    r = run_specs(s, qs, A[v])
                    base = out["profiles"][f"{v} {f}"]
                    out["whatif_knn_target_batch1"][f"{v} {f}"] = {"before": {k: base[k] for k in r}, "after": r}
                    print(f"what-if kNN target in a batch of {small.batch_size}, {v} {f}: median {base['median_ms']:.0f} -> {r['median_ms']:.0f} ms, "
                          f"batches {base['median_batches']:.0f} -> {r['median_batches']:.0f}, answers ok: {r['answers_match']}")

    # 4. the partition step, a block of real neurons on one thread, and the write of its arrays
    out["partition_profile"] = {}
    for v, count in (("conv1", 256), ("fc1", 128)):
        r = profile_partition(A[v], info[v].P, info[v].ratio, info[v].scheme, min(count, A[v].shape[1]))
        out["partition_profile"][v] = r
        print(f"\npartition_block on {r['neurons']} {v} neurons x {r['n']} inputs (1 thread): {r['per_neuron_ms']:.2f} ms "
              f"a neuron; HDF5 write {r['write_per_neuron_ms']:.2f} ms a neuron")
    out["partition_components"] = {}
    for v in ("conv1", "conv2"):
        try:
            out["partition_components"][v] = partition_components(A[v], info[v].P, info[v].ratio, info[v].scheme, 256)
        except Exception as e:   # a timing replica of engine internals: skip if they changed
            out["partition_components"][v] = {"error": repr(e)}
        comp = out["partition_components"][v]
        print(f"partition step by part, {v} (ms a neuron, 1 thread): " + ", ".join(
            f"{k} {x:.2f}" if isinstance(x, float) else f"{k} {x}" for k, x in comp.items()))
    s.close()
    del A

    # 5. MiniLM: its index, recompute floor, and a longer top list
    if a.minilm:
        out["minilm"] = minilm_whatifs(a.minilm, a.queries, Path(tmp.name))

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"\nwrote {a.out}")



def minilm_whatifs(n: int, queries: int, tmp: Path) -> dict:
    """MiniLM at the defaults and with a top list of 100 (ratio = 100 / n): size, recompute, latency."""
    from systems import CapturingReprocessAll
    from everest_magic.engine.build import DEFAULT_RATIO
    w = W.minilm(n, batch_size=32)
    v = W.MINILM_VIEW
    res: dict = {"n": w.n, "batch_size": w.batch_size}
    A = None
    for label, ratio in (("default ratio", DEFAULT_RATIO), ("top list of 100", 100 / w.n)):
        path = tmp / f"minilm_{label.replace(' ', '_')}.h5"
        s = em.Session(w.model, w.data, collate=w.collate, index=path, batch_size=w.batch_size, ratio=ratio)
        t0 = time.perf_counter()
        s.build_index([v], wait=True)
        build_s = time.perf_counter() - t0
        if A is None:
            ra = CapturingReprocessAll(s)
            q0 = QS.draw((s.n, 1536), None, v, "topk-g3-rand", 1, seed=11)[0]
            t0 = time.perf_counter()
            q0.run(ra)
            res["reprocess_all_s"] = time.perf_counter() - t0
            A = ra.captured.pop(v)
            res["one_sentence_ms"] = 1000 * res["reprocess_all_s"] / s.n
        info = s.indexed()[v]
        row = {"ratio": ratio, "t": info.t, "size_pct_of_float32": 100 * info.size_ratio, "build_s": build_s}
        for fam in ("topk-g1-top", "topk-g3-top", "knn-g10-top"):
            qs = QS.draw(A.shape, A.__getitem__, v, fam, max(3, queries // 2), seed=11)
            row[fam] = run_specs(s, qs, A, profile=(label == "default ratio" and fam == "knn-g10-top"))
            row[fam].pop("top_functions", None)
            print(f"MiniLM {label} (t={info.t}, index {100 * info.size_ratio:.1f}%), {fam}: median {row[fam]['median_ms']:.0f} ms, "
                  f"recomputed {row[fam]['median_recomputed']:.0f} ({row[fam]['median_batches']:.0f} batches), "
                  f"answers ok: {row[fam]['answers_match']}", flush=True)
        res[label] = row
        if label == "default ratio":
            res["members_whatif"] = members_whatif(path)
            probe = np.arange(0, s.n, max(1, s.n // 64))[:64]
            from everest_magic.engine.model import Runner
            one = Runner(w.model, s.data, device="cpu", batch_size=1)
            res["batch1_bit_identical"] = bool(np.array_equal(
                np.concatenate([one.views([s.view(v)], [i])[0] for i in probe]), A[probe]))
            print(f"MiniLM: one sentence alone == in a padded batch of {w.batch_size}: {res['batch1_bit_identical']}")
            if res["batch1_bit_identical"]:
                qs = QS.draw(A.shape, A.__getitem__, v, "knn-g10-top", max(3, queries // 2), seed=11)
                with target_alone(one):
                    res["knn-g10-top, target in a batch of 1"] = r = run_specs(s, qs, A)
                print(f"MiniLM what-if kNN target in a batch of 1, knn-g10-top: median {row['knn-g10-top']['median_ms']:.0f} -> "
                      f"{r['median_ms']:.0f} ms, answers ok: {r['answers_match']}", flush=True)
        s.close()
    return res


if __name__ == "__main__":
    main()
