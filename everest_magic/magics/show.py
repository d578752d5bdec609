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
from .state import KernelState, result_summary


def job_widget(job: Job):
    """A live progress bar with a Cancel button."""
    from ..widgets import JobProgress
    return JobProgress(job)


def result_widget(result: Result, session: Session, render: Callable | None, state: KernelState):
    """A gallery of a finished result (drill-downs run on the session's queue)."""
    from ..widgets import Gallery
    g = Gallery(result, session, render=render, submit=session.submit, tokenizer=state.tokenizers.get(session.name))
    _record_drilldowns(g, state, session)
    return g


def query_widget(job: Job, session: Session, render: Callable | None, state: KernelState) -> None:
    """Show a running query: progress now, the gallery in its place when done."""
    from ..widgets import Gallery, JobProgress
    progress = JobProgress(job)
    gallery = Gallery(None, session, render=render, submit=session.submit,
                      tokenizer=state.tokenizers.get(session.name))
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


def inspect_widget(job: Job, session: Session | dict[str, Session], display_fn: Callable = display) -> None:
    """Show an inspection: progress now (in a box made here, on the main thread); when the job
    ends, the box holds the ranked tables (`InspectTable`: click a unit for its top-k gallery;
    `session` is a dict model name -> Session for an inspection of several models)."""
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
    """Put every gallery drill-down into the query history as the magic that reproduces what it
    shows (`drilldown_magic`), finished when its job ends."""
    def on_select(level: int, index: int, item_id: int, action: str, job: Job) -> None:
        src = g.results[level]
        if src is None:
            return
        text = drilldown_magic(src, item_id, action, g.top_neurons,
                               session.name if len(state.sessions) > 1 else None)
        entry = state.record(text, "drill-down", session.name, job.id)

        def finish(j: Job) -> None:
            if action == "neurons" and j.status == "done":
                state.finish(entry, "done", f"{len(j.result())} neurons")
            else:
                state.finish(entry, j.status, result_summary(j))

        on_end(job, finish)

    g.on_select(on_select)


def drilldown_magic(src: Result, item_id: int, action: str, top_neurons: int, session: str | None = None) -> str:
    """The %everest text that gives what a gallery drill-down shows: a kNN from the item over the
    same view and neurons (metric l2, the same k), the item's `top_neurons` most activated
    neurons, or the top-k (by sum, the same k) of those."""
    k = int((src.params or {}).get("k", len(src.ids)))
    where = [f"in session {session}"] if session else []
    if action == "knn":
        lines = [f"%%everest knn {k}", f"target {item_id}", f"layer {src.view}",
                 f"neurons {neuron_list(src.neurons)}", "metric l2"]
    elif action == "topk":
        lines = [f"%%everest topk {k}", f"layer {src.view}", f"neurons top {top_neurons} of input {item_id}", "by sum"]
    else:
        return f"%everest neurons top {top_neurons} of input {item_id} layer {src.view}" + \
            (f" in session {session}" if session else "")
    return "\n".join(lines + where)


def neuron_list(neurons: Any) -> str:
    """Flat neuron ids as query text, runs of 3+ consecutive ids as ranges: `0:4, 9, 17`."""
    ids = [int(n) for n in neurons]
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{ids[i]}:{ids[j] + 1}")
        else:
            parts.extend(str(x) for x in ids[i:j + 1])
        i = j + 1
    return ", ".join(parts)
