"""Gallery: one anywidget showing a result as thumbnails, with drill-down levels below it."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import anywidget
import traitlets as t

from ..engine.errors import JobCancelled, QueryError
from ..engine.jobs import Job
from .histogram import neuron_histogram, result_histogram
from .levels import Render, describe, neurons_level, result_level
from .static import levels_html

_HERE = Path(__file__).parent
ACTIONS = ("knn", "neurons", "topk")
TOP_NEURONS = 10
Submit = Callable[[Callable[[Job], Any], str], Job]
SelectCallback = Callable[[int, int, int, str, Job], None]


def _new_job(fn: Callable[[Job], Any], description: str) -> Job:
    return Job(fn, description, start=True)


class Gallery(anywidget.AnyWidget):
    """A result as a grid of thumbnails (or text snippets) with scores, ids and labels.

    Clicking an item opens a menu of drill-down actions; each runs in the background and
    appends a level below the clicked one (levels after it are dropped first); the
    breadcrumb trail at the top goes back to any level. From Python:

    >>> g = Gallery(result, session)
    >>> g.select(0, action="knn"); g.wait(60)      # same as a click + menu choice
    >>> g.results[-1].ids                          # the drill-down's Result

    The histogram above level 0 shows what the result ranks by over all inputs (see
    `result_histogram`). Text items show their tokens shaded by the group's activation when a
    `tokenizer` is given (default: `collate.tokenizer` of the session's data, if any).

    `render(item) -> PNG bytes | str` overrides how an item is shown. `submit(fn,
    description) -> Job` runs the drill-down work (default: a new `Job` thread), e.g.
    `session.submit` to queue it behind the session's other model work.
    """

    _esm = _HERE / "gallery.js"
    _css = _HERE / "gallery.css"

    levels = t.List(t.Dict()).tag(sync=True)
    selected = t.Dict().tag(sync=True)         # {"level", "index", "id", "action"} of the last selection
    status = t.Unicode("").tag(sync=True)      # shown while a drill-down runs
    error = t.Unicode("").tag(sync=True)
    histogram_png = t.Bytes(b"").tag(sync=True)
    thumb_size = t.Int(96).tag(sync=True)

    def __init__(self, result: Any, session: Any, *, render: Render | None = None, submit: Submit | None = None,
                 size: int = 96, histogram: bool = True, top_neurons: int = TOP_NEURONS, tokenizer: Any = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.session = session
        self.render = render
        self.tokenizer = tokenizer
        self.size = int(size)
        self.top_neurons = int(top_neurons)
        self._submit = submit or _new_job
        self._lock = threading.RLock()
        self._gen = 0
        self._job: Job | None = None
        self._select_callbacks: list[SelectCallback] = []
        self._results: list[Any] = []
        self._with_histogram = histogram
        self.thumb_size = self.size
        if result is not None:
            self.show(result)
        self.on_msg(self._on_msg)

    def show(self, result: Any) -> None:
        """Fill the gallery with `result` (level 0). Only sets traits: safe from a job's thread,
        so a gallery created empty on the main thread can receive a background query's result."""
        level = result_level(result, self.session, render=self.render, size=self.size, tokenizer=self.tokenizer)
        with self._lock:
            self._results = [result]
            self.levels = [level]
        if self._with_histogram:
            try:
                self.histogram_png = self.histogram()
            except Exception as e:  # the gallery is still useful without it
                self.error = f"histogram unavailable: {e}"

    # -- Python API --------------------------------------------------------------------------
    @property
    def result(self) -> Any:
        """The result the gallery was built for (level 0); None while it waits for one."""
        return self._results[0] if self._results else None

    @property
    def results(self) -> list[Any]:
        """One entry per level: its Result, or None for a text level (most activated neurons)."""
        with self._lock:
            return list(self._results)

    @property
    def job(self) -> Job | None:
        """The latest drill-down job."""
        return self._job

    def on_select(self, callback: SelectCallback, remove: bool = False) -> None:
        """Call `callback(level_index, item_index, item_id, action, job)` on each selection (click
        or `select`), once its drill-down job has started."""
        if remove:
            self._select_callbacks.remove(callback)
        else:
            self._select_callbacks.append(callback)

    def select(self, i: int, level: int = -1, action: str = "knn") -> Job:
        """Select item `i` of `level` and run a drill-down action in the background, as a click does.

        `action`: "knn" (kNN from the item, same view, group and k, metric l2), "neurons"
        (the item's most activated neurons of the view, as text), or "topk" (top-k over those
        neurons). When done, the new level replaces the levels after `level`. Returns the Job.
        """
        if action not in ACTIONS:
            raise QueryError(f"unknown gallery action {action!r}; expected one of {', '.join(ACTIONS)}")
        with self._lock:
            L = self._level_index(level)
            src = self._results[L]
            if src is None:
                raise QueryError(f"level {L} has no items to select")
            if not -len(src.ids) <= i < len(src.ids):
                raise QueryError(f"item {i} is out of range: level {L} has {len(src.ids)} items")
            i = int(i) % len(src.ids)
            item_id = int(src.ids[i])
        with self._lock:
            if self._job is not None and not self._job.is_done():
                self._job.cancel()
            self._gen += 1
            gen = self._gen
            self.selected = {"level": L, "index": i, "id": item_id, "action": action}
            self.error = ""
            self.status = f"{_ACTION_NAMES[action]} from #{item_id}…"
        desc = f"{_ACTION_NAMES[action]} from #{item_id} ({src.view})"
        try:
            job = self._submit(lambda job: self._drill(job, gen, L, src, item_id, action), desc)
        except Exception as e:
            self.status, self.error = "", f"could not start {desc}: {e}"
            raise
        with self._lock:
            if gen == self._gen:
                self._job = job
        job.on_change(lambda j: self._on_job_change(j, gen))
        for cb in list(self._select_callbacks):
            cb(L, i, item_id, action, job)
        return job

    def back(self, level: int) -> None:
        """Go back to `level` (a breadcrumb click): drop the levels after it, cancel a pending drill-down."""
        with self._lock:
            L = self._level_index(level)
            if self._job is not None and not self._job.is_done():
                self._job.cancel()
            self._gen += 1
            self._results = self._results[:L + 1]
            self.levels = list(self.levels[:L + 1])
            self.status = ""
            self.error = ""
            self.selected = {}

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the pending drill-down job; True when none is left running."""
        job = self._job
        return True if job is None else job.wait(timeout)

    def histogram(self, neuron: int | None = None, *, width: int = 360, height: int = 120) -> bytes:
        """PNG histogram from the index with the result's items as red ticks: by default of what the
        result ranks by (the group's aggregate, the kNN distance; `result_histogram`), or of one
        `neuron` of the view (its partitions). No model run beyond the target and the k items."""
        r = self.result
        if neuron is None:
            return result_histogram(self.session, r, width=width, height=height)
        return neuron_histogram(self.session, r.view, int(neuron), r.ids, width=width, height=height)

    def static_html(self) -> str:
        """The current levels as self-contained HTML (thumbnails as data: URIs)."""
        return levels_html(self.levels, self.histogram_png)

    def _repr_mimebundle_(self, **kwargs: Any):
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, meta = bundle
        data = dict(data)
        data["text/html"] = self.static_html()
        return data, meta

    def __repr__(self) -> str:
        if not self._results:
            return "<Gallery (waiting for a result)>"
        r = self.result
        return f"<Gallery {r.kind} view={r.view!r} k={len(r.ids)} levels={len(self.levels)}>"

    # -- internals -------------------------------------------------------------------------------
    def _level_index(self, level: int) -> int:
        n = len(self.levels)
        if not -n <= int(level) < n:
            raise QueryError(f"level {level} is out of range: the gallery has {n} levels")
        return int(level) % n

    def _drill(self, job: Job, gen: int, L: int, src: Any, item_id: int, action: str) -> Any:
        """Run one action (on the job's thread) and append its level: only traits are set here."""
        s = self.session
        k = int((src.params or {}).get("k", len(src.ids)))
        try:
            if action == "knn":
                value = s.knn(item_id, src.view, src.neurons, k, metric="l2")
                level = result_level(value, s, title=f"kNN #{item_id}", render=self.render, size=self.size,
                                     tokenizer=self.tokenizer)
            elif action == "neurons":
                level, value = neurons_level(s, src.view, item_id, self.top_neurons)
            else:
                neurons = s.top_neurons(item_id, src.view, self.top_neurons)
                job.check()
                value = s.topk(src.view, neurons, k, by="sum")
                level = result_level(value, s, title=f"top-k #{item_id} neurons", render=self.render, size=self.size,
                                     tokenizer=self.tokenizer)
                level["description"] = describe(value, lead=f"top-k of the {len(neurons)} most activated neurons of #{item_id}")
            job.check()
        except JobCancelled:
            raise
        except Exception as e:
            with self._lock:
                if gen == self._gen:
                    self.error = f"{_ACTION_NAMES[action]} from #{item_id} failed: {type(e).__name__}: {e}"
                    self.status = ""
            raise
        with self._lock:
            if gen == self._gen:   # not superseded by a newer selection or a breadcrumb click
                self._results = self._results[:L + 1] + [value if action != "neurons" else None]
                self.levels = list(self.levels[:L + 1]) + [level]
                self.status = ""
        return value

    def _on_job_change(self, job: Job, gen: int) -> None:
        if job.status in ("cancelled", "failed") and job.is_done():
            with self._lock:
                if gen == self._gen and self.status:
                    self.status = ""

    def _on_msg(self, _widget: Any, content: Any, buffers: Any) -> None:
        """Messages from the front end: {"event": "select", "level", "index", "action"} and
        {"event": "back", "level"}. Errors show in the `error` trait."""
        if not isinstance(content, dict):
            return
        try:
            event = content.get("event")
            if event == "select":
                self.select(int(content["index"]), level=int(content.get("level", -1)),
                            action=str(content.get("action", "knn")))
            elif event == "back":
                self.back(int(content["level"]))
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"


_ACTION_NAMES = {"knn": "kNN", "neurons": "most activated neurons", "topk": "top-k of the most activated neurons"}

