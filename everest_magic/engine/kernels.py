"""Numba kernels of the streaming build on CPU: one pass over a batch's activations gives
every value's partition id, each partition's exact count, min and max, and the exact top and
bottom lists (bounded heaps), with no Python per neuron or per value.

Partition ids come from a branchless binary search over each neuron's cuts, padded with +inf
to 255 entries (65,535 when P > 256): the id is the number of cuts <= v (as
`np.searchsorted(..., side="right")`). Heaps order inputs by (value, id) exactly as the index's lists do: the top
list by value descending then id ascending, the bottom list by value ascending then id
ascending; their roots are the worst entry kept.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

@njit(inline="always")
def _pid8(cuts, j, v):
    """Number of cuts <= v among neuron j's 255 padded cuts (P <= 256)."""
    p = 0
    p += 128 * (cuts[j, p + 127] <= v)
    p += 64 * (cuts[j, p + 63] <= v)
    p += 32 * (cuts[j, p + 31] <= v)
    p += 16 * (cuts[j, p + 15] <= v)
    p += 8 * (cuts[j, p + 7] <= v)
    p += 4 * (cuts[j, p + 3] <= v)
    p += 2 * (cuts[j, p + 1] <= v)
    p += 1 * (cuts[j, p] <= v)
    return p


@njit(inline="always")
def _pid16(cuts, j, v):
    """Number of cuts <= v among neuron j's 65,535 padded cuts (P <= 65,536)."""
    p = 0
    step = 32768
    while step > 0:
        p += step * (cuts[j, p + step - 1] <= v)
        step >>= 1
    return p


@njit(inline="always")
def _worse(va, ia, vb, ib, top):
    """Is (va, ia) worse than (vb, ib) for the top list (or the bottom list)?"""
    if va != vb:
        return va < vb if top else va > vb
    return ia > ib


@njit(inline="always")
def _offer(hv, hi, hn, j, v, i, top):
    """Keep (v, i) in neuron j's heap of the best t entries (root: the worst kept)."""
    t = hv.shape[1]
    n = hn[j]
    if n < t:   # not full: sift up
        c = n
        hn[j] = n + 1
        while c > 0:
            parent = (c - 1) >> 1
            if _worse(hv[j, parent], hi[j, parent], v, i, top):
                break
            hv[j, c] = hv[j, parent]
            hi[j, c] = hi[j, parent]
            c = parent
        hv[j, c] = v
        hi[j, c] = i
        return
    if not _worse(hv[j, 0], hi[j, 0], v, i, top):
        return
    c = 0   # replace the root: sift down
    while True:
        left = 2 * c + 1
        if left >= t:
            break
        w = left
        right = left + 1
        if right < t and _worse(hv[j, right], hi[j, right], hv[j, left], hi[j, left], top):
            w = right
        if not _worse(hv[j, w], hi[j, w], v, i, top):
            break
        hv[j, c] = hv[j, w]
        hi[j, c] = hi[j, w]
        c = w
    hv[j, c] = v
    hi[j, c] = i


@njit(nogil=True, parallel=True, cache=True)
def accumulate(A, ids, col0, cuts, pids, counts, lo, hi, top_v, top_i, top_n, bot_v, bot_i, bot_n, bad):
    """Fold a batch into a view's build state.

    A (B, m) float32 activations of inputs `ids` (B,); their partition ids go to columns
    ``ids - col0`` of `pids` (m, C). counts/lo/hi (m, P); heaps (m, t) with fill counts (m,).
    A NaN or infinite value sets `bad[j]` and is otherwise ignored (the build then fails).
    Per neuron, the ids come first in a tight loop (independent searches overlap in the CPU),
    then the statistics; the heaps' roots are kept in registers.
    """
    B, m = A.shape
    t = top_v.shape[1]
    wide = cuts.shape[1] > 255
    for j in prange(m):
        if wide:
            for r in range(B):
                pids[j, ids[r] - col0] = _pid16(cuts, j, A[r, j])
        else:
            for r in range(B):
                pids[j, ids[r] - col0] = _pid8(cuts, j, A[r, j])
        tv, ti = np.inf, -1          # no entry enters a list while its root is (inf, -1)
        bv, bi = -np.inf, -1
        if t > 0:
            tv, ti = (-np.inf, 1 << 62) if top_n[j] < t else (top_v[j, 0], top_i[j, 0])
            bv, bi = (np.inf, 1 << 62) if bot_n[j] < t else (bot_v[j, 0], bot_i[j, 0])
        for r in range(B):
            v = A[r, j]
            if not (v - v == 0.0):
                bad[j] = True
                continue
            i = ids[r]
            p = pids[j, i - col0]
            counts[j, p] += 1
            if v < lo[j, p]:
                lo[j, p] = v
            if v > hi[j, p]:
                hi[j, p] = v
            if v > tv or (v == tv and i < ti):
                _offer(top_v, top_i, top_n, j, v, i, True)
                tv, ti = (-np.inf, 1 << 62) if top_n[j] < t else (top_v[j, 0], top_i[j, 0])
            if v < bv or (v == bv and i < bi):
                _offer(bot_v, bot_i, bot_n, j, v, i, False)
                bv, bi = (np.inf, 1 << 62) if bot_n[j] < t else (bot_v[j, 0], bot_i[j, 0])


@njit(nogil=True, parallel=True, cache=True)
def partition_ids(A, cuts, out):
    """Partition ids (m, B) of activations A (B, m) (no statistics: used to size the index)."""
    B, m = A.shape
    wide = cuts.shape[1] > 255
    for j in prange(m):
        for r in range(B):
            out[j, r] = _pid16(cuts, j, A[r, j]) if wide else _pid8(cuts, j, A[r, j])


def padded_cuts(cuts: np.ndarray) -> np.ndarray:
    """Cuts (m, P-1) padded with +inf to 255 columns (65,535 when P > 256) for the kernels."""
    m, c = cuts.shape
    out = np.full((m, 255 if c <= 255 else 65535), np.inf, np.float32)
    out[:, :c] = cuts
    return out


@njit(nogil=True, cache=True)
def fletcher32(data):
    """HDF5's Fletcher-32 checksum of a byte array (as its fletcher32 filter computes it), so
    that chunks written directly carry the checksum HDF5 verifies on every read."""
    n = len(data) // 2
    s1 = np.uint32(0)
    s2 = np.uint32(0)
    i = 0
    while n:
        tl = 360 if n > 360 else n
        n -= tl
        for _ in range(tl):
            s1 += (np.uint32(data[i]) << np.uint32(8)) | np.uint32(data[i + 1])
            i += 2
            s2 += s1
        s1 = (s1 & np.uint32(0xffff)) + (s1 >> np.uint32(16))
        s2 = (s2 & np.uint32(0xffff)) + (s2 >> np.uint32(16))
    if len(data) % 2:
        s1 += np.uint32(data[i]) << np.uint32(8)
        s2 += s1
        s1 = (s1 & np.uint32(0xffff)) + (s1 >> np.uint32(16))
        s2 = (s2 & np.uint32(0xffff)) + (s2 >> np.uint32(16))
    s1 = (s1 & np.uint32(0xffff)) + (s1 >> np.uint32(16))
    s2 = (s2 & np.uint32(0xffff)) + (s2 >> np.uint32(16))
    return (s2 << np.uint32(16)) | s1
