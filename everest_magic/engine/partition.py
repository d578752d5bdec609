"""Per-neuron partitions and extreme lists: the arrays the index stores for each view.

For one neuron over n inputs:
- cut values ``c[1] <= ... <= c[P-1]`` at fixed rank fractions of the neuron's values (of a
  fixed sample of the inputs when n is large); partition j holds the inputs with
  ``c[j] <= v < c[j+1]``, so equal values always share a partition;
- ``pids``: the partition id of every input, one byte each (two when P > 256);
- ``counts`` per partition and exact ``bounds`` (min, max) of each non-empty partition,
  computed over all inputs: they are exact whatever the cuts are;
- top and bottom lists: the exact values and ids of the ``t`` highest and lowest inputs,
  ordered by (value, id) with ties broken by the smaller id.

When many inputs share the row's minimum (a ReLU's zeros), that value gets partition 0 to
itself and the other P-1 partitions split the remaining inputs by the scheme; a partition
whose min equals its max is "single-valued" and tells its inputs' values exactly.
"""
from __future__ import annotations

import numpy as np

SCHEMES = ("tails", "equi")
SAMPLE = 8192   # cut values come from this many inputs when n > 2 * SAMPLE


def cut_fractions(P: int, scheme: str = "tails") -> np.ndarray:
    """Cumulative rank fractions 0 = f[0] < ... < f[P] = 1 of the partition edges.

    ``equi``: equal-depth partitions. ``tails``: partition sizes grow geometrically from
    each tail to the middle (largest / smallest = 256), so the extremes, where top-k
    answers and most kNN targets live, are cut finest.
    """
    if P < 1:
        raise ValueError("partitions must be >= 1")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; use one of {SCHEMES}")
    if scheme == "equi" or P < 4:
        return np.linspace(0.0, 1.0, P + 1)
    h = P // 2
    q = 256.0 ** (1.0 / (h - 1))
    half = q ** np.arange(h)            # sizes from the tail inward
    half = 0.5 * half / half.sum()
    sizes = np.concatenate([half, half[::-1]]) if P % 2 == 0 else np.concatenate([half, [0.0], half[::-1]])
    if P % 2:
        sizes[h] = 1.0 / P
        sizes /= sizes.sum()
    f = np.concatenate([[0.0], np.cumsum(sizes)])
    f[-1] = 1.0
    return f


def pid_dtype(P: int) -> np.dtype:
    """One byte per partition id up to 256 partitions, else two."""
    return np.dtype(np.uint8 if P <= 256 else np.uint16)


def sample_ids(n: int, seed: int = 0) -> np.ndarray | None:
    """The inputs whose values place the cuts (sorted), or None to use all of them."""
    if n <= 2 * SAMPLE:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, SAMPLE, replace=False))


def cut_values(S: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cuts (rows, P-1) float32, own_min (rows,) bool) of rows `S` (sorted ascending).

    Every cut is a value of its row, except where `own_min`: there the first cut lies just
    above the row's minimum, which gets partition 0 to itself.
    """
    b, ns = S.shape
    P = len(fractions) - 1
    cuts = np.empty((b, max(P - 1, 0)), np.float32)
    own_min = np.zeros(b, bool)
    if P < 2:
        return cuts, own_min
    inner = fractions[1:-1]
    rest = _rescale(fractions, P - 1)
    for i in range(b):
        s = S[i]
        z = int(np.searchsorted(s, s[0], side="right"))
        if P > 2 and z < ns and z >= max(2, fractions[1] * ns):
            first = np.nextafter(s[0], np.float32(np.inf), dtype=np.float32)
            ranks = z + np.round(rest * (ns - z)).astype(np.int64)
            cuts[i, 0] = first
            cuts[i, 1:] = s[np.clip(ranks, z, ns - 1)]      # all > s[0], so >= first
            own_min[i] = True
        else:
            cuts[i] = s[np.clip(np.round(inner * ns).astype(np.int64), 0, ns - 1)]
    return cuts, own_min


def _rescale(fractions: np.ndarray, P: int) -> np.ndarray:
    """Inner cut fractions of the same scheme with P partitions."""
    scheme = "equi" if np.allclose(np.diff(fractions), 1.0 / (len(fractions) - 1)) else "tails"
    return cut_fractions(max(P, 1), scheme)[1:-1]


def partition_ids(V: np.ndarray, cuts: np.ndarray, out: np.ndarray) -> None:
    """Partition id of every value of a few rows (the number of cuts <= v) into `out`."""
    if cuts.shape[1] <= 48:   # whole-block comparisons: few, long numpy calls (threads scale)
        out[:] = 0
        for j in range(cuts.shape[1]):
            out += V >= cuts[:, j:j + 1]
        return
    for i in range(len(V)):
        out[i] = np.searchsorted(cuts[i], V[i], side="right")


def partition_block(V: np.ndarray, fractions: np.ndarray, t: int,
                    sample: np.ndarray | None = None, rows: int = 16) -> dict[str, np.ndarray]:
    """Index arrays for a block of neurons. `V`: (neurons, n) float32, finite.

    `sample`: the input ids whose values place the cuts (None: all inputs). The work runs
    `rows` neurons at a time, in long numpy calls that release the GIL.
    """
    b, n = V.shape
    P = len(fractions) - 1
    S = np.sort(V if sample is None else V[:, sample], axis=1)
    cuts, own_min = cut_values(S, fractions)
    pids = np.empty((b, n), pid_dtype(P))
    counts = np.zeros((b, P), np.uint32)
    hi = np.full((b, P), -np.inf, np.float32)
    for s in range(0, b, rows):
        e = min(b, s + rows)
        partition_ids(V[s:e], cuts[s:e], pids[s:e])
        flat = (pids[s:e] + (P * np.arange(e - s))[:, None]).ravel()   # (row, partition) as one index
        counts[s:e] = np.bincount(flat, minlength=(e - s) * P).reshape(e - s, P)
        np.maximum.at(hi[s:e].reshape(-1), flat, V[s:e].reshape(-1))
    # a partition's min is its lower cut (a value of the row that falls in it), partition 0's
    # the row's min; after an own-min cut, partition 1's min is the row's least value above it
    lo = np.empty((b, P), np.float32)
    lo[:, 0] = V.min(axis=1)
    lo[:, 1:] = cuts
    if own_min.any():
        W = V[own_min]
        lo[own_min, 1] = np.min(W, axis=1, where=W >= cuts[own_min, :1], initial=np.inf)
    bounds = np.stack([lo, hi], axis=-1)
    bounds[counts == 0] = np.nan
    t = min(t, n)
    lists = {name: np.zeros((b, t), dt) for name, dt in
             (("top_ids", np.uint32), ("top_vals", np.float32), ("bot_ids", np.uint32), ("bot_vals", np.float32))}
    if t:
        for i in range(b):
            args = (V[i], pids[i], counts[i], lo[i], hi[i], t)
            lists["top_ids"][i], lists["top_vals"][i] = extreme_list(*args, highest=True)
            lists["bot_ids"][i], lists["bot_vals"][i] = extreme_list(*args, highest=False)
    return {"pids": pids, "counts": counts, "bounds": bounds, **lists}


def extreme_list(v: np.ndarray, p: np.ndarray, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: int,
                 highest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The t best inputs of one row by (value desc, id asc) (value asc with `highest=False`).

    Only the partitions at that end holding at least t inputs are looked at.
    """
    P = len(counts)
    order = range(P - 1, -1, -1) if highest else range(P)
    total, edge = 0, 0
    for j in order:
        total += int(counts[j])
        edge = j
        if total >= t:
            break
    if not highest and edge == 0 and lo[0] == hi[0]:   # one value (a ReLU's zeros): the smallest ids
        ids = np.flatnonzero(p == 0)[:t]
        return ids.astype(np.uint32), np.full(t, lo[0], np.float32)
    cand = np.flatnonzero(p >= edge) if highest else np.flatnonzero(p <= edge)
    vals = v[cand]
    best = np.argsort(-vals if highest else vals, kind="stable")[:t]   # stable: ties keep id order
    return cand[best].astype(np.uint32), vals[best]


def partition_members(pids: np.ndarray, j: int) -> np.ndarray:
    """Input ids (ascending) of partition `j`, from one neuron's partition ids."""
    return np.flatnonzero(pids == j)
