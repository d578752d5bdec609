"""Kernel state of the extension: named sessions, the job manager, the query history."""
from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..engine import Job, JobManager, Session
from ..engine.errors import QueryError, UnknownNameError

HISTORY_LIMIT = 500   # history entries the kernel keeps (and the sidebar shows), the oldest dropped first


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


def result_summary(job: Any) -> str:
    """One line for the history: a finished query's result, or why the job did not finish."""
    if job.status != "done":
        return str(job.error or job.status)
    r = job.result()
    return f"{len(r.ids)} results, {r.stats.inputs_recomputed} recomputed, {1000 * r.stats.seconds:.0f} ms"


class KernelState:
    """Everything the magics keep between cells. One per IPython shell."""

    def __init__(self):
        self.sessions: dict[str, Session] = {}
        self.current: str | None = None
        self.renders: dict[str, Callable | None] = {}
        self.tokenizers: dict[str, Any] = {}   # session -> tokenizer for text galleries (use ... tokenizer=)
        self.jobs = JobManager()
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY_LIMIT)
        self._history_ids = itertools.count(1)
        self._listeners: list[Callable[[str, Any], None]] = []
        self._lock = threading.Lock()
        self.jobs.on_change(lambda job: self.emit("job", job))
        # sessions made from Python (em.Session(...)) found in the notebook namespace, by variable name;
        # held weakly: deleting the variable lets the session go
        self.python_sessions: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self._watched: weakref.WeakSet[JobManager] = weakref.WeakSet([self.jobs])
        self._seen: tuple = ()
        self.namespace: Mapping[str, Any] | None = None   # the notebook's namespace, once attached
        self.on_cell: Callable[..., Any] | None = None     # the post_run_cell hook that calls discover()

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
                raise QueryError("no session yet: start one with  %everest use model=NET data=DATA index=FOLDER")
            name = self.current
        if name not in self.sessions:
            raise UnknownNameError("session", name, self.sessions)
        return self.sessions[name]

    def switch(self, name: str) -> Session:
        s = self.session(name)
        self.current = name
        self.emit("sessions", None)
        return s

    def discover(self, ns: Mapping[str, Any]) -> bool:
        """Find the sessions bound to names of the notebook namespace that the magics did not make;
        their jobs are followed too. Emits "sessions" and returns True when anything changed
        (a session or one of its indexed views)."""
        mine = {id(s) for s in self.sessions.values()}
        found: dict[str, Session] = {}
        for name, value in list(ns.items()):
            if isinstance(value, Session) and not name.startswith("_") and id(value) not in mine:
                if all(value is not other for other in found.values()):
                    found[name] = value
        for s in found.values():
            if s.jobs not in self._watched:
                self._watched.add(s.jobs)
                s.jobs.on_change(lambda job: self.emit("job", job))
        seen = tuple((name, id(s), tuple(_views(s))) for name, s in sorted(found.items()))
        if seen == self._seen:
            return False
        self.python_sessions = weakref.WeakValueDictionary(found)
        self._seen = seen
        self.emit("sessions", None)
        return True

    # -- jobs ---------------------------------------------------------------------------
    def job_managers(self) -> list[JobManager]:
        """The magics' job manager, then those of the sessions made from Python."""
        return [self.jobs] + [m for m in list(self._watched) if m is not self.jobs]

    def all_jobs(self) -> dict[int, Job]:
        """Every job of this kernel's sessions, by id."""
        return {i: j for m in self.job_managers() for i, j in list(m.jobs.items())}

    def job_rows(self) -> list[dict]:
        """`Job.to_json()` of every job of the kernel, oldest first."""
        return sorted((row for m in self.job_managers() for row in m.status()), key=lambda r: r["id"])

    # -- history ------------------------------------------------------------------------
    def record(self, text: str, kind: str, session: str, job_id: int | None = None) -> HistoryEntry:
        with self._lock:
            entry = HistoryEntry(next(self._history_ids), text, kind, session, job_id=job_id)
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
        """A JSON-friendly picture of the state: sessions (the magics', then those made from Python)
        with their indexed views (`ViewInfo.to_json()`), jobs (`Job.to_json()`), history."""
        sessions = [_session_row(name, s, "magic", name == self.current) for name, s in list(self.sessions.items())]
        sessions += [_session_row(name, s, "python", False) for name, s in sorted(self.python_sessions.items())]
        return {"sessions": [row for row in sessions if row is not None], "jobs": self.job_rows(),
                "history": [h.as_dict() for h in list(self.history)]}

    def close(self) -> None:
        self.jobs.shutdown(2)
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()


def _views(s: Session) -> list[str]:
    try:
        return sorted(s.indexed())
    except Exception:   # a closed session
        return []


def _session_row(name: str, s: Session, origin: str, current: bool) -> dict | None:
    """One session for the sidebar (None when it cannot be read, e.g. closed)."""
    try:
        views = [info.to_json() for info in s.indexed().values()]
        return {"name": name, "session_name": s.name, "origin": origin, "current": current,
                "model": type(s.runner.model).__name__, "data": f"{type(s.data.data).__name__} of {s.n}", "n": s.n,
                "index": str(s.index_path), "device": str(s.runner.device), "views": views}
    except Exception:
        return None
