"""A bounded (bytes) LRU cache of recomputed view activations, keyed by (view, input id)."""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class ActivationCache:
    """Rows of view activations; evicts the least recently used rows beyond `max_bytes`."""

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._rows: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._by_view: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def ids(self, view: str) -> np.ndarray:
        """Input ids cached for `view` (unordered)."""
        with self._lock:
            return np.fromiter(self._by_view.get(view, ()), dtype=np.int64)

    def get(self, view: str, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(mask of ids found, their rows in order); found rows become most recently used."""
        found = np.zeros(len(ids), bool)
        rows = []
        with self._lock:
            for j, i in enumerate(ids):
                row = self._rows.get((view, int(i)))
                if row is not None:
                    self._rows.move_to_end((view, int(i)))
                    found[j] = True
                    rows.append(row)
            self.hits += int(found.sum())
            self.misses += int(len(ids) - found.sum())
        return found, rows

    def put(self, view: str, ids: np.ndarray, rows: np.ndarray) -> None:
        """Store rows (len(ids), m) for `view`, evicting old rows to stay within budget."""
        if self.max_bytes <= 0:
            return
        with self._lock:
            for i, row in zip(ids, rows):
                key = (view, int(i))
                if key in self._rows:
                    continue
                row = np.array(row, copy=True)
                if row.nbytes > self.max_bytes:
                    return
                self._rows[key] = row
                self._by_view.setdefault(view, set()).add(int(i))
                self.bytes += row.nbytes
            while self.bytes > self.max_bytes and self._rows:
                (v, i), old = self._rows.popitem(last=False)
                self._by_view[v].discard(i)
                self.bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._by_view.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._rows)
