"""Views: what the index stores of a layer's output, one float32 vector per input.

A view is a layer (a `model.named_modules()` path) plus a reduction:
- ``"conv2"``: every element of the output; a neuron is a flat C-order index;
- ``"conv2:mean"`` / ``"conv2:max"``: each channel (axis 1) reduced over the other axes;
- ``"enc.3:token_mean"`` / ``"enc.3:token_max"``: a (batch, tokens, features) output
  reduced over tokens, masked by the batch's ``attention_mask`` when it has one;
- a user function ``fn(output, batch) -> tensor (batch, ...)`` registered by name.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

REDUCTIONS = ("mean", "max", "token_mean", "token_max")
ViewFn = Callable[[torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class View:
    """A named, indexable view of one layer's output."""

    name: str
    layer: str
    reduce: str | None = None
    fn: ViewFn | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def parse(name: str) -> "View":
        """`"layer"` or `"layer:reduction"` -> View (custom views are registered, not parsed)."""
        layer, _, red = name.partition(":")
        return View(name=name, layer=layer, reduce=red or None)

    def shape_from(self, layer_shape: tuple) -> tuple | None:
        """Per-input shape of this view from its layer's per-input output shape, without a
        forward pass (None for a user function: only running it tells)."""
        if self.fn is not None:
            return None
        if self.reduce is None:
            return tuple(layer_shape)
        return tuple(layer_shape[:1]) if self.reduce in ("mean", "max") else tuple(layer_shape[1:])

    def apply(self, out: torch.Tensor, batch: Any) -> torch.Tensor:
        """The view of a batch's layer output, flattened to (batch, neurons) float32."""
        v = self.apply_shaped(out, batch)
        return v.reshape(v.shape[0], -1).float()

    def apply_shaped(self, out: torch.Tensor, batch: Any) -> torch.Tensor:
        """The view of a batch's layer output, keeping its per-input shape."""
        if self.fn is not None:
            v = self.fn(out, batch)
        elif self.reduce is None:
            v = out
        elif self.reduce in ("mean", "max"):
            if out.dim() < 3:
                raise ValueError(f"view {self.name!r}: a channel view needs a (batch, channels, ...) output, got shape {tuple(out.shape)}")
            flat = out.flatten(2)
            v = flat.mean(2) if self.reduce == "mean" else flat.amax(2)
        else:  # token_mean / token_max over axis 1
            if out.dim() != 3:
                raise ValueError(f"view {self.name!r}: a token view needs a (batch, tokens, features) output, got shape {tuple(out.shape)}")
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            if mask is None:
                mask = torch.ones(out.shape[:2], device=out.device)
            mask = mask.to(out.device, out.dtype).unsqueeze(-1)
            if self.reduce == "token_mean":
                v = (out * mask).sum(1) / mask.sum(1).clamp_min(1)
            else:
                v = out.masked_fill(mask == 0, float("-inf")).amax(1)
        return v

    def definition(self) -> dict:
        """A JSON-able description, stored in the index and compared on open."""
        d = {"name": self.name, "layer": self.layer, "reduce": self.reduce}
        if self.fn is not None:
            try:
                src = inspect.getsource(self.fn)
            except (OSError, TypeError):
                src = getattr(self.fn, "__qualname__", repr(self.fn))
            d["fn"] = getattr(self.fn, "__qualname__", "fn")
            d["fn_hash"] = hashlib.sha256(src.encode()).hexdigest()[:16]
        return d
