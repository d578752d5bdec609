"""The index file: one PyTables (HDF5) file holding every indexed view of a session.

Layout::

    /                       attrs: format_version, model_fingerprint, data_fingerprint, n
    /views/<key>            attrs: name, definition (JSON), shape, P, scheme, fractions,
                                   ratio, t, complete, build (JSON: seconds, settings...)
        pids     (m, n) uint8 (uint16 when P > 256)  partition id of every input; one chunk a neuron
        counts   (m, P) uint32   inputs per partition
        bounds   (m, P, 2) f32   exact min and max of each partition (NaN when empty)
        top_ids, top_vals, bot_ids, bot_vals  (m, t)   exact extreme lists

`pids` chunks are blosc zstd level 1 (bitshuffle for two-byte ids), compressed by the
build's workers and written (and read) as whole chunks, bypassing the HDF5 filter pipeline;
any HDF5 reader with the blosc filter reads them as ordinary arrays.

A build writes into a copy of the file and atomically renames it over the original when
every view is complete, so an interrupted build leaves the previous index untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import blosc
import numpy as np
import tables

from .errors import IndexFormatError, StaleIndexError, UnknownNameError
from .partition import partition_members, pid_dtype

FORMAT_VERSION = 2
HDF5_LOCK = threading.RLock()  # HDF5 is not thread-safe: every file access holds this
FLOAT_FILTERS = tables.Filters(complevel=1, complib="blosc:lz4", shuffle=True)
blosc.set_releasegil(True)     # compress and decompress on several threads at once


def int_filters(dtype: np.dtype) -> tables.Filters:
    """blosc zstd level 1; bitshuffle for multi-byte ints (one-byte ids compress best unshuffled)."""
    return tables.Filters(complevel=1, complib="blosc:zstd", shuffle=False, bitshuffle=np.dtype(dtype).itemsize > 1)


def compress_rows(rows: np.ndarray) -> list[bytes]:
    """Each row of a 2-d int array as one blosc chunk matching `int_filters` (any thread)."""
    size = rows.dtype.itemsize
    shuffle = blosc.BITSHUFFLE if size > 1 else blosc.NOSHUFFLE
    return [blosc.compress(np.ascontiguousarray(r).tobytes(), typesize=size, clevel=1, shuffle=shuffle, cname="zstd")
            for r in rows]


def read_chunk_rows(node: tables.Leaf, row: int) -> tuple[int, np.ndarray]:
    """(first row, rows) of the chunk holding `row` of a 2-d array chunked by whole rows, read
    as one raw chunk and decompressed here: about 10x faster than the HDF5 filter pipeline
    for a 50,000-wide row. Call it holding HDF5_LOCK; the rows are read-only."""
    R, width = node.chunkshape[0], node.shape[1]
    first = int(row) // R * R
    raw = node.read_chunk((first, 0))
    if node.chunk_info((first, 0)).filter_mask == 0 and node.filters.complib.startswith("blosc:"):
        raw = blosc.decompress(raw)
    block = np.frombuffer(raw, node.dtype, count=R * width).reshape(R, width)   # edge chunks are stored whole
    return first, block[:min(R, node.shape[0] - first)]


def read_row(node: tables.Leaf, row: int) -> np.ndarray:
    """Row `row` of a 2-d array chunked by whole rows (see `read_chunk_rows`)."""
    first, block = read_chunk_rows(node, row)
    return block[int(row) - first]


def view_key(name: str) -> str:
    """An HDF5-safe node name for a view name."""
    return "v_" + "".join(c if c.isalnum() else "_" for c in name) + "_" + format(zlib.crc32(name.encode()), "x")[:8]


@dataclass
class ViewInfo:
    """Metadata of one complete view in the index."""

    name: str
    key: str
    definition: dict
    shape: tuple
    n: int
    m: int
    P: int
    scheme: str
    ratio: float
    t: int
    build: dict
    bytes_on_disk: int
    list_rows: int = 1     # neurons a chunk of the top and bottom lists holds

    @property
    def full_bytes(self) -> int:
        """Size of the view fully materialised as float32."""
        return self.n * self.m * 4

    @property
    def size_ratio(self) -> float:
        return self.bytes_on_disk / max(self.full_bytes, 1)


class RowCache:
    """A bounded (bytes) LRU of decoded index rows, keyed by (view, neuron, what)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._rows: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], Any], nbytes: Callable[[Any], int]) -> Any:
        with self._lock:
            if key in self._rows:
                self._rows.move_to_end(key)
                return self._rows[key][0]
        value = load()
        size = nbytes(value)
        if size <= self.max_bytes:
            with self._lock:
                if key not in self._rows:
                    self._rows[key] = (value, size)
                    self.bytes += size
                while self.bytes > self.max_bytes:
                    _, (_, old) = self._rows.popitem(last=False)
                    self.bytes -= old
        return value

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self.bytes = 0


class IndexStore:
    """Read access to an index file, plus the atomic write path used by builds.

    Decoded rows (partition ids, extreme lists) are kept in a `RowCache` of `cache_bytes`,
    so queries over the same neurons do not decode them again.
    """

    def __init__(self, path: str | os.PathLike, model_fingerprint: str, data_fingerprint: str, n: int,
                 cache_bytes: int = 64 << 20):
        self.path = Path(path)
        self.model_fingerprint = model_fingerprint
        self.data_fingerprint = data_fingerprint
        self.n = n
        self._h: tables.File | None = None
        self.views: dict[str, ViewInfo] = {}
        self.rows = RowCache(cache_bytes)
        self._summary: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.refresh()

    # -- reading -------------------------------------------------------------------
    def refresh(self) -> None:
        """(Re)open the file and reload the catalogue of complete views."""
        with HDF5_LOCK:
            self.close()
            self.views, self._summary = {}, {}
            self.rows.clear()
            if not self.path.exists():
                return
            try:
                self._h = tables.open_file(str(self.path), "r")
            except Exception as e:  # HDF5 raises many types on a damaged file
                raise IndexFormatError(f"{self.path} is not a readable HDF5 index ({e}); delete it to rebuild") from e
            try:
                check_header(self._h, self.path, self.model_fingerprint, self.data_fingerprint, self.n)
                if "/views" in self._h:
                    for g in self._h.root.views._f_iter_nodes("Group"):
                        if bool(g._v_attrs["complete"]):
                            info = _view_info(g)
                            self.views[info.name] = info
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        with HDF5_LOCK:
            if self._h is not None and self._h.isopen:
                self._h.close()
            self._h = None

    def view(self, name: str) -> ViewInfo:
        if name not in self.views:
            raise UnknownNameError("indexed view", name, self.views)
        return self.views[name]

    def summary(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(counts (m, P), bounds (m, P, 2)) of a view, cached in memory."""
        if name not in self._summary:
            with HDF5_LOCK:
                g = self._group(name)
                self._summary[name] = (g.counts[:], g.bounds[:])
        return self._summary[name]

    def pids(self, name: str, neuron: int) -> np.ndarray:
        """Partition id of every input (n,) for one neuron (read-only)."""
        def load():
            with HDF5_LOCK:
                return read_row(self._group(name).pids, neuron)
        return self.rows.get((name, int(neuron), "pids"), load, lambda a: a.nbytes)

    def partition(self, name: str, neuron: int, j: int) -> np.ndarray:
        """Input ids (ascending) of partition `j` of one neuron."""
        return partition_members(self.pids(name, neuron), j)

    def extremes(self, name: str, neuron: int, highest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of a neuron's top (or bottom) list, best first."""
        side = "top" if highest else "bot"
        info = self.view(name)
        first = int(neuron) // info.list_rows * info.list_rows

        def load():
            with HDF5_LOCK:
                g = self._group(name)
                _, ids = read_chunk_rows(g._f_get_child(f"{side}_ids"), first)
                _, vals = read_chunk_rows(g._f_get_child(f"{side}_vals"), first)
            return ids[:, :info.t].astype(np.int64), np.ascontiguousarray(vals[:, :info.t])
        ids, vals = self.rows.get((name, first, side), load, lambda r: r[0].nbytes + r[1].nbytes)
        return ids[int(neuron) - first], vals[int(neuron) - first]

    def _group(self, name: str) -> tables.Group:
        if self._h is None or not self._h.isopen:
            self.refresh()
        return self._h.get_node("/views", self.view(name).key)

    # -- writing -------------------------------------------------------------------
    def writer(self) -> "IndexWriter":
        return IndexWriter(self)


def check_header(h: tables.File, path: Path, model_fp: str, data_fp: str, n: int) -> None:
    """Refuse files of another format, model or dataset, saying how to rebuild."""
    a = h.root._v_attrs
    if "format_version" not in a:
        raise IndexFormatError(f"{path} is not an everest index (no format_version); delete it or pick another path")
    if int(a["format_version"]) != FORMAT_VERSION:
        raise IndexFormatError(f"{path} has index format {a['format_version']}, this version reads {FORMAT_VERSION}; "
                               "rebuild it with Session(..., rebuild=True)")
    how = "rebuild it with Session(..., rebuild=True), or give another index path"
    if a["model_fingerprint"] != model_fp:
        raise StaleIndexError(f"{path} was built for a different model (weights hash {a['model_fingerprint']}, "
                              f"this model {model_fp}); {how}")
    if a["data_fingerprint"] != data_fp or int(a["n"]) != n:
        raise StaleIndexError(f"{path} was built for different data ({int(a['n'])} inputs, hash {a['data_fingerprint']}; "
                              f"this data: {n} inputs, hash {data_fp}); {how}")


def _view_info(g: tables.Group) -> ViewInfo:
    a = g._v_attrs
    size = sum(leaf.size_on_disk for leaf in g._f_iter_nodes("Leaf"))
    m, n = g.pids.shape
    return ViewInfo(name=str(a["name"]), key=g._v_name, definition=json.loads(a["definition"]),
                    shape=tuple(json.loads(a["shape"])), n=int(n), m=int(m), P=int(a["P"]), scheme=str(a["scheme"]),
                    ratio=float(a["ratio"]), t=int(a["t"]), build=json.loads(a["build"]), bytes_on_disk=int(size),
                    list_rows=int(g.top_ids.chunkshape[0]))


class IndexWriter:
    """Writes views into a temporary copy of the index; `commit()` renames it into place."""

    def __init__(self, store: IndexStore):
        self.store = store
        self.tmp = store.path.with_name(f"{store.path.name}.partial-{os.getpid()}-{threading.get_ident()}")
        with HDF5_LOCK:
            if store.path.exists():
                shutil.copyfile(store.path, self.tmp)
                self.h = tables.open_file(str(self.tmp), "a")
            else:
                store.path.parent.mkdir(parents=True, exist_ok=True)
                self.h = tables.open_file(str(self.tmp), "w", title="everest_magic index")
                a = self.h.root._v_attrs
                a["format_version"] = FORMAT_VERSION
                a["model_fingerprint"] = store.model_fingerprint
                a["data_fingerprint"] = store.data_fingerprint
                a["n"] = store.n
                a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            if "/views" not in self.h:
                self.h.create_group("/", "views")
        self._pending: dict[str, dict[str, list]] = {}

    def create_view(self, name: str, definition: dict, shape: tuple, m: int, n: int, P: int, scheme: str,
                    fractions: np.ndarray, ratio: float, t: int) -> tables.Group:
        """An empty, incomplete view group (replacing any view of the same name)."""
        with HDF5_LOCK:
            key = view_key(name)
            if key in self.h.root.views:
                self.h.remove_node(self.h.root.views, key, recursive=True)
            g = self.h.create_group(self.h.root.views, key)
            a = g._v_attrs
            a["name"], a["definition"], a["shape"] = name, json.dumps(definition), json.dumps(list(shape))
            a["P"], a["scheme"], a["fractions"], a["ratio"], a["t"] = P, scheme, fractions, ratio, t
            a["complete"], a["build"] = False, "{}"
            dtype = pid_dtype(P)
            self.h.create_carray(g, "pids", tables.Atom.from_dtype(dtype), (m, n), chunkshape=(1, n),
                                 filters=int_filters(dtype))
            self.h.create_carray(g, "counts", tables.UInt32Atom(), (m, P), filters=int_filters(np.uint32))
            self.h.create_carray(g, "bounds", tables.Float32Atom(), (m, P, 2), filters=FLOAT_FILTERS)
            tt = max(t, 1)
            rows = (min(m, max(1, 4096 // tt)), tt)   # ~16 KB chunks: few to write, cheap to read
            for side in ("top", "bot"):
                self.h.create_carray(g, f"{side}_ids", tables.UInt32Atom(), (m, tt), chunkshape=rows,
                                     filters=int_filters(np.uint32))
                self.h.create_carray(g, f"{side}_vals", tables.Float32Atom(), (m, tt), chunkshape=rows,
                                     filters=FLOAT_FILTERS)
            return g

    def write_rows(self, g: tables.Group, start: int, arrays: dict[str, Any]) -> None:
        """Write a block of neuron rows starting at neuron `start`: `arrays["pids"]` (the
        compressed chunks of `compress_rows`) now; the small arrays at `finish_view`, in one
        write each (partial HDF5 chunks would be rewritten once per block)."""
        pending = self._pending.setdefault(g._v_pathname, {})
        with HDF5_LOCK:
            for name, arr in arrays.items():
                if name == "pids":
                    node = g.pids
                    for i, chunk in enumerate(arr):
                        node.write_chunk((start + i, 0), chunk)
                elif arr.shape[-1]:
                    pending.setdefault(name, []).append((start, arr))

    def finish_view(self, g: tables.Group, build: dict) -> None:
        """Write the view's small arrays and mark it complete."""
        pending = self._pending.pop(g._v_pathname, {})
        with HDF5_LOCK:
            for name, parts in pending.items():
                node = g._f_get_child(name)
                parts.sort(key=lambda p: p[0])
                node[parts[0][0]:] = np.concatenate([a for _, a in parts])
            g._v_attrs["build"] = json.dumps(build)
            g._v_attrs["complete"] = True

    def commit(self) -> None:
        """Atomically replace the index with the written copy (on disk first), then reload it."""
        with HDF5_LOCK:
            self.h.flush()
            self.h.close()
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            self.store.close()
            os.replace(self.tmp, self.store.path)
            self.store.refresh()

    def abort(self) -> None:
        with HDF5_LOCK:
            if self.h.isopen:
                self.h.close()
            self.tmp.unlink(missing_ok=True)
