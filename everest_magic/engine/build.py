"""Index build: one streaming inference pass, then per-neuron partitions and top lists.

Activations of all requested views are gathered neuron-major as the batches arrive (each
batch is transposed once into a (neurons, inputs) slab of 8,192 inputs, whose memory a
background thread faults in ahead of the pass). When they fit the memory budget they stay
in RAM; otherwise they spill to a temporary HDF5 file written in chunk-aligned blocks, and
are read back a block of neurons at a time. Worker threads partition blocks of
neurons and compress their partition ids; the calling thread only writes finished chunks.
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tables

from .errors import QueryError
from .jobs import Job
from .model import Runner
from .partition import cut_fractions, partition_block, sample_ids
from .store import HDF5_LOCK, IndexStore, compress_rows
from .views import View

# P is chosen per view: the largest candidate whose index, measured on a sample of the view's
# neurons, fits SIZE_BUDGET of the float32 materialisation (more partitions: tighter bounds,
# fewer inputs recomputed; see the sweep in docs/benchmarks.md)
P_CANDIDATES = (64, 48, 40, 32, 28, 24, 20, 16, 12, 8, 4)
SIZE_BUDGET = 0.14
P_SAMPLE = 64          # neurons the choice is measured on
DEFAULT_RATIO = 0.002
DEFAULT_MIN_LIST = 32   # top and bottom lists hold at least this many inputs (small datasets)
DEFAULT_SCHEME = "tails"


def choose_partitions(V: np.ndarray, t: int, scheme: str, sample: np.ndarray | None,
                      budget: float = SIZE_BUDGET) -> tuple[int, float]:
    """(P, estimated index size / float32 size) for neurons like the rows of `V` (sampled
    neurons, (rows, n)): the largest of P_CANDIDATES that fits `budget` (else the smallest).

    The estimate compresses the sample's partition ids and adds what the other arrays take a
    neuron: bounds 8 P bytes, extreme lists about 10 t bytes.
    """
    n = V.shape[1]

    def size(P: int) -> float:
        pids = partition_block(V, cut_fractions(P, scheme), 0, sample)["pids"]
        per_neuron = sum(len(c) for c in compress_rows(pids)) / len(V)
        return (per_neuron + 8 * P + 10 * t) / (4 * n)

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


def list_length(n: int, ratio: float, min_list: int = DEFAULT_MIN_LIST) -> int:
    """Entries of each top and bottom list: ceil(ratio * n), at least `min_list` (at most n); 0 if ratio is 0."""
    if ratio <= 0:
        return 0
    return min(n, max(int(math.ceil(ratio * n)), min_list))


SLAB_INPUTS = 8192   # in RAM, activations are kept in slabs of this many inputs


def _populate(arrays: list[np.ndarray], stop: threading.Event, piece: int = 64 << 20) -> None:
    """Fault the arrays' memory in, in order, without changing it (madvise MADV_POPULATE_WRITE,
    Linux >= 5.14), so that the inference pass does not wait on page faults; a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return
    for a in arrays:
        start = -(-a.ctypes.data // page) * page
        end = (a.ctypes.data + a.nbytes) // page * page
        for p in range(start, end, piece):
            if stop.is_set() or libc.madvise(ctypes.c_void_p(p), ctypes.c_size_t(min(piece, end - p)), 23) != 0:
                return


class _Activations:
    """Neuron-major activations of one view during a build: in RAM (slabs of SLAB_INPUTS
    inputs by all neurons, filled in order) or in a spill file."""

    def __init__(self, m: int, n: int, in_ram: bool, spill_dir: Path, block_inputs: int):
        self.m, self.n, self.in_ram = m, n, in_ram
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0
        self.block_inputs = block_inputs
        if in_ram:
            self.slabs = [np.empty((m, min(SLAB_INPUTS, n - s)), np.float32) for s in range(0, n, SLAB_INPUTS)]
        else:
            self.path = spill_dir / f".everest-spill-{os.getpid()}-{id(self)}.h5"
            with HDF5_LOCK:
                self.h = tables.open_file(str(self.path), "w")
                chunk_neurons = max(1, min(m, (1 << 20) // (4 * block_inputs)))
                self.data = self.h.create_carray("/", "a", tables.Float32Atom(), (m, n),
                                                 chunkshape=(chunk_neurons, block_inputs))

    def add(self, rows: np.ndarray) -> None:
        """Append activations of the next inputs (rows: (inputs, m))."""
        if self.in_ram:
            done = 0
            while done < len(rows):
                k, off = divmod(self.written, SLAB_INPUTS)
                take = min(len(rows) - done, SLAB_INPUTS - off)
                self.slabs[k][:, off:off + take] = rows[done:done + take].T
                done += take
                self.written += take
            return
        self.buf.append(rows)
        self.buffered += len(rows)
        if self.buffered >= self.block_inputs:
            self.flush()

    def flush(self) -> None:
        if self.in_ram or not self.buf:
            return
        block = np.concatenate(self.buf)
        self.buf, self.buffered = [], 0
        with HDF5_LOCK:
            self.data[:, self.written:self.written + len(block)] = block.T
        self.written += len(block)

    def neurons(self, start: int, stop: int) -> np.ndarray:
        """Activations (stop - start, n) of a block of neurons."""
        return self.rows(slice(start, stop))

    def rows(self, which: slice | np.ndarray) -> np.ndarray:
        """Activations (neurons, n) of a slice or an ascending array of neuron ids."""
        if self.in_ram:
            width = len(range(self.m)[which]) if isinstance(which, slice) else len(which)
            out = np.empty((width, self.n), np.float32)
            for k, slab in enumerate(self.slabs):
                out[:, k * SLAB_INPUTS:k * SLAB_INPUTS + slab.shape[1]] = slab[which]
            return out
        with HDF5_LOCK:
            if isinstance(which, slice):
                return self.data[which]
            return np.stack([self.data[int(j)] for j in which])

    def close(self) -> None:
        if not self.in_ram:
            with HDF5_LOCK:
                self.h.close()
            self.path.unlink(missing_ok=True)
        self.slabs = self.data = None


def _check_finite(V: np.ndarray, neurons: np.ndarray, view: str) -> None:
    finite = np.isfinite(V).all(axis=1)
    if not finite.all():
        bad = int(neurons[np.flatnonzero(~finite)[0]])
        raise QueryError(f"view {view!r}: neuron {bad} has NaN or infinite activations; the index needs "
                         "finite values (check the model's outputs or pick another layer)")


def _block_arrays(acts: _Activations, start: int, stop: int, fractions: np.ndarray, t: int,
                  sample: np.ndarray | None, view: str) -> dict:
    """One block's index arrays with compressed partition ids (runs on a worker thread)."""
    V = acts.neurons(start, stop)
    _check_finite(V, np.arange(start, stop), view)
    arrays = partition_block(V, fractions, t, sample)
    arrays["pids"] = compress_rows(arrays["pids"])
    return arrays


def build_views(runner: Runner, store: IndexStore, views: list[View], job: Job | None = None,
                partitions: int | None = None, ratio: float = DEFAULT_RATIO, scheme: str = DEFAULT_SCHEME,
                memory_budget: int = 4 << 30, min_list: int = DEFAULT_MIN_LIST,
                size_budget: float = SIZE_BUDGET) -> dict:
    """Build (or rebuild) `views` into the index in one inference pass; return build stats.

    `partitions=None` chooses P per view (`choose_partitions` with `size_budget`)."""
    t0 = time.perf_counter()
    n = runner.data.n
    shapes = runner.view_shapes(views)
    ms = [int(np.prod(s)) for s in shapes]
    total_bytes = 4 * n * sum(ms)
    in_ram = total_bytes <= memory_budget
    row_bytes = 4 * sum(ms)
    block_inputs = max(runner.batch_size, (memory_budget // 4) // max(row_bytes, 1) // runner.batch_size * runner.batch_size)
    block_inputs = min(block_inputs, max(n, 1))
    acts = [_Activations(m, n, in_ram, store.path.parent, block_inputs) for m in ms]
    populating = threading.Event()   # set: stop faulting memory in
    if in_ram:   # slab by slab in input order, as the pass fills them
        slabs = [slab for k in range(-(-n // SLAB_INPUTS)) for a in acts for slab in a.slabs[k:k + 1]]
        threading.Thread(target=_populate, args=(slabs, populating), daemon=True, name="everest-populate").start()
    work_total = n + sum(ms)
    writer = None
    stats: dict = {}
    try:
        # 1. one inference pass
        for s in range(0, n, runner.batch_size):
            ids = np.arange(s, min(s + runner.batch_size, n))
            for a, rows in zip(acts, runner.views(views, ids)):
                a.add(rows)
            if job is not None:
                job.step(int(ids[-1]) + 1, work_total)
        for a in acts:
            a.flush()
        t_inf = time.perf_counter() - t0
        # 2. partitions and top lists, a block of neurons at a time, on worker threads
        writer = store.writer()
        t = list_length(n, ratio, min_list)
        sample = sample_ids(n)
        done = n
        workers = max(1, min(2, os.cpu_count() or 1))
        per_neuron = 16 * n * (workers + 1)
        block = int(max(1, min(256, (memory_budget // 4) // max(per_neuron, 1))))
        for v, shape, m, a in zip(views, shapes, ms, acts):
            tv = time.perf_counter()
            P, estimate = partitions, None
            if P is None:
                probe = np.unique(np.linspace(0, m - 1, min(m, P_SAMPLE)).astype(np.int64))
                V = a.rows(probe)
                _check_finite(V, probe, v.name)
                P, estimate = choose_partitions(V, t, scheme, sample, size_budget)
            fractions = cut_fractions(P, scheme)
            g = writer.create_view(v.name, v.definition(), shape, m, n, P, scheme, fractions, ratio, t)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                pending = []   # at most `workers` blocks ahead of the writer, to bound memory
                for start in range(0, m, block):
                    stop = min(m, start + block)
                    fut = pool.submit(_block_arrays, a, start, stop, fractions, t, sample, v.name)
                    pending.append((start, stop, fut))
                    if len(pending) > workers:
                        done = _drain(pending.pop(0), writer, g, job, done, work_total)
                for item in pending:
                    done = _drain(item, writer, g, job, done, work_total)
            build = {"seconds_total": time.perf_counter() - t0, "seconds_inference": t_inf,
                     "seconds_partition": time.perf_counter() - tv, "spilled": not in_ram,
                     "memory_budget": memory_budget, "activation_bytes": total_bytes,
                     "batch_size": runner.batch_size, "device": str(runner.device), "n": n,
                     "cut_sample": 0 if sample is None else len(sample), "min_list": min_list,
                     "partitions": "auto" if partitions is None else partitions, "size_budget": size_budget,
                     "estimated_size_ratio": estimate,
                     "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
            writer.finish_view(g, build)
            stats[v.name] = build
        writer.commit()
        return stats
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        populating.set()
        for a in acts:
            a.close()


def _drain(item, writer, g, job: Job | None, done: int, total: int) -> int:
    start, stop, fut = item
    writer.write_rows(g, start, fut.result())
    done += stop - start
    if job is not None:
        job.step(done, total)
    return done
