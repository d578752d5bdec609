"""Running the model: forward hooks by module path, canonical batches, early exit."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data import DataAdapter
from .errors import EverestError, ModelError, QueryError, UnknownNameError
from .views import View

Forward = Callable[[torch.nn.Module, Any], Any]


class _StopForward(Exception):
    """Raised from a hook once every requested layer output is captured."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> cuda when present, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise QueryError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1', 'auto'...") from None


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside a batch (tensor, mapping, list or tuple) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_forward(model: torch.nn.Module, batch: Any) -> Any:
    """`model(**batch)` for mappings (e.g. tokenizer output), else `model(batch)`."""
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class Runner:
    """Computes view activations of inputs by id.

    Every forward pass runs a batch of exactly `batch_size` inputs (a short batch is
    padded with copies of its first input), so an input's activations do not depend on
    which other inputs share its batch: recomputation at query time reproduces the
    values seen at index time bit for bit on batch-invariant models. Queries may run
    smaller batches, of sizes the session has checked to give the same bits
    (`Session.batch_sizes`).
    """

    def __init__(self, model: torch.nn.Module, data: DataAdapter, device: str = "auto",
                 batch_size: int = 64, forward: Forward | None = None, early_exit: bool = True):
        self.model = model
        self.data = data
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.forward = forward or default_forward
        self.early_exit = early_exit
        self.model.eval().to(self.device)
        self.modules = dict(model.named_modules())
        self.modules.pop("", None)
        self.forward_passes = 0
        self.remote = None   # a cluster.Cluster: recomputes of at least REMOTE_MIN_INPUTS inputs run there

    def module(self, layer: str) -> torch.nn.Module:
        """The module at a `named_modules()` path, or an error naming the closest paths."""
        if layer not in self.modules:
            raise UnknownNameError("layer", layer, self.modules)
        return self.modules[layer]

    def capture(self, layers: Sequence[str], batch: Any, ids: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Outputs of `layers` for one batch (the forward stops after the last of them).

        An exception the model raises becomes a `ModelError` naming the batch's input `ids`
        (None: an input from outside the dataset) and the layers, the original chained."""
        outs: dict[str, torch.Tensor] = {}
        wanted = set(layers)

        def hook(name):
            def fn(_module, _inp, out):
                if isinstance(out, (tuple, list)):
                    out = out[0]
                elif hasattr(out, "last_hidden_state"):
                    out = out.last_hidden_state
                outs[name] = out
                if self.early_exit and wanted.issubset(outs):
                    raise _StopForward
            return fn

        handles = [self.module(name).register_forward_hook(hook(name)) for name in wanted]
        try:
            with torch.inference_mode():
                self.forward(self.model, to_device(batch, self.device))
        except _StopForward:
            pass
        except EverestError:
            raise
        except Exception as e:
            raise forward_error(e, layers, ids) from e
        finally:
            for h in handles:
                h.remove()
        self.forward_passes += 1
        missing = wanted.difference(outs)
        if missing:
            raise RuntimeError(f"layers {sorted(missing)} produced no output in the forward pass")
        return outs

    def views(self, views: Sequence[View], ids: Sequence[int] | np.ndarray,
              sizes: Sequence[int] | None = None) -> list[np.ndarray]:
        """Activations of `views` for inputs `ids`: one float32 array (len(ids), neurons) per view.

        `sizes`: the batch sizes allowed (default: the runner's `batch_size` only). Inputs run
        in batches of the largest; the rest in one batch of the smallest size that holds it,
        padded with copies of its first input.
        """
        ids = np.asarray(ids, dtype=np.int64)
        sizes = sorted(sizes or (self.batch_size,))
        if self.remote is not None and len(ids) >= self.remote.min_inputs:
            return self.remote.views(views, ids, sizes, self.batch_size)
        chunks: list[list[np.ndarray]] = [[] for _ in views]
        for s in range(0, len(ids), sizes[-1]):
            for j, out in enumerate(self.view_tensors(views, ids[s:s + sizes[-1]], sizes)):
                chunks[j].append(out.cpu().numpy())
        return [np.concatenate(c) if c else np.zeros((0, 0), np.float32) for c in chunks]

    def view_tensors(self, views: Sequence[View], ids: np.ndarray, sizes: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Activations of `views` for at most max(sizes) inputs, as float32 tensors (len(ids),
        neurons) on the model's device: one batch of the smallest allowed size that holds them."""
        ids = np.asarray(ids, dtype=np.int64)
        sizes = sorted(sizes or (self.batch_size,))
        size = next(b for b in sizes if b >= len(ids))
        return self.view_rows(views, self.data.batch(pad_ids(ids, size)), ids)

    def view_rows(self, views: Sequence[View], batch: Any, ids: np.ndarray) -> list[torch.Tensor]:
        """Activations of `views` for the first len(ids) inputs of a loaded `batch` (`ids` name
        them in errors)."""
        outs = self.capture(sorted({v.layer for v in views}), batch, ids)
        return [v.apply(outs[v.layer], batch)[: len(ids)] for v in views]

    def view_shapes(self, views: Sequence[View]) -> list[tuple]:
        """Per-input shape of each view (runs one batch)."""
        ids = np.zeros(self.batch_size, np.int64)
        batch = self.data.batch(ids)
        outs = self.capture(sorted({v.layer for v in views}), batch, ids[:1])
        return [tuple(v.apply_shaped(outs[v.layer], batch).shape[1:]) for v in views]

    def layer_shapes(self, layers: Sequence[str] | None = None) -> dict[str, tuple]:
        """Output shape of one input for each layer (all modules when `layers` is None)."""
        names = list(layers) if layers is not None else list(self.modules)
        outs: dict[str, tuple] = {}
        handles = []
        for name in names:
            def fn(_m, _i, out, name=name):
                if isinstance(out, (tuple, list)):
                    out = out[0]
                elif hasattr(out, "last_hidden_state"):
                    out = out.last_hidden_state
                if isinstance(out, torch.Tensor):
                    outs[name] = tuple(out.shape[1:])
            handles.append(self.module(name).register_forward_hook(fn))
        try:
            with torch.inference_mode():
                self.forward(self.model, to_device(self.data.batch([0]), self.device))
        except EverestError:
            raise
        except Exception as e:
            raise forward_error(e, names, np.zeros(1, np.int64)) from e
        finally:
            for h in handles:
                h.remove()
        return outs


def pad_ids(ids: np.ndarray, size: int) -> np.ndarray:
    """`ids` padded to `size` with copies of the first: the canonical form of a short batch."""
    return np.concatenate([ids, np.full(size - len(ids), ids[0])]) if len(ids) < size else ids


def forward_error(e: Exception, layers: Sequence[str], ids: np.ndarray | None) -> ModelError:
    """The error of a model that raised in `forward` while computing `layers` for inputs `ids`."""
    if ids is None:
        where = "the external input"
    elif len(ids) > 2 and np.array_equal(np.diff(ids), np.ones(len(ids) - 1)):
        where = f"input ids {int(ids[0])}-{int(ids[-1])}"
    else:
        shown = ", ".join(str(int(i)) for i in ids[:8]) + (f", ... ({len(ids)} inputs)" if len(ids) > 8 else "")
        where = f"input ids {shown}" if len(ids) > 1 else f"input id {shown}"
    names = ", ".join(layers[:5]) + (", ..." if len(layers) > 5 else "")
    why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return ModelError(f"the model raised {type(e).__name__} in forward on {where} (computing layer {names}): {why}; "
                      "the index is unchanged; fix the model or its inputs and run the command again")
