"""The index on disk: a folder with one PyTables (HDF5) file per view segment and a manifest.

Layout::

    <index>/index.json          the manifest: format, model and data fingerprints, n, and each
                                complete view with its settings and segment files
    <index>/views/<key>.<token>.h5          a view's inputs start..stop (immutable once written)
    <index>/views/<key>.<token>.h5.partial  being written (removed on failure, or on the next
                                            open after a crash)
    <index>/.lock, <index>/locks/<key>.lock  process locks (filelock): manifest updates; builds of a view

A segment file holds::

    pids      (m, stop - start) uint8 (uint16 when P > 256): partition id of every input,
              chunks of one neuron by `width` inputs, blosc zstd 1, written whole (directly,
              with the checksum HDF5's fletcher32 filter would add)
    cuts      (m, P-1) f32         the partition cuts (kept so that `extend` can add inputs)
    counts    (m, P) uint32, bounds (m, P, 2) f32 (NaN when empty)      over inputs 0..stop
    top_ids, top_vals, bot_ids, bot_vals  (m, t)                         over inputs 0..stop

Every array carries HDF5's fletcher32 checksum, so every chunk read is verified: a damaged
file gives an `IndexFormatError`, never a wrong answer. A view is committed by renaming its
finished file into place and then replacing the manifest (write, fsync, rename) under the
index lock, so adding or rebuilding a view costs that view only, two processes building
different views both land, and a crash or a full disk leaves the views built before intact.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import struct

import blosc
import numpy as np
import tables
from filelock import FileLock, Timeout

from .errors import IndexFormatError, IndexWriteError, StaleIndexError, UnknownNameError
from .kernels import fletcher32
from .partition import partition_members, pid_dtype

FORMAT_VERSION = 3
MANIFEST = "index.json"
HDF5_LOCK = threading.RLock()  # HDF5 is not thread-safe: every file access holds this
FLOAT_FILTERS = tables.Filters(complevel=1, complib="blosc:lz4", shuffle=True)
CHECKED_FLOATS = tables.Filters(complevel=1, complib="blosc:lz4", shuffle=True, fletcher32=True)
blosc.set_releasegil(True)     # compress and decompress on several threads at once
tables.silence_hdf5_messages(True)


def int_filters(dtype: np.dtype, checked: bool = True) -> tables.Filters:
    """blosc zstd level 1; bitshuffle for multi-byte ints (one-byte ids compress best unshuffled)."""
    return tables.Filters(complevel=1, complib="blosc:zstd", shuffle=False, bitshuffle=np.dtype(dtype).itemsize > 1,
                          fletcher32=checked)


def compress_rows(rows: np.ndarray) -> list[bytes]:
    """Each row of a 2-d int array as one blosc chunk matching `int_filters` (any thread)."""
    size = rows.dtype.itemsize
    shuffle = blosc.BITSHUFFLE if size > 1 else blosc.NOSHUFFLE
    return [blosc.compress(np.ascontiguousarray(r).tobytes(), typesize=size, clevel=1, shuffle=shuffle, cname="zstd")
            for r in rows]


def _checked_chunks(rows: np.ndarray) -> list[bytes]:
    """`compress_rows` plus the 4-byte Fletcher-32 that HDF5's fletcher32 filter appends."""
    return [c + struct.pack("<I", int(fletcher32(np.frombuffer(c, np.uint8)))) for c in compress_rows(rows)]


def _whole(pids: np.ndarray, width: int) -> np.ndarray:
    """A block of partition ids padded to the chunk width (an edge chunk is stored whole)."""
    if pids.shape[1] >= width:
        return pids
    rows = np.zeros((pids.shape[0], width), pids.dtype)
    rows[:, :pids.shape[1]] = pids
    return rows


def checked_chunks(pids: np.ndarray, width: int) -> list[bytes]:
    """The stored chunks (one a neuron) of a block of partition ids (m, <= width), ready for
    `ViewWriter.write_chunks`; pure, so any process can make them (e.g. a Dask worker)."""
    return _checked_chunks(_whole(pids, width))


def read_chunk_rows(node: tables.Leaf, row: int) -> tuple[int, np.ndarray]:
    """(first row, rows) of the chunk holding `row` of a 2-d array chunked by whole rows, read
    as one raw chunk and decompressed here (about 10x faster than the HDF5 filter pipeline
    for a 50,000-wide row). For arrays without checksums; call it holding HDF5_LOCK."""
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
    """A file-name-safe key for a view name."""
    return "v_" + "".join(c if c.isalnum() else "_" for c in name) + "_" + format(zlib.crc32(name.encode()), "x")[:8]


@dataclass
class Segment:
    """One file of a view: the partition ids of inputs start..stop."""

    file: str
    start: int
    stop: int
    width: int      # inputs a pids chunk holds
    bytes: int


@dataclass
class ViewInfo:
    """Metadata of one complete view in the index."""

    name: str
    key: str
    definition: dict
    shape: tuple
    n: int                 # inputs indexed
    neurons: int           # neurons of the view (m, the rows of every array)
    partitions: int        # partitions of each neuron's values (P)
    scheme: str
    list_fraction: float   # the build's list ratio: lists of ceil(list_fraction * n) inputs, at least min_list
    list_length: int       # entries of each neuron's top and of its bottom list (t)
    build: dict
    bytes_on_disk: int
    list_rows: int = 1     # neurons a chunk of the top and bottom lists holds
    segments: list[Segment] = field(default_factory=list)
    query: dict = field(default_factory=dict)   # settings queries reuse (e.g. the walk's first batch)

    @property
    def full_bytes(self) -> int:
        """Size of the view fully materialised as float32."""
        return self.n * self.neurons * 4

    @property
    def size_ratio(self) -> float:
        """Bytes on disk over `full_bytes`."""
        return self.bytes_on_disk / max(self.full_bytes, 1)

    def to_json(self) -> dict:
        """The view as `%everest status`, the index table and the sidebar show it (JSON-ready;
        mirrored by `IView` in labextension/model.ts)."""
        return {"name": self.name, "neurons": self.neurons, "inputs": self.n, "partitions": self.partitions,
                "scheme": self.scheme, "list_length": self.list_length, "list_fraction": self.list_fraction,
                "bytes": self.bytes_on_disk, "full_bytes": self.full_bytes, "size_ratio": self.size_ratio,
                "files": len(self.segments), "build_seconds": float(self.build.get("seconds_total", 0.0))}

    def to_manifest(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("segments", "n", "bytes_on_disk")}
        d["shape"] = list(self.shape)
        d["segments"] = [s.__dict__ for s in self.segments]
        return d

    @staticmethod
    def from_manifest(d: dict, n: int) -> "ViewInfo":
        """A view from its manifest entry (also one written with the keys before the renames)."""
        segs = [Segment(**s) for s in d["segments"]]
        fields = {OLD_MANIFEST_KEYS.get(k, k): v for k, v in d.items() if k != "segments"}
        fields["shape"] = tuple(fields["shape"])
        return ViewInfo(**fields, n=n, bytes_on_disk=sum(s.bytes for s in segs), segments=segs)


OLD_MANIFEST_KEYS = {"m": "neurons", "P": "partitions", "ratio": "list_fraction", "t": "list_length"}


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
    """An index folder: reading complete views, and the atomic, process-safe write path.

    Decoded rows (partition ids, extreme lists) are kept in a `RowCache` of `cache_bytes`.
    `rebuild=True` starts the index afresh (a file or an empty folder at the path is replaced;
    a folder that is not an everest index is never deleted).
    """

    def __init__(self, path: str | os.PathLike, model_fingerprint: str, data_fingerprint: str, n: int,
                 cache_bytes: int = 64 << 20, rebuild: bool = False):
        self.path = Path(path)
        self.model_fingerprint = model_fingerprint
        self.data_fingerprint = data_fingerprint
        self.n = n
        self.views: dict[str, ViewInfo] = {}
        self.rows = RowCache(cache_bytes)
        self._summary: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._files: dict[str, tables.File] = {}
        if rebuild:
            self._reset()
        else:
            self._check_path()
        self.refresh()
        self.collect_garbage()

    # -- paths, locks, manifest ------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def _check_path(self) -> None:
        p = self.path
        if p.is_file():
            raise IndexFormatError(_describe_file(p))
        if p.is_dir() and not _ours(p):
            raise IndexFormatError(f"{p} is a folder that is not an everest index (no {MANIFEST}); "
                                   "give an index path that does not exist yet or an empty folder")

    def _reset(self) -> None:
        """`rebuild=True`: a new, empty index at the path."""
        p = self.path
        try:
            if p.is_file() or p.is_symlink():
                p.unlink()
            elif p.is_dir() and not _ours(p):
                raise IndexFormatError(f"{p} is a folder that is not an everest index (no {MANIFEST}); rebuild=True "
                                       "does not delete folders it did not create: remove it or give another path")
            if p.is_dir():
                with self.index_lock():
                    self._write_manifest({"views": {}})
        except OSError as e:
            raise IndexWriteError(f"cannot rebuild the index at {p}: {e.strerror or e}") from e

    @contextmanager
    def index_lock(self) -> Iterator[None]:
        """The lock every manifest update holds (between processes too)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path / ".lock")):
            yield

    def view_lock(self, name: str) -> FileLock:
        """The lock a build of view `name` holds from start to commit (between processes too)."""
        d = self.path / "locks"
        d.mkdir(parents=True, exist_ok=True)
        return FileLock(str(d / f"{view_key(name)}.lock"))

    def view_owner(self, name: str) -> str:
        """Who holds the build lock of a view ("process 1234 on host"), as far as known."""
        try:
            return (self.path / "locks" / f"{view_key(name)}.owner").read_text().strip()
        except OSError:
            return "another process"

    def claim_view(self, name: str) -> None:
        """Record this process as the builder of `name` (call holding its view lock)."""
        (self.path / "locks" / f"{view_key(name)}.owner").write_text(f"process {os.getpid()} on {socket.gethostname()}")

    def _read_manifest(self) -> dict | None:
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise IndexFormatError(f"{self.manifest_path} cannot be read ({e.strerror or e})") from e
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or not isinstance(doc.get("views"), dict):
                raise ValueError("no views")
        except ValueError as e:
            raise IndexFormatError(f"{self.manifest_path} is damaged ({e}); rebuild the index with "
                                   "Session(..., rebuild=True)") from None
        return doc

    def _write_manifest(self, doc: dict) -> None:
        """Replace the manifest atomically (call holding the index lock)."""
        doc = {"format_version": FORMAT_VERSION, "model_fingerprint": self.model_fingerprint,
               "data_fingerprint": self.data_fingerprint, "n": self.n,
               "created": doc.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")), "views": doc["views"]}
        tmp = self.path / f"{MANIFEST}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
            _fsync_dir(self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _write_error(e, self.path, "the index manifest", 1 << 16) from e

    # -- reading -------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload the catalogue of complete views from the manifest."""
        with HDF5_LOCK:
            doc = self._read_manifest()
            views = {}
            if doc is not None:
                check_header(doc, self.manifest_path, self.model_fingerprint, self.data_fingerprint, self.n)
                try:
                    for name, entry in doc["views"].items():
                        views[name] = ViewInfo.from_manifest(entry, self.n)
                except (TypeError, KeyError) as e:
                    raise IndexFormatError(f"{self.manifest_path} is damaged (view entry: {e}); rebuild the index "
                                           "with Session(..., rebuild=True)") from None
            keep = {s.file for v in views.values() for s in v.segments}
            for f in [f for f in self._files if f not in keep]:
                self._close_file(f)
            changed = {name for name, v in views.items() if self.views.get(name) != v}
            changed |= set(self.views) - set(views)
            for name in changed:
                self._summary.pop(name, None)
            if changed:
                self.rows.clear()
            self.views = views

    def close(self) -> None:
        with HDF5_LOCK:
            for f in list(self._files):
                self._close_file(f)

    def _close_file(self, f: str) -> None:
        h = self._files.pop(f, None)
        if h is not None and h.isopen:
            h.close()

    def view(self, name: str) -> ViewInfo:
        if name not in self.views:
            raise UnknownNameError("indexed view", name, self.views)
        return self.views[name]

    def _file(self, info: ViewInfo, seg: Segment) -> tables.File:
        h = self._files.get(seg.file)
        if h is None or not h.isopen:
            path = self.path / seg.file
            try:
                h = tables.open_file(str(path), "r")
            except FileNotFoundError:
                raise IndexFormatError(f"{path} (view {info.name!r}) is missing; rebuild the view with "
                                       f"Session(..., rebuild=True) or build_index([{info.name!r}], rebuild=True)") from None
            except Exception as e:
                raise self.damaged(info, seg, e) from None
            self._files[seg.file] = h
        return h

    def damaged(self, info: ViewInfo, seg: Segment, e: BaseException | str) -> IndexFormatError:
        why = _reason(e, self.path / seg.file)
        return IndexFormatError(f"{self.path / seg.file}: view {info.name!r} is damaged ({why[:160]}); rebuild it "
                                f"with build_index([{info.name!r}], rebuild=True) or Session(..., rebuild=True)")

    @contextmanager
    def _reading(self, info: ViewInfo, seg: Segment) -> Iterator[tables.File]:
        """An open segment file; any HDF5, checksum or decompression error becomes an IndexFormatError."""
        with HDF5_LOCK:
            h = self._file(info, seg)
            try:
                yield h
            except IndexFormatError:
                raise
            except (tables.HDF5ExtError, tables.NoSuchNodeError, OSError, ValueError, KeyError, RuntimeError) as e:
                raise self.damaged(info, seg, e) from None

    def summary(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(counts (m, P), bounds (m, P, 2)) of a view, cached in memory."""
        if name not in self._summary:
            info = self.view(name)
            seg = info.segments[-1]
            with self._reading(info, seg) as h:
                counts, bounds = h.root.counts[:], h.root.bounds[:]
            self._summary[name] = (counts, bounds)
        return self._summary[name]

    def cuts(self, name: str) -> np.ndarray:
        """The partition cuts (m, P-1) of a view."""
        info = self.view(name)
        seg = info.segments[0]
        with self._reading(info, seg) as h:
            return h.root.cuts[:]

    def pids(self, name: str, neuron: int) -> np.ndarray:
        """Partition id of every input (n,) for one neuron (read-only), checksums verified."""
        info = self.view(name)

        def load():
            parts = [self._segment_pids(info, seg, int(neuron)) for seg in info.segments]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self.rows.get((name, int(neuron), "pids"), load, lambda a: a.nbytes)

    def _segment_pids(self, info: ViewInfo, seg: Segment, neuron: int) -> np.ndarray:
        with self._reading(info, seg) as h:   # one read; HDF5 checks every chunk's fletcher32
            return h.root.pids[neuron]

    def partition(self, name: str, neuron: int, j: int) -> np.ndarray:
        """Input ids (ascending) of partition `j` of one neuron."""
        return partition_members(self.pids(name, neuron), j)

    def extremes(self, name: str, neuron: int, highest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of a neuron's top (or bottom) list, best first."""
        side = "top" if highest else "bot"
        info = self.view(name)
        first = int(neuron) // info.list_rows * info.list_rows

        def load():
            seg = info.segments[-1]
            with self._reading(info, seg) as h:
                stop = first + info.list_rows
                ids = h.get_node(f"/{side}_ids")[first:stop]
                vals = h.get_node(f"/{side}_vals")[first:stop]
            return ids.astype(np.int64), np.ascontiguousarray(vals)
        ids, vals = self.rows.get((name, first, side), load, lambda r: r[0].nbytes + r[1].nbytes)
        return ids[int(neuron) - first], vals[int(neuron) - first]

    def lists(self, name: str) -> dict[str, np.ndarray]:
        """Every neuron's top and bottom lists of a view: top_ids, top_vals, bot_ids, bot_vals (m, t)."""
        info = self.view(name)
        seg = info.segments[-1]
        with self._reading(info, seg) as h:
            return {k: h.get_node(f"/{k}")[:][:, :info.list_length] for k in ("top_ids", "top_vals", "bot_ids", "bot_vals")}

    def verify(self, name: str) -> None:
        """Read every array of a view, checking every checksum (an IndexFormatError if damaged)."""
        info = self.view(name)
        for seg in info.segments:
            with self._reading(info, seg) as h:
                for node in h.walk_nodes("/", "Leaf"):   # 16 MB at a time
                    step = max(1, (16 << 20) // max(node.size_in_memory // max(node.shape[0], 1), 1))
                    for j in range(0, node.shape[0], step):
                        node[j:j + step]

    # -- writing -------------------------------------------------------------------
    def writer(self, name: str, **settings: Any) -> "ViewWriter":
        """A new segment file for view `name` (see `ViewWriter`)."""
        return ViewWriter(self, name, **settings)

    def commit(self, writers: list["ViewWriter"], extend: tuple[int, str] | None = None) -> None:
        """Make finished segment files part of the index, in one manifest update.

        A writer of a view replaces that view, or (`extend=(n, data_fingerprint)`) adds a
        segment to it, and then every view of the index must be extended in the same commit.
        """
        for w in writers:
            w.publish()
        replaced: list[str] = []
        try:
            with self.index_lock():
                doc = self._read_manifest() or {"views": {}}
                if "model_fingerprint" in doc:   # not a fresh index: still ours?
                    check_header(doc, self.manifest_path, self.model_fingerprint, self.data_fingerprint, self.n)
                views = doc["views"]
                if extend is not None:
                    missing = set(views) - {w.name for w in writers}
                    if missing:
                        raise IndexWriteError(f"the index gained views {sorted(missing)} during extend; run extend again")
                for w in writers:
                    old = views.get(w.name)
                    if extend is not None and old is not None:
                        entry = dict(old)
                        entry["segments"] = old["segments"] + [w.segment.__dict__]
                        entry["build"] = {**old.get("build", {}), "extended": w.build}
                    else:
                        if old is not None:
                            replaced += [s["file"] for s in old["segments"]]
                        entry = w.info().to_manifest()
                    views[w.name] = entry
                before = self.n, self.data_fingerprint
                if extend is not None:
                    self.n, self.data_fingerprint = extend
                try:
                    self._write_manifest(doc)
                except BaseException:
                    self.n, self.data_fingerprint = before
                    raise
        except BaseException:
            for w in writers:
                w.unpublish()
            raise
        for f in replaced:   # open readers keep their handles; new readers see the new files
            _remove(self.path / f)
        self.refresh()

    def annotate(self, name: str, **query: Any) -> None:
        """Record settings that later queries of a view reuse (in its manifest entry)."""
        with self.index_lock():
            doc = self._read_manifest()
            if doc is None or name not in doc["views"]:
                return
            doc["views"][name].setdefault("query", {}).update(query)
            self._write_manifest(doc)
        self.refresh()

    def collect_garbage(self) -> list[str]:
        """Remove partial and unreferenced view files whose view no process is building."""
        d = self.path / "views"
        if not d.is_dir() or not os.access(d, os.W_OK):
            return []
        removed = []
        for tmp in self.path.glob(f"{MANIFEST}.tmp-*"):
            if _dead(tmp.name.split("-")[1]):
                tmp.unlink(missing_ok=True)
        by_key: dict[str, list[Path]] = {}
        for f in d.iterdir():
            by_key.setdefault(f.name.split(".")[0], []).append(f)
        for key, files in by_key.items():
            lock = FileLock(str(self.path / "locks" / f"{key}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue   # a build of this view is running: its files are not garbage
            try:
                with self.index_lock():
                    doc = self._read_manifest() or {"views": {}}
                    used = {s["file"] for v in doc["views"].values() for s in v.get("segments", [])}
                    for f in files:
                        if f"views/{f.name}" not in used:
                            _remove(f)
                            removed.append(f.name)
            finally:
                lock.release()
        return removed


def _reason(e: BaseException | str, path: Path) -> str:
    """One short line saying why a file could not be read (HDF5's innermost error, not its back trace)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "End of HDF5 error back trace" in lines:
        lines = lines[:lines.index("End of HDF5 error back trace")][-1:]
    why = lines[0] if lines else type(e).__name__
    if why == "file signature not found":
        why = "empty file" if path.is_file() and path.stat().st_size == 0 else "not an HDF5 file"
    return why


def _remove(path: Path) -> None:
    """Remove a file of the index, or whatever took its place (a folder)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _ours(p: Path) -> bool:
    """Is folder `p` an everest index (a manifest), empty, or what a build killed before its
    first commit left (only the index's own files and folders)?"""
    return (p / MANIFEST).exists() or all(f.name in ("views", "locks", ".lock") or f.name.startswith(f"{MANIFEST}.tmp-")
                                          for f in p.iterdir())


def _dead(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return False
    except (ValueError, ProcessLookupError):
        return True
    except PermissionError:
        return False


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe_file(p: Path) -> str:
    """Why a file at the index path is not a usable index, and what to do."""
    fix = "rebuild it with Session(..., rebuild=True) (which replaces the file with an index folder) or give another path"
    try:
        with HDF5_LOCK, tables.open_file(str(p), "r") as h:
            version = h.root._v_attrs["format_version"] if "format_version" in h.root._v_attrs else None
    except Exception:
        return f"{p} is a file, not an everest index folder (and not an HDF5 file); {fix}"
    if version is None:
        return f"{p} is an HDF5 file that is not an everest index; {fix}"
    return (f"{p} is a single-file everest index of format {version}; this version keeps an index as a folder "
            f"with one file per view (format {FORMAT_VERSION}): {fix}")


def check_header(doc: dict, path: Path, model_fp: str, data_fp: str, n: int) -> None:
    """Refuse indexes of another format, model or dataset, saying how to rebuild."""
    if int(doc.get("format_version", -1)) != FORMAT_VERSION:
        raise IndexFormatError(f"{path} has index format {doc.get('format_version')}, this version reads "
                               f"{FORMAT_VERSION}; rebuild it with Session(..., rebuild=True)")
    how = "rebuild it with Session(..., rebuild=True), or give another index path"
    if doc.get("model_fingerprint") != model_fp:
        raise StaleIndexError(f"{path.parent} was built for a different model (weights hash {doc.get('model_fingerprint')}, "
                              f"this model {model_fp}); {how}")
    if doc.get("data_fingerprint") != data_fp or int(doc.get("n", -1)) != n:
        raise StaleIndexError(f"{path.parent} was built for different data ({doc.get('n')} inputs, hash "
                              f"{doc.get('data_fingerprint')}; this data: {n} inputs, hash {data_fp}); {how}"
                              + ("; if the data grew, Session(...) on the old data and extend(new_inputs) adds the rest"
                                 if isinstance(doc.get("n"), int) and doc["n"] < n else ""))


def _write_error(e: BaseException, where: Path, what: str, need: int) -> IndexWriteError:
    """A clear error for a failed write: the path, the space needed and free, or the permission."""
    code = getattr(e, "errno", None)
    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free
    except OSError:
        free = -1
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return IndexWriteError(f"cannot write {what} at {where}: the folder is read-only or not yours "
                               f"({e.strerror or e}); give an index path you can write, or open it only to query")
    full = code in (errno.ENOSPC, errno.EDQUOT) or (0 <= free < need)
    if full:
        return IndexWriteError(f"not enough disk space to write {what} at {where}: about {_mb(need)} needed, "
                               f"{_mb(free)} free; the views built before are intact. Free some space or "
                               "give an index path on another disk")
    return IndexWriteError(f"writing {what} at {where} failed ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}); "
                           "the views built before are intact")


def _mb(b: int) -> str:
    return f"{b / 2**20:.1f} MB" if b >= 0 else "unknown"


class ViewWriter:
    """Writes one segment file of a view: partition ids block by block as the pass goes,
    then the small arrays; `publish()` renames it into place for `IndexStore.commit`.

    The file is `<key>.<token>.h5.partial` until published; `abort()` removes it.
    """

    def __init__(self, store: IndexStore, name: str, *, definition: dict, shape: tuple, neurons: int, start: int,
                 stop: int, partitions: int, scheme: str, fractions: np.ndarray, list_fraction: float,
                 list_length: int, width: int, cuts: np.ndarray, need_bytes: int = 0):
        self.store, self.name = store, name
        self.settings = dict(definition=definition, shape=tuple(shape), neurons=neurons, partitions=partitions,
                             scheme=scheme, list_fraction=list_fraction, list_length=list_length)
        self.start, self.stop, self.width = start, stop, max(1, min(width, stop - start))
        self.need = need_bytes
        key = view_key(name)
        self.key = key
        self.final = store.path / "views" / f"{key}.{secrets.token_hex(6)}.h5"
        self.tmp = self.final.with_name(self.final.name + ".partial")
        self.build: dict = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="everest-compress")
        try:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            with HDF5_LOCK:
                self.h = tables.open_file(str(self.tmp), "w", title=f"everest_magic view {name}")
                a = self.h.root._v_attrs
                a["format_version"], a["name"] = FORMAT_VERSION, name
                a["start"], a["stop"] = start, stop
                dtype = pid_dtype(partitions)
                self.pids = self.h.create_carray("/", "pids", tables.Atom.from_dtype(dtype), (neurons, stop - start),
                                                 chunkshape=(1, self.width), filters=int_filters(dtype))
                c = np.ascontiguousarray(cuts, np.float32)
                self.h.create_carray("/", "cuts", obj=c if c.size else np.zeros((neurons, 1), np.float32),
                                     filters=CHECKED_FLOATS)
        except (OSError, tables.HDF5ExtError) as e:
            self.abort()
            raise _write_error(e, store.path, f"view {name!r}", self.need) from e

    def write_block(self, col0: int, pids: np.ndarray) -> None:
        """Partition ids (m, w) of inputs col0 .. col0 + w (w = width, less at the end)."""
        rows = _whole(pids, self.width)
        parts = np.array_split(np.arange(len(rows)), 8)
        chunks = [c for part in self._pool.map(lambda ix: _checked_chunks(rows[ix[0]:ix[-1] + 1]) if len(ix) else [],
                                               parts) for c in part]
        self.write_chunks(col0, chunks)

    def write_chunks(self, col0: int, chunks: list[bytes]) -> None:
        """The stored chunks (`checked_chunks`) of the block of inputs starting at col0."""
        try:
            with HDF5_LOCK:
                for j, chunk in enumerate(chunks):
                    self.pids.write_chunk((j, col0 - self.start), chunk)
        except (OSError, tables.HDF5ExtError) as e:
            self.abort()
            raise _write_error(e, self.store.path, f"view {self.name!r}", self.need) from e

    def finish(self, arrays: dict[str, np.ndarray], build: dict) -> None:
        """Write counts, bounds, lists and checksums; close and sync the file."""
        self.build = build
        m, t = self.settings["neurons"], self.settings["list_length"]
        tt = max(t, 1)
        self.list_rows = min(m, max(1, 4096 // tt))    # ~16 KB chunks: cheap to read
        try:
            with HDF5_LOCK:
                h = self.h
                h.create_carray("/", "counts", obj=arrays["counts"], filters=int_filters(np.uint32))
                h.create_carray("/", "bounds", obj=arrays["bounds"], filters=CHECKED_FLOATS)
                for side in ("top", "bot"):
                    for what, filt in (("ids", int_filters(np.uint32)), ("vals", CHECKED_FLOATS)):
                        a = arrays[f"{side}_{what}"]
                        if a.shape[1] == 0:
                            a = np.zeros((m, 1), a.dtype)
                        h.create_carray("/", f"{side}_{what}", obj=a, chunkshape=(self.list_rows, tt), filters=filt)
                h.root._v_attrs["build"] = json.dumps(build)
                h.flush()
                h.close()
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
        except (OSError, tables.HDF5ExtError) as e:
            self.abort()
            raise _write_error(e, self.store.path, f"view {self.name!r}", self.need) from e
        finally:
            self._pool.shutdown(wait=False)
        self.segment = Segment(file=f"views/{self.final.name}", start=self.start, stop=self.stop, width=self.width,
                               bytes=self.tmp.stat().st_size)

    def info(self) -> ViewInfo:
        return ViewInfo(name=self.name, key=self.key, **self.settings, n=self.stop, build=self.build,
                        bytes_on_disk=self.segment.bytes, list_rows=self.list_rows, segments=[self.segment])

    def publish(self) -> None:
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)

    def unpublish(self) -> None:
        self.final.unlink(missing_ok=True)

    def abort(self) -> None:
        with HDF5_LOCK:
            h = getattr(self, "h", None)
            if h is not None and h.isopen:
                try:
                    h.close()
                except Exception:
                    pass
        self._pool.shutdown(wait=False)
        self.tmp.unlink(missing_ok=True)
