"""Activations by input id: any views of one model, from the cache of recomputed rows or run
under the model's lock in batch sizes checked to give the index's bits. Queries and
inspection both read activations here."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .cache import ActivationCache
from .model import Runner, pad_ids
from .result import QueryStats
from .views import View


class ActivationSource:
    """The activations of one model's views over its dataset, by input id.

    Rows come from `cache` when there, else from `runner` under `lock` (the model's lock:
    builds, queries and inspection take it one batch at a time) and go into the cache.
    `fetch` recomputes in the batch sizes `batch_sizes` found bit-identical to the full
    batch; `fetch_together` runs every batch at the full batch size.
    """

    def __init__(self, runner: Runner, cache: ActivationCache, lock: threading.RLock | None = None):
        self.runner = runner
        self.cache = cache
        self.lock = lock if lock is not None else threading.RLock()
        # view -> (batch sizes bit-identical to batch_size, (c0, c1): seconds a batch = c0 + c1 * size)
        self._batching: dict[str, tuple[tuple[int, ...], tuple[float, float]]] = {}
        self._check_rows: dict[str, int] = {}   # rows each view's batch-size check ran
        self._layer_shapes: dict[str, tuple | None] = {}   # layer -> output shape of one input

    # -- the model, under its lock --------------------------------------------------------
    def locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` holding the model lock."""
        with self.lock:
            return fn(*args)

    def locked_runner(self) -> "LockedRunner":
        """The runner, taking the model lock one batch at a time (for long passes: builds)."""
        return LockedRunner(self.runner, self.lock)

    def capture(self, layers: Sequence[str], batch: Any, ids: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """`Runner.capture` (outputs of `layers` for one batch) under the model lock."""
        return self.locked(self.runner.capture, layers, batch, ids)

    def recompute(self, views: Sequence[View], ids: np.ndarray, sizes: Sequence[int] | None = None) -> list[np.ndarray]:
        """`Runner.views` (one array (len(ids), m) per view) under the model lock; no cache."""
        return self.locked(self.runner.views, views, ids, sizes)

    def layer_shape(self, layer: str) -> tuple | None:
        """Output shape of one input of `layer` (None if not a tensor); one input through the
        model the first time a layer is asked."""
        if layer not in self._layer_shapes:
            self._layer_shapes[layer] = self.locked(self.runner.layer_shapes, [layer]).get(layer)
        return self._layer_shapes[layer]

    def view_shapes(self, views: Sequence[View]) -> list[tuple]:
        """Per-input shape of each view: a built-in view's from its layer's shape, a user
        function's from one batch (under the model lock) of all such views."""
        shapes = []
        for v in views:
            layer = self.layer_shape(v.layer) if v.fn is None else None
            shapes.append(v.shape_from(layer) if layer is not None else None)
        run = [v for v, shape in zip(views, shapes) if shape is None]
        ran = iter(self.locked(self.runner.view_shapes, run) if run else ())
        return [shape if shape is not None else next(ran) for shape in shapes]

    # -- batch sizes --------------------------------------------------------------------------
    def batch_sizes(self, view: View) -> tuple[int, ...]:
        """Batch sizes (ascending, the last is `batch_size`) that give a view's activations bit
        for bit as the full batch does. Checked once per view on real inputs: the same rows
        computed in a full batch and in batches of B/2, B/4, ... 1 (down to the first size
        that differs). The same runs time a batch of each size (`batch_cost`)."""
        return self._check(view)[0]

    def batch_cost(self, view: View) -> tuple[float, float]:
        """(c0, c1): seconds a batch of the view takes = c0 + c1 * size, fitted on the check's runs."""
        return self._check(view)[1]

    def is_checked(self, view: str) -> bool:
        """Has the batch-size check of `view` (a view name) run in this session?"""
        return view in self._batching

    def check_rows(self, view: str) -> int:
        """Rows the model ran for the batch-size check of `view` (a view name; 0 before it)."""
        return self._check_rows.get(view, 0)

    def _check(self, v: View) -> tuple[tuple[int, ...], tuple[float, float]]:
        if v.name not in self._batching:
            self._batching[v.name] = self.locked(self._check_sizes, v)
        return self._batching[v.name]

    def _check_sizes(self, v: View) -> tuple[tuple[int, ...], tuple[float, float]]:
        B = self.runner.batch_size
        ids = np.random.default_rng(0).permutation(len(self.runner.data))[:B]
        ref, t = _timed(self.runner.views, [v], ids, (B,))
        ref = ref[0].view(np.uint32)
        ok, timings = [B], [(B, t)]
        rows = B
        size = 1 << ((B - 1).bit_length() - 1) if B > 1 else 0   # the largest power of two below B
        while size >= 1:
            c = min(len(ids), max(2 * size, 8))
            got, t = _timed(self.runner.views, [v], ids[:c], (size,))
            rows += -(-c // size) * size
            timings.append((size, t / -(-c // size)))
            if not np.array_equal(got[0].view(np.uint32), ref[:c]):
                break
            ok.append(size)
            size //= 2
        self._check_rows[v.name] = rows
        return tuple(sorted(ok)), _batch_cost(timings)

    # -- rows -------------------------------------------------------------------------------------
    def fetch(self, view: View, ids: np.ndarray, stats: QueryStats | None = None) -> np.ndarray:
        """Activations (len(ids), m) of a view, from the cache or recomputed in the batch sizes
        `batch_sizes` allows; `stats` counts the inputs, batches and rows run."""
        ids = np.asarray(ids, np.int64)
        found, rows = self.cache.get(view.name, ids)
        out = None
        if rows is not None:
            out = np.empty((len(ids), rows.shape[1]), np.float32)
            out[found] = rows
        missing = ids[~found]
        if len(missing):
            checked = self.is_checked(view.name)
            sizes = self.batch_sizes(view)
            new = self.recompute([view], missing, sizes)[0]
            self.cache.put(view.name, missing, new)
            if out is None:
                out = np.empty((len(ids), new.shape[1]), np.float32)
            out[~found] = new
            if stats is not None:
                stats.inputs_recomputed += len(missing)
                stats.batches += -(-len(missing) // sizes[-1])
                stats.rows_run += padded_rows(len(missing), sizes) + (0 if checked else self.check_rows(view.name))
        if stats is not None:
            stats.inputs_from_cache += int(found.sum())
        return out

    def cached(self, views: Sequence[View], ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The rows of `views` found in the cache (view name -> (len(ids), m), the rows of missing
        inputs unset; views with nothing cached left out), and a mask of the inputs missing from any view."""
        out: dict[str, np.ndarray] = {}
        missing = np.zeros(len(ids), bool)
        for v in views:
            mask, rows = self.cache.get(v.name, ids)
            missing |= ~mask
            if rows is not None:
                arr = out[v.name] = np.empty((len(ids), rows.shape[1]), np.float32)
                arr[mask] = rows
        return out, missing

    def batch_key(self) -> tuple | None:
        """Sources with equal keys read the same data in the same batches, so can share each loaded
        batch; None for a source with a cluster (it runs its own batches)."""
        r = self.runner
        return None if r.remote is not None else (id(r.data.data), id(r.data.collate), r.batch_size)


def fetch_together(parts: Sequence[tuple[ActivationSource, Sequence[View]]], ids: np.ndarray,
                   ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Rows (len(ids), m) of the views of several sources, and a mask of the inputs found in the
    caches of all of them.

    `parts` pairs a source with its views. Cached rows are reused; the other inputs run in
    canonical batches of each runner's `batch_size` (a short batch padded with copies of its
    first input, as `Runner.views` does, so rows are bit for bit a query's) under each model's
    lock, and their rows go into the cache. Sources with the same `batch_key` share each loaded
    batch: it is built once and every such model runs on it.
    """
    ids = np.asarray(ids, np.int64)
    out, missing = [], []
    for src, views in parts:
        rows, miss = src.cached(views, ids)
        out.append(rows)
        missing.append(miss)
    groups: dict[tuple, list[int]] = {}
    for j, (src, _) in enumerate(parts):
        if missing[j].any():
            key = src.batch_key()
            groups.setdefault(("alone", j) if key is None else key, []).append(j)
    for js in groups.values():
        todo = np.zeros(len(ids), bool)
        for j in js:
            todo |= missing[j]
        rows = _run_shared([parts[j] for j in js], ids[todo])
        for j, new in zip(js, rows):
            src, views = parts[j]
            mine = missing[j][todo]
            for v, r in zip(views, new):
                arr = out[j].get(v.name)
                if arr is None:
                    arr = out[j][v.name] = np.empty((len(ids), r.shape[1]), np.float32)
                arr[missing[j]] = r[mine]
                src.cache.put(v.name, ids[missing[j]], r[mine])
    hit = np.ones(len(ids), bool)
    for m in missing:
        hit &= ~m
    return out, hit


def _run_shared(parts: list[tuple[ActivationSource, Sequence[View]]], ids: np.ndarray) -> list[list[np.ndarray]]:
    """Rows of every source's views for `ids`, each canonical batch loaded once for all of them
    (they share data, collate and batch size): per source, one array (len(ids), m) per view."""
    first = parts[0][0]
    if len(parts) == 1 and first.runner.remote is not None:
        return [first.recompute(parts[0][1], ids)]
    size = first.runner.batch_size
    chunks: list[list[list[np.ndarray]]] = [[[] for _ in views] for _, views in parts]
    for start in range(0, len(ids), size):
        part = ids[start:start + size]
        batch = first.locked(first.runner.data.batch, pad_ids(part, size))
        for (src, views), rows in zip(parts, chunks):
            for r, tensor in zip(rows, src.locked(src.runner.view_rows, views, batch, part)):
                r.append(tensor.cpu().numpy())
    return [[np.concatenate(r) for r in rows] for rows in chunks]


def padded_rows(count: int, sizes: Sequence[int]) -> int:
    """Rows the model runs for `count` inputs in batches of the allowed `sizes` (as Runner.views
    does: full batches of the largest, then the smallest size that holds the rest)."""
    big = max(sizes)
    rest = count % big
    return count - rest + (next(b for b in sorted(sizes) if b >= rest) if rest else 0)


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _batch_cost(timings: list[tuple[int, float]]) -> tuple[float, float]:
    """(c0, c1): a least-squares fit of seconds a batch = c0 + c1 * size (both >= 0)."""
    b, t = np.array(timings, np.float64).T
    if len(set(b.tolist())) < 2:
        return 0.0, max(float(t.mean()), 1e-9) / max(float(b.mean()), 1.0)
    c1, c0 = np.polyfit(b, t, 1)
    return max(float(c0), 0.0), max(float(c1), 1e-9)


class LockedRunner:
    """A Runner whose forward passes take the model lock one batch at a time."""

    def __init__(self, runner: Runner, lock: threading.RLock):
        self._runner, self._lock = runner, lock
        self.data, self.batch_size, self.device = runner.data, runner.batch_size, runner.device

    def views(self, views, ids, sizes=None):
        with self._lock:
            return self._runner.views(views, ids, sizes)

    def view_tensors(self, views, ids, sizes=None):
        with self._lock:
            return self._runner.view_tensors(views, ids, sizes)

    def view_shapes(self, views):
        with self._lock:
            return self._runner.view_shapes(views)
