"""Activations for inspection: several views of one or more models, each batch loaded once and one
forward pass per model, reusing the sessions' caches; conv maps resized to a mask grid; the
tokens of text inputs aligned with the model's token axis."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from ..engine.errors import QueryError
from ..engine.source import fetch_together
from ..engine.views import View
from .hypotheses import Tokens


def fetch_models(models: dict[Any, tuple[Any, Sequence[View]]], ids: np.ndarray,
                 ) -> tuple[dict[Any, dict[str, np.ndarray]], np.ndarray]:
    """Rows (len(ids), m) of every view of every model, and a mask of the inputs found in the
    activation caches of all of them.

    `models` maps a model name to (session, views). Each session's activation source
    (`engine.source.fetch_together`) reuses cached rows and runs the other inputs in canonical
    batches of its `batch_size`, bit for bit a query's, under the model lock; models whose
    sessions read the same data with the same collate and batch size share each loaded batch.
    """
    names = list(models)
    rows, hit = fetch_together([(models[name][0].source, models[name][1]) for name in names], ids)
    return dict(zip(names, rows)), hit


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

    batch, enc = session.source.locked(tokenize)
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
