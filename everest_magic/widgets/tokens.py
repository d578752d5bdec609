"""Token shading of text results: each shown sentence cut into its tokens, each token with the
neuron group's activation there, from one extra forward pass of the k shown sentences."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

Pieces = list[list]   # [[text, value or None], ...] covering a whole sentence, in order
TOKEN_VIEWS = ("token_mean", "token_max")


def tokenizer_of(session: Any, tokenizer: Any = None) -> Any:
    """The tokenizer to align tokens with text: the one given, else `collate.tokenizer` of the
    session's data (as `examples.minilm` sets it), else None."""
    return tokenizer if tokenizer is not None else getattr(session.data.collate, "tokenizer", None)


def token_pieces(session: Any, result: Any, tokenizer: Any = None) -> tuple[list[Pieces], str] | None:
    """(pieces per item of `result`, what the values are), or None when there is nothing to shade:
    the items are not strings, the view is not reduced over tokens, or no tokenizer is known.

    A token's value is the group's activation at that token, aggregated as the query does (top-k:
    its `by`; kNN: the mean over the group), read from the layer's (batch, tokens, features)
    output before the token reduction. Special and padding tokens are left out; text past the
    truncation stays unshaded."""
    tok = tokenizer_of(session, tokenizer)
    view = session.view(result.view)
    ids = [int(i) for i in result.ids]
    if tok is None or view.reduce not in TOKEN_VIEWS or not ids:
        return None
    texts = [session.data.item(i) for i in ids]
    if not all(isinstance(t, str) for t in texts):
        return None
    batch = session.data.batch(np.asarray(ids, np.int64))
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        return None
    # the session's model lock: a build or query may be running hooks on the same model
    out = session.source.capture([view.layer], batch)[view.layer]
    if out.dim() != 3:
        return None
    group = np.asarray(result.neurons, np.int64)
    values, what = _aggregate(out[:, :, group].float().cpu().numpy(), result)
    mask = np.asarray(batch.get("attention_mask", np.ones(values.shape))).astype(bool)
    input_ids = np.asarray(batch["input_ids"])
    pieces = [_pieces(text, tok, input_ids[i], values[i], mask[i]) for i, text in enumerate(texts)]
    return pieces, what


def _aggregate(acts: np.ndarray, result: Any) -> tuple[np.ndarray, str]:
    """Per token (k, T) value of the group's activations (k, T, g), and its description."""
    by = (result.params or {}).get("by", "mean") if result.kind != "knn" else "mean"
    g = acts.shape[2]
    if isinstance(by, (list, tuple)):
        return acts @ np.asarray(by, np.float64), f"weighted sum of the {g} neurons at each token"
    if by == "max":
        return acts.max(axis=2), f"max of the {g} neurons at each token"
    if by == "sum":
        return acts.sum(axis=2), f"sum of the {g} neurons at each token"
    if by == "l2":
        return np.sqrt((acts ** 2).sum(axis=2)), f"L2 norm of the {g} neurons at each token"
    return acts.mean(axis=2), f"mean of the {g} neurons at each token"


def _pieces(text: str, tok: Any, batch_ids: np.ndarray, values: np.ndarray, mask: np.ndarray) -> Pieces:
    """The sentence as [[piece, value or None], ...]: the tokens the model saw at their character
    spans (a fast tokenizer's offsets), the text between and after them unshaded. Without
    offsets (a slow tokenizer, or other tokens than the batch's), the token strings themselves."""
    n = int(mask.sum())
    try:
        enc = tok(text, return_offsets_mapping=True, truncation=True, max_length=len(batch_ids))
        same = list(enc["input_ids"]) == [int(x) for x in batch_ids[:n]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        same = False
    if not same:
        words = tok.convert_ids_to_tokens([int(x) for x in batch_ids[:n]])
        special = set(getattr(tok, "all_special_tokens", []))
        return [[w + " ", float(v)] for w, v, on in zip(words, values[:n], mask[:n]) if on and w not in special]
    out: Pieces = []
    pos = 0
    for (start, end), v, on in zip(enc["offset_mapping"], values, mask):
        if not on or end <= start or start < pos:   # special tokens (0, 0), padding, overlaps
            continue
        if start > pos:
            out.append([text[pos:start], None])
        out.append([text[start:end], round(float(v), 5)])
        pos = end
    if pos < len(text):
        out.append([text[pos:], None])
    return out
