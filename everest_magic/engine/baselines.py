"""The two ways to answer without the index, used as references and in benchmarks.

- `ReprocessAll`: one full inference pass over the dataset per query.
- `PreprocessAll`: every activation of a view materialised neuron-major in HDF5; a query
  reads the group's rows.

Both rank with the same key functions and tie rule as the engine, so on a batch-invariant
model their answers equal the engine's bit for bit.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import tables

from . import query as Q
from .result import QueryStats, Result
from .session import Session, check_k
from .store import FLOAT_FILTERS, HDF5_LOCK, read_row


def rank(X: np.ndarray, key_of, k: int, allowed: np.ndarray, ids: np.ndarray | None = None):
    """(keys, ids) of the k best rows of X (n, g) by key, ties by smaller id."""
    ids = np.arange(len(X)) if ids is None else ids
    keys = key_of(X.astype(np.float64))
    keep = allowed[ids]
    return Q.merge_best(np.empty(0), np.empty(0, np.int64), keys[keep], ids[keep], k)


class _Baseline:
    name = "baseline"

    def __init__(self, session: Session):
        self.s = session

    def group_activations(self, view: str, group: np.ndarray, stats: QueryStats) -> np.ndarray:
        raise NotImplementedError

    def topk(self, view: str, neurons: Any, k: int = 10, by: Any = "sum", lowest: bool = False,
             filter: Any = None) -> Result:
        t0 = time.perf_counter()
        s = self.s
        group = s.neuron_ids(view, neurons)
        agg = Q.make_aggregation(by, len(group))
        key_of = Q.topk_key(agg, lowest)
        stats = QueryStats(n=s.n, method=self.name)
        X = self.group_activations(view, group, stats)
        keys, ids = rank(X, key_of, check_k(k), s.allowed(filter))
        stats.seconds = time.perf_counter() - t0
        return Result("bottomk" if lowest else "topk", view, group, ids, -keys if lowest else keys, stats,
                      {"by": agg.label, "k": k})

    def bottomk(self, view: str, neurons: Any, k: int = 10, by: Any = "sum", filter: Any = None) -> Result:
        return self.topk(view, neurons, k, by, lowest=True, filter=filter)

    def knn(self, target: Any, view: str, neurons: Any, k: int = 10, metric: str = "l2",
            include_target: bool = False, filter: Any = None) -> Result:
        t0 = time.perf_counter()
        s = self.s
        group = s.neuron_ids(view, neurons)
        stats = QueryStats(n=s.n, method=self.name)
        X = self.group_activations(view, group, stats)
        allowed = s.allowed(filter)
        if isinstance(target, (int, np.integer)):
            t = X[s.input_id(target)]
            if not include_target:
                allowed[int(target)] = False
        else:
            t = s.external_activations(view, target)[group]
        key_of = Q.knn_key(t, metric)
        keys, ids = rank(X, key_of, check_k(k), allowed)
        stats.seconds = time.perf_counter() - t0
        return Result("knn", view, group, ids, Q.knn_distance(keys, metric), stats, {"metric": metric, "k": k})


class ReprocessAll(_Baseline):
    """Answers each query with one full inference pass (no index, no cache)."""

    name = "reprocess_all"

    def group_activations(self, view, group, stats):
        s = self.s
        v = s.view(view)
        out = np.empty((s.n, len(group)), np.float32)
        bs = s.runner.batch_size * 16
        for a in range(0, s.n, bs):
            ids = np.arange(a, min(a + bs, s.n))
            out[ids] = s.source.recompute([v], ids)[0][:, group]
        stats.inputs_recomputed = s.n
        stats.batches = -(-s.n // s.runner.batch_size)
        return out

    def all_activations(self, view: str) -> np.ndarray:
        """The whole view (n, m) in RAM: the brute-force reference of the tests."""
        s = self.s
        v = s.view(view)
        return np.concatenate([s.source.recompute([v], np.arange(a, min(a + 1024, s.n)))[0]
                               for a in range(0, s.n, 1024)])


class PreprocessAll(_Baseline):
    """Every activation of a view materialised in HDF5 (neuron-major, one lz4 chunk a neuron); a
    query reads its group's rows as whole chunks, as the index reads its own rows."""

    name = "preprocess_all"

    def __init__(self, session: Session, path: str | Path):
        super().__init__(session)
        self.path = Path(path)

    def materialise(self, views: list[str]) -> float:
        """Write the full activations of `views`; returns seconds taken."""
        t0 = time.perf_counter()
        s = self.s
        vs = [s.view(v) for v in views]
        reprocess = ReprocessAll(s)
        with HDF5_LOCK, tables.open_file(str(self.path), "w") as h:
            for v in vs:
                A = reprocess.all_activations(v.name)
                h.create_carray("/", _node(v.name), obj=np.ascontiguousarray(A.T), chunkshape=(1, s.n),
                                filters=FLOAT_FILTERS)
        return time.perf_counter() - t0

    def size(self, view: str) -> int:
        with HDF5_LOCK, tables.open_file(str(self.path), "r") as h:
            return int(h.get_node("/", _node(view)).size_on_disk)

    def group_activations(self, view, group, stats):
        with HDF5_LOCK, tables.open_file(str(self.path), "r") as h:
            node = h.get_node("/", _node(self.s.view(view).name))
            rows = np.stack([read_row(node, j) for j in group])
        return rows.T


def _node(view: str) -> str:
    return "a_" + "".join(c if c.isalnum() else "_" for c in view)
