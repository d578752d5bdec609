"""Activations for inspection: several views of one or more models, each batch loaded once and one
forward pass per model, reusing the sessions' caches; conv maps resized to a mask grid; the
tokens of text inputs aligned with the model's token axis."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from ..engine.errors import QueryError
from ..engine.views import View
from .hypotheses import Tokens


def fetch_models(models: dict[Any, tuple[Any, Sequence[View]]], ids: np.ndarray,
                 ) -> tuple[dict[Any, dict[str, np.ndarray]], np.ndarray]:
    """Rows (len(ids), m) of every view of every model, and a mask of the inputs found in the
    activation caches of all of them.

    `models` maps a model name to (session, views). Rows already in a session's activation
    cache are reused; the other inputs run through the models in canonical batches of each
    session's `batch_size` (a short batch padded with copies of its first input, as
    `Runner.views` does, so rows are bit for bit the same as a query's), under each session's
    model lock, and their rows go into the cache. Models whose sessions read the same data
    object with the same collate and batch size share each loaded batch: it is built once and
    every such model runs on it (a session with a cluster computes its rows there, alone).
    """
    ids = np.asarray(ids, np.int64)
    out: dict[Any, dict[str, np.ndarray]] = {}
    missing: dict[Any, np.ndarray] = {}
    for name, (s, views) in models.items():
        out[name], missing[name] = _cached(s, views, ids)
    groups: dict[tuple, list] = {}
    for name, (s, views) in models.items():
        if missing[name].any():
            alone = getattr(s.runner, "remote", None) is not None   # a cluster runs its own batches
            key = (name,) if alone else (id(s.runner.data.data), id(s.runner.data.collate), s.runner.batch_size)
            groups.setdefault(key, []).append(name)
    for names in groups.values():
        todo = np.zeros(len(ids), bool)
        for name in names:
            todo |= missing[name]
        rows = _run([models[name] for name in names], ids[todo])
        for name, new in zip(names, rows):
            s, views = models[name]
            mine = missing[name][todo]
            for v, r in zip(views, new):
                arr = out[name].get(v.name)
                if arr is None:
                    arr = out[name][v.name] = np.empty((len(ids), r.shape[1]), np.float32)
                arr[missing[name]] = r[mine]
                s.cache.put(v.name, ids[missing[name]], r[mine])
    hit = np.ones(len(ids), bool)
    for m in missing.values():
        hit &= ~m
    return out, hit


def _cached(session: Any, views: Sequence[View], ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The rows of `views` found in the session's activation cache, and the inputs missing from any view."""
    out: dict[str, np.ndarray] = {}
    missing = np.zeros(len(ids), bool)
    for v in views:
        mask, rows = session.cache.get(v.name, ids)
        missing |= ~mask
        if rows is not None:
            arr = out[v.name] = np.empty((len(ids), rows.shape[1]), np.float32)
            arr[mask] = rows
    return out, missing


def _run(models: list[tuple[Any, Sequence[View]]], ids: np.ndarray) -> list[list[np.ndarray]]:
    """Rows of every model's views for `ids`, each canonical batch loaded once for all the models
    (they share data, collate and batch size): per model, one array (len(ids), m) per view."""
    first = models[0][0]
    if len(models) == 1 and getattr(first.runner, "remote", None) is not None:
        return [first._locked(first.runner.views, models[0][1], ids)]
    size = first.runner.batch_size
    chunks: list[list[list[np.ndarray]]] = [[[] for _ in views] for _, views in models]
    for start in range(0, len(ids), size):
        part = ids[start:start + size]
        padded = np.concatenate([part, np.full(size - len(part), part[0])]) if len(part) < size else part
        batch = first._locked(first.runner.data.batch, padded)
        for (s, views), rows in zip(models, chunks):
            outs = s._locked(s.runner.capture, sorted({v.layer for v in views}), batch, part)
            for v, r in zip(views, rows):
                r.append(v.apply(outs[v.layer], batch)[: len(part)].cpu().numpy())
    return [[np.concatenate(r) for r in rows] for rows in chunks]


def upsample(maps: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Resize (b, C, h, w) maps to (b, C, H, W) by bilinear interpolation (align_corners=False),
    as Network Dissection scales activation maps to the concept mask's resolution."""
    t = torch.from_numpy(np.ascontiguousarray(maps, np.float32))
    if tuple(t.shape[-2:]) == tuple(grid):
        return t
    return torch.nn.functional.interpolate(t, size=tuple(grid), mode="bilinear", align_corners=False)


def token_batch(session: Any, ids: np.ndarray, tokenizer: Any, length: int) -> list[Tokens]:
    """The `Tokens` of each text input, aligned with the model's token axis of `length` positions.

    The texts are tokenized again with offsets; the token ids must equal those of the batch
    the model reads (right padding), else the alignment is refused.
    """
    texts = [session.data.item(int(i)) for i in ids]
    bad = [(int(i), t) for i, t in zip(ids, texts) if not isinstance(t, str)]
    if bad:
        raise QueryError(f"token hypotheses need text inputs; input {bad[0][0]} is a {type(bad[0][1]).__name__}")

    def tokenize():   # under the model lock: a fast tokenizer must not run on two threads at once
        batch = session.data.batch(ids)
        enc = tokenizer(list(texts), return_offsets_mapping=True, truncation=True, max_length=length,
                        return_special_tokens_mask=True)
        return batch, enc

    batch, enc = session._locked(tokenize)
    model_ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    attention = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    out = []
    for j, text in enumerate(texts):
        tid = np.asarray(enc["input_ids"][j], np.int64)
        offsets = np.asarray(enc["offset_mapping"][j], np.int64).reshape(-1, 2)
        special = np.asarray(enc["special_tokens_mask"][j], bool)
        if model_ids is not None:
            mid = np.asarray(model_ids[j])[: len(tid)]
            if len(mid) != len(tid) or not np.array_equal(mid, tid):
                raise QueryError(f"the tokenizer given to inspect does not reproduce the model's tokens of input "
                                 f"{int(ids[j])}; pass the tokenizer the collate function uses (right padding)")
        keep = ~special & (offsets[:, 1] > offsets[:, 0])
        if attention is not None:
            keep &= np.asarray(attention[j])[: len(tid)].astype(bool)
        pos = np.flatnonzero(keep)
        out.append(Tokens(text=text, strings=tokenizer.convert_ids_to_tokens(tid[pos].tolist()),
                          spans=offsets[pos], positions=pos, ids=tid[pos]))
    return out
