"""The index file: one PyTables (HDF5) file holding every indexed view of a session.

Layout::

    /                       attrs: format_version, model_fingerprint, data_fingerprint, n
    /views/<key>            attrs: name, definition (JSON), shape, P, scheme, fractions,
                                   ratio, t, complete, build (JSON: seconds, settings...)
        members  (m, n) uint16/32  ids sorted by (partition, id), delta-coded; one chunk a neuron
        counts   (m, P) uint32   inputs per partition
        bounds   (m, P, 2) f32   exact min and max of each partition (NaN when empty)
        top_ids, top_vals, bot_ids, bot_vals  (m, t)   exact extreme lists

A build writes into a copy of the file and atomically renames it over the original when
every view is complete, so an interrupted build leaves the previous index untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tables

from .errors import IndexFormatError, StaleIndexError, UnknownNameError
from .partition import decode_members, member_dtype

FORMAT_VERSION = 1
HDF5_LOCK = threading.RLock()  # HDF5 is not thread-safe: every file access holds this
INT_FILTERS = tables.Filters(complevel=1, complib="blosc:zstd", shuffle=False, bitshuffle=True)
FLOAT_FILTERS = tables.Filters(complevel=1, complib="blosc:lz4", shuffle=True)


def view_key(name: str) -> str:
    """An HDF5-safe node name for a view name."""
    return "v_" + "".join(c if c.isalnum() else "_" for c in name) + "_" + format(abs(hash_str(name)), "x")[:8]


def hash_str(s: str) -> int:
    import zlib
    return zlib.crc32(s.encode())


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

    @property
    def full_bytes(self) -> int:
        """Size of the view fully materialised as float32."""
        return self.n * self.m * 4

    @property
    def size_ratio(self) -> float:
        return self.bytes_on_disk / max(self.full_bytes, 1)


class IndexStore:
    """Read access to an index file, plus the atomic write path used by builds."""

    def __init__(self, path: str | os.PathLike, model_fingerprint: str, data_fingerprint: str, n: int):
        self.path = Path(path)
        self.model_fingerprint = model_fingerprint
        self.data_fingerprint = data_fingerprint
        self.n = n
        self._h: tables.File | None = None
        self.views: dict[str, ViewInfo] = {}
        self._rows: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._summary: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.refresh()

    # -- reading -------------------------------------------------------------------
    def refresh(self) -> None:
        """(Re)open the file and reload the catalogue of complete views."""
        with HDF5_LOCK:
            self.close()
            self.views, self._rows, self._summary = {}, {}, {}
            if not self.path.exists():
                return
            try:
                self._h = tables.open_file(str(self.path), "r")
            except Exception as e:  # HDF5 raises many types on a damaged file
                raise IndexFormatError(f"{self.path} is not a readable HDF5 index ({e}); delete it to rebuild") from e
            try:
                check_header(self._h, self.path, self.model_fingerprint, self.data_fingerprint, self.n)
            except Exception:
                self.close()
                raise
            if "/views" in self._h:
                for g in self._h.root.views._f_iter_nodes("Group"):
                    if bool(g._v_attrs["complete"]):
                        info = _view_info(g)
                        self.views[info.name] = info

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

    def members(self, name: str, neuron: int) -> np.ndarray:
        """Input ids of one neuron sorted by (partition, id)."""
        with HDF5_LOCK:
            return decode_members(self._group(name).members[int(neuron)])

    def partition(self, name: str, neuron: int, j: int) -> np.ndarray:
        """Input ids (ascending) of partition `j` of one neuron: a slice, no scan."""
        counts, _ = self.summary(name)
        off = np.concatenate([[0], np.cumsum(counts[neuron], dtype=np.int64)])
        return self.members(name, neuron)[off[j]:off[j + 1]]

    def extremes(self, name: str, neuron: int, highest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of a neuron's top (or bottom) list, best first."""
        key = (name, int(neuron) * 2 + (0 if highest else 1))
        if key not in self._rows:
            with HDF5_LOCK:
                g = self._group(name)
                ids = (g.top_ids if highest else g.bot_ids)[int(neuron)]
                vals = (g.top_vals if highest else g.bot_vals)[int(neuron)]
            t = self.view(name).t
            self._rows[key] = (ids[:t].astype(np.int64), vals[:t])
        return self._rows[key]

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
    return ViewInfo(name=str(a["name"]), key=g._v_name, definition=json.loads(a["definition"]), shape=tuple(json.loads(a["shape"])),
                    n=int(g.members.shape[1]), m=int(g.members.shape[0]), P=int(a["P"]), scheme=str(a["scheme"]),
                    ratio=float(a["ratio"]), t=int(a["t"]), build=json.loads(a["build"]), bytes_on_disk=int(size))


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
            atom = tables.Atom.from_dtype(member_dtype(n))
            self.h.create_carray(g, "members", atom, (m, n), chunkshape=(1, n), filters=INT_FILTERS)
            self.h.create_carray(g, "counts", tables.UInt32Atom(), (m, P), filters=INT_FILTERS)
            self.h.create_carray(g, "bounds", tables.Float32Atom(), (m, P, 2), filters=FLOAT_FILTERS)
            for side in ("top", "bot"):
                self.h.create_carray(g, f"{side}_ids", tables.UInt32Atom(), (m, max(t, 1)), chunkshape=(1, max(t, 1)), filters=INT_FILTERS)
                self.h.create_carray(g, f"{side}_vals", tables.Float32Atom(), (m, max(t, 1)), chunkshape=(1, max(t, 1)), filters=FLOAT_FILTERS)
            return g

    def write_rows(self, g: tables.Group, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write a block of neuron rows (whole chunks) starting at neuron `start`."""
        with HDF5_LOCK:
            for name, arr in arrays.items():
                if arr.shape[-1] == 0:
                    continue
                g._f_get_child(name)[start:start + len(arr)] = arr

    def finish_view(self, g: tables.Group, build: dict) -> None:
        with HDF5_LOCK:
            g._v_attrs["build"] = json.dumps(build)
            g._v_attrs["complete"] = True

    def commit(self) -> None:
        """Atomically replace the index with the written copy, then reload it."""
        with HDF5_LOCK:
            self.h.flush()
            self.h.close()
            self.store.close()
            os.replace(self.tmp, self.store.path)
            self.store.refresh()

    def abort(self) -> None:
        with HDF5_LOCK:
            if self.h.isopen:
                self.h.close()
            self.tmp.unlink(missing_ok=True)
