"""Exact top-k, bottom-k and kNN over a neuron group, accelerated by the index.

A query scores an input by per-neuron *terms* (the activation, its weighted value, its
square, its distance to the target's value) combined by a sum or a max into one *key*,
larger is better: the aggregate for top-k, minus the aggregate for bottom-k, minus the
distance for kNN (squared for L2).

From the index, every input gets a bound on each term: its partition's exact [min, max]
(narrowed by the top and bottom lists: an unlisted input lies between the lists' last
values) gives a per-partition bound, looked up by the input's partition id; an input in a
top or bottom list, in a single-valued partition, or in the activation cache has an exact
term. Inputs are visited best bound first; each batch of not-yet-known inputs is
recomputed by the model and scored exactly, and the walk stops as soon as the k-th best
exact key beats the bound of every input not yet seen (Fagin's threshold algorithm with
per-input bounds). Ties are broken by the smaller input id everywhere, so answers equal
brute force exactly.

Terms are accumulated neuron by neuron, left to right, in float64, for bounds and exact
keys alike: rounding is monotone, so a bound can never fall below the key it bounds, and
the bound of an input whose every term is exact *is* its key.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from .cache import ActivationCache
from .errors import QueryError, suggest
from .result import QueryStats
from .store import IndexStore

AGGREGATIONS = ("sum", "mean", "max", "l2")
METRICS = ("l2", "l1", "linf", "cosine")
ORDER_CHUNK = 2048   # candidates are put in order this many at a time (most walks need one chunk)

Terms = Callable[[np.ndarray, int], np.ndarray]           # (values of neuron j, j) -> exact terms
BoundTerms = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (lo, hi, j) -> best-case terms


class QuerySession(Protocol):
    """What a query needs from its session."""

    n: int
    store: IndexStore
    cache: ActivationCache
    tolerance: float

    def fetch(self, view: str, ids: np.ndarray, stats: QueryStats) -> np.ndarray: ...

    def walk_steps(self, view: str) -> Iterator[int]: ...

    def walk_plan(self, view: str) -> int: ...


@dataclass(frozen=True)
class Scoring:
    """How a query turns a group's activations into keys (larger is better).

    ``key = sign * finish(combine_j term(x_j, j))``. With ``sign = +1`` the bound term of
    an interval is its largest term, with ``sign = -1`` its smallest.
    """

    term: Terms
    bound: BoundTerms
    combine: str = "sum"                       # "sum" or "max"
    sign: float = 1.0
    finish: Callable[[np.ndarray], np.ndarray] | None = None

    def accumulate(self, acc: np.ndarray | None, terms: np.ndarray) -> np.ndarray:
        if acc is None:
            return np.array(terms, dtype=np.float64, copy=True)
        if self.combine == "sum":
            acc += terms
        else:
            np.maximum(acc, terms, out=acc)
        return acc

    def keys(self, acc: np.ndarray) -> np.ndarray:
        out = self.finish(acc) if self.finish is not None else acc
        return out if self.sign > 0 else -out

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Exact keys of activation rows X (rows, g)."""
        acc = None
        for j in range(X.shape[1]):
            acc = self.accumulate(acc, self.term(X[:, j].astype(np.float64), j))
        return self.keys(acc)


@dataclass(frozen=True)
class Aggregation:
    """How a group's activations combine into one top-k score."""

    by: str = "sum"
    weights: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        return "weighted sum" if self.weights is not None else self.by

    def scoring(self, g: int, lowest: bool = False) -> Scoring:
        """The Scoring of a top-k (bottom-k with `lowest`) query over g neurons."""
        w = None if self.weights is None else np.asarray(self.weights, np.float64)
        if self.by == "l2":
            def term(x, j):
                return x * x

            def bound(lo, hi, j):
                b = np.maximum(lo if lowest else hi, 0.0)
                return b * b
        elif w is not None:
            def term(x, j):
                return x * w[j]

            def bound(lo, hi, j):
                return (lo if lowest else hi) * w[j]
        else:
            def term(x, j):
                return x

            def bound(lo, hi, j):
                return lo if lowest else hi
        finish = {"mean": lambda acc: acc / g, "l2": np.sqrt}.get(self.by)
        return Scoring(term, bound, "max" if self.by == "max" else "sum", -1.0 if lowest else 1.0, finish)


def make_aggregation(by: str | list | tuple | np.ndarray, g: int) -> Aggregation:
    """`by` is an aggregation name or a sequence of non-negative weights, one per neuron."""
    if isinstance(by, str):
        if by not in AGGREGATIONS:
            hint = suggest(by, AGGREGATIONS)
            why = f"did you mean {hint[0]!r}?" if hint else f"use one of {AGGREGATIONS} or a list of weights"
            raise QueryError(f"unknown aggregation {by!r}; {why}", param="by")
        return Aggregation(by)
    try:
        w = np.asarray(by, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise QueryError(f"by must be an aggregation ({', '.join(AGGREGATIONS)}) or a list of non-negative weights, "
                         f"one per neuron; got {type(by).__name__} {str(by)[:60]}", param="by") from None
    if len(w) != g:
        raise QueryError(f"{len(w)} weights given for a group of {g} neurons", param="by")
    if not np.all(np.isfinite(w)):
        raise QueryError("weights must be finite", param="by")
    if np.any(w < 0):
        bad = int(np.flatnonzero(w < 0)[0])
        raise QueryError(f"weight {bad} is negative ({w[bad]}); top-k weights must be >= 0 "
                         "(negate the query or use bottom-k)", param="by")
    return Aggregation("weighted", tuple(float(x) for x in w))


def topk_key(agg: Aggregation, lowest: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """The exact key function of a top-k (bottom-k with `lowest`) query, for rows (n, g)."""
    def key_of(X: np.ndarray) -> np.ndarray:
        return agg.scoring(X.shape[1], lowest)(X)
    return key_of


def check_metric(metric: str) -> str:
    """`metric` if it is one of METRICS, else a QueryError suggesting the closest."""
    if metric not in METRICS:
        hint = suggest(metric, METRICS)
        why = f"did you mean {hint[0]!r}?" if hint else f"use one of {METRICS}"
        raise QueryError(f"unknown metric {metric!r}; {why}", param="metric")
    return metric


def knn_scoring(target: np.ndarray, metric: str) -> Scoring:
    """The Scoring of a kNN query by a per-neuron metric (l2, l1, linf): minus the (squared
    for L2) distance to `target` (g,). Cosine has no per-neuron terms: see `cosine_keys`."""
    if check_metric(metric) == "cosine":
        raise QueryError("cosine distance does not decompose per neuron; score it with cosine_keys", param="metric")
    t = np.asarray(target, np.float64).ravel()
    square = metric == "l2"

    def term(x, j):
        d = np.abs(x - t[j])
        return d * d if square else d

    def bound(lo, hi, j):
        d = np.maximum(np.maximum(lo - t[j], t[j] - hi), 0.0)
        return d * d if square else d

    return Scoring(term, bound, "max" if metric == "linf" else "sum", -1.0)


def cosine_keys(target: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Minus the cosine distance of activation rows (rows, g) to `target` (g,)."""
    t = np.asarray(target, np.float64)[None, :]
    tn = float(np.sqrt(_lsum(t * t))[0])

    def key_of(X):
        X = X.astype(np.float64)
        xn = np.sqrt(_lsum(X * X))
        denom = np.where((xn == 0) | (tn == 0), 1.0, xn * tn)
        return -np.maximum(1.0 - _lsum(X * t) / denom, 0.0)
    return key_of


def _lsum(X: np.ndarray) -> np.ndarray:
    acc = X[:, 0].copy()
    for j in range(1, X.shape[1]):
        acc += X[:, j]
    return acc


def knn_key(target: np.ndarray, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """The exact key function of a kNN query (minus the distance; squared for L2), for rows (n, g)."""
    return cosine_keys(target) if check_metric(metric) == "cosine" else knn_scoring(target, metric)


def knn_distance(keys: np.ndarray, metric: str) -> np.ndarray:
    """Distances from kNN keys (minus squared L2, minus L1 / Linf / cosine distance)."""
    return np.sqrt(-keys) if metric == "l2" else -keys


# -- bounds of every input from the index ------------------------------------------------------

def bounds(ctx: QuerySession, view: str, neurons: np.ndarray, sc: Scoring) -> tuple[np.ndarray, np.ndarray, int]:
    """(keys, exact, n_from_index): an upper bound of every input's key (n,), which is the key
    itself where `exact`; n_from_index counts the inputs the index alone knows exactly."""
    counts, stored = ctx.store.summary(view)
    info = ctx.store.view(view)
    acc = None
    exact = np.ones(ctx.n, bool)
    for j, neuron in enumerate(neurons):
        b = stored[neuron].astype(np.float64)
        single = b[:, 0] == b[:, 1]                      # non-empty and single-valued (NaN != NaN)
        eps = ctx.tolerance * float(np.nanmax(np.abs(b))) if np.any(np.isfinite(b)) else 0.0
        lo, hi = b[:, 0] - eps, b[:, 1] + eps
        lists = ()
        if info.list_length > 0:
            top_ids, top_vals = ctx.store.extremes(view, neuron, highest=True)
            bot_ids, bot_vals = ctx.store.extremes(view, neuron, highest=False)
            np.minimum(hi, float(top_vals[-1]) + eps, out=hi)   # unlisted inputs lie between the lists' ends
            np.maximum(lo, float(bot_vals[-1]) - eps, out=lo)
            lists = ((top_ids, top_vals), (bot_ids, bot_vals))
        lo[single], hi[single] = b[single, 0], b[single, 0]
        table = sc.bound(np.nan_to_num(lo), np.nan_to_num(hi), j)
        pid = ctx.store.pids(view, neuron)
        terms = table[pid]
        known = single[pid]
        for ids, vals in lists:
            terms[ids] = sc.term(vals.astype(np.float64), j)
            known[ids] = True
        acc = sc.accumulate(acc, terms)
        exact &= known
    keys = sc.keys(acc)
    from_index = int(exact.sum())
    cached, rows = ctx.cache.group(view, neurons)
    if len(cached):
        keys[cached] = sc(rows)
        exact[cached] = True
    return keys, exact, from_index


# -- the threshold walk ---------------------------------------------------------------------

def merge_best(best_keys: np.ndarray, best_ids: np.ndarray, keys: np.ndarray, ids: np.ndarray, k: int):
    keys = np.concatenate([best_keys, keys])
    ids = np.concatenate([best_ids, ids])
    order = np.lexsort((ids, -keys))[:k]
    return keys[order], ids[order]


def best_first(cand: np.ndarray, ub: np.ndarray, chunk: int = ORDER_CHUNK) -> Iterator[np.ndarray]:
    """`cand` in order of (bound desc, id asc), a chunk at a time (no full sort of n bounds)."""
    rest = cand
    while len(rest):
        if len(rest) > chunk:
            vals = ub[rest]
            edge = np.partition(vals, len(rest) - chunk)[len(rest) - chunk]
            head, rest = rest[vals >= edge], rest[vals < edge]
        else:
            head, rest = rest, rest[:0]
        yield head[np.lexsort((head, -ub[head]))]


def threshold_walk(ctx: QuerySession, view: str, neurons: np.ndarray, k: int, allowed: np.ndarray, sc: Scoring,
                   stats: QueryStats) -> tuple[np.ndarray, np.ndarray]:
    """The k inputs with the largest key (ties: smaller id), visiting best bounds first."""
    ub, exact, stats.inputs_exact_from_index = bounds(ctx, view, neurons, sc)
    plan = getattr(ctx, "walk_plan", None)
    stats.walk_plan = f"first batch {plan(view)}, then half of what was recomputed" if plan else ""
    ex = np.flatnonzero(exact & allowed)
    best_keys, best_ids = merge_best(np.empty(0), np.empty(0, np.int64), ub[ex], ex, k)
    steps = ctx.walk_steps(view)
    for chunk in best_first(np.flatnonzero(~exact & allowed), ub):
        neg = -ub[chunk]
        q = 0
        while q < len(chunk):
            limit = len(chunk)
            if len(best_keys) == k:   # only inputs whose bound beats the k-th best can still enter
                kth, kth_id = best_keys[-1], best_ids[-1]
                lo = int(np.searchsorted(neg, -kth, side="left"))
                hi = int(np.searchsorted(neg, -kth, side="right"))
                limit = lo + int(np.searchsorted(chunk[lo:hi], kth_id, side="left"))
                if limit <= q:
                    return best_keys, best_ids
            take = chunk[q:min(q + next(steps), limit)]
            X = ctx.fetch(view, take, stats)[:, neurons]
            best_keys, best_ids = merge_best(best_keys, best_ids, sc(X), take, k)
            q += len(take)
    return best_keys, best_ids


def scan(ctx: QuerySession, view: str, neurons: np.ndarray, k: int, allowed: np.ndarray,
         key_of: Callable[[np.ndarray], np.ndarray], stats: QueryStats,
         batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact answer by scoring every allowed input (used when bounds cannot prune)."""
    ids = np.flatnonzero(allowed)
    best_keys, best_ids = np.empty(0), np.empty(0, np.int64)
    for s in range(0, len(ids), batch):
        take = ids[s:s + batch]
        X = ctx.fetch(view, take, stats)[:, neurons]
        best_keys, best_ids = merge_best(best_keys, best_ids, key_of(X), take, k)
    return best_keys, best_ids


# -- the queries ------------------------------------------------------------------------------

def topk(ctx: QuerySession, view: str, neurons: np.ndarray, k: int, agg: Aggregation, lowest: bool,
         allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, QueryStats]:
    """Top-k (or bottom-k) inputs of a neuron group by a monotone aggregation."""
    t0 = time.perf_counter()
    stats = QueryStats(n=ctx.n)
    sc = agg.scoring(len(neurons), lowest)
    _, stored = ctx.store.summary(view)
    if agg.by == "l2" and np.nanmin(stored[neurons, :, 0]) < 0:
        stats.method, stats.reason = "scan", "l2 of a group with negative activations is not monotone"
        keys, ids = scan(ctx, view, neurons, k, allowed, sc, stats)
    else:
        keys, ids = threshold_walk(ctx, view, neurons, k, allowed, sc, stats)
    stats.seconds = time.perf_counter() - t0
    return ids, (-keys if lowest else keys), stats


def knn(ctx: QuerySession, view: str, neurons: np.ndarray, k: int, target: np.ndarray, metric: str,
        allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, QueryStats]:
    """The k inputs nearest to `target` (the group's activations, shape (g,)) by `metric`."""
    t0 = time.perf_counter()
    stats = QueryStats(n=ctx.n)
    if check_metric(metric) == "cosine":
        stats.method, stats.reason = "scan", f"{metric} distance does not decompose per neuron"
        keys, ids = scan(ctx, view, neurons, k, allowed, cosine_keys(target), stats)
    else:
        keys, ids = threshold_walk(ctx, view, neurons, k, allowed, knn_scoring(target, metric), stats)
    stats.seconds = time.perf_counter() - t0
    return ids, knn_distance(keys, metric), stats
