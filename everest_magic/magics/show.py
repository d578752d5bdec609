"""How magic results show in the notebook.

A background query displays a progress bar with a display id; the gallery is created
empty on the main thread at the same time. When the job ends, its thread fills the
gallery (traits only) and replaces the progress output with it (update_display_data), so
the result lands in the cell that asked, with a static HTML fallback in the same bundle.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from IPython.display import display

from ..engine import Job, Result, Session
from .state import KernelState


def job_widget(job: Job):
    """A live progress bar with a Cancel button."""
    from ..widgets import JobProgress
    return JobProgress(job)


def result_widget(result: Result, session: Session, render: Callable | None, state: KernelState):
    """A gallery of a finished result (drill-downs run on the session's queue)."""
    from ..widgets import Gallery
    g = Gallery(result, session, render=render, submit=session.submit)
    _record_drilldowns(g, state, session)
    return g


def query_widget(job: Job, session: Session, render: Callable | None, state: KernelState) -> None:
    """Show a running query: progress now, the gallery in its place when done."""
    from ..widgets import Gallery, JobProgress
    progress = JobProgress(job)
    gallery = Gallery(None, session, render=render, submit=session.submit)
    _record_drilldowns(gallery, state, session)
    handle = display(progress, display_id=True)

    def finish(j: Job) -> None:
        if j.status == "done":
            gallery.show(j.result())
            handle.update(gallery)
        else:
            msg = str(j.error) if j.error is not None else j.status
            handle.update({"text/plain": f"{j.status}: {msg}"}, raw=True)

    on_end(job, finish)


def inspect_widget(job: Job, session: Session, display_fn: Callable = display) -> None:
    """Show an inspection: progress now (in a box made here, on the main thread); when the job
    ends, the box holds the ranked tables (`InspectTable`: click a unit for its top-k gallery)."""
    import ipywidgets as W
    from ..widgets import JobProgress
    from ..widgets.inspect_table import InspectTable
    box = W.VBox([JobProgress(job)])
    display_fn(box)

    def finish(j: Job) -> None:
        if j.status == "done":
            box.children = [InspectTable(j.result(), session)]

    on_end(job, finish)


def on_end(job: Job, fn: Callable[[Job], None]) -> None:
    """Call `fn(job)` once, when the job ends (at once if it has)."""
    lock, called = threading.Lock(), []

    def check(j: Job) -> None:
        with lock:
            if not j.is_done() or called:
                return
            called.append(True)
        fn(j)

    job.on_change(check)
    check(job)


def _record_drilldowns(g: Any, state: KernelState, session: Session) -> None:
    """Put gallery drill-downs into the query history, as the magic they correspond to."""
    def on_select(level: int, index: int, item_id: int) -> None:
        src = g.results[level]
        if src is None:
            return
        neurons = ", ".join(str(int(n)) for n in src.neurons)
        text = (f"%%everest knn {len(src.ids)}\ntarget {item_id}\nlayer {src.view}\nneurons {neurons}"
                if g.selected.get("action", "knn") == "knn" else
                f"%%everest topk {len(src.ids)}\nlayer {src.view}\nneurons top 10 of input {item_id}")
        state.record(text, "drill-down", session.name)

    g.on_select(on_select)
