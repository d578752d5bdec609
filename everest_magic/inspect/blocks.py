"""Accumulators of one view at one symbol level: they take each batch and produce scores.

A block sees a batch as a matrix of symbols x units (inputs, tokens or mask pixels) and the
hypotheses' values for the same symbols. Pearson statistics are updated for all units x
hypothesis columns in one matrix product; measures that need ranks, bins, thresholds or a
fitted probe keep the sample (bounded by the run's input cap) and are computed from it at
checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..engine.views import View
from . import measures as M
from .activations import upsample
from .hypotheses import Encoder, Hypothesis

GROUP = -1   # the `unit` of a row that scores the whole unit group (probe rows)


@dataclass
class Scores:
    """One measure of one hypothesis (label) for every unit of a block (or the group)."""

    hypothesis: str
    label: Any
    measure: str
    score: np.ndarray
    low: np.ndarray
    high: np.ndarray
    group: bool = False


class Block:
    """Common part: the view reported in the rows, the units, the hypotheses and their measures."""

    level = "input"

    def __init__(self, name: str, source: View, shape: tuple, units: np.ndarray, hyps: list[Hypothesis],
                 measures: dict[str, tuple[str, ...]], encoders: dict[str, Encoder]):
        self.name, self.source, self.shape = name, source, tuple(shape)
        self.model: str | None = None   # the model whose activations the block reads (None: the only one)
        self.units = np.asarray(units, np.int64)
        self.hyps = hyps
        self.measures = measures
        self.encoders = encoders
        self.pearson_hyps = [h for h in hyps if "pearson" in measures[h.name]]
        self.stats = M.PearsonStats(len(self.units)) if self.pearson_hyps else None
        self.columns: list[tuple[str, int | None]] = []   # Pearson columns: (hypothesis, label code)

    def wants(self, measure: str) -> list[Hypothesis]:
        return [h for h in self.hyps if measure in self.measures[h.name]]

    def _pearson_matrix(self, coded: dict[str, np.ndarray]) -> np.ndarray:
        """Hypothesis columns of a batch (new labels of categorical hypotheses add columns)."""
        for h in self.pearson_hyps:
            if self.encoders[h.name].kind == "categorical":
                known = {c for n, c in self.columns if n == h.name}
                new = [int(c) for c in np.unique(coded[h.name]) if int(c) not in known]
                if new:
                    self.columns += [(h.name, c) for c in new]
                    self.stats.add_columns(len(new))
            elif (h.name, None) not in self.columns:
                self.columns.append((h.name, None))
                self.stats.add_columns(1)
        cols = [coded[n].reshape(-1) if c is None else (coded[n].reshape(-1) == c) for n, c in self.columns]
        return np.stack(cols, 1).astype(np.float64) if cols else np.zeros((0, 0))

    def _pearson_scores(self, confidence: float) -> dict[tuple, Scores]:
        out = {}
        if self.stats is not None and self.stats.n:
            r, lo, hi = self.stats.scores(confidence)
            for k, (name, code) in enumerate(self.columns):
                out[(name, "pearson", code)] = Scores(name, self._label(name, code), "pearson",
                                                      r[:, k], lo[:, k], hi[:, k])
        return out

    def _label(self, name: str, code: int | None) -> Any:
        return None if code is None else self.encoders[name].labels[code]

    def ordered(self, found: dict[tuple, Scores]) -> list[Scores]:
        """Scores in row order: hypothesis (as given), measure, label (sorted)."""
        order = {m: j for j, m in enumerate(M.MEASURES + ("probe_majority", "probe_selectivity"))}
        out = []
        for h in self.hyps:
            enc = self.encoders[h.name]
            labels = [None] + [c for c, _ in enc.ordered_labels()] if enc.kind == "categorical" else [None]
            keys = [k for k in found if k[0] == h.name]
            keys.sort(key=lambda k: (order[k[1]], labels.index(k[2]) if k[2] in labels else len(labels)))
            out += [found[k] for k in keys]
        return out


class SymbolBlock(Block):
    """Inputs (one symbol per input) or tokens (one per token): a matrix of symbols x units."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stored = [h for h in self.hyps if set(self.measures[h.name]) - {"pearson"}]
        self._a: list[np.ndarray] = []
        self._values: dict[str, list[np.ndarray]] = {h.name: [] for h in self.stored}
        self._groups: list[np.ndarray] = []
        self._types: list[np.ndarray] = []

    def add(self, a: np.ndarray, coded: dict[str, np.ndarray], groups: np.ndarray,
            types: np.ndarray | None = None) -> None:
        """Add symbols: activations a (S, U) of the block's units, coded hypothesis values (S,),
        the input id of each symbol, and (tokens) each symbol's vocabulary id."""
        if self.stats is not None:
            self.stats.update(a, self._pearson_matrix(coded))
        if self.stored:
            self._a.append(np.asarray(a, np.float32))
            for h in self.stored:
                self._values[h.name].append(coded[h.name])
            self._groups.append(groups)
            if types is not None:
                self._types.append(types)

    def _sample(self) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """The stored sample (concatenated once per checkpoint, then kept as one array)."""
        if len(self._a) > 1:
            self._a = [np.concatenate(self._a)]
            self._groups = [np.concatenate(self._groups)]
            self._types = [np.concatenate(self._types)] if self._types else []
            for k in self._values:
                self._values[k] = [np.concatenate(self._values[k])]
        a = self._a[0] if self._a else np.zeros((0, len(self.units)), np.float32)
        return a, {k: (v[0] if v else np.zeros(0)) for k, v in self._values.items()}, \
            (self._groups[0] if self._groups else np.zeros(0, np.int64))

    def scores(self, opts: Any) -> list[Scores]:
        found = self._pearson_scores(opts.confidence)
        auroc_h, mi_h, iou_h = self.wants("auroc"), self.wants("mi"), self.wants("iou")
        if auroc_h or mi_h or iou_h:
            a, values, groups = self._sample()
            if len(a):
                found.update(self._rank_scores(a, values, auroc_h, mi_h, opts))
                for h in iou_h:
                    found[(h.name, "iou", None)] = self._iou(a, values[h.name], groups, h.name, opts)
        return self.ordered(found)

    def _rank_scores(self, a: np.ndarray, values: dict[str, np.ndarray], auroc_h: list, mi_h: list,
                     opts: Any) -> dict[tuple, Scores]:
        """AUROC and MI of all units from one sort per unit block."""
        n, units = a.shape
        cols = []   # AUROC columns: (hypothesis, label code or None, binary column)
        for h in auroc_h:
            v = values[h.name]
            if self.encoders[h.name].kind == "binary":
                cols.append((h.name, None, v == 1))
            else:
                cols += [(h.name, c, v == c) for c in np.unique(v)]
        y = np.stack([c[2] for c in cols], 1) if cols else None
        codes = {h.name: (M.quantile_bins(values[h.name], opts.bins)[0] if self.encoders[h.name].kind == "numeric"
                          else values[h.name]) for h in mi_h}
        auc = np.full((units, len(cols), 3), np.nan)
        mi = {h.name: np.full((units, 3), np.nan) for h in mi_h}
        for blk in M.unit_blocks(units, n):
            avg, below = M.ranks(a[:, blk])
            if y is not None:
                auc[blk] = np.stack(M.auroc_from_ranks(avg, y, opts.confidence), -1)
            if mi_h:
                bins = M.bins_from_below(below, opts.bins)
                for h in mi_h:
                    res = M.mutual_information(bins, codes[h.name], opts.bins, opts.confidence)
                    mi[h.name][blk] = np.stack(res, -1)
        out = {}
        for k, (name, code, _) in enumerate(cols):
            out[(name, "auroc", code)] = Scores(name, self._label(name, code), "auroc", *auc[:, k].T)
        for name, v in mi.items():
            out[(name, "mi", None)] = Scores(name, None, "mi", *v.T)
        return out

    def _iou(self, a: np.ndarray, labels: np.ndarray, groups: np.ndarray, name: str, opts: Any) -> Scores:
        """Token-level IoU: units thresholded at their top quantile against a binary annotation."""
        t = M.top_quantile_threshold(a, opts.q)
        on = (a >= t).astype(np.int64)
        lab = labels.astype(np.int64)
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        inter = np.add.reduceat(on * lab[:, None], starts, axis=0)
        union = np.add.reduceat(on, starts, axis=0) + np.add.reduceat(lab, starts)[:, None] - inter
        s, lo, hi = M.iou(inter[:, :, None].astype(np.float64), union[:, :, None].astype(np.float64), opts.confidence)
        return Scores(name, None, "iou", s[:, 0], lo[:, 0], hi[:, 0])

    def probes(self, opts: Any) -> list[Scores]:
        """Group rows: a linear probe of each binary/categorical hypothesis from all the block's units."""
        hyps = self.wants("probe")
        if not hyps:
            return []
        a, values, groups = self._sample()
        types = self._types[0] if self._types else None
        found = {}
        for h in hyps:
            res = M.probe(a, values[h.name], groups, holdout=opts.holdout, seed=opts.seed,
                          confidence=opts.confidence, types=types)
            for measure, (s, lo, hi) in res.items():
                found[(h.name, measure, None)] = Scores(h.name, None, measure, np.array([s]), np.array([lo]),
                                                        np.array([hi]), group=True)
        return self.ordered(found)


class InputBlock(SymbolBlock):
    """One symbol per input: the view's row restricted to the block's units."""

    level = "input"

    def update(self, ids: np.ndarray, acts: dict[str, np.ndarray], coded: dict[str, np.ndarray], tokens: Any) -> None:
        self.add(acts[self.source.name][:, self.units], {h.name: coded[h.name] for h in self.hyps}, ids)


class TokenBlock(SymbolBlock):
    """One symbol per token: the (tokens, features) layer output at the text's tokens."""

    level = "token"

    def update(self, ids: np.ndarray, acts: dict[str, np.ndarray], coded: dict[str, np.ndarray], tokens: Any) -> None:
        raw = acts[self.source.name].reshape((len(ids),) + self.shape)
        a = np.concatenate([raw[j][t.positions][:, self.units] for j, t in enumerate(tokens)])
        groups = np.repeat(ids, [len(t) for t in tokens])
        types = np.concatenate([t.ids for t in tokens])
        self.add(a, {h.name: coded[h.name] for h in self.hyps}, groups, types)


class PositionBlock(Block):
    """One symbol per mask pixel: conv channels resized to the masks' grid (bilinear).

    IoU follows Network Dissection: a channel's threshold T is the top-`q` quantile of its
    activations over every spatial position of the (unresized) maps of the sample; the
    channel's mask is the resized map >= T; IoU = sum |mask & concept| / sum |mask | concept|.
    """

    level = "position"

    def __init__(self, *args, grid: tuple[int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.grid = tuple(grid)
        self.iou_hyps = self.wants("iou")
        self._maps: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []

    def update(self, ids: np.ndarray, acts: dict[str, np.ndarray], coded: dict[str, np.ndarray], tokens: Any) -> None:
        maps = acts[self.source.name].reshape((len(ids),) + self.shape)[:, self.units]
        if self.stats is not None:
            up = upsample(maps, self.grid)                               # (b, U, H, W)
            a = up.permute(0, 2, 3, 1).reshape(-1, len(self.units)).numpy()
            self.stats.update(a, self._pearson_matrix({h.name: coded[h.name] for h in self.pearson_hyps}))
        if self.iou_hyps:
            self._maps.append(np.ascontiguousarray(maps, np.float32))
            self._masks.append(np.stack([coded[h.name].astype(bool) for h in self.iou_hyps], 1))

    def scores(self, opts: Any) -> list[Scores]:
        found = self._pearson_scores(opts.confidence)
        if self.iou_hyps and self._maps:
            if len(self._maps) > 1:
                self._maps, self._masks = [np.concatenate(self._maps)], [np.concatenate(self._masks)]
            s, lo, hi = self._iou(self._maps[0], self._masks[0], opts)
            for k, h in enumerate(self.iou_hyps):
                found[(h.name, "iou", None)] = Scores(h.name, None, "iou", s[:, k], lo[:, k], hi[:, k])
        return self.ordered(found)

    def _iou(self, maps: np.ndarray, masks: np.ndarray, opts: Any) -> tuple[np.ndarray, ...]:
        n, units = maps.shape[:2]
        t = np.quantile(maps.transpose(1, 0, 2, 3).reshape(units, -1), 1 - opts.q, axis=1)
        thr = torch.from_numpy(t).view(1, units, 1, 1)
        pixels = self.grid[0] * self.grid[1]
        inter = np.empty((n, units, masks.shape[1]))
        union = np.empty_like(inter)
        step = max(1, 4_000_000 // max(units * pixels, 1))
        for s in range(0, n, step):
            on = (upsample(maps[s:s + step], self.grid) >= thr).reshape(-1, units, pixels).float()
            lab = torch.from_numpy(masks[s:s + step]).reshape(-1, masks.shape[1], pixels).float()
            i = torch.bmm(on, lab.transpose(1, 2))
            inter[s:s + step] = i.numpy()
            union[s:s + step] = (on.sum(2)[:, :, None] + lab.sum(2)[:, None, :] - i).numpy()
        return M.iou(inter, union, opts.confidence)

    def probes(self, opts: Any) -> list[Scores]:
        return []
