"""Exact top-k, bottom-k and kNN over a neuron group, accelerated by the index.

Every input gets an interval per group neuron from the index: its partition's exact
[min, max], narrowed by the top and bottom lists (an unlisted input lies between the
lists' last values), or a point when the value is known exactly (listed or cached).
From the intervals follows a bound on each input's score. Inputs are visited best bound
first; each batch of not-yet-known inputs is recomputed by the model and scored exactly,
and the walk stops as soon as the k-th best exact score beats the bound of every input
not yet seen (Fagin's threshold algorithm with per-input bounds). Ties are broken by the
smaller input id everywhere, so answers equal brute force exactly.

Scores are compared as a single "key" where larger is better: the aggregate for top-k,
minus the aggregate for bottom-k, minus the distance for kNN (squared for L2).
Aggregates are accumulated left to right in float64 so that bounds and exact scores
round the same way and a bound can never fall below the score it bounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .cache import ActivationCache
from .errors import QueryError
from .partition import partition_of
from .result import QueryStats
from .store import IndexStore

AGGREGATIONS = ("sum", "mean", "max", "l2")
METRICS = ("l2", "l1", "linf", "cosine")


class Context(Protocol):
    """What a query needs from its session."""

    n: int
    store: IndexStore
    cache: ActivationCache
    tolerance: float

    def fetch(self, view: str, ids: np.ndarray, stats: QueryStats) -> np.ndarray: ...


def _lsum(X: np.ndarray) -> np.ndarray:
    acc = X[:, 0].copy()
    for j in range(1, X.shape[1]):
        acc += X[:, j]
    return acc


@dataclass(frozen=True)
class Aggregation:
    """How a group's activations combine into one top-k score."""

    by: str = "sum"
    weights: tuple[float, ...] | None = None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.weights is not None:
            return _lsum(X * np.asarray(self.weights, np.float64))
        if self.by == "sum":
            return _lsum(X)
        if self.by == "mean":
            return _lsum(X) / X.shape[1]
        if self.by == "max":
            return X.max(axis=1)
        if self.by == "l2":
            return np.sqrt(_lsum(X * X))
        raise QueryError(f"unknown aggregation {self.by!r}")

    @property
    def label(self) -> str:
        return "weighted sum" if self.weights is not None else self.by


def make_aggregation(by: str | list | tuple | np.ndarray, g: int) -> Aggregation:
    """`by` is an aggregation name or a sequence of non-negative weights, one per neuron."""
    if isinstance(by, str):
        if by not in AGGREGATIONS:
            from .errors import suggest
            hint = suggest(by, AGGREGATIONS)
            raise QueryError(f"unknown aggregation {by!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; use one of {AGGREGATIONS} or a list of weights"))
        return Aggregation(by)
    w = np.asarray(by, dtype=np.float64).ravel()
    if len(w) != g:
        raise QueryError(f"{len(w)} weights given for a group of {g} neurons")
    if not np.all(np.isfinite(w)):
        raise QueryError("weights must be finite")
    if np.any(w < 0):
        bad = int(np.flatnonzero(w < 0)[0])
        raise QueryError(f"weight {bad} is negative ({w[bad]}); top-k weights must be >= 0 (negate the query or use bottom-k)")
    return Aggregation("weighted", tuple(float(x) for x in w))


# -- intervals from the index ---------------------------------------------------------------

def intervals(ctx: Context, view: str, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(LO, HI, exact, n_from_lists): per-input value intervals (n, g) of the group's neurons.

    `exact[i]` is True when every neuron's value of input i is known (lists or cache).
    """
    n, g = ctx.n, len(neurons)
    counts, bounds = ctx.store.summary(view)
    info = ctx.store.view(view)
    LO = np.empty((n, g), np.float64)
    HI = np.empty((n, g), np.float64)
    known = np.zeros((n, g), bool)
    for j, neuron in enumerate(neurons):
        b = bounds[neuron].astype(np.float64)
        eps = ctx.tolerance * float(np.nanmax(np.abs(b))) if np.any(np.isfinite(b)) else 0.0
        p = partition_of(ctx.store.members(view, neuron), counts[neuron])
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


# -- the threshold walk ---------------------------------------------------------------------

def merge_best(best_keys: np.ndarray, best_ids: np.ndarray, keys: np.ndarray, ids: np.ndarray, k: int):
    keys = np.concatenate([best_keys, keys])
    ids = np.concatenate([best_ids, ids])
    order = np.lexsort((ids, -keys))[:k]
    return keys[order], ids[order]


def threshold_walk(ctx: Context, view: str, neurons: np.ndarray, k: int, allowed: np.ndarray,
                   key_of: Callable[[np.ndarray], np.ndarray],
                   bound_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   stats: QueryStats, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The k inputs with the largest key (ties: smaller id), visiting best bounds first.

    `key_of(X)` scores exact activations (rows, g); `bound_of(LO, HI)` gives an upper
    bound of the key from value intervals, and equals `key_of(X)` when LO == HI == X.
    """
    LO, HI, exact, from_lists = intervals(ctx, view, neurons)
    ub = bound_of(LO, HI)
    stats.inputs_exact_from_index = from_lists
    ex = np.flatnonzero(exact & allowed)
    best_keys, best_ids = merge_best(np.empty(0), np.empty(0, np.int64), ub[ex], ex, k)
    cand = np.flatnonzero(~exact & allowed)
    order = np.lexsort((cand, -ub[cand]))
    cand = cand[order]
    neg_ub = -ub[cand]
    q = 0
    while q < len(cand):
        limit = len(cand)
        if len(best_keys) == k:
            kth, kth_id = best_keys[-1], best_ids[-1]
            lo = int(np.searchsorted(neg_ub, -kth, side="left"))
            hi = int(np.searchsorted(neg_ub, -kth, side="right"))
            limit = lo + int(np.searchsorted(cand[lo:hi], kth_id, side="left"))
            if limit <= q:
                break
        take = cand[q:min(q + batch, limit)]
        X = ctx.fetch(view, take, stats)[:, neurons].astype(np.float64)
        best_keys, best_ids = merge_best(best_keys, best_ids, key_of(X), take, k)
        q += len(take)
    return best_keys, best_ids


def scan(ctx: Context, view: str, neurons: np.ndarray, k: int, allowed: np.ndarray,
         key_of: Callable[[np.ndarray], np.ndarray], stats: QueryStats, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact answer by scoring every allowed input (used when bounds cannot prune)."""
    ids = np.flatnonzero(allowed)
    best_keys, best_ids = np.empty(0), np.empty(0, np.int64)
    for s in range(0, len(ids), batch):
        take = ids[s:s + batch]
        X = ctx.fetch(view, take, stats)[:, neurons].astype(np.float64)
        best_keys, best_ids = merge_best(best_keys, best_ids, key_of(X), take, k)
    return best_keys, best_ids


# -- the queries ------------------------------------------------------------------------------

def topk_keys(agg: Aggregation, lowest: bool) -> tuple[Callable, Callable]:
    """(key_of, bound_of) of a top-k (bottom-k with `lowest`) query."""
    sign = -1.0 if lowest else 1.0

    def key_of(X):
        return sign * agg(X)

    def bound_of(LO, HI):
        B = LO if lowest else HI
        return sign * agg(np.maximum(B, 0.0) if agg.by == "l2" else B)

    return key_of, bound_of


def knn_keys(target: np.ndarray, metric: str) -> tuple[Callable, Callable | None]:
    """(key_of, bound_of) of a kNN query; bound_of is None for a metric with no per-neuron bound."""
    if metric not in METRICS:
        from .errors import suggest
        hint = suggest(metric, METRICS)
        raise QueryError(f"unknown metric {metric!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; use one of {METRICS}"))
    t = np.asarray(target, np.float64)[None, :]
    if metric == "cosine":
        tn = float(np.sqrt(_lsum(t * t))[0])

        def cos_key(X):
            xn = np.sqrt(_lsum(X * X))
            denom = np.where((xn == 0) | (tn == 0), 1.0, xn * tn)
            return -np.maximum(1.0 - _lsum(X * t) / denom, 0.0)

        return cos_key, None

    def combine(D):
        if metric == "l2":
            return -_lsum(D * D)
        if metric == "l1":
            return -_lsum(D)
        return -D.max(axis=1)

    def key_of(X):
        return combine(np.abs(X - t))

    def bound_of(LO, HI):
        return combine(np.maximum(np.maximum(LO - t, t - HI), 0.0))

    return key_of, bound_of


def knn_distance(keys: np.ndarray, metric: str) -> np.ndarray:
    """Distances from kNN keys (minus squared L2, minus L1 / Linf / cosine distance)."""
    return np.sqrt(-keys) if metric == "l2" else -keys


def topk(ctx: Context, view: str, neurons: np.ndarray, k: int, agg: Aggregation, lowest: bool,
         allowed: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, QueryStats]:
    """Top-k (or bottom-k) inputs of a neuron group by a monotone aggregation."""
    t0 = time.perf_counter()
    stats = QueryStats(n=ctx.n)
    key_of, bound_of = topk_keys(agg, lowest)
    _, bounds = ctx.store.summary(view)
    if agg.by == "l2" and np.nanmin(bounds[neurons, :, 0]) < 0:
        stats.method, stats.reason = "scan", "l2 of a group with negative activations is not monotone"
        keys, ids = scan(ctx, view, neurons, k, allowed, key_of, stats)
    else:
        keys, ids = threshold_walk(ctx, view, neurons, k, allowed, key_of, bound_of, stats, batch)
    stats.seconds = time.perf_counter() - t0
    return ids, (-keys if lowest else keys), stats


def knn(ctx: Context, view: str, neurons: np.ndarray, k: int, target: np.ndarray, metric: str,
        allowed: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, QueryStats]:
    """The k inputs nearest to `target` (the group's activations, shape (g,)) by `metric`."""
    t0 = time.perf_counter()
    stats = QueryStats(n=ctx.n)
    key_of, bound_of = knn_keys(target, metric)
    if bound_of is None:
        stats.method, stats.reason = "scan", f"{metric} distance does not decompose per neuron"
        keys, ids = scan(ctx, view, neurons, k, allowed, key_of, stats)
    else:
        keys, ids = threshold_walk(ctx, view, neurons, k, allowed, key_of, bound_of, stats, batch)
    stats.seconds = time.perf_counter() - t0
    return ids, knn_distance(keys, metric), stats
