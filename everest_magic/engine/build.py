"""Index build: one streaming inference pass, memory bounded, on the model's device.

1. Sample: the model runs on a random sample of inputs (at most `partition.SAMPLE`, fewer
   when the memory budget says so); each neuron's cuts sit at rank fractions of its sample
   values, and P is chosen per view from the same sample.
2. One pass over every input, a block of `width` inputs at a time in id order: inputs of the
   sample reuse their activations, the others run through the model in batches; each batch
   is folded into every view's `ViewState` (partition ids, exact per-partition count, min and
   max, exact top and bottom lists) on the model's device. A finished block's partition ids
   are compressed and written as whole chunks on a background thread while the next block
   runs. Nothing proportional to n x neurons is held: the sample, two blocks of ids and the
   lists are sized from `memory_budget` (`plan_build`).
3. The small arrays are written and every view is committed in one manifest update.

Bounds are exact whatever the cuts are, so answers stay exact; the sample only decides how
tight they are. `extend_views` continues the same state over new inputs with the cuts kept.
"""
from __future__ import annotations

import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
from filelock import Timeout

from . import kernels
from .errors import IndexWriteError, QueryError
from .jobs import Job
from .model import Runner
from .partition import SAMPLE, cut_fractions, cut_values, pid_dtype, sample_ids, sorted_sample
from .store import IndexStore, ViewWriter, compress_rows
from .stream import STAGE_ROWS, ViewState, default_backend, nonfinite
from .views import View

if TYPE_CHECKING:
    from .cluster import Cluster

# P is chosen per view: the largest candidate whose index, measured on a sample of the view's
# neurons, fits SIZE_BUDGET of the float32 materialisation (more partitions: tighter bounds,
# fewer inputs recomputed; see the sweep in docs/benchmarks.md)
P_CANDIDATES = (64, 48, 40, 32, 28, 24, 20, 16, 12, 8, 4)
SIZE_BUDGET = 0.14
P_SAMPLE = 64          # neurons the choice is measured on
DEFAULT_RATIO = 0.002
DEFAULT_MIN_LIST = 32   # top and bottom lists hold at least this many inputs (small datasets)
DEFAULT_SCHEME = "tails"
DEFAULT_MEMORY = 2 << 30
MIN_SAMPLE = 256
SORT_NEURONS = 1024     # neurons whose sample is sorted at a time when placing cuts


def list_length(n: int, ratio: float, min_list: int = DEFAULT_MIN_LIST) -> int:
    """Entries of each top and bottom list: ceil(ratio * n), at least `min_list` (at most n); 0 if ratio is 0."""
    if ratio <= 0:
        return 0
    return min(n, max(int(math.ceil(ratio * n)), min_list))


@dataclass
class Plan:
    """How a build uses its memory budget."""

    sample: int     # inputs whose activations place the cuts (kept through the pass)
    width: int      # inputs of a block, and of a stored chunk of partition ids
    bytes: int      # estimated peak bytes of the build's own arrays


def plan_build(ms: list[int], n: int, t: int, P: int, batch_size: int, budget: int) -> Plan:
    """Sample size and block width that keep the build's arrays within `budget` bytes:
    per neuron the lists (2 t entries of 12 bytes) and partition statistics (16 P bytes),
    the staged and in-flight batches of activations, then a third of the rest for the sample
    and the rest for two blocks of partition ids (one filling, one being compressed and written)."""
    m = max(sum(ms), 1)
    fixed = m * (24 * t + 16 * P) + 4 * m * (STAGE_ROWS + 4 * batch_size)
    left = max(budget - fixed, budget // 8)
    sample = int(min(n, SAMPLE, max(min(n, MIN_SAMPLE), left // 3 // (4 * m))))
    per_col = 3 * m   # two blocks and the compressed copies
    width = max(1024, min(1 << 16, 1 << max(int((left - 4 * m * sample) // per_col).bit_length() - 1, 0)))
    width = min(width, n)
    return Plan(sample, width, fixed + 4 * m * sample + per_col * width)


def choose_partitions(acts: np.ndarray, n: int, t: int, scheme: str, budget: float = SIZE_BUDGET) -> tuple[int, float]:
    """(P, estimated index size / float32 size) for neurons like the columns of `acts`
    (sample activations (S, k) of k probe neurons): the largest of P_CANDIDATES that fits
    `budget` (else the smallest). The estimate compresses the sample's partition ids and adds
    what the other arrays take a neuron: bounds 8 P bytes, extreme lists about 10 t bytes."""
    S = sorted_sample(acts, 0, acts.shape[1])
    A = np.ascontiguousarray(acts, np.float32)

    def size(P: int) -> float:
        cuts = kernels.padded_cuts(cut_values(S, cut_fractions(P, scheme)))
        out = np.empty((A.shape[1], A.shape[0]), pid_dtype(P))
        kernels.partition_ids(A, cuts, out)
        per_input = sum(len(c) for c in compress_rows(out)) / max(out.size, 1)
        return (per_input * n + 8 * P + 10 * t) / (4 * n)

    lo, hi = 0, len(P_CANDIDATES) - 1       # candidates fall; sizes fall with them: bisect
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        r = size(P_CANDIDATES[mid])
        if r <= budget:
            best, hi = (P_CANDIDATES[mid], r), mid - 1
        else:
            lo = mid + 1
    return best or (P_CANDIDATES[-1], size(P_CANDIDATES[-1]))


def _cuts(acts: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    m = acts.shape[1]
    out = np.empty((m, len(fractions) - 2 if len(fractions) > 2 else 0), np.float32)
    for s in range(0, m, SORT_NEURONS):
        out[s:s + SORT_NEURONS] = cut_values(sorted_sample(acts, s, min(m, s + SORT_NEURONS)), fractions)
    return out


def _check_space(store: IndexStore, need: int, names: list[str]) -> None:
    store.path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.path).free
    if free < need:
        raise IndexWriteError(f"not enough disk space for view(s) {', '.join(map(repr, names))} at {store.path}: "
                              f"about {need / 2**20:.1f} MB needed, {free / 2**20:.1f} MB free; the views built before "
                              "are intact. Free some space or give an index path on another disk")


def _sample_pass(runner: Runner, views: list[View], ids: np.ndarray, ms: list[int], job: Job | None,
                 total: int) -> list[np.ndarray]:
    acts = [np.empty((len(ids), m), np.float32) for m in ms]
    B = runner.batch_size
    for s in range(0, len(ids), B):
        part = ids[s:s + B]
        for a, rows in zip(acts, runner.views(views, part)):
            a[s:s + len(part)] = rows
        if job is not None:
            job.step(s + len(part), total)
    return acts


def _stream(runner: Runner, views: list[View], states: list[ViewState], writers: list[ViewWriter],
            start: int, stop: int, width: int, sample: np.ndarray, sample_acts: list[np.ndarray],
            job: Job | None, done: int, total: int) -> dict:
    """The streaming pass over inputs start..stop (see the module docstring); returns the
    seconds spent in the model, folding batches in, and waiting for block writes."""
    B = runner.batch_size
    clock = {"model": 0.0, "fold": 0.0, "write_wait": 0.0}
    spare = [np.empty_like(st.pids) for st in states]
    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="everest-write") as flusher:
        for b0 in range(start, stop, width):
            b1 = min(stop, b0 + width)
            for st in states:
                st.start_block(b0, b1 - b0)
            lo, hi = np.searchsorted(sample, [b0, b1])
            if hi > lo:   # inputs of the sample: their activations are known
                t = time.perf_counter()
                for st, a in zip(states, sample_acts):
                    st.add(a[lo:hi], sample[lo:hi])
                clock["fold"] += time.perf_counter() - t
                done += int(hi - lo)
            rest = np.arange(b0, b1, dtype=np.int64)
            if hi > lo:
                rest = np.setdiff1d(rest, sample[lo:hi], assume_unique=True)
            for s in range(0, len(rest), B):
                part = rest[s:s + B]
                t = time.perf_counter()
                outs = runner.view_tensors(views, part)
                t2 = time.perf_counter()
                for st, rows in zip(states, outs):
                    st.add(rows, part)
                t3 = time.perf_counter()
                clock["model"] += t2 - t
                clock["fold"] += t3 - t2
                done += len(part)
                if job is not None:
                    job.step(done, total)
            t = time.perf_counter()
            for st in states:
                st.flush()
                st.check_finite()
            clock["fold"] += time.perf_counter() - t
            if job is not None:
                job.step(done, total)
            t = time.perf_counter()
            if pending is not None:
                pending.result()
            clock["write_wait"] += time.perf_counter() - t
            blocks = [(w, b0, st.pids[:, :b1 - b0]) for w, st in zip(writers, states)]
            pending = flusher.submit(lambda bl=blocks: [w.write_block(c0, p) for w, c0, p in bl])
            for k, st in enumerate(states):   # the next block fills the other buffer
                st.pids, spare[k] = spare[k], st.pids
        t = time.perf_counter()
        if pending is not None:
            pending.result()
        clock["write_wait"] += time.perf_counter() - t
    return clock


def _acquire(store: IndexStore, names: list[str], job: Job | None) -> list:
    """Take the build lock of every view, waiting for other processes' builds of them."""
    locks = []
    try:
        for name in names:
            lock = store.view_lock(name)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                owner = store.view_owner(name)
                if job is not None:
                    job.phase = f"waiting: view {name!r} is being built by {owner}"
                while True:
                    try:
                        lock.acquire(timeout=0.25)
                        break
                    except Timeout:
                        if job is not None:
                            job.step(job.done_units, job.total)   # lets Cancel through
                if job is not None:
                    job.phase = ""
            locks.append(lock)
            store.claim_view(name)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


@contextmanager
def _building(store: IndexStore, names: list[str], job: Job | None) -> Iterator[list[ViewWriter]]:
    """Hold the build locks of `names`; yields the list the build adds its writers to, whose
    files are removed if the build fails or is cancelled."""
    try:
        locks = _acquire(store, names, job)
    except OSError as e:
        raise IndexWriteError(f"cannot build views {names} in the index folder {store.path}: it is read-only or "
                              f"not writable ({e.strerror or e}); give an index path you can write") from e
    writers: list[ViewWriter] = []
    try:
        yield writers
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        for lock in locks:
            lock.release()


def build_views(runner: Runner, store: IndexStore, views: list[View], job: Job | None = None,
                partitions: int | None = None, ratio: float = DEFAULT_RATIO, scheme: str = DEFAULT_SCHEME,
                memory_budget: int = DEFAULT_MEMORY, min_list: int = DEFAULT_MIN_LIST,
                size_budget: float = SIZE_BUDGET, rebuild: bool = True, backend: str | None = None,
                cluster: "Cluster | None" = None) -> dict:
    """Build `views` into the index in one streaming pass; return build stats per view.

    Views another process is building are waited for; with `rebuild=False` a view that is
    complete once its lock is held (e.g. built by that process) is skipped.
    `partitions=None` chooses P per view (`choose_partitions` with `size_budget`).
    With a `cluster` (cluster.Cluster) the pass runs on its workers, a block of inputs a task;
    the sample and the cuts are the same as in process, so the index is the same."""
    with _building(store, [v.name for v in views], job) as writers:
        store.refresh()
        if not rebuild:
            views = [v for v in views if v.name not in store.views]
        if not views:
            return {}
        return _build(runner, store, views, job, partitions, ratio, scheme, memory_budget, min_list, size_budget,
                      backend, writers, cluster)


def _cluster_pass(cluster: "Cluster", views: list[View], writers: list[ViewWriter], cuts: list[np.ndarray],
                  t: int, n: int, width: int, job: Job | None, done: int, total: int) -> tuple[dict, list[dict]]:
    """The pass on the cluster's workers: each finished block's chunks are written here (its
    summaries are merged by `Cluster.build_pass`), in the order blocks finish."""
    def write(start: int, chunks: list[list[bytes]]) -> None:
        for w, c in zip(writers, chunks):
            w.write_chunks(start, c)

    return cluster.build_pass(views, cuts, t, n, width, write, job, done, total)


def _build(runner, store, views, job, partitions, ratio, scheme, memory_budget, min_list, size_budget,
           backend, writers, cluster=None) -> dict:
    t0 = time.perf_counter()
    n = runner.data.n
    backend = backend or default_backend(runner.device)
    shapes = runner.view_shapes(views)
    ms = [int(np.prod(s)) for s in shapes]
    t = list_length(n, ratio, min_list)
    plan = plan_build(ms, n, t, partitions or max(P_CANDIDATES), runner.batch_size, memory_budget)
    if cluster is not None:
        plan.width = cluster.block_width(n, plan.width)
    sample = sample_ids(n, plan.sample)
    total = len(sample) + n
    if job is not None:
        job.phase = f"placing the cuts on a sample of {len(sample):,} inputs"
    sample_acts = _sample_pass(runner, views, sample, ms, job, total)
    t_sample = time.perf_counter() - t0
    states, settings = [], []
    need = 64 << 10
    for v, shape, m, acts in zip(views, shapes, ms, sample_acts):
        finite = np.isfinite(acts).all(axis=0)
        if not finite.all():
            raise nonfinite(v.name, int(np.flatnonzero(~finite)[0]))
        P, estimate = partitions, None
        if P is None:
            probe = np.unique(np.linspace(0, m - 1, min(m, P_SAMPLE)).astype(np.int64))
            P, estimate = choose_partitions(acts[:, probe], n, t, scheme, size_budget)
        fractions = cut_fractions(P, scheme)
        cuts = _cuts(acts, fractions)
        if cluster is None:
            states.append(ViewState(v.name, cuts, t, plan.width, backend, runner.device))
        settings.append((P, fractions, cuts, estimate))
        need += int(4 * n * m * (estimate if estimate is not None else 0.3) * 1.2)
    _check_space(store, need, [v.name for v in views])
    for v, shape, m, (P, fractions, cuts, estimate) in zip(views, shapes, ms, settings):
        writers.append(store.writer(v.name, definition=v.definition(), shape=shape, neurons=m, start=0, stop=n,
                                    partitions=P, scheme=scheme, fractions=fractions, list_fraction=ratio,
                                    list_length=t, width=plan.width, cuts=cuts, need_bytes=need))
    if job is not None:
        job.phase = "one pass over the data"
    t1 = time.perf_counter()
    if cluster is None:
        clock = _stream(runner, views, states, writers, 0, n, plan.width, sample, sample_acts, job, len(sample),
                        total)
        del sample_acts
        arrays = [st.finish() for st in states]
    else:
        del sample_acts
        if job is not None:
            job.phase = f"one pass over the data on {cluster.workers} Dask workers"
        clock, arrays = _cluster_pass(cluster, views, writers, [c for _, _, c, _ in settings], t, n, plan.width,
                                      job, len(sample), total)
        clock["write_wait"] = 0.0
    t_pass = time.perf_counter() - t1
    stats = {}
    for v, arr, w, (P, fractions, cuts, estimate) in zip(views, arrays, writers, settings):
        build = {"seconds_total": time.perf_counter() - t0, "seconds_sample": t_sample, "seconds_pass": t_pass,
                 "seconds_inference": t_sample + clock["model"], "seconds_partition": clock["fold"] + clock["write_wait"],
                 "seconds_fold": clock["fold"], "seconds_write_wait": clock["write_wait"],
                 "memory_budget": memory_budget, "planned_bytes": plan.bytes, "cut_sample": len(sample),
                 "block_inputs": plan.width, "backend": backend, "batch_size": runner.batch_size,
                 "device": str(runner.device), "n": n, "min_list": min_list, "P": P,
                 "partitions": "auto" if partitions is None else partitions, "size_budget": size_budget,
                 "estimated_size_ratio": estimate, "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if cluster is not None:
            build.update(cluster=cluster.describe(), cluster_tasks=clock["tasks_by_worker"],
                         seconds_worker_tasks=clock["tasks"], bytes_from_workers=clock["bytes_pids"]
                         + clock["bytes_summaries"], bytes_summaries=clock["bytes_summaries"],
                         seconds_merge_write=clock["merge_write"])
        w.finish(arr, build)
        stats[v.name] = build
    store.commit(writers)
    return stats


def extend_views(runner: Runner, store: IndexStore, views: list[View], start: int, fingerprint: str,
                 job: Job | None = None, memory_budget: int = DEFAULT_MEMORY, backend: str | None = None) -> dict:
    """Add inputs start..runner.data.n to every view of the index (which must be `views`):
    the cuts stay, bounds and lists are merged, one new segment file a view, one commit."""
    n = runner.data.n
    names = [v.name for v in views]
    with _building(store, names, job) as writers:
        store.refresh()
        if set(store.views) != set(names):
            raise QueryError(f"extend needs every view of the index: {sorted(store.views)}")
        t0 = time.perf_counter()
        backend = backend or default_backend(runner.device)
        infos = [store.view(v) for v in names]
        plan = plan_build([i.neurons for i in infos], n - start, infos[0].list_length if infos else 0,
                          max(i.partitions for i in infos) if infos else 1, runner.batch_size, memory_budget)
        states = []
        need = 64 << 10
        for info in infos:
            counts, bounds = store.summary(info.name)
            prev = {"counts": counts, "bounds": bounds, **store.lists(info.name)}
            cuts = store.cuts(info.name)[:, :info.partitions - 1]
            states.append(ViewState(info.name, cuts, info.list_length, plan.width, backend, runner.device,
                                    previous=prev))
            need += int(info.bytes_on_disk / max(info.n, 1) * (n - start) * 1.5)
        _check_space(store, need, names)
        for info, st in zip(infos, states):
            writers.append(store.writer(info.name, definition=info.definition, shape=info.shape,
                                        neurons=info.neurons, start=start, stop=n, partitions=info.partitions,
                                        scheme=info.scheme, fractions=cut_fractions(info.partitions, info.scheme),
                                        list_fraction=info.list_fraction, list_length=info.list_length,
                                        width=plan.width, cuts=st.cuts, need_bytes=need))
        empty = np.zeros(0, np.int64)
        _stream(runner, views, states, writers, start, n, plan.width, empty, [None] * len(views), job, 0, n - start)
        stats = {}
        for v, st, w in zip(views, states, writers):
            build = {"seconds_total": time.perf_counter() - t0, "inputs": [start, n], "backend": backend,
                     "block_inputs": plan.width, "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
            w.finish(st.finish(), build)
            stats[v.name] = build
        store.commit(writers, extend=(n, fingerprint))
        return stats
