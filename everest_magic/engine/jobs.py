"""Background jobs: a thread per job with progress, cancellation and a result."""
from __future__ import annotations

import contextvars
import queue
import threading
import time
import traceback
from typing import Any, Callable

from .errors import JobCancelled


class Job:
    """A unit of work on a background thread.

    The work function receives the job and should call `job.step(done_units, total)` from
    time to time; `step` raises `JobCancelled` once `cancel()` was called.
    `done_units` of `total` is the progress count; `is_done()` says whether the job ended;
    `started_at` and `finished_at` are Unix times (None until then).
    """

    _ids = iter(range(1, 1 << 62))

    def __init__(self, fn: Callable[["Job"], Any], description: str = "", start: bool = True):
        self.id = next(Job._ids)
        self.description = description
        self.done_units = 0
        self.total = 0
        self.status = "pending"   # pending, running, done, failed, cancelled
        self.error: BaseException | None = None
        self.traceback = ""
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._fn = fn
        self._value: Any = None
        self._cancel = threading.Event()
        self._ended = threading.Event()
        self._listeners: list[Callable[["Job"], None]] = []
        self._thread: threading.Thread | None = None
        self.context = contextvars.copy_context()   # the caller's context (e.g. its notebook cell)
        self.queue: str | None = None
        self.phase = ""           # what the job is doing now, when it has stages (e.g. "index conv1")
        if start:
            self.start()

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "Job":
        """Run on a new background thread, in the context of the code that created the job."""
        self._thread = threading.Thread(target=self.context.run, args=(self._run,), name=f"everest-job-{self.id}", daemon=True)
        self._thread.start()
        return self

    def run_here(self) -> Any:
        """Run the job on the calling thread and return its result."""
        self._run()
        return self.result()

    def _run(self) -> None:
        self.started_at = time.time()
        if self._cancel.is_set():
            self.status, self.error = "cancelled", JobCancelled(f"job {self.id} ({self.description}) was cancelled")
            self.finished_at = time.time()
            self._ended.set()
            self._notify()
            return
        self.status = "running"
        self._notify()
        try:
            self._value = self._fn(self)
            self.status = "done"
        except JobCancelled as e:
            self.status, self.error = "cancelled", e
        except BaseException as e:  # reported through result()
            self.status, self.error, self.traceback = "failed", e, traceback.format_exc()
        self.finished_at = time.time()
        self._ended.set()
        self._notify()

    # -- used by the work function ---------------------------------------------------------
    def step(self, done_units: int, total: int | None = None) -> None:
        """Report progress; raises JobCancelled if cancellation was requested."""
        self.done_units = done_units
        if total is not None:
            self.total = total
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} ({self.description}) was cancelled")
        self._notify()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} ({self.description}) was cancelled")

    # -- used by callers ------------------------------------------------------------------
    def cancel(self) -> bool:
        """Ask the job to stop at its next progress step; True if it was still running."""
        if self._ended.is_set():
            return False
        self._cancel.set()
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def progress(self) -> float:
        return 1.0 if self.status == "done" else (self.done_units / self.total if self.total else 0.0)

    @property
    def seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at

    def is_done(self) -> bool:
        """Has the job ended (done, failed or cancelled)?"""
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job; return its value or raise its error."""
        if not self._ended.wait(timeout):
            raise TimeoutError(f"job {self.id} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self._value

    def on_change(self, fn: Callable[["Job"], None]) -> None:
        """Call `fn(job)` on every progress step and status change (from the job's thread)."""
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception:  # a listener must never break the job
                pass

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.description!r} {self.status} {self.done_units}/{self.total}>"

    def to_json(self) -> dict:
        """The job as `%everest jobs` and the sidebar show it (JSON-ready; mirrored by `IJob`
        in labextension/model.ts)."""
        return {"id": self.id, "description": self.description, "status": self.status, "phase": self.phase,
                "done_units": self.done_units, "total": self.total, "progress": self.progress,
                "seconds": round(self.seconds, 2), "queue": self.queue,
                "error": "" if self.error is None else str(self.error)}


class JobManager:
    """Owns background jobs: one worker thread per named queue runs its jobs in order.

    Model work goes to a queue per device (e.g. ``"cpu"``); index builds use their own
    queue (``"cpu/index"``) so queries keep flowing while a build runs (the session's
    model lock interleaves their batches).
    """

    def __init__(self):
        self.jobs: dict[int, Job] = {}
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Job], None]] = []

    def submit(self, fn: Callable[[Job], Any], description: str = "", queue_name: str = "cpu") -> Job:
        """Queue `fn(job)`; it runs in the caller's context when its turn comes."""
        job = Job(fn, description, start=False)
        job.queue = queue_name
        for listener in self._listeners:
            job.on_change(listener)
        with self._lock:
            self.jobs[job.id] = job
            q = self._queues.get(queue_name)
            if q is None:
                q = self._queues[queue_name] = queue.Queue()
                threading.Thread(target=self._work, args=(q,), name=f"everest-queue-{queue_name}", daemon=True).start()
        q.put(job)
        for listener in self._listeners:
            listener(job)
        return job

    def _work(self, q: queue.Queue) -> None:
        while True:
            job = q.get()
            if job is None:
                return
            job.context.run(job._run)

    def on_change(self, fn: Callable[[Job], None]) -> None:
        """Call `fn(job)` on every change of every job submitted from now on."""
        self._listeners.append(fn)

    def get(self, job_id: int) -> Job:
        if job_id not in self.jobs:
            from .errors import UnknownNameError
            raise UnknownNameError("job", str(job_id), [str(j) for j in self.jobs])
        return self.jobs[job_id]

    def cancel(self, job_id: int | None = None) -> list[Job]:
        """Cancel one job, or every unfinished job when `job_id` is None."""
        jobs = [self.get(job_id)] if job_id is not None else [j for j in self.jobs.values() if not j.is_done()]
        return [j for j in jobs if j.cancel()]

    def running_jobs(self) -> list[Job]:
        """Jobs pending or running."""
        return [j for j in self.jobs.values() if j.status in ("pending", "running")]

    def succeeded_jobs(self) -> list[Job]:
        """Jobs that ended with a result (status "done"; `Job.is_done()` is true for every ended job)."""
        return [j for j in self.jobs.values() if j.status == "done"]

    def failed_jobs(self) -> list[Job]:
        """Jobs that failed or were cancelled."""
        return [j for j in self.jobs.values() if j.status in ("failed", "cancelled")]

    def status(self) -> list[dict]:
        """`Job.to_json()` of every job, oldest first."""
        return [j.to_json() for j in self.jobs.values()]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the workers."""
        self.cancel()
        for j in list(self.jobs.values()):
            j.wait(timeout)
        with self._lock:
            for q in self._queues.values():
                q.put(None)
            self._queues.clear()
