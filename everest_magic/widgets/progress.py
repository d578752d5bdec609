"""JobProgress: a live progress bar, status line and Cancel button for a background Job."""
from __future__ import annotations

import threading
from typing import Any

import ipywidgets as W

from ..engine.jobs import Job

_STYLES = {"done": "success", "failed": "danger", "cancelled": "warning"}
_ENDED = tuple(_STYLES)


class JobProgress(W.HBox):
    """Progress of a `Job`: bar, label (description, phase, done/total, elapsed s, status), Cancel.

    Create it on the main thread; it subscribes to `job.on_change` and afterwards only sets
    traits of its existing child widgets, from the job's thread. When the job ends the bar
    turns green (done), red (failed) or orange (cancelled) and Cancel is disabled.
    """

    def __init__(self, job: Job, description: str | None = None, **kwargs: Any):
        self.job = job
        self.description = description if description is not None else (job.description or f"job {job.id}")
        self.bar = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="240px"))
        self.label = W.Label()
        self.cancel_button = W.Button(description="Cancel", icon="stop", tooltip="cancel this job",
                                      layout=W.Layout(width="auto"))
        self.cancel_button.on_click(lambda _b: self.job.cancel())
        super().__init__([self.bar, self.label, self.cancel_button], **kwargs)
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._sync()
        job.on_change(lambda _job: self._sync())
        self._sync()   # a change between the first sync and the subscription

    def _sync(self) -> None:
        """Copy the job's state to the child widgets (any thread; the latest state always wins)."""
        with self._lock:
            job = self.job
            status, done, total = job.status, int(job.done_units), int(job.total)
            ended = status in _ENDED and job.is_done()
            top = max(total, 1)
            value = top if status == "done" else min(max(done, 0), top)
            with self.bar.hold_sync():
                self.bar.max = top
                self.bar.value = value
                self.bar.bar_style = _STYLES.get(status, "") if ended else ""
            phase = getattr(job, "phase", "")
            text = " · ".join(p for p in (self.description, phase, f"{done:,}/{total:,}" if total else "",
                                          f"{job.seconds:.1f} s", status) if p)
            if status == "failed" and job.error is not None:
                text += f": {type(job.error).__name__}: {job.error}"
            self.label.value = text
            if ended:
                self.cancel_button.disabled = True
                self._ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the widget shows the job's end state; False on timeout."""
        return self._ended.wait(timeout)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def __repr__(self) -> str:
        return f"<JobProgress {self.job!r}>"

