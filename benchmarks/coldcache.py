"""Making a file "cold" (not in the OS page cache) before a query reads it.

Methods, tried in this order by ``ColdFile(path, "auto")`` and verified with ``mincore``:

- ``fadvise``: ``fsync`` then ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the file alone:
  drops exactly that file's pages, needs no privilege and leaves every other process's
  cache alone (other work shares this machine);
- ``drop_caches``: ``sync; echo 1 > /proc/sys/vm/drop_caches`` (root only; drops the
  whole page cache);
- ``copy``: when neither can be verified, each query reads a fresh copy of the file
  (written, flushed and advised out); slowest, used last.

On a virtual machine the host may still cache the disk image, so "cold" means "not in
this machine's page cache"; the report says which method ran and the resident fraction
measured after it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
from pathlib import Path

import numpy as np

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PAGE = mmap.PAGESIZE
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_fraction(path: str | os.PathLike) -> float:
    """Fraction of a file's pages in the page cache (Linux ``mincore``); NaN when unknown."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    pages = (size + _PAGE - 1) // _PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, ctypes.c_size_t(size), mmap.PROT_READ, mmap.MAP_SHARED, fd, ctypes.c_long(0))
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return float("nan")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
                return float("nan")
            return float((np.frombuffer(vec, np.uint8) & 1).sum()) / pages
        finally:
            _libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)


def fadvise_out(path: str | os.PathLike) -> None:
    """Flush and drop one file's pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_all_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


class ColdFile:
    """``prepare()`` before each cold query returns the path to read, out of the page cache."""

    def __init__(self, path: str | os.PathLike, method: str = "auto", threshold: float = 0.01):
        self.path = Path(path)
        self.threshold = threshold
        self.note = ""
        self._copy: Path | None = None
        self.method = self._pick(method) if method == "auto" else method
        self.residency: list[float] = []

    def _pick(self, requested: str) -> str:
        os.sync()
        with open(self.path, "rb") as f:   # make (the start of) it resident, then see whether it goes
            f.read(64 << 20)
        tried = []
        try:
            fadvise_out(self.path)
            r = resident_fraction(self.path)
            if r == r and r <= self.threshold:   # not NaN and (almost) nothing left
                self.note = f"posix_fadvise(DONTNEED) verified by mincore (resident after: {r:.1%})"
                return "fadvise"
            tried.append(f"fadvise left {r:.1%} resident")
        except OSError as e:
            tried.append(f"fadvise failed: {e}")
        try:
            drop_all_caches()
            r = resident_fraction(self.path)
            if r != r or r <= self.threshold:
                self.note = f"echo 1 > /proc/sys/vm/drop_caches (resident after: {r:.1%}); " + "; ".join(tried)
                return "drop_caches"
            tried.append(f"drop_caches left {r:.1%} resident")
        except OSError as e:
            tried.append(f"drop_caches refused: {e}")
        self.note = "fresh copy of the file per query; " + "; ".join(tried)
        return "copy"

    def prepare(self) -> Path:
        """Evict the file (or make a fresh copy) and return the path the query must read."""
        if self.method == "fadvise":
            fadvise_out(self.path)
            target = self.path
        elif self.method == "drop_caches":
            drop_all_caches()
            target = self.path
        else:
            self.cleanup()
            self._copy = self.path.with_name(self.path.name + ".cold-copy")
            shutil.copyfile(self.path, self._copy)
            try:
                fadvise_out(self._copy)
            except OSError:
                pass
            target = self._copy
        if len(self.residency) < 5:   # spot-check the first few
            self.residency.append(resident_fraction(target))
        return target

    def cleanup(self) -> None:
        if self._copy is not None:
            self._copy.unlink(missing_ok=True)
            self._copy = None
