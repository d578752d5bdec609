"""The query mix: families of top-k, bottom-k and kNN queries, and a drill-down session.

A family is ``<kind>-g<group size>-<selection>``:

- selection ``top``: the group is the most activated neurons of a random input (ties: the
  smaller neuron id, as `Session.top_neurons`); for kNN that input is also the target;
- selection ``rand``: the group is drawn uniformly without replacement.

Every query is drawn from a generator seeded by (seed, view, family), so a run asks the
same questions every time. Groups are taken from the brute-force activations, so drawing
them does not touch (or warm) the engine's cache.
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from systems import K, QuerySpec, reference

FAMILIES = (
    "topk-g1-top", "topk-g1-rand", "topk-g3-top", "topk-g3-rand", "topk-g10-top", "topk-g10-rand",
    "bottomk-g3-top",
    "knn-g3-top", "knn-g10-top",
)
# bottom-k over random groups of ReLU units is dominated by exact ties at zero; it is
# measured separately (profile_engine.py), not in the timed mix: see docs/benchmarks.md


def parse_family(family: str) -> tuple[str, int, str]:
    kind, g, sel = family.split("-")
    return kind, int(g[1:]), sel


def most_activated_row(row: np.ndarray, g: int) -> np.ndarray:
    """The g largest entries of an activation row (ties: the smaller neuron id)."""
    return np.lexsort((np.arange(len(row)), -row))[:g].astype(np.int64)


def most_activated(A: np.ndarray, i: int, g: int) -> np.ndarray:
    return most_activated_row(A[i], g)


def draw(shape: tuple[int, int], row_of: Callable[[int], np.ndarray] | None, view: str, family: str, count: int,
         seed: int = 0) -> list[QuerySpec]:
    """`count` queries of one family over a view of `shape` (n, m).

    `row_of(i)` gives input i's activations (only "top" families call it), so the first
    queries of "rand" families can be drawn before the activations are known.
    """
    kind, g, sel = parse_family(family)
    rng = np.random.default_rng([seed, zlib.crc32(view.encode()), zlib.crc32(family.encode())])
    n, m = shape
    out = []
    for _ in range(count):
        target = int(rng.integers(n))
        if sel == "top":
            group = most_activated_row(row_of(target), g)
        else:
            group = np.sort(rng.choice(m, g, replace=False)).astype(np.int64)
        out.append(QuerySpec(kind, family, view, group, target if kind == "knn" else None, K))
    return out


def drilldown(A: np.ndarray, view: str, seed: int = 0) -> list[QuerySpec]:
    """Ten related queries, as a user clicking through galleries would ask them.

    Start from a random input t and its 10 most activated neurons G; follow its nearest
    neighbours, switch to a neighbour's own top neurons G2, narrow to G's first 3 neurons,
    and come back to t.
    """
    rng = np.random.default_rng([seed, zlib.crc32(view.encode()), 7])
    t = int(rng.integers(len(A)))
    G = most_activated(A, t, 10)
    qs: list[QuerySpec] = []

    def add(kind, group, target=None, label=""):
        q = QuerySpec(kind, label, view, np.asarray(group, np.int64), target, K)
        qs.append(q)
        return reference(q, A)[1]

    nn = add("knn", G, t, "1 knn(t, G)")
    top = add("topk", G, None, "2 topk(G)")
    a = int(nn[0])
    add("knn", G, a, "3 knn(nn1, G)")
    add("knn", G, int(nn[1]), "4 knn(nn2, G)")
    G2 = most_activated(A, a, 10)
    add("topk", G2, None, "5 topk(G2 = top neurons of nn1)")
    add("knn", G2, a, "6 knn(nn1, G2)")
    add("topk", G[:3], None, "7 topk(G[:3])")
    add("knn", G[:3], t, "8 knn(t, G[:3])")
    add("knn", G, int(top[0]), "9 knn(top1, G)")
    add("knn", G2, t, "10 knn(t, G2)")
    return qs
