"""The state of one view during a streaming build: fold in batches of activations (in any
order of input ids), take the partition ids of a block of inputs, finish with the exact
counts, bounds and top and bottom lists.

Two interchangeable backends give identical arrays:
- ``"numba"`` (CPU): the fused kernels of `kernels.py`, one pass over the values;
- ``"torch"`` (the model's device, e.g. CUDA): `torch.searchsorted`, `scatter_reduce` and
  `topk` over (value, id) keys packed in int64; only partition ids (one byte a value) and
  the small arrays come back to the host.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import kernels
from .errors import QueryError
from .partition import pid_dtype

BACKENDS = ("numba", "torch")
STAGE_ROWS = 512   # the numba kernel is fastest on a few hundred inputs a call


def nonfinite(view: str, neuron: int) -> QueryError:
    """The error of a view whose neuron has NaN or infinite activations."""
    return QueryError(f"view {view!r}: neuron {neuron} has NaN or infinite activations; the index needs "
                      "finite values (check the model's outputs or pick another layer)")


def default_backend(device: torch.device) -> str:
    return "torch" if device.type != "cpu" else "numba"


class ViewState:
    """Build state of one view: cuts (m, P-1), lists of length t, partition ids of the
    current block of `width` inputs starting at input `col0`.

    `previous` (counts, bounds, lists of an existing index) continues a build: `extend`."""

    def __init__(self, name: str, cuts: np.ndarray, t: int, width: int, backend: str = "numba",
                 device: torch.device | str = "cpu", previous: dict | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown build backend {backend!r}; use one of {BACKENDS}")
        self.name, self.backend = name, backend
        self.m, c = cuts.shape
        self.P = c + 1
        self.t = int(t)
        self.cuts = np.ascontiguousarray(cuts, np.float32)
        self.pids = np.zeros((self.m, width), pid_dtype(self.P))
        self.col0 = 0
        self.seen = 0   # inputs folded in (the lists hold min(t, seen) entries)
        m, P, t = self.m, self.P, self.t
        if backend == "numba":
            self._cuts = kernels.padded_cuts(self.cuts)
            self._stage = np.empty((STAGE_ROWS, m), np.float32)   # batches are folded STAGE_ROWS at a time
            self._stage_ids = np.empty(STAGE_ROWS, np.int64)
            self._staged = 0
            self.counts = np.zeros((m, P), np.int64)
            self.lo = np.full((m, P), np.inf, np.float32)
            self.hi = np.full((m, P), -np.inf, np.float32)
            self.heaps = [np.zeros((m, t), np.float32), np.zeros((m, t), np.int64), np.zeros(m, np.int64),
                          np.zeros((m, t), np.float32), np.zeros((m, t), np.int64), np.zeros(m, np.int64)]
            self.bad = np.zeros(m, bool)
        else:
            self.device = torch.device(device)
            d = self.device
            self._cuts_t = torch.as_tensor(self.cuts, device=d)
            self._row = torch.arange(m, device=d)[:, None] * P
            self.counts = torch.zeros(m * P, dtype=torch.int64, device=d)
            self.lo = torch.full((m * P,), float("inf"), device=d)
            self.hi = torch.full((m * P,), float("-inf"), device=d)
            self.top = torch.full((m, t), _I64_MIN, dtype=torch.int64, device=d)
            self.bot = torch.full((m, t), _I64_MAX, dtype=torch.int64, device=d)
            self.bad = torch.zeros(m, dtype=torch.bool, device=d)
        if previous is not None:
            self._continue(previous)

    # -- folding batches ------------------------------------------------------------------
    def start_block(self, col0: int, width: int) -> None:
        """The next block of partition ids covers inputs col0 .. col0 + width."""
        self.flush()
        self.col0 = int(col0)
        if self.pids.shape[1] != width:
            self.pids = np.zeros((self.m, width), self.pids.dtype)

    def add(self, acts: Any, ids: np.ndarray) -> None:
        """Fold in activations (B, m) (ndarray or tensor) of inputs `ids` (all in the block);
        call `flush()` before reading `pids` or the results."""
        ids = np.asarray(ids, np.int64)
        self.seen += len(ids)
        if self.backend == "torch":
            self._add_torch(torch.as_tensor(acts, device=self.device, dtype=torch.float32), ids)
            return
        A = acts.cpu().numpy() if isinstance(acts, torch.Tensor) else acts
        if len(ids) >= STAGE_ROWS // 2:
            self.flush()
            self._fold(np.ascontiguousarray(A, np.float32), ids)
            return
        if self._staged + len(ids) > STAGE_ROWS:
            self.flush()
        k = self._staged
        self._stage[k:k + len(ids)] = A
        self._stage_ids[k:k + len(ids)] = ids
        self._staged += len(ids)

    def flush(self) -> None:
        """Fold the staged batches in."""
        if self.backend == "numba" and self._staged:
            k, self._staged = self._staged, 0
            self._fold(self._stage[:k], self._stage_ids[:k])

    def _fold(self, A: np.ndarray, ids: np.ndarray) -> None:
        h = self.heaps
        kernels.accumulate(A, ids, self.col0, self._cuts, self.pids, self.counts, self.lo, self.hi,
                           h[0], h[1], h[2], h[3], h[4], h[5], self.bad)

    def _add_torch(self, A: torch.Tensor, ids: np.ndarray) -> None:
        AT = A.t().contiguous() + 0.0                              # (m, B); -0.0 -> +0.0
        self.bad |= ~torch.isfinite(AT).all(dim=1)
        AT = torch.nan_to_num(AT, nan=0.0, posinf=0.0, neginf=0.0)
        if self.P > 1:
            pid = torch.searchsorted(self._cuts_t, AT, right=True)  # (m, B) number of cuts <= v
        else:
            pid = torch.zeros(AT.shape, dtype=torch.int64, device=self.device)
        flat = (pid + self._row).reshape(-1)
        vals = AT.reshape(-1)
        self.counts += torch.bincount(flat, minlength=self.counts.numel())
        self.lo.scatter_reduce_(0, flat, vals, "amin")
        self.hi.scatter_reduce_(0, flat, vals, "amax")
        host = pid.to(torch.int32 if self.P > 256 else torch.uint8).cpu().numpy()
        self.pids[:, ids - self.col0] = host
        if self.t:
            tid = torch.as_tensor(ids, device=self.device)
            key = _ordered(AT) << 32
            top = key + (0xFFFFFFFF - tid)[None, :]                  # larger: higher value, then smaller id
            bot = key + tid[None, :]                                  # smaller: lower value, then smaller id
            self.top = torch.topk(torch.cat([self.top, top], 1), self.t, dim=1).values
            self.bot = torch.topk(torch.cat([self.bot, bot], 1), self.t, dim=1, largest=False).values

    def check_finite(self) -> None:
        bad = np.asarray(self.bad.cpu() if isinstance(self.bad, torch.Tensor) else self.bad)
        if bad.any():
            raise nonfinite(self.name, int(np.flatnonzero(bad)[0]))

    # -- results -----------------------------------------------------------------------------
    def finish(self) -> dict[str, np.ndarray]:
        """counts (m, P) uint32, bounds (m, P, 2) float32 (NaN where empty), and the lists
        (m, t): top_ids, top_vals, bot_ids, bot_vals, best first (fewer than t when fewer
        inputs were folded in)."""
        self.flush()
        self.check_finite()
        m, P = self.m, self.P
        t = min(self.t, self.seen)
        if self.backend == "numba":
            counts, lo, hi = self.counts, self.lo, self.hi
            tv, ti, _, bv, bi, _ = (h[:, :t] if h.ndim == 2 else h for h in self.heaps)   # filled first
            order = np.lexsort((ti, -tv.astype(np.float64)), axis=1)
            top_vals, top_ids = np.take_along_axis(tv, order, 1), np.take_along_axis(ti, order, 1)
            order = np.lexsort((bi, bv), axis=1)
            bot_vals, bot_ids = np.take_along_axis(bv, order, 1), np.take_along_axis(bi, order, 1)
        else:
            counts = self.counts.reshape(m, P).cpu().numpy()
            lo = self.lo.reshape(m, P).cpu().numpy()
            hi = self.hi.reshape(m, P).cpu().numpy()
            top_vals, low = _unpack(self.top[:, :t])               # sorted: the unfilled keys come last
            top_ids = 0xFFFFFFFF - low
            bot_vals, bot_ids = _unpack(self.bot[:, :t])
        bounds = np.stack([lo, hi], axis=-1).astype(np.float32)
        bounds[counts == 0] = np.nan
        return {"counts": counts.astype(np.uint32), "bounds": bounds,
                "top_ids": np.asarray(top_ids, np.uint32).reshape(m, t), "top_vals": np.asarray(top_vals, np.float32).reshape(m, t),
                "bot_ids": np.asarray(bot_ids, np.uint32).reshape(m, t), "bot_vals": np.asarray(bot_vals, np.float32).reshape(m, t)}

    def _continue(self, prev: dict) -> None:
        """Start from the arrays of an index over earlier inputs (whose ids are all smaller)."""
        counts = prev["counts"].astype(np.int64)
        lo = np.where(counts > 0, prev["bounds"][..., 0], np.inf).astype(np.float32)
        hi = np.where(counts > 0, prev["bounds"][..., 1], -np.inf).astype(np.float32)
        k = min(self.t, prev["top_ids"].shape[1])
        if k != self.t:
            raise QueryError(f"view {self.name!r}: the index's lists hold {k} inputs, the build wants {self.t}")
        self.seen = k
        if self.backend == "numba":
            self.counts[:], self.lo[:], self.hi[:] = counts, lo, hi
            tv, ti, tn, bv, bi, bn = self.heaps
            order = np.arange(k)[::-1]   # worst first: a sorted array is a valid heap
            tv[:, :k] = prev["top_vals"][:, order]
            ti[:, :k] = prev["top_ids"][:, order]
            bv[:, :k] = prev["bot_vals"][:, order]
            bi[:, :k] = prev["bot_ids"][:, order]
            tn[:] = bn[:] = k
        else:
            self.counts[:] = torch.as_tensor(counts.reshape(-1), device=self.device)
            self.lo[:] = torch.as_tensor(lo.reshape(-1), device=self.device)
            self.hi[:] = torch.as_tensor(hi.reshape(-1), device=self.device)
            self.top = _pack(prev["top_vals"], 0xFFFFFFFF - prev["top_ids"].astype(np.int64), self.device)
            self.bot = _pack(prev["bot_vals"], prev["bot_ids"].astype(np.int64), self.device)


def merge_summaries(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
    """The `ViewState.finish()` arrays of two disjoint sets of inputs (e.g. two blocks built on
    different workers) as if folded in one state: counts add, bounds widen, and each list keeps
    its best t of both by (value, id), as the heaps do."""
    if a is None:
        return b
    counts = a["counts"] + b["counts"]
    lo = np.fmin(a["bounds"][..., 0], b["bounds"][..., 0])     # NaN (empty) on one side: the other
    hi = np.fmax(a["bounds"][..., 1], b["bounds"][..., 1])
    out = {"counts": counts, "bounds": np.stack([lo, hi], axis=-1).astype(np.float32)}
    for side, sign in (("top", -1.0), ("bot", 1.0)):
        ids = np.concatenate([a[f"{side}_ids"], b[f"{side}_ids"]], axis=1)
        vals = np.concatenate([a[f"{side}_vals"], b[f"{side}_vals"]], axis=1)
        order = np.lexsort((ids, sign * vals.astype(np.float64)), axis=1)[:, :t]
        out[f"{side}_ids"] = np.take_along_axis(ids, order, 1)
        out[f"{side}_vals"] = np.take_along_axis(vals, order, 1)
    return out


_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


def _ordered(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 with the same order (as signed integers)."""
    b = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(b < 0, b ^ 0x7FFFFFFF, b)


def _unpack(keys: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(values float32, low 32 bits) of packed keys."""
    k = keys.cpu()
    hi = k >> 32
    bits = torch.where(hi < 0, hi ^ 0x7FFFFFFF, hi).to(torch.int32)
    return bits.view(torch.float32).numpy().copy(), (k & 0xFFFFFFFF).numpy()


def _pack(vals: np.ndarray, low: np.ndarray, device: torch.device) -> torch.Tensor:
    v = torch.as_tensor(np.ascontiguousarray(vals, np.float32) + np.float32(0.0))
    return ((_ordered(v) << 32) + torch.as_tensor(low)).to(device)
