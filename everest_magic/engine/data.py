"""Dataset adapters: give the engine batches of inputs by input id, and a fingerprint."""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import QueryError

Collate = Callable[[list], Any]


class DataAdapter:
    """Uniform access to a dataset: `len`, raw items and model-ready batches by input id.

    `data` may be a tensor or ndarray (first axis = inputs), a torch `Dataset`, or any
    sequence. Items that are `(input, label, ...)` tuples are reduced to their input.
    `collate(list_of_items)` builds a batch (default: stack tensors).
    """

    def __init__(self, data: Any, collate: Collate | None = None, fingerprint: str | None = None):
        self.data = data
        self.is_array = isinstance(data, (torch.Tensor, np.ndarray))
        self.collate = collate
        self._fingerprint = fingerprint
        try:
            self.n = len(data)
        except TypeError as e:
            raise QueryError(f"data must have a length (got {type(data).__name__})") from e

    def __len__(self) -> int:
        return self.n

    def item(self, i: int) -> Any:
        """The raw input of id `i` (labels stripped from `(input, label)` items)."""
        x = self.data[int(i)]
        if not self.is_array and isinstance(x, tuple) and len(x) >= 2 and self.collate is None:
            x = x[0]
        return x

    def batch(self, ids: Sequence[int] | np.ndarray) -> Any:
        """A model-ready batch of the inputs `ids`, in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.is_array and self.collate is None:
            return torch.as_tensor(self.data[torch.as_tensor(ids)] if isinstance(self.data, torch.Tensor) else self.data[ids])
        items = [self.item(i) for i in ids]
        if self.collate is not None:
            return self.collate(items)
        return torch.stack([torch.as_tensor(x) for x in items])

    def fingerprint(self) -> str:
        """A hash of the data: every byte of arrays and of text items; for other sequences (a
        Dataset may load items from disk) the length plus a strided sample of 257 items."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str(self.n).encode())
            if self.is_array:
                arr = self.data.detach().cpu().numpy() if isinstance(self.data, torch.Tensor) else np.asarray(self.data)
                h.update(str(arr.dtype).encode() + str(arr.shape).encode())
                h.update(np.ascontiguousarray(arr).tobytes())
            elif isinstance(self.data[0], (str, bytes)):   # text: cheap to hash in full
                for item in self.data:
                    b = item.encode() if isinstance(item, str) else bytes(item)
                    h.update(len(b).to_bytes(8, "little") + b)
            else:   # items may be costly to load (a Dataset): a strided sample of them
                step = max(1, self.n // 256)
                for i in list(range(0, self.n, step)) + [self.n - 1]:
                    h.update(_item_bytes(self.data[i]))
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def _item_bytes(x: Any) -> bytes:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().tobytes()
    if isinstance(x, np.ndarray):
        return x.tobytes()
    if isinstance(x, (tuple, list)):
        return b"|".join(_item_bytes(v) for v in x)
    if isinstance(x, dict):
        return b"|".join(k.encode() + b"=" + _item_bytes(v) for k, v in sorted(x.items()))
    return repr(x).encode()


def concat_data(old: Any, new: Any) -> Any:
    """`old` followed by `new`, of the same kind: tensors, ndarrays, lists, torch Datasets
    (a ConcatDataset) or other sequences (a read-only view of both)."""
    if isinstance(old, torch.Tensor) and isinstance(new, (torch.Tensor, np.ndarray)):
        new = torch.as_tensor(new)
        if new.shape[1:] == old.shape[1:] and new.dtype != old.dtype:
            new = new.to(old.dtype)
        if new.shape[1:] != old.shape[1:]:
            raise QueryError(f"new inputs have shape {tuple(new.shape[1:])}; the dataset's have {tuple(old.shape[1:])}")
        return torch.cat([old, new.to(old.device)])
    if isinstance(old, np.ndarray) and isinstance(new, np.ndarray):
        if new.shape[1:] != old.shape[1:]:
            raise QueryError(f"new inputs have shape {new.shape[1:]}; the dataset's have {old.shape[1:]}")
        return np.concatenate([old, new.astype(old.dtype, copy=False)])
    if isinstance(old, list) and isinstance(new, (list, tuple)):
        return old + list(new)
    if isinstance(old, torch.utils.data.Dataset) and isinstance(new, torch.utils.data.Dataset):
        return torch.utils.data.ConcatDataset([old, new])
    try:
        len(new)
    except TypeError as e:
        raise QueryError(f"new inputs must be a sequence like the dataset ({type(old).__name__}), "
                         f"got {type(new).__name__}") from e
    return _Concat(old, new)


class _Concat:
    """Two sequences read as one."""

    def __init__(self, a: Any, b: Any):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i: int) -> Any:
        i = int(i)
        if i < 0:
            i += len(self)
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]
