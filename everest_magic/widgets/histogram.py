"""Activation histograms of one neuron drawn from the index partitions (no model run)."""
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
    """Spread each partition's count uniformly over the pixel columns of [min, max] (at least one
    column wide): column sums are proportional to counts, overlapping partitions stack."""
    dens = np.zeros(ncols, np.float64)
    span = hi - lo
    for c, (b0, b1) in zip(counts, bounds):
        if c <= 0 or not (np.isfinite(b0) and np.isfinite(b1)):
            continue
        a, b = (b0 - lo) / span * ncols, (b1 - lo) / span * ncols
        if b - a < 1.0:
            mid = min(max((a + b) / 2, 0.5), ncols - 0.5)
            a, b = mid - 0.5, mid + 0.5
        j0, j1 = int(np.floor(a)), int(np.ceil(b))
        js = np.arange(max(j0, 0), min(j1, ncols))
        overlap = np.minimum(b, js + 1) - np.maximum(a, js)
        dens[js] += c * np.clip(overlap, 0, None) / (b - a)
    return dens


def histogram_png(counts: np.ndarray, bounds: np.ndarray, marks: Sequence[float] = (), *, title: str = "",
                  width: int = 360, height: int = 120) -> bytes:
    """PNG of a neuron's activation histogram from its partitions.

    `counts` (P,) and `bounds` (P, 2) are the exact per-partition counts and [min, max]
    (NaN for empty ones): each partition is a bar over [min, max] whose area is proportional
    to its count. Columns far taller than the rest (e.g. a spike of exact zeros after a
    ReLU) are clipped at the top and drawn darker. `marks` are activations drawn as red ticks
    under the axis.
    """
    counts = np.asarray(counts, np.float64).ravel()
    bounds = np.asarray(bounds, np.float64).reshape(-1, 2)
    marks = np.asarray([m for m in np.asarray(marks, np.float64).ravel() if np.isfinite(m)])
    img = Image.new("RGB", (int(width), int(height)), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    top, bottom, left, right = 16, 26, 6, 6
    x0, x1, y0, y1 = left, width - right, top, height - bottom   # plot box; y1 is the baseline
    ncols, plot_h = max(1, x1 - x0), max(1, y1 - y0)
    ok = (counts > 0) & np.isfinite(bounds).all(axis=1)
    vals = np.concatenate([bounds[ok].ravel(), marks])
    if title:
        d.text((left, 2), title, fill=TEXT, font=font)
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
                     width: int = 360, height: int = 120) -> bytes:
    """Histogram PNG of one neuron of an indexed view, from `session.store.summary(view)`, with the
    activations of inputs `ids` (cached or recomputed, a few inputs) as ticks."""
    counts, bounds = session.store.summary(view)
    neuron = int(neuron)
    if not 0 <= neuron < counts.shape[0]:
        raise IndexError(f"neuron {neuron} is out of range: view {view!r} has {counts.shape[0]} neurons")
    marks: np.ndarray = np.empty(0)
    if ids is not None and len(ids):
        marks = session.activations(view, np.asarray(ids, np.int64))[:, neuron]
    title = f"{view} · {neuron_label(session, view, neuron)} · {int(counts[neuron].sum())} inputs"
    return histogram_png(counts[neuron], bounds[neuron], marks, title=title, width=width, height=height)
