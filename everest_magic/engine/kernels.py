"""Numba kernels of the streaming build on CPU: one pass over a batch's activations gives
every value's partition id, each partition's exact count, min and max, and the exact top and
bottom lists (bounded heaps), with no Python per neuron or per value.

The id of a value is the number of cuts <= v (as `np.searchsorted(..., side="right")`) among
the neuron's cuts, padded with +inf to 255 entries (65,535 when P > 256). `accumulate` takes
the batch (B, m) a tile of TILE neurons at a time, transposed into a small buffer so that each
neuron's values are contiguous, and counts the cuts a value passes with a linear SIMD loop
(one compare and add per cut, 64 values a vector) when the neuron has at most LINEAR_CUTS
finite cuts, else with a branchless binary search. Heaps order inputs by (value, id) exactly
as the index's lists do: the top list by value descending then id ascending, the bottom list
by value ascending then id ascending; their roots are the worst entry kept.
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit, prange


def _start_threads_passive() -> None:
    """Start numba's thread pool with passive waiting. Its OpenMP runtime (the system
    libgomp, not the copy torch loaded) reads OMP_WAIT_POLICY once, when the pool starts;
    its threads otherwise spin after each parallel call and slow the model's forward pass
    running next on the same cores. Torch's own runtime is already loaded and unaffected.
    EVEREST_OMP_ACTIVE=1 in the environment leaves the pool's default (spinning) policy."""
    if os.environ.get("EVEREST_OMP_ACTIVE"):
        return
    from numba.np.ufunc import parallel
    old = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        parallel._launch_threads()
    finally:
        if old is None:
            del os.environ["OMP_WAIT_POLICY"]
        else:
            os.environ["OMP_WAIT_POLICY"] = old


_start_threads_passive()


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


TILE = 16          # neurons transposed at a time (one 64-byte line of a row of the batch)
LINEAR_CUTS = 64   # at most this many finite cuts: count them linearly (SIMD), else binary search


@njit(inline="always")
def _transpose(A, j0, w, X):
    """Columns j0 .. j0 + w of A (B, m) into the rows of X (TILE, B)."""
    for r in range(A.shape[0]):
        for q in range(w):
            X[q, r] = A[r, j0 + q]


@njit(inline="always")
def _tile(A, tile):
    """(j0, w, X, cnt, c8) of tile `tile` of A's (B, m) columns: its first neuron, its width,
    its columns transposed into X (TILE, B), and the partition-id scratch of `_ids_of`."""
    B, m = A.shape
    j0 = tile * TILE
    w = min(TILE, m - j0)
    X = np.empty((TILE, B), np.float32)
    _transpose(A, j0, w, X)
    return j0, w, X, np.empty(B, np.uint16), np.empty(B, np.uint8)


@njit(inline="always")
def _finite(x, B):
    ok = True
    for r in range(B):
        ok &= (x[r] - x[r]) == 0.0
    return ok


@njit(inline="always")
def _finite_cuts(cuts, j):
    """Cuts of neuron j below +inf (the padding and any +inf cut come last: cuts are sorted)."""
    lo, hi = 0, cuts.shape[1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if cuts[j, mid] < np.inf:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(inline="always")
def _ids_of(x, B, cuts, j, c, cnt, c8):
    """Partition ids of neuron j's values x[:B] into cnt[:B] (finite values; c finite cuts);
    c8 (B,) uint8 is scratch for the linear count (64 lanes a vector)."""
    if c <= LINEAR_CUTS:
        for r in range(B):
            c8[r] = 0
        for k in range(c):
            ck = cuts[j, k]
            for r in range(B):
                c8[r] += np.uint8(x[r] >= ck)
        for r in range(B):
            cnt[r] = c8[r]
    elif cuts.shape[1] > 255:
        for r in range(B):
            cnt[r] = _pid16(cuts, j, x[r])
    else:
        for r in range(B):
            cnt[r] = _pid8(cuts, j, x[r])


@njit(inline="always")
def _root(hv, hi, hn, j, t, top):
    """(value, id) of the root of neuron j's heap; a key every entry beats while it is not full."""
    if hn[j] < t:
        return (np.float32(-np.inf), 1 << 62) if top else (np.float32(np.inf), 1 << 62)
    return hv[j, 0], hi[j, 0]


@njit(inline="always")
def _offer_both(top_v, top_i, top_n, bot_v, bot_i, bot_n, j, t, v, i, tv, ti, bv, bi):
    """Offer (v, i) to neuron j's top and bottom heaps when it beats their roots (tv, ti) and
    (bv, bi); returns the roots after."""
    if v > tv or (v == tv and i < ti):
        _offer(top_v, top_i, top_n, j, v, i, True)
        tv, ti = _root(top_v, top_i, top_n, j, t, True)
    if v < bv or (v == bv and i < bi):
        _offer(bot_v, bot_i, bot_n, j, v, i, False)
        bv, bi = _root(bot_v, bot_i, bot_n, j, t, False)
    return tv, ti, bv, bi


@njit(inline="always")
def _fold_slow(x, B, ids, col0, cuts, j, pids, counts, lo, hi, top_v, top_i, top_n, bot_v, bot_i, bot_n, bad, t):
    """The fold of one neuron value by value (a batch with NaN or infinite values)."""
    wide = cuts.shape[1] > 255
    for r in range(B):
        pids[j, ids[r] - col0] = _pid16(cuts, j, x[r]) if wide else _pid8(cuts, j, x[r])
    tv, ti = np.float32(np.inf), -1          # no entry enters a list while its root is (inf, -1)
    bv, bi = np.float32(-np.inf), -1
    if t > 0:
        tv, ti = _root(top_v, top_i, top_n, j, t, True)
        bv, bi = _root(bot_v, bot_i, bot_n, j, t, False)
    for r in range(B):
        v = x[r]
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
        tv, ti, bv, bi = _offer_both(top_v, top_i, top_n, bot_v, bot_i, bot_n, j, t, v, i, tv, ti, bv, bi)


@njit(nogil=True, parallel=True, cache=True)
def accumulate(A, ids, col0, cuts, pids, counts, lo, hi, top_v, top_i, top_n, bot_v, bot_i, bot_n, bad):
    """Fold a batch into a view's build state.

    A (B, m) float32 activations of inputs `ids` (B,); their partition ids go to columns
    ``ids - col0`` of `pids` (m, C). counts/lo/hi (m, P); heaps (m, t) with fill counts (m,).
    A NaN or infinite value sets `bad[j]` and is otherwise ignored (the build then fails).

    Per tile of TILE neurons: the tile's columns of A are copied into a (TILE, B) buffer; per
    neuron, the ids (`_ids_of`), then one branch-light loop over the values: counts into four
    interleaved histograms, min and max of the value's partition, and the values that may
    enter a heap (compared with the heaps' roots at the start; roots only get stricter) are
    noted; only those are then offered, in input order, exactly as a value-by-value fold would.
    """
    B, m = A.shape
    t = top_v.shape[1]
    P = counts.shape[1]
    H = P if P <= 256 else 0           # interleaved histograms when P is small
    idmin = ids[0] if B > 0 else 0
    for r in range(B):
        idmin = min(idmin, ids[r])
    for tile in prange((m + TILE - 1) // TILE):
        j0, w, X, cnt, c8 = _tile(A, tile)
        cand = np.empty(B, np.int64)
        hist = np.empty(4 * H, np.int64)
        for q in range(w):
            j = j0 + q
            x = X[q]
            finite = _finite(x, B)
            if not finite:
                _fold_slow(x, B, ids, col0, cuts, j, pids, counts, lo, hi, top_v, top_i, top_n,
                           bot_v, bot_i, bot_n, bad, t)
                continue
            _ids_of(x, B, cuts, j, _finite_cuts(cuts, j), cnt, c8)
            for r in range(B):
                pids[j, ids[r] - col0] = cnt[r]
            tv, ti = np.float32(np.inf), -1
            bv, bi = np.float32(-np.inf), -1
            if t > 0:
                tv, ti = _root(top_v, top_i, top_n, j, t, True)
                bv, bi = _root(bot_v, bot_i, bot_n, j, t, False)
            # a value equal to a root enters only with a smaller id than the root's
            tt = tv if ti > idmin else np.nextafter(tv, np.float32(np.inf))
            bt = bv if bi > idmin else np.nextafter(bv, np.float32(-np.inf))
            nc = 0
            if H > 0:
                for k in range(4 * H):
                    hist[k] = 0
            for r in range(B):
                v = x[r]
                p = np.int64(cnt[r])
                if H > 0:
                    hist[(r & 3) * H + p] += 1
                else:
                    counts[j, p] += 1
                if v < lo[j, p]:
                    lo[j, p] = v
                if v > hi[j, p]:
                    hi[j, p] = v
                if v >= tt or v <= bt:
                    cand[nc] = r
                    nc += 1
            if H > 0:
                for p in range(P):
                    counts[j, p] += hist[p] + hist[H + p] + hist[2 * H + p] + hist[3 * H + p]
            for k in range(nc):
                r = cand[k]
                v = x[r]
                i = ids[r]
                tv, ti, bv, bi = _offer_both(top_v, top_i, top_n, bot_v, bot_i, bot_n, j, t, v, i, tv, ti, bv, bi)


@njit(nogil=True, parallel=True, cache=True)
def partition_ids(A, cuts, out):
    """Partition ids (m, B) of activations A (B, m) (no statistics: used to size the index)."""
    B, m = A.shape
    wide = cuts.shape[1] > 255
    for tile in prange((m + TILE - 1) // TILE):
        j0, w, X, cnt, c8 = _tile(A, tile)
        for q in range(w):
            j = j0 + q
            x = X[q]
            finite = _finite(x, B)
            if finite:
                _ids_of(x, B, cuts, j, _finite_cuts(cuts, j), cnt, c8)
                for r in range(B):
                    out[j, r] = cnt[r]
            else:
                for r in range(B):
                    out[j, r] = _pid16(cuts, j, x[r]) if wide else _pid8(cuts, j, x[r])


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



@njit(nogil=True, parallel=True, cache=True)
def transposed(A, start, stop):
    """Columns start..stop of A (S, m) as contiguous rows (stop - start, S), a tile of TILE
    columns at a time (several times faster than numpy's strided copy of a wide A)."""
    out = np.empty((stop - start, A.shape[0]), A.dtype)
    for tile in prange((stop - start + TILE - 1) // TILE):
        j0 = start + tile * TILE
        _transpose(A, j0, min(TILE, stop - j0), out[j0 - start:])
    return out
