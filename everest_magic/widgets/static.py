"""Self-contained HTML galleries: what an exported notebook shows without widget state."""
from __future__ import annotations

import base64
import html
from typing import Any, Sequence

from .levels import Render, result_level

_STYLE = """
.everest-static{font-family:system-ui,-apple-system,Segoe UI,sans-serif;font-size:12px;color:#222}
.everest-static .ev-crumbs{color:#555;margin:2px 0 6px}
.everest-static .ev-head{font-weight:600;margin:8px 0 4px}
.everest-static .ev-grid{display:flex;flex-wrap:wrap;gap:6px}
.everest-static figure{margin:0;padding:4px;border:1px solid #ddd;border-radius:4px;background:#fff;max-width:220px}
.everest-static figure img{display:block;image-rendering:pixelated}
.everest-static figcaption{font-family:ui-monospace,monospace;font-size:11px;color:#444;margin-top:2px}
.everest-static .ev-snippet{max-width:210px;white-space:normal}
.everest-static pre{margin:0;font-size:11px}
"""


def data_uri(png: bytes) -> str:
    """A data: URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _tokens_html(pieces: Sequence, scale: float) -> str:
    """Tokens as spans shaded by their value (red positive, blue negative), as gallery.js does."""
    out = []
    for piece, v in pieces:
        if v is None:
            out.append(html.escape(piece))
            continue
        a = min(1.0, abs(v) / scale) if scale > 0 else 0.0
        rgb = "214,39,40" if v >= 0 else "31,119,180"
        out.append(f'<span title="{v:.3g}" style="background:rgba({rgb},{0.8 * a:.3f})">{html.escape(piece)}</span>')
    return "".join(out)


def _item_html(item: dict, scale: float = 0.0) -> str:
    caption = f"#{item['id']} · {html.escape(str(item.get('score_text', item.get('score'))))}"
    if item.get("label") is not None:
        caption += f" · label {html.escape(str(item['label']))}"
    if item.get("thumb"):
        body = f'<img src="{data_uri(item["thumb"])}" alt="input {item["id"]}">'
    elif item.get("tokens"):
        body = f'<div class="ev-snippet">{_tokens_html(item["tokens"], scale)}</div>'
    else:
        body = f'<div class="ev-snippet">{html.escape(item.get("text") or "")}</div>'
    return f'<figure data-id="{item["id"]}">{body}<figcaption>{caption}</figcaption></figure>'


def levels_html(levels: Sequence[dict], histogram: bytes = b"") -> str:
    """A self-contained HTML gallery of levels (thumbnails as data: URIs), with a breadcrumb line."""
    out = [f"<div class=\"everest-static\"><style>{_STYLE}</style>"]
    if len(levels) > 1:
        out.append('<div class="ev-crumbs">' + " › ".join(html.escape(lv["title"]) for lv in levels) + "</div>")
    for i, lv in enumerate(levels):
        out.append(f'<div class="ev-head">{html.escape(lv["description"])}</div>')
        if lv.get("token_note"):
            out.append(f'<div class="ev-crumbs">{html.escape(lv["token_note"])}</div>')
        if i == 0 and histogram:
            out.append(f'<img class="ev-hist" src="{data_uri(histogram)}" alt="activation histogram">')
        if lv.get("text"):
            out.append(f"<pre>{html.escape(lv['text'])}</pre>")
        if lv.get("items"):
            scale = float(lv.get("token_scale") or 0.0)
            out.append('<div class="ev-grid">' + "".join(_item_html(it, scale) for it in lv["items"]) + "</div>")
    out.append("</div>")
    return "\n".join(out)


def static_html(result: Any, session: Any, render: Render | None = None, size: int = 96,
                histogram: bool = True) -> str:
    """A self-contained HTML gallery of a Result: header, thumbnails (data: URIs) or snippets,
    ids, scores, labels, and the histogram of what the result ranks by when `histogram`."""
    hist = b""
    if histogram:
        from .histogram import result_histogram
        try:
            hist = result_histogram(session, result)
        except Exception:   # a view without an index summary: the gallery still renders
            hist = b""
    return levels_html([result_level(result, session, render=render, size=size)], hist)
