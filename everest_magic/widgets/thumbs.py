"""Thumbnails of dataset items: images as PNG bytes, anything else as a short text snippet."""
from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
from PIL import Image

_CHANNELS = (1, 3, 4)


def _as_array(item: Any) -> np.ndarray | None:
    """A numpy view of a tensor, ndarray or PIL image; None for anything else."""
    if isinstance(item, Image.Image):
        return np.asarray(item)
    if isinstance(item, np.ndarray):
        return item
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if isinstance(item, torch.Tensor):
        return item.detach().to("cpu", torch.float32).numpy()
    return None


def _hwc(a: np.ndarray) -> np.ndarray | None:
    """Reshape an image-like array to (H, W) or (H, W, 3); None when it is not an image."""
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        if a.shape[0] in _CHANNELS and a.shape[-1] not in _CHANNELS:
            a = np.moveaxis(a, 0, -1)          # (C, H, W) -> (H, W, C)
        elif a.shape[-1] not in _CHANNELS:
            return None
        if a.shape[-1] == 1:
            a = a[..., 0]
        elif a.shape[-1] == 4:
            a = a[..., :3]                     # drop alpha
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or min(a.shape) < 1 or a.dtype.kind not in "biuf":
        return None
    return a


def is_image(item: Any) -> bool:
    """True for a tensor/ndarray/PIL image shaped (H,W), (1|3|4,H,W) or (H,W,1|3|4)."""
    a = _as_array(item)
    return a is not None and _hwc(a) is not None


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Min-max scale one image to 0..255; a constant image keeps its value when it is in [0,1] or [0,255]."""
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, np.nanmin(np.where(finite, a, np.nan)) if finite.any() else 0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi - lo > 1e-12 * max(1.0, abs(hi), abs(lo)):
        return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if 0.0 <= lo <= 1.0:
        level = lo * 255.0
    elif 0.0 <= lo <= 255.0:
        level = lo
    else:
        level = 128.0
    return np.full(a.shape, round(level), np.uint8)


def thumbnail_image(item: Any, size: int = 96) -> Image.Image:
    """A PIL image of `item` fitting in `size` x `size`: small images enlarged by an integer factor
    (nearest neighbour, crisp pixels), large ones reduced."""
    a = _as_array(item)
    a = None if a is None else _hwc(a)
    if a is None:
        raise ValueError(f"not an image: {type(item).__name__} of shape {getattr(item, 'shape', None)}")
    img = Image.fromarray(_to_uint8(a), "L" if a.ndim == 2 else "RGB")
    w, h = img.size
    if max(w, h) <= size:
        f = max(1, size // max(w, h))
        if f > 1:
            img = img.resize((w * f, h * f), Image.NEAREST)
    else:
        img.thumbnail((size, size), Image.LANCZOS)
    return img


def thumbnail_png(item: Any, size: int = 96) -> bytes:
    """PNG bytes of a dataset item (tensor or ndarray, grayscale or RGB, any value range)."""
    buf = io.BytesIO()
    thumbnail_image(item, size).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def snippet(item: Any, max_chars: int = 120) -> str:
    """A one-line text of an item, whitespace collapsed, cut to `max_chars` with an ellipsis."""
    if isinstance(item, bytes):
        text = item.decode("utf-8", "replace")
    elif isinstance(item, str):
        text = item
    else:
        text = repr(item)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars:
        text = text[:max(0, max_chars - 1)].rstrip() + "…"
    return text
