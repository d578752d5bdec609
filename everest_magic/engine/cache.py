"""A bounded (bytes) LRU cache of recomputed view activations, keyed by (view, input id).

Rows of one view live in fixed-size pages of a few MB (a slab), so a query reads the group's
columns of every cached row in a few fancy-indexing steps whatever the number of rows,
and the cache grows and shrinks a page at a time, never copying what it holds. (A per-key LRU
such as cachetools' would make reading a group's columns of every cached row a Python loop
over rows; the hypothesis cache uses cachetools.)
"""
from __future__ import annotations

import threading

import numpy as np

PAGE_BYTES = 4 << 20


class _Slab:
    """The cached rows of one view: pages of R rows; per slot its input id (-1: free) and
    the tick of its last use."""

    def __init__(self, m: int):
        self.m = m
        self.R = max(1, PAGE_BYTES // (4 * m))
        self.pages: list[np.ndarray | None] = []
        self.ids = np.empty(0, np.int64)
        self.tick = np.empty(0, np.int64)
        self.slot: dict[int, int] = {}
        self.free: list[int] = []

    def take_slot(self) -> int:
        if not self.free:
            k = next((i for i, p in enumerate(self.pages) if p is None), len(self.pages))
            if k == len(self.pages):
                self.pages.append(None)
                self.ids = np.concatenate([self.ids, np.full(self.R, -1, np.int64)])
                self.tick = np.concatenate([self.tick, np.zeros(self.R, np.int64)])
            self.pages[k] = np.empty((self.R, self.m), np.float32)
            self.free = list(range(k * self.R + self.R - 1, k * self.R - 1, -1))
        return self.free.pop()

    def set_row(self, s: int, row: np.ndarray) -> None:
        self.pages[s // self.R][s % self.R] = row

    def rows(self, slots: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """Rows of `slots` (in that order), all columns or only `cols`."""
        width = self.m if cols is None else len(cols)
        out = np.empty((len(slots), width), np.float32)
        page = slots // self.R
        for k in np.unique(page):
            at = np.flatnonzero(page == k)
            off = slots[at] % self.R
            out[at] = self.pages[k][off] if cols is None else self.pages[k][np.ix_(off, cols)]
        return out

    def drop(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            del self.slot[int(self.ids[s])]
            self.ids[s] = -1
            self.free.append(s)
        for k in np.unique(slots // self.R).tolist():   # give empty pages back
            if self.pages[k] is not None and not (self.ids[k * self.R:(k + 1) * self.R] >= 0).any():
                self.pages[k] = None
                gone = set(range(k * self.R, (k + 1) * self.R))
                self.free = [s for s in self.free if s not in gone]


class ActivationCache:
    """Rows of view activations; evicts the least recently used rows beyond `max_bytes`."""

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._slabs: dict[str, _Slab] = {}
        self._clock = 0
        self._lock = threading.Lock()

    def get(self, view: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(mask of ids found, their rows (found, m) in order, or None when none is cached)."""
        ids = np.asarray(ids, np.int64)
        with self._lock:
            slab = self._slabs.get(view)
            if slab is None or not slab.slot:
                self.misses += len(ids)
                return np.zeros(len(ids), bool), None
            slots = np.array([slab.slot.get(int(i), -1) for i in ids], np.int64)
            found = slots >= 0
            hit = int(found.sum())
            self.hits += hit
            self.misses += len(ids) - hit
            if not hit:
                return found, None
            self._clock += 1
            slab.tick[slots[found]] = self._clock
            return found, slab.rows(slots[found])

    def group(self, view: str, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows (len(ids), len(neurons))) of every cached input of `view`, group columns only."""
        with self._lock:
            slab = self._slabs.get(view)
            if slab is None or not slab.slot:
                return np.empty(0, np.int64), np.empty((0, len(neurons)), np.float32)
            slots = np.flatnonzero(slab.ids >= 0)
            return slab.ids[slots], slab.rows(slots, np.asarray(neurons, np.int64))

    def put(self, view: str, ids: np.ndarray, rows: np.ndarray) -> None:
        """Store rows (len(ids), m) for `view`, evicting old rows to stay within budget."""
        rows = np.asarray(rows, np.float32)
        if self.max_bytes <= 0 or not len(ids) or rows.shape[1] * 4 > self.max_bytes:
            return
        with self._lock:
            slab = self._slabs.get(view)
            if slab is not None and slab.m != rows.shape[1]:   # a view redefined under the same name
                self._drop_view(view)
                slab = None
            if slab is None:
                slab = self._slabs[view] = _Slab(rows.shape[1])
            row_bytes = 4 * slab.m
            new: dict[int, int] = {}
            for j, i in enumerate(np.asarray(ids, np.int64).tolist()):
                if i not in slab.slot:
                    new[i] = j
            items = list(new.items())[-max(1, self.max_bytes // row_bytes):]
            excess = self.bytes + row_bytes * len(items) - self.max_bytes
            if excess > 0:
                self._evict(excess)
            self._clock += 1
            for i, j in items:
                s = slab.take_slot()
                slab.set_row(s, rows[j])
                slab.ids[s] = i
                slab.tick[s] = self._clock
                slab.slot[i] = s
            self.bytes += row_bytes * len(items)

    def _evict(self, excess: int) -> None:
        """Drop the least recently used rows (of any view) until `excess` bytes are freed."""
        names = list(self._slabs)
        if not names:
            return
        owner, slots, ticks, size = [], [], [], []
        for v, name in enumerate(names):
            slab = self._slabs[name]
            live = np.flatnonzero(slab.ids >= 0)
            owner.append(np.full(len(live), v))
            slots.append(live)
            ticks.append(slab.tick[live])
            size.append(np.full(len(live), 4 * slab.m))
        owner, slots, size = np.concatenate(owner), np.concatenate(slots), np.concatenate(size)
        order = np.argsort(np.concatenate(ticks), kind="stable")
        count = int(np.searchsorted(np.cumsum(size[order]), excess)) + 1
        victims = order[:count]
        for v, name in enumerate(names):
            mine = slots[victims[owner[victims] == v]]
            if len(mine):
                self._slabs[name].drop(mine)
        self.bytes -= int(size[victims].sum())

    def _drop_view(self, view: str) -> None:
        slab = self._slabs.pop(view)
        self.bytes -= 4 * slab.m * len(slab.slot)

    def clear(self) -> None:
        with self._lock:
            self._slabs.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return sum(len(s.slot) for s in self._slabs.values())
