"""The one channel between the kernel and the JupyterLab sidebar: a comm named "everest_magic".

Either side may open it: the kernel opens it when the extension loads (the sidebar
registers the target on every notebook kernel), and the sidebar opens it to the kernel's
target after a page reload. Messages (JSON):

kernel -> sidebar
    {"type": "snapshot", "state": {"sessions": [...], "jobs": [...], "history": [...]}}
    {"type": "job", "job": Job.to_json()}
    {"type": "error", "message": "..."}

A session's "views" are `ViewInfo.to_json()` rows, its jobs `Job.to_json()` rows; the
sidebar mirrors both in labextension/model.ts (`IView`, `IJob`).
sidebar -> kernel
    {"action": "refresh"}                 answered with a snapshot
    {"action": "cancel", "job": ID}       cancels a job, then a snapshot follows

Job progress is sent at most every 0.2 s per job (status changes always). Sends come
from worker threads too; a send with no front end listening fails quietly.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from .state import KernelState

TARGET = "everest_magic"


class Channel:
    """Pushes kernel state to every open sidebar comm."""

    def __init__(self, state: KernelState):
        self.state = state
        self.comms: list[Any] = []
        self._last_sent: dict[int, float] = {}
        self._lock = threading.Lock()
        state.on_event(self._on_event)

    def attach(self, comm: Any) -> None:
        comm.on_msg(self._on_msg)
        comm.on_close(lambda msg, c=comm: self._detach(c))
        with self._lock:
            self.comms.append(comm)
        self.send_snapshot()

    def _detach(self, comm: Any) -> None:
        with self._lock:
            if comm in self.comms:
                self.comms.remove(comm)

    def _on_msg(self, msg: dict) -> None:
        data = msg.get("content", {}).get("data", {})
        action = data.get("action")
        if action == "cancel":
            job = self.state.all_jobs().get(_int(data.get("job")))
            if job is None:   # an unknown job id: tell the sidebar
                self._send({"type": "error", "message": f"no job {data.get('job')!r} in this kernel"})
            else:
                job.cancel()
        if self.state.namespace is not None and self.state.discover(self.state.namespace):
            return   # discover() emitted "sessions": a snapshot went out
        self.send_snapshot()

    def _on_event(self, kind: str, payload: Any) -> None:
        if kind == "job":
            job = payload
            now = time.time()
            final = job.status not in ("running",)
            if not final and now - self._last_sent.get(job.id, 0.0) < 0.2:
                return
            self._last_sent[job.id] = now
            self._send({"type": "job", "job": job.to_json()})
            if final:
                self.send_snapshot()
        else:
            self.send_snapshot()

    def send_snapshot(self) -> None:
        if self.comms:
            self._send({"type": "snapshot", "state": self.state.snapshot()})

    def _send(self, data: dict) -> None:
        with self._lock:
            comms = list(self.comms)
        for c in comms:
            try:
                c.send(data)
            except Exception:
                pass


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_CHANNEL: Channel | None = None


def open_channel(state: KernelState) -> Channel:
    """Register the kernel-side target and open a comm to the sidebar (if one listens)."""
    global _CHANNEL
    if _CHANNEL is None or _CHANNEL.state is not state:
        _CHANNEL = Channel(state)
        from comm import get_comm_manager
        get_comm_manager().register_target(TARGET, lambda comm, msg: _CHANNEL.attach(comm))
    from comm import create_comm
    comm = create_comm(target_name=TARGET, data={"type": "hello"})
    _CHANNEL.attach(comm)
    return _CHANNEL
