"""Index build: one streaming inference pass, then per-neuron partitions and top lists.

Activations of all requested views are gathered neuron-major. When they fit the memory
budget they stay in RAM; otherwise they spill to a temporary HDF5 file written in
chunk-aligned blocks, and are read back a block of neurons at a time.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tables
import torch

from .jobs import Job
from .model import Runner
from .partition import cut_fractions, partition_block
from .store import HDF5_LOCK, IndexStore
from .views import View

DEFAULT_P = 32
DEFAULT_RATIO = 0.002
DEFAULT_SCHEME = "tails"


class _Activations:
    """Neuron-major storage of one view's activations during a build: RAM or spill file."""

    def __init__(self, m: int, n: int, in_ram: bool, spill_dir: Path, block_inputs: int):
        self.m, self.n, self.in_ram = m, n, in_ram
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0
        self.block_inputs = block_inputs
        if in_ram:
            self.data = np.empty((n, m), np.float32)
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
            self.data[self.written:self.written + len(rows)] = rows
            self.written += len(rows)
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
        if self.in_ram:
            return torch.from_numpy(self.data)[:, start:stop].t().contiguous().numpy()
        with HDF5_LOCK:
            return self.data[start:stop]

    def close(self) -> None:
        if not self.in_ram:
            with HDF5_LOCK:
                self.h.close()
            self.path.unlink(missing_ok=True)
        self.data = None


def _drain(item, writer, g, job: Job | None, done: int, total: int) -> int:
    start, stop, fut = item
    writer.write_rows(g, start, fut.result())
    done += stop - start
    if job is not None:
        job.step(done, total)
    return done


def build_views(runner: Runner, store: IndexStore, views: list[View], job: Job | None = None,
                partitions: int = DEFAULT_P, ratio: float = DEFAULT_RATIO, scheme: str = DEFAULT_SCHEME,
                memory_budget: int = 4 << 30) -> dict:
    """Build (or rebuild) `views` into the index in one inference pass; return build stats."""
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
        # 2. partitions and top lists, a block of neurons at a time
        writer = store.writer()
        fractions = cut_fractions(partitions, scheme)
        t = int(math.ceil(ratio * n)) if ratio > 0 else 0
        done = n
        workers = max(1, min(2, os.cpu_count() or 1))
        per_neuron = 32 * n * (workers + 1)
        block = int(max(1, min(256, (memory_budget // 2) // max(per_neuron, 1))))
        for v, shape, m, a in zip(views, shapes, ms, acts):
            tv = time.perf_counter()
            g = writer.create_view(v.name, v.definition(), shape, m, n, partitions, scheme, fractions, ratio, t)
            starts = list(range(0, m, block))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                # numpy and torch release the GIL in sorts: blocks partition in parallel,
                # at most `workers` blocks ahead of the writer to bound memory
                pending = []
                for start in starts:
                    stop = min(m, start + block)
                    pending.append((start, stop, pool.submit(partition_block, a.neurons(start, stop), fractions, t)))
                    if len(pending) >= workers:
                        done = _drain(pending.pop(0), writer, g, job, done, work_total)
                for item in pending:
                    done = _drain(item, writer, g, job, done, work_total)
            build = {"seconds_total": time.perf_counter() - t0, "seconds_inference": t_inf,
                     "seconds_partition": time.perf_counter() - tv, "spilled": not in_ram,
                     "memory_budget": memory_budget, "activation_bytes": total_bytes,
                     "batch_size": runner.batch_size, "device": str(runner.device), "n": n,
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
        for a in acts:
            a.close()
