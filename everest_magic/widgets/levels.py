"""Plain, JSON-friendly descriptions of results (the gallery's synced `levels` entries)."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .histogram import neuron_label
from .thumbs import is_image, snippet, thumbnail_png
from .tokens import token_pieces

Render = Callable[[Any], "bytes | str"]
_KIND_NAMES = {"topk": "top-k", "bottomk": "bottom-k", "knn": "kNN"}


def fmt_score(x: Any) -> str:
    """A score with 4 significant digits."""
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def json_value(x: Any) -> Any:
    """A JSON-friendly scalar: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


def describe(result: Any, lead: str | None = None) -> str:
    """The header line of a result: kind (or `lead`), view, group size, k, inputs recomputed / n, time."""
    st = result.stats
    kind = _KIND_NAMES.get(result.kind, result.kind)
    p = result.params or {}
    k = p.get("k", len(result.ids))
    parts = [kind]
    if result.kind == "knn":
        target = p.get("target")
        parts[0] = f"kNN of #{target}" if isinstance(target, int) else "kNN of an external input"
        parts.append(str(p.get("metric", "l2")))
    elif isinstance(p.get("by"), str):
        parts.append(f"by {p['by']}")
    elif p.get("by") is not None:
        parts.append("by weighted sum")
    n_neurons = len(result.neurons)
    parts += [f"view {result.view}", f"{n_neurons} neuron{'s' if n_neurons != 1 else ''}", f"k={k}",
              f"{st.inputs_recomputed}/{st.n} inputs recomputed", f"{st.seconds * 1000:.1f} ms"]
    if lead is not None:
        parts[0] = lead
    if st.method != "index":
        parts.append(f"{st.method}" + (f" ({st.reason})" if st.reason else ""))
    return " · ".join(parts)


def item_entry(session: Any, input_id: int, score: Any, label: Any, render: Render | None = None,
               size: int = 96) -> dict:
    """One gallery item: id, score (and its 4-digit text), label, and a PNG thumbnail or a text snippet."""
    item = session.data.item(int(input_id))
    thumb: bytes | None = None
    text: str | None = None
    shown = render(item) if render is not None else (thumbnail_png(item, size) if is_image(item) else snippet(item))
    if isinstance(shown, (bytes, bytearray, memoryview)):
        thumb = bytes(shown)
    else:
        text = str(shown)
    return {"id": int(input_id), "score": json_value(float(score)), "score_text": fmt_score(score),
            "label": None if label is None else json_value(label), "thumb": thumb, "text": text}


def result_level(result: Any, session: Any, title: str | None = None, render: Render | None = None,
                 size: int = 96, tokenizer: Any = None) -> dict:
    """A level showing a Result as a grid of items. Text items of a token view also get `tokens`
    ([[piece, value or None], ...], see `tokens.token_pieces`) and the level `token_scale` (the
    largest |value| shown) and `token_note` (what the shading is)."""
    labels = result.labels if result.labels is not None else [None] * len(result.ids)
    items = [item_entry(session, i, s, lab, render, size) for i, s, lab in zip(result.ids, result.scores, labels)]
    level = {"kind": result.kind, "title": title or default_title(result), "description": describe(result),
             "view": result.view, "neurons": [int(j) for j in result.neurons[:64]], "items": items, "text": ""}
    if render is None and items and all(it["text"] is not None for it in items):
        shaded = token_pieces(session, result, tokenizer)
        if shaded is not None:
            pieces, what = shaded
            for it, p in zip(items, pieces):
                it["tokens"] = p
            values = [abs(v) for p in pieces for _, v in p if v is not None]
            level["token_scale"] = max(values, default=0.0)
            level["token_note"] = f"shading: {what} (one forward pass of the {len(items)} sentences shown)"
    return level


def default_title(result: Any) -> str:
    """A short breadcrumb title of a result."""
    if result.kind == "knn":
        t = (result.params or {}).get("target")
        return f"kNN #{t}" if isinstance(t, int) else "kNN"
    return f"{_KIND_NAMES.get(result.kind, result.kind)} {result.view}"


def neurons_level(session: Any, view: str, input_id: int, count: int = 10) -> tuple[dict, np.ndarray]:
    """A text level: the `count` most activated neurons of one input in a view, with activations."""
    ids = np.asarray(session.top_neurons(int(input_id), view, count), np.int64)
    acts = session.activations(view, [int(input_id)])[0][ids]
    lines = [f"input #{int(input_id)} · view {view} · {len(ids)} most activated neurons:"]
    lines += [f"  {neuron_label(session, view, j):<24} {fmt_score(a)}" for j, a in zip(ids, acts)]
    level = {"kind": "neurons", "title": f"neurons #{int(input_id)}",
             "description": f"most activated neurons of #{int(input_id)} in {view}", "view": view,
             "neurons": [int(j) for j in ids], "items": [], "text": "\n".join(lines)}
    return level, ids
