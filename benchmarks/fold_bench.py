"""The streaming build's CPU costs, per value, on real MNIST activations (no index written).

    python benchmarks/fold_bench.py [--fold 8192] [--repeat 5] [--cache /tmp/everest-fold-bench]

The quickstart CNN (weights cached at benchmarks/out/mnist_cnn.pt) runs once on the build's
cut sample (8,192 random inputs of 50,000, as `build._build` draws it) and on the first
`--fold` inputs; the activations of views conv1, conv2 and fc1 are kept under `--cache`
(reused by later runs). Then, for each view, as the build does it:

- the fold: `kernels.accumulate` over the inputs of the first block, the sample's inputs of
  the block in one call, the others in staged batches of `stream.STAGE_ROWS` rows, the heaps
  warmed by the sample first; ns per value on 1 and 2 threads (numba.set_num_threads), for
  the kernel as it is now and for the first kernel of the streaming build (`_accumulate_v0`
  below, kept as the baseline), every result checked equal;
- the staging copy (batches of 128 rows into the staging buffer);
- the cuts (sorting the sample, `build._cuts`), `build.choose_partitions` (the chosen P is
  printed), and the compression of a block of partition ids (`store.checked_chunks`).

Every timing is the minimum of `--repeat` runs (the machine may be shared); ratios are of
numbers measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

from everest_magic.engine import build as BD  # noqa: E402
from everest_magic.engine import kernels as K  # noqa: E402
from everest_magic.engine.partition import cut_fractions, sample_ids  # noqa: E402
from everest_magic.engine.store import checked_chunks  # noqa: E402
from everest_magic.engine.stream import STAGE_ROWS, ViewState  # noqa: E402

VIEWS = ("conv1", "conv2", "fc1")
N = 50000
BATCH = 128


# -- the baseline: the streaming build's first kernel (strided reads, binary search) -----------
@njit(nogil=True, parallel=True, cache=True)
def _accumulate_v0(A, ids, col0, cuts, pids, counts, lo, hi, top_v, top_i, top_n, bot_v, bot_i, bot_n, bad):
    """Neuron by neuron, each one's column of A read in place (strided) and folded value by
    value with binary-search ids: `kernels._fold_slow`, which the kernel now keeps for
    batches with non-finite values."""
    B, m = A.shape
    t = top_v.shape[1]
    for j in prange(m):
        K._fold_slow(A[:, j], B, ids, col0, cuts, j, pids, counts, lo, hi, top_v, top_i, top_n,
                     bot_v, bot_i, bot_n, bad, t)


KERNELS = {"v0 (first streaming kernel)": _accumulate_v0, "now (kernels.accumulate)": K.accumulate}


# -- data ----------------------------------------------------------------------------------------
def activations(cache: Path, fold: int) -> tuple[np.ndarray, dict, dict]:
    """(sample ids, {view: sample acts (S, m)}, {view: acts of inputs 0..fold (fold, m)})."""
    sample = sample_ids(N, 8192)
    cache.mkdir(parents=True, exist_ok=True)
    files = {(v, k): cache / f"{v}_{k}_{fold if k == 'fold' else len(sample)}.npy" for v in VIEWS for k in ("sample", "fold")}
    if not all(f.exists() for f in files.values()):
        import torch

        import everest_magic as em
        from everest_magic.examples import trained_mnist_cnn
        torch.set_num_threads(2)
        weights = HERE / "out" / "mnist_cnn.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        model, x, _ = trained_mnist_cnn(cache=weights)
        s = em.Session(model, x[:N], batch_size=BATCH, device="cpu")
        views = [s.view(v) for v in VIEWS]
        for kind, ids in (("sample", sample), ("fold", np.arange(fold))):
            outs = {v: [] for v in VIEWS}
            with torch.no_grad():
                for b in range(0, len(ids), BATCH):
                    for v, a in zip(VIEWS, s.runner.view_tensors(views, ids[b:b + BATCH])):
                        outs[v].append(a.cpu().numpy())
            for v in VIEWS:
                np.save(files[(v, kind)], np.concatenate(outs[v]).astype(np.float32))
    S = {v: np.load(files[(v, "sample")]) for v in VIEWS}
    F = {v: np.load(files[(v, "fold")]) for v in VIEWS}
    return sample, S, F


def calls(sample: np.ndarray, S: np.ndarray, F: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The kernel calls of the build's first block (inputs 0..len(F)): the sample's inputs in
    it at once, the others staged STAGE_ROWS at a time (in batches of BATCH)."""
    fold = len(F)
    k = np.searchsorted(sample, fold)
    out = [(np.ascontiguousarray(S[:k]), sample[:k].copy())]
    rest = np.setdiff1d(np.arange(fold), sample[:k])
    for s in range(0, len(rest), STAGE_ROWS):
        ids = rest[s:s + STAGE_ROWS]
        out.append((np.ascontiguousarray(F[ids]), ids.astype(np.int64)))
    return out


class State:
    """The arrays of one view's fold: those of a `ViewState` (numba backend)."""

    def __init__(self, cuts: np.ndarray, t: int, width: int):
        self.vs = ViewState("bench", cuts, t, width)
        self.vs.pids.fill(0)   # pages faulted in here, not in the timed fold (the build reuses its two blocks)

    def args(self):
        vs = self.vs
        return (vs._cuts, vs.pids, vs.counts, vs.lo, vs.hi, *vs.heaps, vs.bad)

    def arrays(self):
        return list(self.args()[1:])


def fold_time(kernel, cs, cuts, t, width, warm_calls, repeat):
    """(seconds of the timed calls, values, final state): the first `warm_calls` calls untimed."""
    best, st = np.inf, None
    for _ in range(repeat):
        st = State(cuts, t, width)
        for A, ids in cs[:warm_calls]:
            kernel(A, ids, 0, *st.args())
        t0 = time.perf_counter()
        for A, ids in cs[warm_calls:]:
            kernel(A, ids, 0, *st.args())
        best = min(best, time.perf_counter() - t0)
    values = sum(A.size for A, _ in cs[warm_calls:])
    return best, values, st


def timed(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def end_to_end(n: int, rounds: int) -> None:
    """The MNIST build of the 3 views over the first n images with each kernel, and a bare
    inference pass, alternated `rounds` times (min of each); the stored arrays of the builds
    are compared (every partition id, counts, bounds, lists, cuts)."""
    import tempfile

    import tables
    import torch

    import everest_magic as em
    from everest_magic.examples import trained_mnist_cnn
    torch.set_num_threads(1)                 # as benchmarks/run.py (torch intra-op threads)
    model, x, _ = trained_mnist_cnn(cache=HERE / "out" / "mnist_cnn.pt")
    x = x[:n].contiguous()
    best: dict[str, float] = {}
    folds: dict[str, float] = {}
    stored: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fold-bench-") as tmp:
        for rnd in range(rounds):
            s = em.Session(model, x, index=Path(tmp) / "bare", batch_size=BATCH, device="cpu")
            views = [s.view(v) for v in VIEWS]
            t0 = time.perf_counter()
            with torch.no_grad():
                for b in range(0, n, BATCH):
                    s.runner.view_tensors(views, np.arange(b, min(n, b + BATCH)))
            best["bare pass"] = min(best.get("bare pass", np.inf), time.perf_counter() - t0)
            for name, kern in KERNELS.items():
                K.accumulate, orig = kern, K.accumulate
                try:
                    s = em.Session(model, x, index=Path(tmp) / f"{rnd}-{name[:2]}", batch_size=BATCH, device="cpu")
                    t0 = time.perf_counter()
                    stats = s.build_index(list(VIEWS), wait=True, rebuild=True).result()
                    sec = time.perf_counter() - t0
                finally:
                    K.accumulate = orig
                if sec < best.get(name, np.inf):
                    best[name] = sec
                    folds[name] = stats[VIEWS[0]]["seconds_fold"]
                if rnd == 0:
                    arrays = {}
                    for v in VIEWS:
                        info = s.store.view(v)
                        arrays[v + "/pids"] = np.stack([s.store.pids(v, j) for j in range(info.neurons)])
                        with tables.open_file(str(s.index_path / info.segments[0].file)) as h:
                            for a in ("cuts", "counts", "bounds", "top_ids", "top_vals", "bot_ids", "bot_vals"):
                                arrays[f"{v}/{a}"] = h.get_node("/" + a)[:]
                    stored[name] = arrays
                s.close()
    ref, other = stored.values()
    same = all(a.dtype == other[k].dtype and a.tobytes() == other[k].tobytes() for k, a in ref.items())
    print(f"\nMNIST build of {', '.join(VIEWS)} over {n:,} images (batch {BATCH}, torch 1 thread, "
          f"numba {numba.get_num_threads()} threads), min of {rounds}; stored arrays identical: {same}")
    print("| | seconds | / bare pass | fold (build clock) |")
    print("|---|---|---|---|")
    print(f"| bare inference pass | {best['bare pass']:.1f} | 1.00x | |")
    for name in KERNELS:
        print(f"| build, {name} | {best[name]:.1f} | {best[name] / best['bare pass']:.2f}x | {folds[name]:.1f} s |")
    if not same:
        raise SystemExit("the builds' stored arrays differ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fold", type=int, default=8192, help="inputs of the folded block (default 8192)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/everest-fold-bench"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--views", default=",".join(VIEWS), help="views of the fold table ('' skips it)")
    ap.add_argument("--e2e", type=int, default=0, help="also time the MNIST build over this many images")
    ap.add_argument("--e2e-rounds", type=int, default=2)
    args = ap.parse_args()
    if args.e2e:
        end_to_end(args.e2e, args.e2e_rounds)
    if not args.views:
        return
    sample, S, F = activations(args.cache, args.fold)
    t = BD.list_length(N, BD.DEFAULT_RATIO, BD.DEFAULT_MIN_LIST)
    threads = [int(x) for x in args.threads.split(",")]
    rows = []
    for v in args.views.split(","):
        acts = S[v]
        m = acts.shape[1]
        probe = np.unique(np.linspace(0, m - 1, min(m, BD.P_SAMPLE)).astype(np.int64))
        numba.set_num_threads(max(threads))
        BD.choose_partitions(acts[:, probe], N, t, BD.DEFAULT_SCHEME)   # compile
        s_choose, (P, est) = timed(lambda: BD.choose_partitions(acts[:, probe], N, t, BD.DEFAULT_SCHEME), args.repeat)
        fr = cut_fractions(P, BD.DEFAULT_SCHEME)
        s_cuts, cuts = timed(lambda: BD._cuts(acts, fr), args.repeat)
        cs = calls(sample, acts, F[v])
        warm = 1   # the sample's inputs of the block: heaps start warm as in the build
        ref = None
        res = {}
        for th in threads:
            numba.set_num_threads(th)
            for name, kern in KERNELS.items():
                fold_time(kern, cs[:2], cuts, t, args.fold, 1, 1)     # compile / warm up
                sec, values, st = fold_time(kern, cs, cuts, t, args.fold, warm, args.repeat)
                if ref is None:
                    ref = st.arrays()
                else:
                    for a, b in zip(ref, st.arrays()):
                        assert np.array_equal(a, b), f"{name} differs from the baseline on {v}"
                res[(name, th)] = sec / values * 1e9
        # staging: batches of BATCH rows copied into a STAGE_ROWS buffer
        stage = np.empty((STAGE_ROWS, m), np.float32)
        Fv = F[v]

        def staging():
            for s in range(0, len(Fv) - STAGE_ROWS + 1, STAGE_ROWS):
                for b in range(0, STAGE_ROWS, BATCH):
                    stage[b:b + BATCH] = Fv[s + b:s + b + BATCH]
        s_stage, _ = timed(staging, args.repeat)
        numba.set_num_threads(max(threads))
        K.fletcher32(np.zeros(8, np.uint8))
        block = ref[0]
        s_comp, chunks = timed(lambda: checked_chunks(block, block.shape[1]), args.repeat)
        rows.append((v, m, P, est, res, s_stage / (len(Fv) // STAGE_ROWS * STAGE_ROWS * m) * 1e9,
                     s_cuts / acts.size * 1e9, s_choose, s_comp / block.size * 1e9,
                     sum(map(len, chunks)) / block.size))
    print(f"\nfold of inputs 0..{args.fold} after the sample's inputs among them; t = {t}; "
          f"min of {args.repeat} runs; ns per value (wall)")
    names = list(KERNELS)
    head = ["view", "m", "P"] + [f"{n} {th}T" for th in threads for n in names] + \
        [f"speedup {th}T" for th in threads]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for v, m, P, est, res, *_ in rows:
        cells = [v, f"{m:,}", str(P)] + [f"{res[(n, th)]:.2f}" for th in threads for n in names] + \
            [f"{res[(names[0], th)] / res[(names[-1], th)]:.2f}x" for th in threads]
        print("| " + " | ".join(cells) + " |")
    print("\nother phases (ns per value unless said; the cuts per sample value, compression per id)")
    head = ["view", "staging copy", "cuts (sort)", "choose_partitions s", "est. size", "compress+checksum",
            "compressed bytes/id"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for v, m, P, est, res, stg, cut, cho, comp, ratio in rows:
        print(f"| {v} | {stg:.2f} | {cut:.2f} | {cho:.3f} | {est:.3f} | {comp:.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
