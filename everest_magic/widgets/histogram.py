"""Histograms from the index (no model run beyond the target and the k items): one neuron's
partitions, or the score a query ranks by (a group's aggregate, a kNN distance) bounded per input."""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BAR = (86, 126, 190)
CLIPPED = (40, 62, 110)
MARK = (214, 39, 40)
AXIS = (90, 90, 90)
TEXT = (40, 40, 40)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _columns(counts: np.ndarray, bounds: np.ndarray, lo: float, hi: float, ncols: int) -> np.ndarray:
    """Spread each interval's count uniformly over the pixel columns of [min, max] (at least one
    column wide): column sums are proportional to counts, overlapping intervals stack.

    Vectorised for many intervals (one per input): the mass left of x is
    F(x) = sum_i w_i (clip(x, a_i, b_i) - a_i) with w_i = c_i / (b_i - a_i), evaluated on the
    column edges from sorted a and b and their prefix sums."""
    counts = np.asarray(counts, np.float64)
    keep = (counts > 0) & np.isfinite(bounds).all(axis=1)
    c, b = counts[keep], bounds[keep]
    if len(c) == 0:
        return np.zeros(ncols, np.float64)
    span = hi - lo
    a, z = (b[:, 0] - lo) / span * ncols, (b[:, 1] - lo) / span * ncols
    narrow = z - a < 1.0
    mid = np.clip((a + z) / 2, 0.5, ncols - 0.5)
    a, z = np.where(narrow, mid - 0.5, a), np.where(narrow, mid + 0.5, z)
    w = c / (z - a)
    edges = np.arange(ncols + 1, dtype=np.float64)

    def ramp(starts: np.ndarray) -> np.ndarray:   # sum over starts < x of w * (x - start)
        order = np.argsort(starts, kind="stable")
        s, ws = starts[order], w[order]
        W = np.concatenate([[0.0], np.cumsum(ws)])
        WS = np.concatenate([[0.0], np.cumsum(ws * s)])
        k = np.searchsorted(s, edges, side="left")
        return edges * W[k] - WS[k]

    F = ramp(a) - ramp(z)
    return np.clip(np.diff(F), 0, None)


def histogram_png(counts: np.ndarray, bounds: np.ndarray, marks: Sequence[float] = (), *, title: str = "",
                  width: int = 360, height: int = 120) -> bytes:
    """PNG of a histogram of intervals: a neuron's partitions, or one interval per input.

    `counts` (P,) and `bounds` (P, 2) are the exact counts and [min, max] of each interval
    (NaN for empty ones): each is a bar over [min, max] whose area is proportional to its
    count. `title` may have several lines (the first is darker). Columns far taller than the rest (e.g. a spike of exact zeros after a
    ReLU) are clipped at the top and drawn darker. `marks` are activations drawn as red ticks
    under the axis.
    """
    counts = np.asarray(counts, np.float64).ravel()
    bounds = np.asarray(bounds, np.float64).reshape(-1, 2)
    marks = np.asarray([m for m in np.asarray(marks, np.float64).ravel() if np.isfinite(m)])
    img = Image.new("RGB", (int(width), int(height)), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lines = title.split("\n") if title else []
    top, bottom, left, right = 4 + 12 * max(1, len(lines)), 26, 6, 6
    x0, x1, y0, y1 = left, width - right, top, height - bottom   # plot box; y1 is the baseline
    ncols, plot_h = max(1, x1 - x0), max(1, y1 - y0)
    ok = (counts > 0) & np.isfinite(bounds).all(axis=1)
    vals = np.concatenate([bounds[ok].ravel(), marks])
    for i, line in enumerate(lines):
        d.text((left, 2 + 12 * i), line, fill=TEXT if i == 0 else AXIS, font=font)
    if len(vals) == 0:
        d.text((left, y0 + plot_h // 2 - 5), "no data", fill=AXIS, font=font)
        return _png(img)
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    dens = _columns(counts[ok], bounds[ok], lo, hi, ncols)
    nz = dens[dens > 0]
    if len(nz):
        ref = max(float(np.percentile(nz, 98)), float(nz.max()) / 8)   # clip only isolated spikes
        scale = 0.92 * plot_h / ref
        for j in np.flatnonzero(dens):
            h = dens[j] * scale
            clipped = h > plot_h
            h = max(1, min(plot_h, int(round(h))))
            d.line([(x0 + j, y1 - h), (x0 + j, y1 - 1)], fill=CLIPPED if clipped else BAR)
    d.line([(x0, y1), (x1, y1)], fill=AXIS)
    for m in marks:
        x = x0 + int(round((m - lo) / (hi - lo) * (ncols - 1)))
        d.line([(x, y1 + 2), (x, y1 + 8)], fill=MARK, width=1)
    d.text((x0, y1 + 11), _fmt(lo), fill=TEXT, font=font)
    right_label = _fmt(hi)
    tw = d.textlength(right_label, font=font)
    d.text((x1 - tw, y1 + 11), right_label, fill=TEXT, font=font)
    if len(marks):
        note = f"{len(marks)} result items"
        nw = d.textlength(note, font=font)
        d.text(((x0 + x1 - nw) / 2, y1 + 11), note, fill=MARK, font=font)
    return _png(img)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def neuron_label(session: Any, view: str, neuron: int) -> str:
    """`neuron 17 (1, 0, 1)`: the flat id, with its index tuple when the view has several axes."""
    try:
        shape = tuple(session.shape(view))
    except Exception:
        shape = ()
    if len(shape) > 1:
        idx = tuple(int(i) for i in np.unravel_index(int(neuron), shape))
        return f"neuron {int(neuron)} {idx}"
    return f"neuron {int(neuron)}"


def neuron_histogram(session: Any, view: str, neuron: int, ids: Sequence[int] | np.ndarray | None = None, *,
                     width: int = 360, height: int = 120, note: str = "") -> bytes:
    """Histogram PNG of one neuron of an indexed view, from `session.store.summary(view)`, with the
    activations of inputs `ids` (cached or recomputed, a few inputs) as ticks."""
    counts, bounds = session.store.summary(view)
    neuron = int(neuron)
    if not 0 <= neuron < counts.shape[0]:
        raise IndexError(f"neuron {neuron} is out of range: view {view!r} has {counts.shape[0]} neurons")
    marks: np.ndarray = np.empty(0)
    if ids is not None and len(ids):
        marks = session.activations(view, np.asarray(ids, np.int64))[:, neuron]
    title = f"{view} · {neuron_label(session, view, neuron)} · {int(counts[neuron].sum()):,} inputs"
    if note:
        title += "\n" + note
    return histogram_png(counts[neuron], bounds[neuron], marks, title=title, width=width, height=height)


_AGG_NAMES = {"sum": "sum", "mean": "mean", "max": "max", "l2": "L2 norm"}
MAX_GROUP = 512   # larger groups: the histogram of their first neuron (reading every pid row costs too much)


def score_bounds(session: Any, result: Any) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(lower (n,), upper (n,), what) of the quantity `result` ranks by, for every input, from the
    index: the aggregate of the group (top-k, bottom-k) or the distance to the target (kNN),
    each neuron's activation bounded by its partition's [min, max]. None where the index gives
    no bound (cosine, an external kNN target, a group over MAX_GROUP neurons)."""
    p = result.params or {}
    group = np.asarray(result.neurons, np.int64)
    if len(group) > MAX_GROUP:
        return None
    _, bounds = session.store.summary(result.view)
    if result.kind == "knn":
        metric, target = p.get("metric", "l2"), p.get("target")
        if metric not in ("l1", "l2", "linf") or not isinstance(target, (int, np.integer)):
            return None
        t = session.activations(result.view, [int(target)])[0][group].astype(np.float64)
        what = f"{metric.upper()} distance to #{int(target)} over {len(group)} neuron{'s' * (len(group) != 1)}"
    else:
        by = p.get("by", "sum")
        weights = np.asarray(by, np.float64) if not isinstance(by, str) else None
        what = (f"{_AGG_NAMES.get(by, by)} of {len(group)} neuron{'s' * (len(group) != 1)}" if weights is None
                else f"weighted sum of {len(group)} neurons")
    lo = hi = None
    for j, neuron in enumerate(group):
        pid = np.asarray(session.store.pids(result.view, int(neuron)), np.int64)
        a, b = bounds[neuron, pid, 0].astype(np.float64), bounds[neuron, pid, 1].astype(np.float64)
        if result.kind == "knn":
            near = np.maximum(np.maximum(a - t[j], t[j] - b), 0.0)
            far = np.maximum(np.abs(a - t[j]), np.abs(b - t[j]))
            if p["metric"] == "l2":
                near, far = near ** 2, far ** 2
            step = np.maximum if p["metric"] == "linf" else np.add
        elif by == "max":
            near, far, step = a, b, np.maximum
        elif by == "l2":
            near = np.where((a <= 0) & (b >= 0), 0.0, np.minimum(a * a, b * b))
            near, far, step = near, np.maximum(a * a, b * b), np.add
        else:
            w = weights[j] if weights is not None else (1.0 / len(group) if by == "mean" else 1.0)
            near, far, step = w * a, w * b, np.add
        lo = near if lo is None else step(lo, near)
        hi = far if hi is None else step(hi, far)
    if (result.kind == "knn" and p["metric"] == "l2") or (result.kind != "knn" and p.get("by") == "l2"):
        lo, hi = np.sqrt(lo), np.sqrt(hi)
    return lo, hi, what


def result_histogram(session: Any, result: Any, *, width: int = 360, height: int = 120) -> bytes:
    """Histogram PNG of what `result` ranks by, over all inputs, with its k scores as red ticks.

    A one-neuron top-k is that neuron's exact partition histogram. A group's aggregate (or a
    kNN distance) has no exact histogram without a full pass: each input is spread over the
    [lower, upper] the index bounds it to, and the title says so. Where the index bounds
    nothing (cosine, external target), the first neuron's histogram, labelled as such."""
    n = int(session.n)
    one = result.kind != "knn" and len(result.neurons) == 1 and (result.params or {}).get("by") in ("sum", "mean", "max")
    got = None if one else score_bounds(session, result)
    if got is None:
        neuron = int(result.neurons[0])
        if one:
            return neuron_histogram(session, result.view, neuron, result.ids, width=width, height=height,
                                    note="exact counts per index partition; ticks: the results")
        return neuron_histogram(session, result.view, neuron, result.ids, width=width, height=height,
                                note="one neuron only: the index does not bound this query's score")
    lo, hi, what = got
    title = f"{result.view} · {what} · {n:,} inputs\nfrom index bounds: each input over its [lower, upper]"
    return histogram_png(np.ones(len(lo)), np.stack([lo, hi], axis=1), np.asarray(result.scores, np.float64),
                         title=title, width=width, height=height)
