"""The result of an inspection: a long DataFrame, one row per (view, unit, hypothesis, label, measure).

Columns: layer, unit, hypothesis, label, measure, score, ci_low, ci_high, n_inputs, converged,
stop_reason; an inspection of several models puts a `model` column first. Rows are grouped
by (model,) view, hypothesis, measure and label, strongest units first (|r| for pearson,
|AUROC - 0.5| for auroc, the score otherwise). Probe rows score the whole unit group: their
unit is -1 and their measure is "probe" (held-out accuracy),
"probe_majority" (the majority-class baseline) or "probe_selectivity" (accuracy minus the
accuracy on a control task). `frame.attrs["inspect"]` holds the run's `InspectStats`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .blocks import GROUP, Block, Scores
from .measures import strength

COLUMNS = ["layer", "unit", "hypothesis", "label", "measure", "score", "ci_low", "ci_high", "n_inputs",
           "converged", "stop_reason"]
DETECTOR_IOU = 0.04   # Network Dissection: a unit detects a concept at IoU >= 0.04


@dataclass(eq=False)
class InspectStats:
    """How an inspection ran."""

    seconds: float
    inputs_seen: int            # inputs scored (the early-stopped sample)
    inputs_planned: int         # inputs the pass would have scored without early stopping
    inputs_available: int       # inputs allowed by the filter
    inputs_from_cache: int      # inputs whose activations all came from the session's cache
    inputs_recomputed: int      # inputs run through the model
    checkpoints: int
    stop_reason: str            # "epsilon", "stable", "max_inputs" or "complete"
    skipped: list[str] = field(default_factory=list)   # (measure|hypothesis) x ... pairs not scored, and why
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the inputs scored, in order
    options: Any = None
    seconds_model: float = 0.0        # time in forward passes (and cache look-ups)
    seconds_hypotheses: float = 0.0   # time computing hypotheses (and tokenizing)
    seconds_scoring: float = 0.0      # time updating statistics, at checkpoints and fitting probes
    models: list = field(default_factory=list)   # the model names of an inspection of several models

    def __repr__(self) -> str:
        return (f"<InspectStats {self.inputs_seen}/{self.inputs_planned} inputs ({self.stop_reason}), "
                f"{self.inputs_from_cache} from cache, {self.checkpoints} checkpoints, {self.seconds:.2f} s>")


def make_frame(blocks: list[Block], scores: list[list[Scores]], probes: list[list[Scores]],
               stats: InspectStats) -> pd.DataFrame:
    """The long DataFrame of a run (see the module docstring)."""
    eps = stats.options.epsilon
    columns = (["model"] if stats.models else []) + COLUMNS
    parts: dict[str, list] = {c: [] for c in columns}
    for b, block_scores, block_probes in zip(blocks, scores, probes):
        for sc in block_scores + block_probes:
            if sc.group:
                units, order = np.array([GROUP]), np.array([0])
            else:
                units, order = b.units, np.argsort(-strength(sc.measure, sc.score), kind="stable")
            k = len(order)
            if stats.models:
                parts["model"].append(np.full(k, b.model, dtype=object))
            parts["layer"].append(np.full(k, b.name, dtype=object))
            parts["unit"].append(units[order])
            parts["hypothesis"].append(np.full(k, sc.hypothesis, dtype=object))
            parts["label"].append(np.full(k, None if sc.label is None else str(sc.label), dtype=object))
            parts["measure"].append(np.full(k, sc.measure, dtype=object))
            lo, hi = sc.low[order], sc.high[order]
            parts["score"].append(sc.score[order])
            parts["ci_low"].append(lo)
            parts["ci_high"].append(hi)
            parts["n_inputs"].append(np.full(k, stats.inputs_seen))
            with np.errstate(invalid="ignore"):
                parts["converged"].append(hi - lo <= eps)
            parts["stop_reason"].append(np.full(k, stats.stop_reason, dtype=object))
    data = {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in parts.items()}
    frame = pd.DataFrame(data, columns=columns)
    frame = frame.astype({"unit": np.int64, "score": np.float64, "ci_low": np.float64, "ci_high": np.float64,
                          "n_inputs": np.int64, "converged": bool})
    frame.attrs["inspect"] = stats
    return frame


def ranked(frame: pd.DataFrame, hypothesis: str | None = None, measure: str | None = None,
           label: Any = None, layer: str | None = None, n: int | None = None, model: str | None = None,
           ) -> pd.DataFrame:
    """Rows of one hypothesis/measure/label/layer/model (any, when None), strongest first, at most n
    per score list."""
    f = frame
    if hypothesis is not None:
        f = f[f.hypothesis == hypothesis]
    if measure is not None:
        f = f[f.measure == measure]
    if label is not None:
        f = f[f.label == str(label)]
    if layer is not None:
        f = f[f.layer == layer]
    if model is not None:
        f = f[f.model == model]
    if n is not None:
        f = f.groupby(_lists(f), sort=False, dropna=False).head(n)
    return f


def detectors(frame: pd.DataFrame, threshold: float = DETECTOR_IOU) -> pd.DataFrame:
    """Network Dissection's detectors: per (model,) layer and unit, its best concept by IoU, kept
    when IoU >= threshold."""
    iou = frame[(frame.measure == "iou") & (frame.score >= threshold)]
    if iou.empty:
        return iou
    where = _models(iou) + ["layer"]
    best = iou.sort_values("score", ascending=False).drop_duplicates(where + ["unit"])
    return best.sort_values(where + ["score"], ascending=[True] * len(where) + [False]).reset_index(drop=True)


# a unit "tracks" a hypothesis in `compare` when its score reaches these (|r|; AUROC or 1 - AUROC)
THRESHOLDS = {"pearson": 0.5, "auroc": 0.9, "mi": 0.1, "iou": DETECTOR_IOU}


def compare(frame: pd.DataFrame, hypothesis: str | None = None, measure: str | None = None, *,
            layer: str | None = None, threshold: float | dict[str, float] | None = None) -> pd.DataFrame:
    """Models side by side: per (hypothesis, label, measure), each model's best unit and how many
    of its units track the hypothesis.

    Returns one row per (hypothesis, label, measure) (label "" when there is none) and columns
    (stat, model): `score` (the best unit's score), `layer` and `unit` (where it is), `passing`
    (the number of units whose score reaches the threshold). Best and passing go by strength:
    |r| for pearson, max(AUROC, 1 - AUROC) for auroc, the score otherwise; `threshold` is one
    number for every measure or a dict measure -> number (default `THRESHOLDS`: |r| >= 0.5,
    AUROC >= 0.9 (or <= 0.1), MI >= 0.1 nats, IoU >= 0.04). Units are compared across models
    only through these per-model summaries (not matched by name), over the layers each model
    has (`layer=` restricts to one). Group rows (probes) are left out; a one-model frame gives
    one model column named "".
    """
    models = list(dict.fromkeys(frame.model)) if "model" in frame else [""]
    f = frame[frame.unit != GROUP]
    if hypothesis is not None:
        f = f[f.hypothesis == hypothesis]
    if measure is not None:
        f = f[f.measure == measure]
    if layer is not None:
        f = f[f.layer == layer]
    limits = {**THRESHOLDS, **(threshold if isinstance(threshold, dict) else {})}
    f = f.assign(model=f.model if "model" in f else "", label=f.label.fillna(""))
    magnitude = np.where(f.measure == "auroc", np.maximum(f.score, 1 - f.score),
                         np.where(f.measure == "pearson", f.score.abs(), f.score))
    bar = f.measure.map(lambda m: threshold if isinstance(threshold, (int, float)) else limits.get(m, np.inf))
    f = f.assign(magnitude=np.where(np.isnan(magnitude), -np.inf, magnitude), passing=magnitude >= bar)
    key = ["hypothesis", "label", "measure"]
    best = f.sort_values("magnitude", ascending=False, kind="stable").drop_duplicates(key + ["model"])
    best = best.set_index(key + ["model"])[["score", "layer", "unit"]]
    passing = f.groupby(key + ["model"], sort=False).passing.sum().astype(np.int64)
    out = best.join(passing).unstack("model")
    order = list(dict.fromkeys(zip(f.hypothesis, f.label, f.measure)))
    out = out.reindex(pd.MultiIndex.from_tuples(order, names=key))
    return out.reindex(columns=pd.MultiIndex.from_product([["score", "layer", "unit", "passing"], models],
                                                          names=[None, "model"]))


def _models(frame: pd.DataFrame) -> list[str]:
    return ["model"] if "model" in frame else []


def _lists(frame: pd.DataFrame) -> list[str]:
    """The columns that identify one score list."""
    return _models(frame) + ["layer", "hypothesis", "measure", "label"]
