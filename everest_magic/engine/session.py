"""Session: a model, a dataset and an index file, and the queries over them."""
from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import query as Q
from .build import build_views, extend_views
from .cache import ActivationCache
from .config import SessionConfig
from .data import DataAdapter, concat_data
from .errors import QueryError, UnknownNameError, about, brief
from .jobs import Job, JobManager
from .model import Runner, model_fingerprint
from .result import QueryStats, Result
from .source import ActivationSource
from .store import IndexStore, ViewInfo
from .views import REDUCTIONS, View, ViewFn

NeuronSpec = Any  # int, tuple of ints, or a sequence of those
WALK_NEED = 32    # inputs a typical threshold walk recomputes (sizes its first batch)
WALK_PLANS = (8, 32, 128)   # first batch of a walk: one of these, so that a plan is reproducible
HISTORY_LIMIT = 100   # results a session keeps in `history`, the oldest dropped first


class Session:
    """Exact interpretation-by-example queries over one model and one dataset.

    >>> s = Session(model, images, index="mnist_index.h5")
    >>> s.build_index(["conv2", "fc1"]).result()
    >>> s.topk("conv2", neurons=[5, 17, 301], k=10, by="sum").ids

    The model runs on `device` ("auto": cuda when present, else cpu) in batches of
    `batch_size`; views are built lazily on their first query unless `lazy=False`.
    The index is a folder (`index`; a temporary one when None) with one file per view; an
    index built for other weights or other data is refused; `rebuild=True` discards it.
    Builds stream over the data once, holding at most about `memory_budget` bytes.

    Index settings: `partitions` (P; default: per view, the largest of 64, 48, ... 4 whose
    index fits `size_budget` (0.14) of the view's float32 size, measured on a sample of its
    neurons), `ratio` (top and bottom lists of ceil(ratio * n) inputs, at least `min_list`),
    `scheme` ("tails" or "equi"). Caches: `cache_bytes` of recomputed activations,
    `index_cache_bytes` of decoded index rows.

    `cluster` (Dask: "local" starts worker processes here, or a scheduler address or a
    `distributed.Client`) runs the build's pass and recomputes of many inputs (inspection)
    on its workers; the model goes to each worker once, pickled, or as its state dict and
    `model_factory()`; `load_shard(start, stop)` loads inputs start..stop on a worker instead
    of sending them. See docs/scaling.md.

    `source` (an `ActivationSource`) gives activations by input id to queries and inspection;
    `history` keeps the latest `HISTORY_LIMIT` (100) query results.
    """

    def __init__(self, model: torch.nn.Module, data: Any, index: str | os.PathLike | None = None, *,
                 jobs: JobManager | None = None, **options: Any):
        """`options`: the fields of `SessionConfig` (labels, batch_size, partitions, ...)."""
        config = SessionConfig.of(options)
        if not isinstance(model, torch.nn.Module):
            raise QueryError(f"model must be a torch.nn.Module, got {type(model).__name__}", param="model")
        if index is not None and not isinstance(index, (str, os.PathLike)):
            raise QueryError(f"index must be the path of a folder (str or Path), got {type(index).__name__} {index!r}",
                             param="index")
        self.config = config
        self.name = config.name
        self.data = DataAdapter(data, config.collate, config.data_fingerprint)
        self.n = len(self.data)
        if self.n == 0:
            raise QueryError("the dataset is empty")
        self.labels = None if config.labels is None else np.asarray(config.labels)
        if self.labels is not None and len(self.labels) != self.n:
            raise QueryError(f"{len(self.labels)} labels for {self.n} inputs", param="labels")
        self.runner = Runner(model, self.data, device=config.device, batch_size=config.batch_size,
                             forward=config.forward)
        self.cluster = None
        if config.cluster is not None:
            from .cluster import Cluster
            self.cluster = Cluster(config.cluster, self.runner, self.data, model_factory=config.model_factory,
                                   load_shard=config.load_shard, device=config.device)
            self.runner.remote = self.cluster
        self.cache = ActivationCache(config.cache_bytes)
        self.memory_budget = config.memory_budget
        self.partitions, self.size_budget = config.partitions, float(config.size_budget)
        self.ratio, self.scheme, self.min_list = config.ratio, config.scheme, int(config.min_list)
        self.tolerance = config.tolerance
        self.lazy = config.lazy
        self._tmpdir = None
        if index is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="everest-")
            index = Path(self._tmpdir.name) / "index"
        self.index_path = Path(index)
        self.model_fingerprint = model_fingerprint(model)
        self.store = IndexStore(self.index_path, self.model_fingerprint, self.data.fingerprint(), self.n,
                                cache_bytes=config.index_cache_bytes, rebuild=config.rebuild)
        self.source = ActivationSource(self.runner, self.cache)   # activations by id, under the model lock
        self._custom: dict[str, View] = {}
        self._build_lock = threading.RLock()
        self._builds: dict[str, Job] = {}   # view -> the latest background build that makes it
        self._own_jobs = jobs is None
        self.jobs = jobs or JobManager()
        self.history: deque[Result] = deque(maxlen=HISTORY_LIMIT)   # the latest query results

    # -- views and layers ---------------------------------------------------------------
    def add_view(self, name: str, layer: str, fn: ViewFn) -> View:
        """Register a user view `fn(layer_output, batch) -> tensor (batch, ...)` under `name`."""
        self.runner.module(layer)
        v = View(name=name, layer=layer, fn=fn)
        self._custom[name] = v
        return v

    def view(self, name: str) -> View:
        """The view called `name`: a layer path, `layer:mean|max|token_mean|token_max`, or a registered view."""
        if isinstance(name, View):
            return name
        if not isinstance(name, str) or not name:
            raise QueryError(f"a view is a layer name such as 'conv2' or 'conv2:mean', got {name!r}", param="view")
        if name in self._custom:
            return self._custom[name]
        v = View.parse(name)
        if v.layer not in self.runner.modules:
            raise UnknownNameError("layer", v.layer, list(self.runner.modules) + list(self._custom), param="view")
        if v.reduce is not None and v.reduce not in REDUCTIONS:
            raise UnknownNameError("view reduction", v.reduce, REDUCTIONS, param="view")
        if v.reduce is not None and name not in self.store.views:
            self._check_reduction(v)
        return v

    def _check_reduction(self, v: View) -> None:
        """Refuse a channel view of a layer without channels, or a token view of a layer whose
        output is not (tokens, features) per input."""
        shape = self.source.layer_shape(v.layer)
        if shape is None:   # not a tensor output: a custom view decides
            return
        if v.reduce in ("mean", "max") and len(shape) < 2:
            raise QueryError(f"view {v.name!r} does not fit layer {v.layer!r}: ':{v.reduce}' reduces each channel over "
                             f"space and needs an output of shape (channels, ...) per input, but {v.layer!r} gives "
                             f"{shape}; use {v.layer!r} (one neuron per output element)", param="view")
        if v.reduce in ("token_mean", "token_max") and len(shape) != 2:
            other = f"{v.layer!r} or '{v.layer}:mean' (channel means)" if len(shape) > 2 else repr(v.layer)
            raise QueryError(f"view {v.name!r} does not fit layer {v.layer!r}: ':{v.reduce}' reduces over tokens and "
                             f"needs an output of shape (tokens, features) per input, but {v.layer!r} gives {shape}; "
                             f"use {other}", param="view")

    def layers(self) -> list[dict]:
        """Every module path with its type, output shape (of one input) and indexed views."""
        shapes = self.source.locked(self.runner.layer_shapes)
        indexed = self.store.views
        rows = []
        for name, mod in self.runner.modules.items():
            views = [v for v, info in indexed.items() if info.definition.get("layer") == name]
            rows.append({"layer": name, "type": type(mod).__name__, "shape": shapes.get(name), "indexed": views})
        return rows

    def indexed(self) -> dict[str, ViewInfo]:
        """The complete views of the index file."""
        return dict(self.store.views)

    def shape(self, view: str) -> tuple:
        """Per-input shape of a view."""
        v = self.view(view)
        if v.name in self.store.views:
            return self.store.views[v.name].shape
        return self.source.view_shapes([v])[0]

    # -- building -------------------------------------------------------------------------
    def build_index(self, views: str | Iterable[str], wait: bool = False, *, partitions: int | None = None,
                    ratio: float | None = None, scheme: str | None = None, rebuild: bool = False) -> Job:
        """Build views in one streaming inference pass, on a background thread; returns the Job.

        Views already complete in the index are left as they are (the job's result says
        `{"view": {"skipped": "already indexed"}}`) unless `rebuild=True`. A view another
        process is building is waited for (the job's `phase` says so), then skipped."""
        names = list(dict.fromkeys([views] if isinstance(views, str) else views))
        vs = [self.view(v) for v in names]
        if not vs:
            raise QueryError("no views to index")
        P = partitions or self.partitions
        r = self.ratio if ratio is None else ratio
        sch = scheme or self.scheme
        if P is not None and not 1 <= P <= 65535:
            raise QueryError("partitions must be between 1 and 65535")
        if not 0 <= r <= 1:
            raise QueryError("ratio must be between 0 and 1")

        def work(job: Job):
            with self._build_lock:
                self.store.refresh()
                todo = [v for v in vs if rebuild or v.name not in self.store.views]
                stats = {v.name: {"skipped": "already indexed"} for v in vs if v not in todo}
                if todo:
                    runner = self.source.locked_runner()
                    built = build_views(runner, self.store, todo, job, partitions=P, ratio=r, scheme=sch,
                                        memory_budget=self.memory_budget, min_list=self.min_list,
                                        size_budget=self.size_budget, rebuild=rebuild, cluster=self.cluster)
                    stats.update(built)
                    stats.update({v.name: {"skipped": "built by another process"} for v in todo if v.name not in built})
            for v in vs:   # settle the query batch sizes and walk plan now, in the background
                if v.name in self.store.views:
                    self.walk_plan(v.name)
            return stats

        desc = f"index {' '.join(names)}"
        if wait:   # on the calling thread: also safe from inside another job
            job = Job(work, desc, start=False)
            job.run_here()
            return job
        job = self.jobs.submit(work, desc, queue_name=f"{self.runner.device}/index")
        for v in vs:
            self._builds[v.name] = job
        return job

    def extend(self, inputs: Any, labels: Sequence | np.ndarray | None = None, wait: bool = True) -> Job:
        """Append `inputs` (of the same kind as the session's data) to the dataset and to every
        view of the index, without a rebuild: the cuts stay, bounds and lists are merged.

        The new inputs get ids n, n+1, ...; answers over the grown dataset equal brute force.
        Reopen the index later with the grown data (old + new, in that order)."""
        grown = concat_data(self.data.data, inputs)
        new_labels = None
        if self.labels is not None or labels is not None:
            if self.labels is None or labels is None:
                raise QueryError("the session has labels: give labels= for the new inputs too" if labels is None
                                 else "labels given for the new inputs, but the session has none")
            new_labels = np.concatenate([self.labels, np.asarray(labels)])
        adapter = DataAdapter(grown, self.data.collate)
        if len(adapter) == self.n:
            raise QueryError("no new inputs to add")
        if new_labels is not None and len(new_labels) != len(adapter):
            raise QueryError(f"{len(new_labels) - self.n} labels for {len(adapter) - self.n} new inputs")

        def work(job: Job):
            with self._build_lock:
                self.store.refresh()
                views = [self.view(name) for name in self.store.views]
                start, old = self.n, self.data
                with self.source.lock:
                    self.runner.data = adapter
                try:
                    stats = extend_views(self.source.locked_runner(), self.store, views, start,
                                         adapter.fingerprint(), job, memory_budget=self.memory_budget)
                except BaseException:
                    with self.source.lock:
                        self.runner.data = old
                    raise
                self.data, self.n = adapter, len(adapter)
                if new_labels is not None:
                    self.labels = new_labels
            return stats

        desc = f"extend by {len(adapter) - self.n} inputs"
        if wait:
            job = Job(work, desc, start=False)
            job.run_here()
            return job
        return self.jobs.submit(work, desc, queue_name=f"{self.runner.device}/index")

    def submit(self, fn, description: str = "") -> Job:
        """Run `fn(job)` on the session's model queue (a background thread); returns the Job."""
        return self.jobs.submit(fn, description, queue_name=str(self.runner.device))

    def can_query(self, view: str) -> bool:
        """Is the view indexed (True) or can a query build it first (False)? Raises a QueryError
        when it can't: the index is read-only, or the session is not lazy."""
        name = self.view(view).name
        if name not in self.store.views:
            self.store.refresh()   # another process may have built it
        if name in self.store.views:
            return True
        if not os.access(self.index_path if self.index_path.exists() else self.index_path.parent, os.W_OK):
            raise QueryError(f"view {name!r} is not in the index and the index {str(self.index_path)!r} is "
                             f"read-only; indexed views: {sorted(self.store.views) or 'none'}", param="view")
        if not self.lazy:
            raise QueryError(f"view {name!r} is not indexed; run session.build_index([{name!r}])", param="view")
        return False

    def is_indexed(self, view: str) -> bool:
        """Is the view named `view` complete in the index (as last read; no refresh, no check of the name)?"""
        return view in self.store.views

    def pending_build(self, view: str) -> Job | None:
        """The background build (`build_index`) that is making the view named `view`, if one is running."""
        job = self._builds.get(view)
        return job if job is not None and not job.is_done() else None

    def ensure_indexed(self, view: str) -> ViewInfo:
        """The view's index, building it now when missing and the session is lazy."""
        v = self.view(view)
        if not self.can_query(v.name):
            pending = self.pending_build(v.name)
            if pending is not None:   # a build in the background makes it: wait for that one
                pending.wait()
            with self._build_lock:
                if v.name not in self.store.views:   # none, or it failed or was cancelled
                    self.build_index([v.name], wait=True)
        return self.store.view(v.name)

    # -- activations ------------------------------------------------------------------------
    def batch_sizes(self, view: str) -> tuple[int, ...]:
        """Batch sizes (ascending, the last is `batch_size`) that give a view's activations bit
        for bit as the full batch does; queries recompute in these (`ActivationSource.batch_sizes`)."""
        return self.source.batch_sizes(self.view(view))

    def walk_plan(self, view: str) -> int:
        """The first batch of a view's threshold walks: of WALK_PLANS (8, 32, 128), the one
        nearest (in ratio) to the batch that balances a batch's fixed cost against the inputs it
        may recompute for nothing (sqrt(2 N c0 / c1) for N = 32 needed inputs, a batch costing
        c0 + c1 * size), then the smallest allowed size that holds it. The plan is chosen once,
        when the view is built (or first queried), and kept in the index, so every session on
        the same index and model walks in the same batches."""
        v = self.view(view)
        sizes, (c0, c1) = self.source.batch_sizes(v), self.source.batch_cost(v)
        name = v.name
        info = self.store.views.get(name)
        plan = info.query.get("walk_first") if info is not None else None
        if plan not in WALK_PLANS:
            x = float(np.sqrt(2 * WALK_NEED * c0 / max(c1, 1e-12)))
            plan = min(WALK_PLANS, key=lambda p: abs(np.log(p / max(x, 1e-9))))
            if info is not None and os.access(self.index_path, os.W_OK):
                self.store.annotate(name, walk_first=plan)
        return next((b for b in sizes if b >= plan), sizes[-1])

    def walk_steps(self, view: str):
        """Recompute batch sizes of a threshold walk: `walk_plan(view)` first, then half of
        what it has recomputed so far (so at most a third is wasted), in the sizes
        `batch_sizes` allows."""
        sizes = self.batch_sizes(view)

        def fit(x: float) -> int:
            return next((b for b in sizes if b >= x), sizes[-1])

        first = self.walk_plan(view)
        done, step = 0, first
        while True:
            yield step
            done += step
            step = fit(max(first, done / 2))

    def fetch(self, view: str, ids: np.ndarray, stats: QueryStats | None = None) -> np.ndarray:
        """Activations (len(ids), m) of a view, from the cache or recomputed in batches."""
        return self.source.fetch(self.view(view), ids, stats)

    def activations(self, view: str, ids: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Activations of inputs `ids` in a view, float32 (len(ids), neurons)."""
        ids = self.input_ids(ids)
        return self.fetch(view, ids)

    def top_neurons(self, input_id: int, view: str, count: int = 10) -> np.ndarray:
        """Flat ids of the `count` most activated neurons of one input (ties: smaller id)."""
        row = self.activations(view, [self.input_id(input_id)])[0]
        count = check_k(count)
        return np.lexsort((np.arange(len(row)), -row))[:count]

    def external_activations(self, view: str, x: Any) -> np.ndarray:
        """Activations (neurons,) of one input that is not in the dataset."""
        v = self.view(view)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        sample = self.data.item(0)
        if isinstance(x, torch.Tensor) and isinstance(sample, torch.Tensor | np.ndarray):
            want = tuple(np.shape(sample))
            if tuple(x.shape) != want and tuple(x.shape) == (1,) + want:
                x = x[0]
            if tuple(x.shape) != want:
                raise QueryError(f"target tensor has shape {tuple(x.shape)}; an input of this dataset has shape {want}",
                                 param="target")
            x = _like(x, torch.as_tensor(sample).dtype)
        items = [x] * self.batch_sizes(v.name)[0]
        batch = self.data.collate(items) if self.data.collate else torch.stack([torch.as_tensor(i) for i in items])
        outs = self.source.capture([v.layer], batch)
        return v.apply(outs[v.layer], batch)[0].cpu().numpy()

    # -- queries ------------------------------------------------------------------------------
    def topk(self, view: str, neurons: NeuronSpec, k: int = 10, by: str | Sequence[float] = "sum",
             lowest: bool = False, filter: Any = None) -> Result:
        """The k inputs with the highest (lowest, with `lowest=True`) aggregate activation.

        `neurons`: flat indices or index tuples of the view's output; `by`: "sum", "mean",
        "max", "l2" or non-negative weights (one per neuron); `filter`: the input ids (or a
        boolean mask over inputs) allowed in the answer.
        """
        v = self.view(view)
        k = check_k(k)
        group = self.neuron_ids(v.name, neurons)   # every argument is checked before a build
        agg = Q.make_aggregation(by, len(group))
        allowed = self.allowed(filter)
        self.ensure_indexed(v.name)
        ids, scores, stats = Q.topk(self, v.name, group, k, agg, lowest, allowed)
        params = {"by": agg.label if agg.weights is None else list(agg.weights), "k": k, "filter": filter is not None}
        return self._result("bottomk" if lowest else "topk", v.name, group, ids, scores, stats, params)

    def bottomk(self, view: str, neurons: NeuronSpec, k: int = 10, by: str | Sequence[float] = "sum",
                filter: Any = None) -> Result:
        """`topk(..., lowest=True)`."""
        return self.topk(view, neurons, k, by, lowest=True, filter=filter)

    def knn(self, target: Any, view: str, neurons: NeuronSpec, k: int = 10, metric: str = "l2",
            include_target: bool = False, filter: Any = None) -> Result:
        """The k inputs nearest to `target` in the activation space of a neuron group.

        `target` is a dataset input id or an external input (a tensor shaped like one
        input). A dataset target is left out of its own answer unless `include_target`;
        its exact duplicates (distance 0) are always eligible. `metric`: "l2", "l1",
        "linf" (exact, index-accelerated) or "cosine" (exact scan).
        """
        v = self.view(view)
        k = check_k(k)
        group = self.neuron_ids(v.name, neurons)   # every argument is checked before a build
        allowed = self.allowed(filter)
        Q.check_metric(metric)
        tid = None
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            with about("target"):
                tid = self.input_id(target)
        self.ensure_indexed(v.name)
        pre = QueryStats(n=self.n)
        if tid is not None:
            trow = self.fetch(v.name, np.array([tid]), pre)[0]
            if not include_target:
                allowed = allowed.copy()
                allowed[tid] = False
            target_desc: Any = int(tid)
        elif isinstance(target, (torch.Tensor, np.ndarray)) or (self.data.collate is not None and not isinstance(target, bool)):
            trow = self.external_activations(v.name, target)
            bad = group[~np.isfinite(trow[group])]
            if len(bad):
                raise QueryError(f"the external target gives NaN or infinite activations at neurons "
                                 f"{_some(bad)} of view {v.name!r}; no distance to it is defined: check the "
                                 "target tensor (NaN, inf or values far outside the data's range)", param="target")
            pre.inputs_recomputed += 1
            pre.batches += 1
            pre.rows_run += self.batch_sizes(v.name)[0]
            target_desc = "external"
        else:
            raise QueryError(f"knn target must be an input id (int in [0, {self.n})) or an input tensor, "
                             f"got {type(target).__name__}", param="target")
        ids, scores, stats = Q.knn(self, v.name, group, k, trow[group], metric, allowed)
        stats.inputs_recomputed += pre.inputs_recomputed
        stats.inputs_from_cache += pre.inputs_from_cache
        stats.batches += pre.batches
        stats.rows_run += pre.rows_run
        params = {"target": target_desc, "metric": metric, "k": k, "include_target": include_target,
                  "filter": filter is not None}
        return self._result("knn", v.name, group, ids, scores, stats, params)

    # -- helpers -------------------------------------------------------------------------------
    def neuron_ids(self, view: str, neurons: NeuronSpec, shape: tuple | None = None) -> np.ndarray:
        """Flat neuron ids of a group given as ints and/or index tuples of the view's shape."""
        if isinstance(neurons, (torch.Tensor, np.ndarray)):
            neurons = np.asarray(neurons).tolist()
        if isinstance(neurons, (str, bytes)) or not isinstance(neurons, (int, np.integer, Iterable)):
            hint = f"; write {int(neurons)}" if isinstance(neurons, float) and neurons.is_integer() else ""
            raise QueryError(f"neurons must be a neuron index (int), an index tuple or a list of them, got "
                             f"{neurons!r} ({type(neurons).__name__}){hint}", param="neurons")
        shape = tuple(shape if shape is not None else self.shape(view))
        m = int(np.prod(shape))
        if isinstance(neurons, (int, np.integer)) or (isinstance(neurons, tuple) and all(isinstance(x, (int, np.integer)) for x in neurons) and len(neurons) == len(shape) and len(shape) > 1):
            neurons = [neurons]
        out = []
        for item in neurons:
            if isinstance(item, (tuple, list)):
                if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in item):
                    raise QueryError(f"neuron {tuple(item)}: the indices of a tuple must be ints", param="neurons")
                if len(item) != len(shape):
                    raise QueryError(f"neuron {tuple(item)} has {len(item)} indices; view {view!r} has shape {shape}",
                                     param="neurons")
                for ax, (i, s) in enumerate(zip(item, shape)):
                    if not 0 <= int(i) < s:
                        raise QueryError(f"neuron {tuple(item)}: index {i} on axis {ax} is out of range [0, {s}) for view {view!r} of shape {shape}",
                                         param="neurons")
                out.append(int(np.ravel_multi_index(tuple(int(i) for i in item), shape)))
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= int(item) < m:
                    raise QueryError(f"neuron {item} is out of range: view {view!r} has {m} neurons (shape {shape})",
                                     param="neurons")
                out.append(int(item))
            else:
                raise QueryError(f"a neuron must be an int or an index tuple, got {item!r}", param="neurons")
        if not out:
            raise QueryError("the neuron group is empty", param="neurons")
        return np.asarray(out, np.int64)

    def input_id(self, i: Any) -> int:
        """One input id as an int, checked to lie in [0, n) (QueryError otherwise)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < self.n:
            raise QueryError(f"input id {i!r} is out of range [0, {self.n})")
        return int(i)

    def input_ids(self, ids: Any) -> np.ndarray:
        """Input ids (an int or a flat collection of ints) as int64, checked to lie in [0, n)."""
        arr = _flat(ids)
        if arr.dtype.kind not in "iu":
            raise QueryError(f"input ids must be integers, got {arr.dtype}")
        if len(arr) and (arr.min() < 0 or arr.max() >= self.n):
            raise QueryError(f"input ids must lie in [0, {self.n})")
        return arr.astype(np.int64)

    def allowed(self, filter: Any) -> np.ndarray:
        """The boolean mask over inputs of a query's `filter`: None (every input), input ids or a mask."""
        if filter is None:
            return np.ones(self.n, bool)
        arr = _flat(filter)
        if arr.dtype == bool:
            if arr.shape != (self.n,):
                raise QueryError(f"a boolean filter needs one entry per input ({self.n}), got shape {arr.shape}",
                                 param="filter")
            return arr.copy()
        allowed = np.zeros(self.n, bool)
        allowed[self.input_ids(arr)] = True
        return allowed

    def _result(self, kind, view, group, ids, scores, stats, params) -> Result:
        labels = self.labels[ids] if self.labels is not None else None
        r = Result(kind=kind, view=view, neurons=group, ids=np.asarray(ids, np.int64), scores=np.asarray(scores),
                   stats=stats, params=params, labels=labels)
        self.history.append(r)
        return r

    def clear_caches(self) -> None:
        """Forget recomputed activations and decoded index rows (the next query starts cold)."""
        self.cache.clear()
        self.store.rows.clear()

    def close(self) -> None:
        """Close the index file (and stop the session's own job queues)."""
        if self._own_jobs:
            self.jobs.shutdown()
        self.store.close()
        if self.cluster is not None:
            self.runner.remote = None
            self.cluster.close()
            self.cluster = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.runner.device}" + (f" + Dask {self.cluster.describe()}" if self.cluster is not None else "")
        return (f"<Session {self.name!r}: {type(self.runner.model).__name__} on {where}, "
                f"{self.n} inputs, index {str(self.index_path)!r} ({len(self.store.views)} views)>")


def check_k(k: Any) -> int:
    """A query's `k` as an int, checked to be >= 1 (QueryError otherwise)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise QueryError(f"k must be a positive int, got {k!r}", param="k")
    if k <= 0:
        raise QueryError(f"k must be >= 1, got {k}", param="k")
    return int(k)


def _like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An external input in the dataset's dtype: converted within floats (or within ints),
    refused across kinds (a uint8 image is not on the scale of float data)."""
    if x.dtype == dtype:
        return x
    if x.is_floating_point() == dtype.is_floating_point and x.dtype != torch.bool and dtype != torch.bool:
        return x.to(dtype)
    raise QueryError(f"target tensor has dtype {x.dtype}; an input of this dataset is {dtype}: convert it the way the "
                     f"dataset was made (e.g. x.float() / 255 for 8-bit images scaled to [0, 1])", param="target")


def _some(values: np.ndarray, n: int = 10) -> str:
    """The first `n` values, then how many more."""
    shown = ", ".join(str(int(v)) for v in values[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


def _flat(ids: Any) -> np.ndarray:
    """Input ids (or a boolean mask) as a 1-d array; anything nested or of mixed kinds is refused."""
    if isinstance(ids, (set, frozenset)):
        ids = sorted(ids)
    try:
        arr = np.atleast_1d(np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids))
    except (TypeError, ValueError):
        arr = np.array([None])
    if arr.ndim != 1 or arr.dtype == object:
        raise QueryError(f"input ids must be an int or a flat collection of ints, got {brief(ids, 80)}")
    return arr
