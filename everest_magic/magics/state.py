"""Kernel state of the extension: named sessions, the job manager, the query history."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..engine import JobManager, Session
from ..engine.errors import QueryError, UnknownNameError


@dataclass
class HistoryEntry:
    """One query or index command run from a magic."""

    id: int
    text: str
    kind: str
    session: str
    started: float = field(default_factory=time.time)
    status: str = "running"
    summary: str = ""
    job_id: int | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class KernelState:
    """Everything the magics keep between cells. One per IPython shell."""

    def __init__(self):
        self.sessions: dict[str, Session] = {}
        self.current: str | None = None
        self.renders: dict[str, Callable | None] = {}
        self.jobs = JobManager()
        self.history: list[HistoryEntry] = []
        self.verbose = False
        self._listeners: list[Callable[[str, Any], None]] = []
        self._lock = threading.Lock()
        self.jobs.on_change(lambda job: self.emit("job", job))

    # -- sessions -----------------------------------------------------------------------
    def add_session(self, name: str, session: Session, render: Callable | None = None) -> None:
        old = self.sessions.get(name)
        if old is not None and old is not session:
            old.close()
        self.sessions[name] = session
        self.renders[name] = render
        self.current = name
        self.emit("sessions", None)

    def session(self, name: str | None = None) -> Session:
        """The named session, or the current one."""
        if name is None:
            if self.current is None:
                raise QueryError("no session yet: start one with  %everest use model=NET data=DATA index=FILE.h5")
            name = self.current
        if name not in self.sessions:
            raise UnknownNameError("session", name, self.sessions)
        return self.sessions[name]

    def switch(self, name: str) -> Session:
        s = self.session(name)
        self.current = name
        self.emit("sessions", None)
        return s

    # -- history ------------------------------------------------------------------------
    def record(self, text: str, kind: str, session: str, job_id: int | None = None) -> HistoryEntry:
        with self._lock:
            entry = HistoryEntry(len(self.history) + 1, text, kind, session, job_id=job_id)
            self.history.append(entry)
        self.emit("history", entry)
        return entry

    def finish(self, entry: HistoryEntry, status: str, summary: str = "") -> None:
        entry.status, entry.summary = status, summary
        self.emit("history", entry)

    # -- events for the sidebar ---------------------------------------------------------
    def on_event(self, fn: Callable[[str, Any], None]) -> None:
        self._listeners.append(fn)

    def emit(self, kind: str, payload: Any) -> None:
        for fn in list(self._listeners):
            try:
                fn(kind, payload)
            except Exception:
                pass

    def snapshot(self) -> dict:
        """A JSON-friendly picture of the state: sessions, indexed views, jobs, history."""
        sessions = []
        for name, s in self.sessions.items():
            views = [{"name": v, "neurons": info.m, "bytes": info.bytes_on_disk, "full_bytes": info.full_bytes,
                      "ratio": info.size_ratio, "P": info.P, "list_ratio": info.ratio}
                     for v, info in s.indexed().items()]
            sessions.append({"name": name, "current": name == self.current, "model": type(s.runner.model).__name__,
                             "data": f"{type(s.data.data).__name__} of {s.n}", "n": s.n,
                             "index": str(s.index_path), "device": str(s.runner.device), "views": views})
        return {"sessions": sessions, "jobs": self.jobs.status(), "history": [h.as_dict() for h in self.history]}

    def close(self) -> None:
        self.jobs.shutdown(2)
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()
