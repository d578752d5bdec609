"""Scale-out on Dask distributed: the build's streaming pass and large recomputes on workers.

The build's pass is independent per block of inputs: a worker runs the model over its block,
folds the activations into a `ViewState` with the cuts placed by the session (partition ids,
per-partition count, min and max, top and bottom lists), compresses the block's partition ids
into the stored chunks and returns them with the small arrays. The session's process merges
the small arrays (`stream.merge_summaries`) and writes the chunks, so nothing but compressed
partition ids and per-block summaries crosses the network.

The model goes to each worker once (scattered, broadcast): as its state dict and the
session's `model_factory`, or pickled whole (cloudpickle, so classes defined in a notebook
travel too). Inputs go by block: array data as the block's slice, other sequences scattered
once, or loaded on the worker by `load_shard(start, stop)`.

Dask is optional (`pip install everest_magic[dask]`); nothing here is imported without it.
"""
from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data import Collate, DataAdapter
from .errors import QueryError
from .model import Forward, Runner
from .stream import ViewState, default_backend, merge_summaries
from .views import View

LoadShard = Callable[[int, int], Any]
REMOTE_MIN_INPUTS = 4096   # a recompute of at least this many inputs runs on the cluster
LOCAL_WORKERS = 2          # workers of cluster="local" (processes, one thread each)


def _client(spec: Any):
    """(client, cluster it started or None, whether the client is ours) for `spec`: "local", a
    scheduler address, a Client or a cluster object."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise QueryError("cluster= needs Dask distributed: pip install 'everest_magic[dask]'") from e
    if isinstance(spec, Client):
        return spec, None, False
    if isinstance(spec, str) and spec.startswith("local"):
        workers = int(spec.split(":", 1)[1]) if ":" in spec else LOCAL_WORKERS
        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(local), local, True
    if isinstance(spec, str) or hasattr(spec, "scheduler_address"):
        try:
            return Client(spec, timeout="5s"), None, True
        except (OSError, TimeoutError) as e:
            raise QueryError(f"cannot reach the Dask scheduler at {spec!r}: {e}; start one (dask scheduler) or "
                             "use cluster='local'") from e
    raise QueryError(f"cluster must be 'local', a scheduler address or a distributed.Client, "
                     f"got {type(spec).__name__}")


@dataclass(frozen=True)
class ModelPayload:
    """What a worker needs to run the model: the module pickled once here (or the state dict
    for `factory`), the forward and collate functions, the device and the batch size.

    Immutable: Dask may copy it from worker to worker at any time, so the model a worker
    builds from it lives in that worker's process (`_WORKER_MODELS`), never in the payload."""

    token: str
    blob: bytes         # cloudpickle of (module or None, factory or None, state dict or None)
    forward: Forward | None
    collate: Collate | None
    batch_size: int
    device: str

    def runner(self, data: Any) -> tuple[Runner, threading.Lock]:
        """A Runner over `data` on this worker, and the lock its forward passes take (the
        model is built once per worker process and shared by its threads)."""
        with _WORKER_LOCK:
            entry = _WORKER_MODELS.get(self.token)
            if entry is None:
                import cloudpickle
                model, factory, state = cloudpickle.loads(self.blob)
                if factory is not None:
                    model = factory()
                    model.load_state_dict(state)
                entry = _WORKER_MODELS[self.token] = (model, threading.Lock())
        model, lock = entry
        _match_numba_threads()    # per thread in numba
        runner = Runner(model, DataAdapter(data, self.collate, fingerprint="shard"), device=self.device,
                        batch_size=self.batch_size, forward=self.forward)
        return runner, lock


def _match_numba_threads() -> None:
    """The fold's kernels use as many threads as torch (Dask gives a worker's torch its own
    threads, e.g. 1): worker processes do not fight over the cores."""
    import numba
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))


_WORKER_MODELS: dict[str, tuple[torch.nn.Module, threading.Lock]] = {}   # on a worker: token -> model, lock
_WORKER_LOCK = threading.Lock()


@dataclass
class _Range:
    """Inputs start..stop of a sequence (scattered once) as a sequence of their own."""

    data: Any
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Any:
        return self.data[self.start + int(i)]


def _shard_inputs(source: Any, start: int, stop: int, load: LoadShard | None) -> Any:
    """Inputs start..stop: loaded here, shipped with the task (arrays), or a range of the
    sequence scattered to every worker."""
    if load is not None:
        return load(start, stop)
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return source
    return _Range(source, start, stop)


def _block_task(payload: ModelPayload, source: Any, load: LoadShard | None, views: list[View],
                cuts: list[np.ndarray], t: int, start: int, stop: int, width: int,
                floors: list[dict | None]) -> dict:
    """On a worker: the partition ids (stored chunks) and summaries of inputs start..stop,
    whose lists keep only the entries better than `floors` (`prune_lists`)."""
    from .store import checked_chunks
    t0 = time.perf_counter()
    runner, lock = payload.runner(_shard_inputs(source, start, stop, load))
    if len(runner.data) != stop - start:
        raise QueryError(f"load_shard({start}, {stop}) returned {len(runner.data)} inputs, not {stop - start}")
    backend = default_backend(runner.device)
    states = [ViewState(v.name, c, t, stop - start, backend, runner.device) for v, c in zip(views, cuts)]
    for st in states:
        st.start_block(start, stop - start)
    B = runner.batch_size
    model = fold = 0.0
    for s in range(0, stop - start, B):
        local = np.arange(s, min(stop - start, s + B), dtype=np.int64)
        t1 = time.perf_counter()
        with lock:
            outs = runner.view_tensors(views, local)
        t2 = time.perf_counter()
        for st, rows in zip(states, outs):
            st.add(rows, local + start)
        fold += time.perf_counter() - t2
        model += t2 - t1
    t3 = time.perf_counter()
    result = {"start": start, "stop": stop, "chunks": [], "summaries": [], "pid": os.getpid()}
    for st, floor in zip(states, floors):
        summary = st.finish()           # folds the staged rows in: before the ids are read
        result["chunks"].append(checked_chunks(st.pids, width))
        result["summaries"].append(prune_lists(summary, floor))
    fold += time.perf_counter() - t3
    result["seconds"] = {"task": time.perf_counter() - t0, "model": model, "fold": fold}
    result["bytes"] = {"pids": sum(len(c) for chunks in result["chunks"] for c in chunks),
                       "summaries": sum(a.nbytes for s in result["summaries"] for a in s.values())}
    return result


_SENTINEL = {"top": -np.inf, "bot": np.inf}   # list padding: sorts after every finite value
_NO_ID = np.uint32(0xFFFFFFFF)


def list_floors(merged: dict[str, np.ndarray], t: int) -> dict | None:
    """Per neuron, the worst entry of each list merged so far when it holds t entries:
    an input of a later block enters the final list only if it beats that entry (the final
    t-th entry can only get better), so blocks need not send the others."""
    if merged["top_ids"].shape[1] < t or t == 0:
        return None
    return {side: (merged[f"{side}_vals"][:, t - 1].copy(), merged[f"{side}_ids"][:, t - 1].copy())
            for side in ("top", "bot")}


def prune_lists(summary: dict[str, np.ndarray], floor: dict | None) -> dict[str, np.ndarray]:
    """The block's lists cut to the entries that beat `floor` by (value, id) (all when None),
    padded per neuron with sentinels (±inf, id 2^32-1) that `merge_summaries` sorts last."""
    if floor is None:
        return summary
    out = dict(summary)
    for side in ("top", "bot"):
        vals, ids = summary[f"{side}_vals"], summary[f"{side}_ids"]
        fv, fi = floor[side][0][:, None], floor[side][1][:, None]
        beats = (vals > fv) if side == "top" else (vals < fv)
        keep = beats | ((vals == fv) & (ids < fi))    # lists are best first: a prefix per neuron
        c = int(keep.sum(axis=1).max(initial=0))
        v, i = vals[:, :c].copy(), ids[:, :c].copy()
        v[~keep[:, :c]] = _SENTINEL[side]
        i[~keep[:, :c]] = _NO_ID
        out[f"{side}_vals"], out[f"{side}_ids"] = v, i
    return out


BLOCK_TRIES = 3   # a block lost with its worker is sent again this many times


def _lost(e: BaseException) -> bool:
    """Did a task fail because the cluster lost it (a worker died), not because it raised?"""
    return type(e).__name__ in ("KilledWorker", "FutureCancelledError", "CancelledError", "CommClosedError")


def _identity(x: Any) -> Any:
    return x


def _prefer(worker: str | None) -> dict:
    """Submit options that spread tasks over the workers. Dask only considers the workers that
    hold a task's inputs, and its memory manager soon keeps one copy of the model: without a
    preference every block would queue on that one worker. Loose: if it dies, any other runs it."""
    return {} if worker is None else {"workers": [worker], "allow_other_workers": True}


def _views_task(payload: ModelPayload, source: Any, load: LoadShard | None, views: list[View],
                ids: np.ndarray, sizes: Sequence[int] | None, shipped: bool) -> list[np.ndarray]:
    """On a worker: activations of `views` for the inputs `ids` (as `Runner.views`); `source`
    holds exactly those inputs when `shipped`, else all of them (or `load` reads a range)."""
    if shipped:
        data, rows = source, np.arange(len(ids))
    elif load is not None:
        lo = int(ids.min())
        data, rows = load(lo, int(ids.max()) + 1), ids - lo
    else:
        data, rows = source, ids
    runner, lock = payload.runner(data)
    with lock:
        return runner.views(views, rows, sizes)


class Cluster:
    """A session's handle on a Dask cluster: the model shipped once to every worker, the
    data by block; used by the build's pass and by recomputes of many inputs."""

    def __init__(self, spec: Any, runner: Runner, data: DataAdapter, *, model_factory: Callable | None = None,
                 load_shard: LoadShard | None = None, device: str = "auto"):
        self.client, self._local, self._own_client = _client(spec)
        self.spec = spec
        self.min_inputs = REMOTE_MIN_INPUTS
        self.load_shard = load_shard
        self.data = data
        import cloudpickle
        model = runner.model
        if model_factory is not None:
            blob = cloudpickle.dumps((None, model_factory, {k: v.detach().cpu() for k, v in model.state_dict().items()}))
        else:
            blob = cloudpickle.dumps((model, None, None))
        self._payload = ModelPayload(token=secrets.token_hex(8), blob=blob, forward=runner.forward,
                                     collate=data.collate, batch_size=runner.batch_size, device=device)
        self.payload = self._scatter(self._payload)
        self._source = None
        if load_shard is None and not data.is_array:   # a sequence or Dataset: sent once, read by range
            self._source = self._scatter(data.data)

    def _addresses(self) -> list[str | None]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"]) or [None]

    def _scatter(self, value: Any) -> Any:
        """One future for the whole value (a list scattered bare becomes a future per item)."""
        return self.client.scatter([value], broadcast=True, hash=False)[0]

    def _resend_lost(self) -> None:
        """Scatter the model (and the inputs) again if the workers holding them died: Dask's
        memory manager soon drops a broadcast's extra copies, so one SIGKILL can lose them,
        and a task sent with a lost future is cancelled for "lost dependencies"."""
        if self.payload.status != "finished":
            self.payload = self._scatter(self._payload)
        if self._source is not None and self._source.status != "finished":
            self._source = self._scatter(self.data.data)

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def describe(self) -> str:
        """The scheduler's address and the number of workers."""
        return f"{self.client.scheduler.address} ({self.workers} workers)"

    def __repr__(self) -> str:
        return f"<everest Cluster {self.describe()}>"

    def close(self) -> None:
        """Release what this session sent; close the client and the cluster if it made them."""
        try:
            if self._own_client:
                self.client.close()
            else:
                self.client.cancel([f for f in (self.payload, self._source) if f is not None])
        finally:
            if self._local is not None:
                self._local.close()

    def _source_for(self, start: int, stop: int) -> Any:
        if self.load_shard is not None:
            return None
        if self._source is not None:
            return self._source
        return self.data.data[start:stop].clone() if isinstance(self.data.data, torch.Tensor) else \
            np.array(self.data.data[start:stop])

    # -- the build's pass -------------------------------------------------------------------
    def block_width(self, n: int, width: int) -> int:
        """Inputs of a block (task): the plan's width, smaller so that each worker gets about
        four blocks (at least 1024 inputs, a power of two)."""
        per = max(1024, n // (4 * self.workers))
        return max(1024, min(width, 1 << (per.bit_length() - 1)))

    def build_pass(self, views: list[View], cuts: list[np.ndarray], t: int, n: int, width: int,
                   write: Callable[[int, list[list[bytes]]], None], job: Any = None, done: int = 0,
                   total: int = 0) -> tuple[dict, list[dict]]:
        """Run every block of inputs 0..n on the workers (at most two blocks in flight per
        worker); `write(start, chunks)` takes each block's stored chunks (one list a view) in
        the order blocks finish. Returns the clock (seconds in the model and folding summed
        over workers, bytes received, the tasks each worker process ran) and the merged
        summaries of every view. A block's lists carry only the entries that beat the lists
        merged when it was sent (`list_floors`)."""
        from distributed import as_completed
        blocks = [(b0, min(n, b0 + width)) for b0 in range(0, n, width)]
        addresses = self._addresses()
        window = 2 * len(addresses)
        # a task's argument rather than scattered data: if the workers holding it die, the
        # scheduler makes it again
        cuts_f = self.client.submit(_identity, list(cuts), pure=False)
        merged: list[dict | None] = [None] * len(views)
        pending = iter(blocks)
        block_of: dict[str, tuple[int, int]] = {}
        worker_of: dict[str, str | None] = {}
        tries: dict[int, int] = {}

        def send(b: tuple[int, int], worker: str | None):
            self._resend_lost()
            f = self.client.submit(
                _block_task, self.payload, self._source_for(*b), self.load_shard, views, cuts_f, t, b[0], b[1], width,
                [None if m is None else list_floors(m, t) for m in merged], pure=False, **_prefer(worker))
            block_of[f.key], worker_of[f.key] = b, worker
            return f

        running = as_completed([send(b, addresses[i % len(addresses)])
                                for i, b in enumerate(itertools.islice(pending, window))])
        clock = {"model": 0.0, "fold": 0.0, "tasks": 0.0, "bytes_pids": 0, "bytes_summaries": 0,
                 "merge_write": 0.0}
        per_worker: dict[int, int] = {}
        finished: set[int] = set()
        try:
            for future in running:
                block = block_of.pop(future.key, None)
                if block is None:       # seen already
                    continue
                worker = worker_of.pop(future.key)
                try:
                    res = future.result()
                except Exception as e:   # its worker died (and Dask gave up on it): send it again
                    if not _lost(e) or tries.get(block[0], 0) >= BLOCK_TRIES:
                        raise
                    tries[block[0]] = tries.get(block[0], 0) + 1
                    running.add(send(block, None))
                    continue
                if res["start"] in finished:    # never fold a block in twice
                    continue
                finished.add(res["start"])
                t0 = time.perf_counter()
                write(res["start"], res["chunks"])
                for k, summary in enumerate(res["summaries"]):
                    merged[k] = merge_summaries(merged[k], summary, t)
                clock["merge_write"] += time.perf_counter() - t0
                done += res["stop"] - res["start"]
                for k in ("model", "fold"):
                    clock[k] += res["seconds"][k]
                clock["tasks"] += res["seconds"]["task"]
                clock["bytes_pids"] += res["bytes"]["pids"]
                clock["bytes_summaries"] += res["bytes"]["summaries"]
                per_worker[res["pid"]] = per_worker.get(res["pid"], 0) + 1
                future.release()
                nxt = next(pending, None)
                if nxt is not None:     # to the worker whose slot this block freed
                    running.add(send(nxt, worker))
                if job is not None:
                    by_worker = ", ".join(str(c) for c in sorted(per_worker.values(), reverse=True))
                    job.phase = (f"one pass over the data on {self.workers} Dask workers: block {len(finished)} of "
                                 f"{len(blocks)} (per worker: {by_worker})")
                    job.step(done, total or n)
        except BaseException as e:
            with running.lock:     # the blocks not done and those done but not taken yet
                left = list(running.futures) + list(running.queue.queue)
            running.clear()
            self.client.cancel(left)
            if _lost(e):
                raise QueryError(f"the cluster lost a block of the build {BLOCK_TRIES + 1} times ({e}); nothing "
                                 "was committed: check the workers and run the build again") from e
            raise
        missing = [b for b, _ in blocks if b not in finished]
        if missing:
            raise QueryError(f"the cluster returned no result for the blocks of inputs starting at {missing[:5]}; "
                             "nothing was committed: run the build again")
        clock["tasks_by_worker"] = sorted(per_worker.values(), reverse=True)
        return clock, merged

    # -- recomputes ---------------------------------------------------------------------------
    def views(self, views: Sequence[View], ids: np.ndarray, sizes: Sequence[int] | None = None,
              batch_size: int = 64) -> list[np.ndarray]:
        """Activations of `views` for many inputs, split across the workers (as `Runner.views`)."""
        ids = np.asarray(ids, np.int64)
        step = max(batch_size, -(-len(ids) // (2 * self.workers)) // batch_size * batch_size)
        parts = [ids[s:s + step] for s in range(0, len(ids), step)]
        ship = self.load_shard is None and self._source is None    # array data: send the rows
        for tries in range(BLOCK_TRIES + 1):
            self._resend_lost()
            addresses = self._addresses()
            futures = [self.client.submit(_views_task, self.payload, self.data.data[part] if ship else self._source,
                                          self.load_shard, list(views), part, sizes, ship, pure=False,
                                          **_prefer(addresses[i % len(addresses)]))
                       for i, part in enumerate(parts)]
            try:
                results = self.client.gather(futures)
                break
            except Exception as e:     # a worker died with the model: send it again
                if not _lost(e) or tries == BLOCK_TRIES:
                    raise
        return [np.concatenate([r[j] for r in results]) for j in range(len(views))]
