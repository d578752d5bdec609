"""Per-neuron partitions and extreme lists: the arrays the index stores for each view.

For one neuron over n inputs:
- cut values ``c[1] <= ... <= c[P-1]`` at fixed rank fractions of the neuron's values on a
  random sample of the inputs (all of them when n is small); partition j holds the inputs with
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

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SCHEMES = ("tails", "equi")
SAMPLE = 8192   # cut values come from a sample of at most this many inputs
SORT_THREADS = max(1, min(8, os.cpu_count() or 1))   # threads sorting a sample's rows


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


def sample_ids(n: int, size: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """The inputs whose values place the cuts (sorted): all of them when n <= size."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False)).astype(np.int64)


def cut_values(S: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Cuts (rows, P-1) float32 of rows `S` (each a sorted sample of one neuron's values).

    Cuts sit at the scheme's rank fractions of the sample. Where at least `fractions[1]` of
    the sample (and two values) share the row's minimum (a ReLU's zeros), the first cut lies
    just above that minimum, so it gets partition 0 to itself, and the other cuts split the
    rest of the sample by the same scheme with P-1 partitions. A sample of one value gets
    partition 0; every value above it falls in the last partition.
    """
    b, ns = S.shape
    P = len(fractions) - 1
    if P < 2 or ns == 0:
        return np.zeros((b, max(P - 1, 0)), np.float32)
    idx = np.clip(np.round(fractions[1:-1] * ns).astype(np.int64), 0, ns - 1)
    cuts = np.ascontiguousarray(S[:, idx], dtype=np.float32)
    z = (S == S[:, :1]).sum(axis=1)                      # sample values equal to the row's min
    own = (P > 2) & (z < ns) & (z >= np.maximum(2, fractions[1] * ns))
    if own.any():
        rest = _rescale(fractions, P - 1)
        zo = z[own][:, None]
        ranks = np.clip(zo + np.round(rest[None, :] * (ns - zo)).astype(np.int64), zo, ns - 1)
        cuts[own, 0] = np.nextafter(S[own, 0], np.float32(np.inf), dtype=np.float32)
        cuts[own, 1:] = np.take_along_axis(S[own], ranks, axis=1)    # all > the min, so >= the first cut
    const = z == ns   # the whole sample is one value: it gets partition 0, anything above the last one
    cuts[const] = np.nextafter(S[const, :1], np.float32(np.inf), dtype=np.float32)
    return cuts


def _rescale(fractions: np.ndarray, P: int) -> np.ndarray:
    """Inner cut fractions of the same scheme with P partitions."""
    scheme = "equi" if np.allclose(np.diff(fractions), 1.0 / (len(fractions) - 1)) else "tails"
    return cut_fractions(max(P, 1), scheme)[1:-1]


def sorted_sample(acts: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Neurons start..stop of sample activations (S, m), as sorted rows (stop - start, S)."""
    from .kernels import transposed
    rows = transposed(np.ascontiguousarray(acts, np.float32), start, stop)
    parts = np.array_split(rows, min(SORT_THREADS, max(len(rows), 1)))
    with ThreadPoolExecutor(len(parts)) as pool:   # numpy's sort releases the GIL
        list(pool.map(lambda part: part.sort(axis=1), parts))
    return rows


def partition_members(pids: np.ndarray, j: int) -> np.ndarray:
    """Input ids (ascending) of partition `j`, from one neuron's partition ids."""
    return np.flatnonzero(pids == j)
