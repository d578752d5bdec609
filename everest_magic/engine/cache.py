"""A bounded (bytes) LRU cache of recomputed view activations, keyed by (view, input id).

Rows of one view live in one growing array (a slab), so a query reads the group's columns
of every cached row in one fancy-indexing step, whatever the number of rows.
"""
from __future__ import annotations

import threading

import numpy as np


class _Slab:
    """The cached rows of one view: rows (capacity, m), the input id of each slot (-1: free)."""

    def __init__(self, m: int):
        self.m = m
        self.rows = np.empty((0, m), np.float32)
        self.ids = np.empty(0, np.int64)
        self.tick = np.empty(0, np.int64)
        self.slot: dict[int, int] = {}
        self.free: list[int] = []

    def take_slot(self, max_rows: int) -> int:
        if not self.free:
            old = len(self.ids)
            self.resize(max(old + 1, min(max(16, 2 * old), max_rows)))
        return self.free.pop()

    def resize(self, cap: int) -> None:
        """Keep the live rows in a slab of `cap` slots (cap >= live rows)."""
        live = np.flatnonzero(self.ids >= 0)
        rows = np.empty((cap, self.m), np.float32)
        rows[:len(live)] = self.rows[live]
        ids = np.full(cap, -1, np.int64)
        ids[:len(live)] = self.ids[live]
        tick = np.zeros(cap, np.int64)
        tick[:len(live)] = self.tick[live]
        self.rows, self.ids, self.tick = rows, ids, tick
        self.slot = {int(i): s for s, i in enumerate(ids[:len(live)].tolist())}
        self.free = list(range(cap - 1, len(live) - 1, -1))

    def drop(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            del self.slot[int(self.ids[s])]
            self.ids[s] = -1
            self.free.append(s)
        if len(self.ids) > 64 and len(self.slot) < len(self.ids) // 4:   # give mostly empty slabs back
            self.resize(max(16, 2 * len(self.slot)))


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
            return found, slab.rows[slots[found]]

    def group(self, view: str, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows (len(ids), len(neurons))) of every cached input of `view`, group columns only."""
        with self._lock:
            slab = self._slabs.get(view)
            if slab is None or not slab.slot:
                return np.empty(0, np.int64), np.empty((0, len(neurons)), np.float32)
            slots = np.flatnonzero(slab.ids >= 0)
            return slab.ids[slots], slab.rows[np.ix_(slots, np.asarray(neurons, np.int64))]

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
            max_rows = max(1, self.max_bytes // row_bytes)
            new: dict[int, int] = {}
            for j, i in enumerate(np.asarray(ids, np.int64).tolist()):
                if i not in slab.slot:
                    new[i] = j
            items = list(new.items())[-max_rows:]
            excess = self.bytes + row_bytes * len(items) - self.max_bytes
            if excess > 0:
                self._evict(excess)
            self._clock += 1
            for i, j in items:
                s = slab.take_slot(max_rows)
                slab.rows[s] = rows[j]
                slab.ids[s] = i
                slab.tick[s] = self._clock
                slab.slot[i] = s
            self.bytes += row_bytes * len(items)

    def _evict(self, excess: int) -> None:
        """Drop the least recently used rows (of any view) until `excess` bytes are freed."""
        names = list(self._slabs)
        owner, slots, ticks, size = [], [], [], []
        for v, name in enumerate(names):
            slab = self._slabs[name]
            live = np.flatnonzero(slab.ids >= 0)
            owner.append(np.full(len(live), v))
            slots.append(live)
            ticks.append(slab.tick[live])
            size.append(np.full(len(live), 4 * slab.m))
        if not names:
            return
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
