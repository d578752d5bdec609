"""The systems compared, the queries they answer, and the brute-force check of every answer.

Systems (same queries, same answers required):

- ``engine``: everest_magic's index + threshold algorithm (activation cache cleared
  before every independent query);
- ``reprocess_all``: one full inference pass per query (`baselines.ReprocessAll`);
- ``preprocess_cold`` / ``preprocess_warm``: every activation materialised neuron-major in
  HDF5 (`baselines.PreprocessAll`, lz4), read with the file out of / in the page cache;
- ``numpy_ram``: the whole layer (n, m) float32 in RAM, a query gathers the group's columns;
- ``faiss_flat`` (kNN only): FAISS ``IndexFlatL2`` over the group's columns gathered from
  the materialised layer; gather + build + search all timed.

The brute-force reference ranks the model's full activations (computed by the session's
runner, so bit-identical to what the engine recomputes) with the engine's own key
functions and tie rule (smaller id first). Exact systems must return the same ids in the
same order. FAISS computes float32 distances its own way, so its answer is accepted when
its ids' exact distances equal the reference's k distances within float32 rounding
(a different order among near-ties is recorded, not failed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tables

from everest_magic.engine import query as Q
from everest_magic.engine.baselines import PreprocessAll, ReprocessAll, _Baseline, _node, rank
from everest_magic.engine.result import QueryStats
from everest_magic.engine.store import FLOAT_FILTERS, HDF5_LOCK


K = 20


@dataclass
class QuerySpec:
    """One query: kind (topk, bottomk, knn), its family label, the view, the group, the target."""

    kind: str
    family: str
    view: str
    group: np.ndarray
    target: int | None = None
    k: int = K

    def run(self, system: Any):
        """Ask `system` (a Session or a baseline with the same calls)."""
        if self.kind == "topk":
            return system.topk(self.view, self.group, k=self.k)
        if self.kind == "bottomk":
            return system.bottomk(self.view, self.group, k=self.k)
        return system.knn(self.target, self.view, self.group, k=self.k)

    def describe(self) -> dict:
        return {"kind": self.kind, "family": self.family, "view": self.view, "group": self.group.tolist(),
                "target": self.target, "k": self.k}


def key_functions(spec: QuerySpec, target_row: np.ndarray | None):
    if spec.kind == "knn":
        return Q.knn_key(target_row, "l2")
    return Q.topk_key(Q.make_aggregation("sum", len(spec.group)), spec.kind == "bottomk")


def reference(spec: QuerySpec, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, ids) of the brute-force answer from the full activations A (n, m)."""
    X = A[:, spec.group]
    allowed = np.ones(len(A), bool)
    target_row = None
    if spec.kind == "knn":
        target_row = A[spec.target, spec.group]
        allowed[spec.target] = False
    keys, ids = rank(X, key_functions(spec, target_row), spec.k, allowed)
    return keys, ids


def faiss_equivalent(spec: QuerySpec, A: np.ndarray, ids: np.ndarray, ref_keys: np.ndarray) -> bool:
    """True when FAISS's ids have the reference's k distances (within float32 rounding)."""
    if len(ids) != len(ref_keys) or len(set(ids.tolist())) != len(ids) or spec.target in set(ids.tolist()):
        return False
    key_of = key_functions(spec, A[spec.target, spec.group])
    got = np.sort(key_of(A[ids][:, spec.group].astype(np.float64)))[::-1]
    scale = max(1.0, float(np.max(np.abs(ref_keys))))
    return bool(np.allclose(got, ref_keys, rtol=1e-5, atol=1e-6 * scale))


# -- baselines beyond the engine's own ------------------------------------------------------------

class CapturingReprocessAll(ReprocessAll):
    """`ReprocessAll` that also keeps the full rows its inference pass computes.

    The pass (same chunks, same runner calls as `ReprocessAll.group_activations`) is the
    one a ReprocessAll query pays anyway; keeping every row costs one extra memory copy
    (counted in its time, so ReprocessAll only looks slower by it). The kept rows are the
    brute-force activations of the view: they are bit-identical to what the engine
    recomputes, because both come from the same runner with the same batch padding.
    """

    def __init__(self, session):
        super().__init__(session)
        self.captured: dict[str, np.ndarray] = {}

    def group_activations(self, view, group, stats):
        s = self.s
        v = s.view(view)
        out = np.empty((s.n, len(group)), np.float32)
        full = None
        bs = s.runner.batch_size * 16
        for a in range(0, s.n, bs):
            ids = np.arange(a, min(a + bs, s.n))
            rows = s.source.recompute([v], ids)[0]
            if full is None:
                full = np.empty((s.n, rows.shape[1]), np.float32)
            full[ids] = rows
            out[ids] = rows[:, group]
        stats.inputs_recomputed = s.n
        stats.batches = -(-s.n // s.runner.batch_size)
        self.captured[v.name] = full
        return out


class NumpyRAM(_Baseline):
    """The whole layer in RAM as one (n, m) float32 array; a query gathers its group's columns."""

    name = "numpy_ram"

    def __init__(self, session, arrays: dict[str, np.ndarray]):
        super().__init__(session)
        self.arrays = arrays

    def group_activations(self, view, group, stats):
        return self.arrays[view][:, group]


class Preprocess(PreprocessAll):
    """`PreprocessAll` whose materialisation writes activations already computed (same layout).

    The file holds each view neuron-major, one lz4 chunk per neuron, exactly as
    `PreprocessAll.materialise` writes it; only the inference pass is shared with the
    other systems instead of being re-run per view. Queries use `PreprocessAll`'s reads.
    """

    def write(self, arrays: dict[str, np.ndarray], block: int = 512) -> float:
        t0 = time.perf_counter()
        n = self.s.n
        with HDF5_LOCK, tables.open_file(str(self.path), "w") as h:
            for view, A in arrays.items():
                m = A.shape[1]
                node = h.create_carray("/", _node(self.s.view(view).name), tables.Float32Atom(), (m, n),
                                       chunkshape=(1, n), filters=FLOAT_FILTERS)
                for j in range(0, m, block):
                    node[j:j + block] = np.ascontiguousarray(A[:, j:j + block].T)
        return time.perf_counter() - t0


class FaissFlat:
    """kNN with FAISS IndexFlatL2 over the group's columns of the materialised layer."""

    name = "faiss_flat"

    def __init__(self, arrays: dict[str, np.ndarray]):
        import faiss
        self.faiss = faiss
        self.arrays = arrays

    def knn(self, target: int, view: str, group: np.ndarray, k: int = K):
        t0 = time.perf_counter()
        X = np.ascontiguousarray(self.arrays[view][:, group], dtype=np.float32)
        index = self.faiss.IndexFlatL2(X.shape[1])
        index.add(X)
        D, I = index.search(X[target:target + 1], k + 1)
        keep = I[0] != target
        ids, dist = I[0][keep][:k], D[0][keep][:k]
        stats = QueryStats(n=len(X), method=self.name, seconds=time.perf_counter() - t0)
        return _FaissResult(ids.astype(np.int64), np.sqrt(np.maximum(dist, 0)), stats)


@dataclass
class _FaissResult:
    ids: np.ndarray
    scores: np.ndarray
    stats: QueryStats


# -- running one query on one system -------------------------------------------------------------

@dataclass
class Outcome:
    """One system's answer to one query, timed, and whether it matches brute force."""

    system: str
    seconds: float
    match: bool
    exact_ids: bool
    recomputed: int = 0
    from_cache: int = 0
    batches: int = 0
    rows_run: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {"system": self.system, "seconds": self.seconds, "match": self.match, "exact_ids": self.exact_ids}
        if self.system == "engine":
            d.update(recomputed=self.recomputed, from_cache=self.from_cache, batches=self.batches,
                     rows_run=self.rows_run)
        d.update(self.extra)
        return d


def timed(system_name: str, fn, ref_ids: np.ndarray, check=None) -> Outcome:
    t0 = time.perf_counter()
    r = fn()
    seconds = time.perf_counter() - t0
    ids = np.asarray(r.ids, np.int64)
    exact = ids.tolist() == ref_ids.tolist()
    match = exact if check is None else (exact or check(ids))
    st = r.stats
    return Outcome(system_name, seconds, bool(match), bool(exact), int(getattr(st, "inputs_recomputed", 0)),
                   int(getattr(st, "inputs_from_cache", 0)), int(getattr(st, "batches", 0)),
                   int(getattr(st, "rows_run", 0)))


