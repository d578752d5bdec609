"""One handler per verb of %everest, dispatched from a table.

Each handler takes the parsed command and a `MagicContext` (kernel state, user namespace,
display function) and returns what the magic should show (or None). An engine error about
one argument (its `param`: a view, neurons, k...) is re-raised as a QuerySyntaxError under
that argument's value, whose span the parsed command carries.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..engine import Job, Session
from ..engine.errors import EverestError, JobCancelled, QueryError, UnknownNameError, brief
from ..engine.query import make_aggregation
from . import parser as P
from .state import KernelState, result_summary


@dataclass
class MagicContext:
    """What a handler works with: the kernel state, the user namespace, the display function."""

    state: KernelState
    ns: dict
    display: Callable[[Any], None]


# -- positions ----------------------------------------------------------------------------

# an engine parameter -> the keyword whose value gives it (the others are spelled alike)
KEYWORD_OF = {"view": "layer", "views": "layer", "filter": "where", "sessions": "models"}


def span_of(cmd: P.Command, *keys: str | None) -> P.Span:
    """The span of the first of `keys` the command has (else line 1, column 1)."""
    found = next((cmd.spans[k] for k in keys if k in cmd.spans), None)
    return found or P.Span(1, 1, 1, magic_line(cmd.text.split("\n")[0]))


def magic_line(first: str) -> str:
    """The magic line as typed, from the first line of the magic text (`%everest ` + line)."""
    return re.sub(r"^%%?everest ?", "", first)


def at_command(e: EverestError, text: str) -> P.QuerySyntaxError:
    """An engine error about the command as a whole (a damaged index, a model that raised...),
    placed under the command's first non-blank line."""
    lines = text.split("\n")
    first = magic_line(lines[0])
    numbered = [(1, first)] + list(enumerate(lines[1:], start=2))
    line, src = next(((i, s) for i, s in numbered if s.strip()), (1, first))
    column = len(src) - len(src.lstrip()) + 1
    return P.QuerySyntaxError(str(e), line, column, src, None, len(src.strip()))


def at_param(e: EverestError, cmd: P.Command, default: str, **aliases: str) -> P.QuerySyntaxError:
    """An engine error placed under the value of the keyword its `param` names (`aliases`: param ->
    keyword, for this command), else under `default`'s value."""
    key = aliases.get(e.param) or KEYWORD_OF.get(e.param, e.param)
    return at_span(e, span_of(cmd, key, default))


def at_span(e: EverestError, span: P.Span) -> P.QuerySyntaxError:
    """An engine error placed under `span`; an unknown name's first suggestion becomes the hint."""
    msg, suggestion = str(e), None
    if isinstance(e, UnknownNameError) and e.suggestions:
        suggestion = e.suggestions[0]
        msg = msg.split("; did you mean")[0]
        if len(e.suggestions) > 1:
            msg += "; other close names: " + ", ".join(e.suggestions[1:])
    return P.error_at(span, msg, suggestion)


# -- use / layers / index ---------------------------------------------------------------------


def do_use(cmd: P.UseCommand, ctx: MagicContext) -> Any:
    name = P.resolve(cmd.name, ctx.ns) if cmd.name is not None else None
    opts = dict(cmd.options)
    if not opts:
        if name is None:
            return ctx.state.session()
        return ctx.state.switch(str(name))
    missing = [k for k in ("model", "data") if k not in opts]
    if missing:
        raise P.QuerySyntaxError(f"use needs {' and '.join(k + '=NAME' for k in missing)}", 1, 1,
                                 cmd.text.split("\n")[0], None)
    values = {k: _use_value(k, v, ctx.ns) for k, v in opts.items()}
    render = values.pop("render", None)
    tokenizer = values.pop("tokenizer", None)
    model, data = values.pop("model"), values.pop("data")
    index = values.pop("index", None)
    name = str(name or "default")
    try:
        s = Session(model, data, index=index, name=name, jobs=ctx.state.jobs, **values)
    except EverestError as e:
        raise at_param(e, cmd, "use") from e
    ctx.state.add_session(name, s, render)
    ctx.state.tokenizers[name] = tokenizer
    return s


USE_KINDS = {"int": "a positive int", "float": "a number", "bool": "True or False", "str": "a string"}


def _use_value(key: str, value: Any, ns: dict) -> Any:
    """A `use` option's value; one given as an `{expr}` must be of the option's kind."""
    out = P.resolve(value, ns)
    kind = P.USE_OPTIONS[key]
    if isinstance(value, P.Expr) and not _fits(kind, out):
        raise P.error_at(value, f"{key}= needs {USE_KINDS[kind]}, got {brief(out)}")
    return out


def _fits(kind: str, value: Any) -> bool:
    if kind == "int":
        return P._as_index(value) is not None and value >= 1
    if kind == "float":
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if kind == "str":
        return isinstance(value, (str, os.PathLike))
    return True   # "object", "str|object": any object (model, data, labels, a Dask client...)


def do_layers(cmd: P.LayersCommand, ctx: MagicContext) -> Any:
    import pandas as pd
    s = ctx.state.session(cmd.session)
    rows = s.layers()
    for r in rows:
        r["neurons"] = int(np.prod(r["shape"])) if r["shape"] is not None else None
        r["indexed"] = ", ".join(r["indexed"])
    return pd.DataFrame(rows, columns=["layer", "type", "shape", "neurons", "indexed"])


def do_index(cmd: P.IndexCommand, ctx: MagicContext) -> Any:
    s = ctx.state.session(cmd.session)
    origin = view_names(cmd.views, ctx.ns)
    for v, i in origin.items():
        try:
            s.view(v)
        except EverestError as e:
            raise at_span(e, span_of(cmd, f"views[{i}]", "index")) from e
    views = list(origin)
    done = [v for v in views if s.view(v).name in s.indexed()]
    if done and len(done) == len(views) and not cmd.rebuild:
        print(f"already indexed: {', '.join(done)} (nothing to do; --rebuild builds again)")
        return _index_table(s, views) if cmd.wait else None
    job = s.build_index(views, rebuild=cmd.rebuild)
    if done and not cmd.rebuild:
        print(f"already indexed, left as they are: {', '.join(done)} (--rebuild builds them again)")
    entry = ctx.state.record(cmd.text, "index", s.name, job.id)
    job.on_change(lambda j: j.is_done() and ctx.state.finish(entry, j.status, f"{j.seconds:.1f} s"))
    if cmd.wait:
        job.result()
        return _index_table(s, views)
    from .show import job_widget
    ctx.display(job_widget(job))
    return None


def view_names(values: list, ns: dict) -> dict[str, int]:
    """View names of an `index` line, in order, each once, with the position in `values` of the
    item that gave it; an `{expr}` may give a name or a list (tuple, set) of names."""
    names: dict[str, int] = {}
    for i, v in enumerate(values):
        value = P.resolve(v, ns)
        for name in value if isinstance(value, (list, tuple, set, frozenset)) else [value]:
            names.setdefault(str(name), i)
    return names


def do_extend(cmd: P.ExtendCommand, ctx: MagicContext) -> Any:
    s = ctx.state.session(cmd.session)
    data = P.resolve(cmd.data, ctx.ns)
    labels = P.resolve(cmd.labels, ctx.ns) if cmd.labels is not None else None
    try:
        job = s.extend(data, labels=labels, wait=False)
    except EverestError as e:
        raise at_param(e, cmd, "extend", inputs="data") from e
    entry = ctx.state.record(cmd.text, "extend", s.name, job.id)
    job.on_change(lambda j: j.is_done() and ctx.state.finish(entry, j.status, f"{j.seconds:.1f} s"))
    if cmd.wait:
        job.result()
        return _index_table(s, list(s.indexed()))
    from .show import job_widget
    ctx.display(job_widget(job))
    return None


def _index_table(s: Session, views: list[str]):
    """The views' `ViewInfo.to_json()` as a table, sizes in MB and percent, seconds rounded."""
    import pandas as pd
    rows = []
    for v in views:
        j = s.indexed()[s.view(v).name].to_json()
        rows.append({"view": j["name"], "neurons": j["neurons"], "MB on disk": round(j["bytes"] / 1e6, 2),
                     "% of float32": round(100 * j["size_ratio"], 1), "partitions": j["partitions"],
                     "list fraction": j["list_fraction"], "inputs": j["inputs"], "files": j["files"],
                     "build s": round(j["build_seconds"], 1)})
    return pd.DataFrame(rows)


# -- queries -----------------------------------------------------------------------------------

class PendingResult:
    """What `-o NAME` binds while a query runs; the name is rebound to the Result when done.

    Attribute access waits for the result (`top.ids` blocks until it is ready).
    """

    def __init__(self, job, ns: dict, name: str):
        self.job, self._ns, self._name = job, ns, name
        job.on_change(self._rebind)

    def _rebind(self, job) -> None:
        if job.status == "done" and self._ns.get(self._name) is self:
            self._ns[self._name] = job.result()

    def result(self, timeout: float | None = None):
        return self.job.result(timeout)

    def done(self) -> bool:
        return self.job.is_done()

    def __getattr__(self, item: str):
        if item.startswith("_"):
            raise AttributeError(item)
        return getattr(self.job.result(), item)

    def __repr__(self) -> str:
        job = self.job
        if job.status == "done":
            return repr(job.result())
        if job.is_done():
            return f"<everest result: job {job.id} {job.status}: {job.error}>"
        return f"<pending everest result: job {job.id} {job.status} ({100 * job.progress:.0f}%)>"


def resolve_query(cmd: P.QueryCommand, s: Session, ns: dict) -> dict:
    """Evaluate every part of a query command into engine arguments (neurons may stay lazy)."""
    k = P.resolve(cmd.k, ns)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise P.error_at(span_of(cmd, "k", cmd.kind), f"k must be a positive int, got {k!r}")
    layer = P.resolve(cmd.layer, ns)   # the engine refuses what is not a name
    if isinstance(cmd.neurons, P.Channels) and isinstance(layer, str) and ":" not in layer:
        layer = f"{layer}:mean"
    try:
        view = s.view(layer)
        s.can_query(view.name)   # indexed, or the index can be written (a lazy build)
    except EverestError as e:
        raise at_param(e, cmd, "layer") from e
    spec = cmd.neurons
    if isinstance(spec, P.TopOfInput):
        n_top, input_id = P.resolve(spec.n, ns), P.resolve(spec.input_id, ns)
        neurons: Any = ("top", int(n_top), input_id)
    else:
        neurons = P.expand_neurons(spec, ns)
    by = cmd.by
    if isinstance(by, P.Weights):
        by = P.expand_weights(by, ns)
    else:
        by = P.resolve(by, ns)
    allowed = None
    if cmd.filter is not None:
        allowed = _filter_mask(cmd.filter, s, ns, span_of(cmd, "where"))
    target = P.resolve(cmd.target, ns) if cmd.target is not None else None
    return {"k": int(k), "view": view.name, "neurons": neurons, "by": by, "filter": allowed, "target": target}


def _filter_mask(f: P.Filter, s: Session, ns: dict, where: P.Span) -> np.ndarray:
    """The boolean mask over inputs of a `where` line (`where`: its span, for errors)."""
    if f.field == "labels":
        if s.labels is None:
            raise P.error_at(where, "this session has no labels: pass labels=ARRAY to %everest use")
        col = s.labels
    else:
        col = np.arange(s.n)
    vals = np.asarray(_filter_values(f, ns))
    if f.op in ("==", "!="):
        mask = col == vals[0] if len(vals) == 1 and f.op in ("==", "!=") else np.isin(col, vals)
    else:
        mask = np.isin(col, vals)
    return ~mask if f.op in ("!=", "not in") else mask


def _filter_values(f: P.Filter, ns: dict) -> list:
    """The values of a `where` line as a flat list. An `{expr}` may give one value or a flat
    collection of them (list, set, range, array, tensor); ids must be ints."""
    out: list = []
    for item in f.value if isinstance(f.value, list) else [f.value]:
        value = P.resolve(item, ns)
        values = _values_of(value) if isinstance(item, P.Expr) else [value]
        for v in values:
            if not (P._as_index(v) is not None if f.field == "ids" else _single(v)):
                what = "input ids (ints)" if f.field == "ids" else "labels"
                raise P.error_at(item, f"{{{item.text}}} gave {brief(value)}; where {f.field} needs {what}: "
                                       "one value or a flat collection of them")
        out.extend(values)
    return out


def _single(value: Any) -> bool:
    """One value (a number, a string, a 0-d array), not a collection."""
    return isinstance(value, (str, bytes)) or getattr(value, "ndim", None) == 0 or not isinstance(value, Iterable)


def _values_of(value: Any) -> list:
    if _single(value) or isinstance(value, Mapping):
        return [value]
    if hasattr(value, "tolist"):   # an array or tensor (nested lists when not 1-d)
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    return list(value)


def run_resolved(s: Session, cmd: P.QueryCommand, q: dict):
    """Run a resolved query on the calling thread; returns the Result."""
    neurons = q["neurons"]
    if isinstance(neurons, tuple) and neurons and neurons[0] == "top":
        _, count, input_id = neurons
        try:
            neurons = s.top_neurons(input_id, q["view"], count)
        except QueryError as e:   # its input id and count are on the neurons line
            raise at_param(e, cmd, "neurons", k="neurons") from e
    try:
        if cmd.kind == "knn":
            r = s.knn(q["target"], q["view"], neurons, k=q["k"], metric=cmd.metric,
                      include_target=cmd.include_target, filter=q["filter"])
        else:
            r = s.topk(q["view"], neurons, k=q["k"], by=q["by"], lowest=cmd.kind == "bottomk", filter=q["filter"])
    except QueryError as e:
        raise at_param(e, cmd, cmd.kind) from e
    r.text = cmd.text
    return r


def do_query(cmd: P.QueryCommand, ctx: MagicContext) -> Any:
    state = ctx.state
    name = cmd.session or state.current
    s = state.session(name)
    q = resolve_query(cmd, s, ctx.ns)
    if cmd.kind == "knn" and q["target"] is None:
        raise P.error_at(span_of(cmd, "target", "knn"), "knn needs a target line: target ID")
    # neurons out of range and weights that do not fit are reported now, at their position (not by the job)
    if not isinstance(q["neurons"], tuple):
        try:
            group = s.neuron_ids(q["view"], q["neurons"])
            if cmd.kind != "knn":
                make_aggregation(q["by"], len(group))
        except QueryError as e:
            raise at_param(e, cmd, cmd.kind) from e

    def work(job):
        built = ensure_view(s, q["view"], job)
        job.phase = "query"
        job.step(job.total if built else 0, job.total if built else 1)
        r = run_resolved(s, cmd, q)
        job.phase = f"built the index of {q['view']}, then queried" if built else ""
        job.step(job.total, job.total)
        return r

    job = s.submit(work, cmd.text.split("\n")[0].strip())
    _track(job, cmd, ctx, s.name, cmd.kind, result_summary)
    from .show import query_widget, result_widget
    if cmd.wait:
        r = job.result()
        if cmd.output:
            ctx.ns[cmd.output] = r
        ctx.display(result_widget(r, s, state.renders.get(s.name), state))
        return None
    query_widget(job, s, state.renders.get(s.name), state)
    return None


def ensure_view(s: Session, view: str, job: Job) -> bool:
    """Build a view that is not indexed yet before a query on it (lazy sessions), showing the
    build in the query's job: its phase names the build, its done/total are the build's.
    Cancelling the query cancels a build it started. Returns True when it waited for a build."""
    if s.is_indexed(view) or not s.lazy:
        return False
    build = s.pending_build(view)
    started = build is None
    if started:
        build = s.build_index([view])
    job.phase = f"building the index of {view} (first query on it)"
    job.step(build.done_units, build.total)
    build.on_change(lambda b: job.step(b.done_units, b.total))   # every build step, in the query's job
    try:
        while not build.wait(0.2):
            job.check()   # raises JobCancelled when the query is cancelled
    except JobCancelled:
        if started:
            build.cancel()
        raise
    job.step(build.done_units, build.total)
    build.result()   # the build's error, if it failed
    return True


def _track(job, cmd: Any, ctx: MagicContext, session: str, kind: str, summary: Callable) -> None:
    """Record a background command in the history (finished with `summary(job)`), and bind
    `-o NAME` to a handle that becomes the job's result."""
    entry = ctx.state.record(cmd.text, kind, session, job.id)
    job.on_change(lambda j: j.is_done() and ctx.state.finish(entry, j.status, summary(j)))
    if cmd.output:
        ctx.ns[cmd.output] = PendingResult(job, ctx.ns, cmd.output)


# -- inspect ------------------------------------------------------------------------------------

def do_inspect(cmd: P.InspectCommand, ctx: MagicContext) -> Any:
    """Units of views x hypotheses x measures, as a background job (see everest_magic.inspect)."""
    from ..inspect import inspect_job
    if cmd.models:   # several sessions over the same data, in one pass
        try:
            models: Any = {name: ctx.state.session(name) for name in cmd.models}
        except EverestError as e:
            raise at_param(e, cmd, "models") from e
        s = next(iter(models.values()))
    else:
        s = models = ctx.state.session(cmd.session)
    views = [str(P.resolve(v, ctx.ns)) for v in cmd.views]
    hyps: dict[str, Any] = {}
    for h in cmd.hypotheses:
        name = h.text if isinstance(h, P.Expr) else str(h)
        hyps[name] = P.resolve(h, ctx.ns) if isinstance(h, P.Expr) else str(h)
    options = {k: P.resolve(v, ctx.ns) for k, v in cmd.options.items()}
    if cmd.units is not None:
        options["units"] = P.expand_neurons(cmd.units, ctx.ns)
    if cmd.tokenizer is not None:
        options["tokenizer"] = P.resolve(cmd.tokenizer, ctx.ns)
    if cmd.filter is not None:
        options["filter"] = _filter_mask(cmd.filter, s, ctx.ns, span_of(cmd, "where"))
    try:
        job = inspect_job(models, views, hyps, cmd.measures or "auto", **options)
    except EverestError as e:
        raise at_param(e, cmd, "inspect") from e
    _track(job, cmd, ctx, s.name, "inspect",
           lambda j: f"{len(j.result())} scores" if j.status == "done" else str(j.error or j.status))
    from .show import inspect_widget
    if cmd.wait:
        frame = job.result()
        if cmd.output:
            ctx.ns[cmd.output] = frame
    inspect_widget(job, models, ctx.display)
    return None


# -- neurons -------------------------------------------------------------------------------------

def do_neurons(cmd: P.NeuronsCommand, ctx: MagicContext) -> Any:
    """The most activated neurons of one input in a view, as a gallery's drill-down shows them."""
    from ..widgets.levels import neurons_level
    s = ctx.state.session(cmd.session)
    try:
        view = s.view(str(P.resolve(cmd.layer, ctx.ns))).name
        count, input_id = P.resolve(cmd.count, ctx.ns), P.resolve(cmd.input_id, ctx.ns)
        level, _ = neurons_level(s, view, input_id, count)
    except EverestError as e:
        raise at_param(e, cmd, "input", k="count") from e
    return Text(level["text"])


# -- jobs / cancel / status / help -------------------------------------------------------------

def do_jobs(cmd: P.JobsCommand, ctx: MagicContext) -> Any:
    import pandas as pd
    rows = ctx.state.job_rows()
    return pd.DataFrame(rows, columns=["id", "description", "status", "phase", "done_units", "total", "seconds",
                                       "error"])


def do_cancel(cmd: P.CancelCommand, ctx: MagicContext) -> Any:
    jobs = ctx.state.all_jobs()
    if cmd.job is None:
        cancelled = [j for j in jobs.values() if j.cancel()]
    elif cmd.job not in jobs:
        known = f"its jobs are {id_ranges(sorted(jobs))}" if jobs else "no job has run in it yet"
        raise P.error_at(span_of(cmd, "job", "cancel"), f"no job {cmd.job} in this kernel: {known} (see %everest jobs)")
    elif not jobs[cmd.job].cancel():
        return f"job {cmd.job} had already finished ({jobs[cmd.job].status})"
    else:
        cancelled = [jobs[cmd.job]]
    return f"cancelled job{'s' if len(cancelled) != 1 else ''} {', '.join(str(j.id) for j in cancelled) or 'none (nothing was running)'}"


def id_ranges(ids: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> "1-3, 5, 7-8"."""
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def do_status(cmd: P.StatusCommand, ctx: MagicContext) -> Any:
    st = ctx.state
    if not st.sessions:
        return "no session yet: start one with  %everest use model=NET data=DATA index=FOLDER"
    lines = []
    for name, s in st.sessions.items():
        mark = "*" if name == st.current else " "
        lines.append(f"{mark} {name}: {type(s.runner.model).__name__} on {s.runner.device}, {s.n} inputs, index {s.index_path}")
        if s.cluster is not None:
            lines.append(f"    cluster: Dask at {s.cluster.describe()}")
        for v, info in s.indexed().items():
            j = info.to_json()
            lines.append(f"    {v}: {j['neurons']} neurons, {j['bytes'] / 1e6:.1f} MB ({100 * j['size_ratio']:.1f}% of float32)")
        lines.append(f"    cache: {len(s.cache)} rows, {s.cache.bytes / 1e6:.1f} MB of {s.cache.max_bytes / 1e6:.0f} MB")
    running = st.jobs.running_jobs()
    lines.append(f"jobs: {len(running)} running, {len(st.jobs.succeeded_jobs())} done, "
                 f"{len(st.jobs.failed_jobs())} failed or cancelled")
    return Text("\n".join(lines))


def do_help(cmd: P.HelpCommand, ctx: MagicContext) -> Any:
    return Text(P.help_text(cmd.topic))


class Text(str):
    """A string shown as plain text (not as a quoted repr)."""

    def __repr__(self) -> str:
        return str(self)


DISPATCH: dict[type, Callable[[Any, MagicContext], Any]] = {
    P.UseCommand: do_use,
    P.LayersCommand: do_layers,
    P.IndexCommand: do_index,
    P.QueryCommand: do_query,
    P.InspectCommand: do_inspect,
    P.NeuronsCommand: do_neurons,
    P.ExtendCommand: do_extend,
    P.JobsCommand: do_jobs,
    P.CancelCommand: do_cancel,
    P.StatusCommand: do_status,
    P.HelpCommand: do_help,
}
