"""Per-neuron partitions and top lists: the arrays the index stores for each view.

For one neuron over n inputs:
- partitions by value: cut values at fixed rank fractions; partition j holds the inputs
  with ``cut[j] <= v < cut[j+1]``, so equal values always share a partition;
- ``members``: input ids sorted by (partition, id), stored as deltas (uint16 modulo 2**16
  while n <= 65536, else uint32),
  so each partition's ids are one contiguous slice and sorted runs compress to few bits;
- ``counts`` per partition and exact ``bounds`` (min, max) of each non-empty partition;
- top and bottom lists: the exact values and ids of the ``t`` highest and lowest
  inputs, ordered by (value, id) with ties broken by the smaller id.
"""
from __future__ import annotations

import numpy as np
import torch

SCHEMES = ("tails", "equi")


def cut_fractions(P: int, scheme: str = "tails") -> np.ndarray:
    """Cumulative rank fractions 0 = f[0] < ... < f[P] = 1 of the partition edges.

    ``equi``: equal-depth partitions. ``tails``: partition sizes grow geometrically from
    each tail to the middle (largest / smallest = 256), so the extremes, where top-k
    answers and most kNN targets live, are cut finest.
    """
    if P < 1:
        raise ValueError("partitions must be >= 1")
    if scheme == "equi" or P < 4:
        return np.linspace(0.0, 1.0, P + 1)
    if scheme != "tails":
        raise ValueError(f"unknown partition scheme {scheme!r}; use one of {SCHEMES}")
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


def partition_block(V: np.ndarray, fractions: np.ndarray, t: int) -> dict[str, np.ndarray]:
    """Index arrays for a block of neurons. `V`: (neurons, n) float32 activations.

    When many inputs share a row's minimum (a ReLU's zeros), that value gets a partition
    of its own and the other P-1 partitions split the remaining inputs by the scheme.
    """
    b, n = V.shape
    P = len(fractions) - 1
    S = np.sort(V, axis=1)
    part = np.empty((b, n), np.uint16 if P > 256 else np.uint8)
    counts = np.zeros((b, P), np.uint32)
    bounds = np.full((b, P, 2), np.nan, np.float32)
    cuts = np.empty((b, P - 1), np.float32)
    inner = fractions[1:-1]
    rest = _rescale(fractions, P - 1)
    for i in range(b):
        s = S[i]
        z = int(np.searchsorted(s, s[0], side="right"))
        if P > 2 and z < n and z >= max(2, fractions[1] * n):
            ranks = np.concatenate([[z], z + np.round(rest * (n - z))])
        else:
            ranks = np.round(inner * n)
        cut = s[np.clip(ranks.astype(np.int64), 0, n - 1)]
        starts = np.searchsorted(s, cut, side="left")
        lo_idx = np.concatenate([[0], starts])
        hi_idx = np.concatenate([starts, [n]])
        c = hi_idx - lo_idx
        counts[i] = c
        nz = c > 0
        bounds[i, nz, 0] = s[lo_idx[nz]]
        bounds[i, nz, 1] = s[hi_idx[nz] - 1]
        cuts[i] = cut
    if P <= 32:   # a few vectorised comparisons beat a binary search per value
        part[:] = 0
        for j in range(P - 1):
            part += V >= cuts[:, j:j + 1]
    else:
        part[:] = torch.searchsorted(torch.from_numpy(cuts), torch.from_numpy(V), right=True).numpy()
    members = np.argsort(part, axis=1, kind="stable")
    top_ids, top_vals = _extreme_lists(V, S, t, highest=True)
    bot_ids, bot_vals = _extreme_lists(V, S, t, highest=False)
    return {"members": encode_members(members), "counts": counts, "bounds": bounds,
            "top_ids": top_ids, "top_vals": top_vals, "bot_ids": bot_ids, "bot_vals": bot_vals}


def _rescale(fractions: np.ndarray, P: int) -> np.ndarray:
    """Inner cut fractions of the same scheme with P partitions."""
    scheme = "equi" if np.allclose(np.diff(fractions), 1.0 / (len(fractions) - 1)) else "tails"
    return cut_fractions(max(P, 1), scheme)[1:-1]


def _extreme_lists(V: np.ndarray, S: np.ndarray, t: int, highest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The t best ids per row by (value desc, id asc) (value asc for the lowest), and values.

    `S` is `V` sorted along rows; the t-th best value splits each row into the inputs
    strictly better (all kept) and ties (the smallest ids kept).
    """
    b, n = V.shape
    t = min(t, n)
    ids = np.zeros((b, t), np.uint32)
    vals = np.zeros((b, t), np.float32)
    if t == 0:
        return ids, vals
    edge = (S[:, n - t] if highest else S[:, t - 1])[:, None]
    better = V > edge if highest else V < edge
    rows_b, cols_b = np.nonzero(better)
    sb = np.searchsorted(rows_b, np.arange(b + 1))
    for i in range(b):
        inside = cols_b[sb[i]:sb[i + 1]]
        ties = _first_equal(V[i], edge[i, 0], t - len(inside))
        chosen = np.concatenate([inside, ties])
        v = V[i, chosen]
        order = np.lexsort((chosen, -v if highest else v))
        ids[i] = chosen[order]
        vals[i] = v[order]
    return ids, vals


def _first_equal(row: np.ndarray, value: float, count: int) -> np.ndarray:
    """The `count` smallest indices where `row == value`, scanning growing prefixes."""
    end = min(len(row), max(4 * count, 1024))
    while True:
        hits = np.flatnonzero(row[:end] == value)
        if len(hits) >= count or end == len(row):
            return hits[:count]
        end = min(len(row), end * 4)


def member_dtype(n: int) -> np.dtype:
    """uint16 deltas suffice (modulo 2**16) while every id fits 16 bits; else uint32."""
    return np.dtype(np.uint16 if n <= 1 << 16 else np.uint32)


def encode_members(members: np.ndarray) -> np.ndarray:
    """(rows, n) ids -> deltas along each row, wrapping modulo 2**16 or 2**32."""
    d = np.empty(members.shape, member_dtype(members.shape[1]))
    d[:, 0] = members[:, 0]
    np.subtract(members[:, 1:], members[:, :-1], out=d[:, 1:], casting="unsafe")
    return d


def decode_members(deltas: np.ndarray) -> np.ndarray:
    """Inverse of `encode_members`."""
    return np.cumsum(deltas, axis=-1, dtype=deltas.dtype)


def partition_of(members: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Partition id of every input, from one neuron's decoded members and counts."""
    p = np.empty(len(members), np.uint16 if len(counts) > 256 else np.uint8)
    p[members] = np.repeat(np.arange(len(counts), dtype=p.dtype), counts)
    return p
