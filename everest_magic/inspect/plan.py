"""Checking an inspection request and planning it: views, hypotheses, measures, units, order.

Everything a user can get wrong is checked here, on the calling thread, before any
background work starts; errors are `QueryError`s (unknown names suggest the closest ones).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from ..engine.config import option, option_kind
from ..engine.errors import QueryError, UnknownNameError, about
from ..engine.session import Session
from ..engine.views import View
from . import library
from .activations import token_batch
from .blocks import Block, InputBlock, PositionBlock, TokenBlock
from .hypotheses import AnyFunction, Encoder, Hypothesis, Labels, Masks, infer_kind
from .measures import MEASURES

ALIASES = {"correlation": "pearson", "corr": "pearson", "r": "pearson", "auc": "auroc", "roc": "auroc",
           "roc_auc": "auroc", "mutual_info": "mi", "mutual_information": "mi", "linear_probe": "probe",
           "logistic": "probe"}
# default measures by (level, kind) when measures="auto"
AUTO = {("input", "numeric"): ("pearson",), ("input", "binary"): ("pearson", "auroc"),
        ("input", "categorical"): ("auroc", "probe"), ("token", "numeric"): ("pearson",),
        ("token", "binary"): ("auroc", "iou"), ("token", "categorical"): ("auroc", "probe"),
        ("position", "numeric"): ("pearson",), ("position", "binary"): ("iou",)}
KIND_SAMPLE = 64   # inputs a function hypothesis is evaluated on to infer its kind


def applicable(measure: str, level: str, kind: str) -> str | None:
    """None if `measure` applies to a hypothesis of this level and kind, else why not."""
    if measure in ("auroc", "probe") and kind == "numeric":
        return f"{measure} needs a binary or categorical hypothesis"
    if measure in ("auroc", "mi", "probe") and level == "position":
        return f"{measure} is not computed for concept masks (use iou or pearson)"
    if measure == "iou" and (kind != "binary" or level == "input"):
        return "iou needs a binary concept mask or token annotation"
    return None


@dataclass(frozen=True)
class InspectOptions:
    """Settings of one inspection (see `run_inspect` for their meaning), declared once: the
    magic's option lines and `inspect(**options)` are checked against these fields. Metadata:
    the value kind the magic parses, `none` (the word none is allowed) and `min` (of an int;
    default 1). `growth` (how fast the checkpoints space out) is internal."""

    epsilon: float = option(0.05, "float")
    confidence: float = option(0.95, "float")
    top: int = option(5, "int")
    patience: int | None = option(3, "int", none=True)
    min_inputs: int = option(500, "int")
    max_inputs: int | None = option(10_000, "int", none=True)
    early_stop: bool = option(True, "bool")
    bins: int = option(10, "int")
    q: float = option(0.005, "float")
    holdout: float = option(0.2, "float")
    seed: int = option(0, "int", min=0)
    chunk: int | None = option(None, "int", none=True)
    growth: float = 1.5

    @classmethod
    def names(cls) -> list[str]:
        """The options a user sets (every field but the internal ones)."""
        return [f.name for f in fields(cls) if option_kind(f)]

    def check(self) -> "InspectOptions":
        def bad(name: str, message: str) -> QueryError:
            return QueryError(f"{name} {message}, got {getattr(self, name)!r}", param=name)

        if not self.epsilon > 0:
            raise bad("epsilon", "must be > 0")
        if not 0 < self.confidence < 1:
            raise bad("confidence", "must lie in (0, 1)")
        if self.top < 1:
            raise bad("top", "must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise bad("patience", "must be >= 1 or None")
        if self.min_inputs < 1:
            raise bad("min_inputs", "must be >= 1")
        if self.max_inputs is not None and self.max_inputs < 2:
            raise bad("max_inputs", "must be >= 2 or None")
        if not 2 <= self.bins <= 1000:
            raise bad("bins", "must lie in [2, 1000]")
        if not 0 < self.q < 0.5:
            raise bad("q", "(the IoU top quantile) must lie in (0, 0.5)")
        if not 0 < self.holdout < 1:
            raise bad("holdout", "must lie in (0, 1)")
        if not self.growth > 1:
            raise bad("growth", "must be > 1")
        if self.chunk is not None and self.chunk < 1:
            raise bad("chunk", "must be >= 1")
        return self


@dataclass
class Plan:
    """What a run does: blocks to feed, hypotheses to compute, inputs in order, views to fetch.

    `models` maps a model name to its session (one entry named None for a one-model call);
    `session` is the first of them: its data, labels and hypothesis cache serve every model.
    `fetch` maps a model name to the views its blocks read; each block's `model` says whose."""

    session: Any
    blocks: list[Block]
    hyps: list[Hypothesis]
    encoders: dict[str, Encoder]
    order: np.ndarray
    available: int
    fetch: dict[str | None, list[View]]
    options: InspectOptions
    tokenizer: Any = None
    token_length: int | None = None
    skipped: list[str] = field(default_factory=list)
    description: str = ""
    models: dict[str | None, Any] = field(default_factory=dict)

    @property
    def multi(self) -> bool:
        """Several models (or models given by name): the rows carry a `model` column."""
        return None not in self.models


# -- hypotheses -------------------------------------------------------------------------------------------

def as_hypothesis(spec: Any, name: str | None = None) -> Hypothesis:
    """A Hypothesis from a name, Hypothesis, callable, label array/Series or mask array (n, H, W)."""
    if isinstance(spec, Hypothesis):
        h = copy.copy(spec)   # the run names it and settles its kind without touching the caller's object
    elif isinstance(spec, str):
        h = library.builtin(spec)
    elif callable(spec) and not hasattr(spec, "shape"):
        h = AnyFunction(spec)
    else:
        if isinstance(spec, (set, dict)) or spec is None or np.isscalar(spec):
            raise QueryError(f"a hypothesis must be a name, a function, a Hypothesis, or one value per input "
                             f"(array, list or Series); got {type(spec).__name__}", param="hypotheses")
        arr = spec.detach().cpu().numpy() if hasattr(spec, "detach") else spec
        h = Masks(arr, name) if np.ndim(arr) == 3 else Labels(arr, name)
    if name is not None:
        h.name = name
    return h


def resolve_hypotheses(hypotheses: Any) -> list[Hypothesis]:
    """Hypotheses from one spec, a list of specs, or a dict name -> spec; names must be unique."""
    if isinstance(hypotheses, Mapping):
        hyps = [as_hypothesis(spec, str(name)) for name, spec in hypotheses.items()]
    elif isinstance(hypotheses, (list, tuple)):
        hyps = [as_hypothesis(spec) for spec in hypotheses]
    else:
        hyps = [as_hypothesis(hypotheses)]
    if not hyps:
        raise QueryError("no hypotheses to inspect", param="hypotheses")
    for j, h in enumerate(hyps):
        if not h.name:
            h.name = f"h{j}"
    names = [h.name for h in hyps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise QueryError(f"hypothesis names must be unique; {', '.join(map(repr, dup))} appear more than once "
                         "(pass a dict name -> hypothesis)", param="hypotheses")
    return hyps


def resolve_measures(measures: Any) -> tuple[str, ...] | None:
    """Measure names (None for "auto"); unknown names raise with suggestions."""
    if measures is None or (isinstance(measures, str) and measures == "auto"):
        return None
    items = [measures] if isinstance(measures, str) else list(measures)
    if not items:
        raise QueryError("no measures given", param="measures")
    out = []
    for m in items:
        if not isinstance(m, str):
            raise QueryError(f"a measure is a name ({', '.join(MEASURES)}), got {m!r}", param="measures")
        key = ALIASES.get(m.strip().lower(), m.strip().lower())
        if key not in MEASURES:
            raise UnknownNameError("measure", m, list(MEASURES), param="measures")
        if key not in out:
            out.append(key)
    return tuple(out)


# -- the plan ---------------------------------------------------------------------------------------------

def build_plan(sessions: Any, views: Any, hypotheses: Any, measures: Any = "auto", *, units: Any = None,
               tokenizer: Any = None, filter: Any = None, options: InspectOptions | None = None) -> Plan:
    """Check a request and plan its run (raises QueryError on bad input).

    `sessions`: one Session, a dict name -> Session or a list of Sessions (named by `.name`)
    over the same data; `views`: the views of every model, or a dict model name -> views."""
    opts = (options or InspectOptions()).check()
    models = resolve_models(sessions)
    session = next(iter(models.values()))
    vs = {name: _views(s, _model_views(views, name, models)) for name, s in models.items()}
    wanted = resolve_measures(measures)
    with about("hypotheses"):
        hyps = [h.bind(session) for h in resolve_hypotheses(hypotheses)]
    candidates = np.flatnonzero(session.allowed(filter))
    if len(candidates) < 2:
        raise QueryError(f"inspection needs at least 2 inputs; the filter leaves {len(candidates)}", param="filter")
    order = np.random.default_rng(opts.seed).permutation(candidates)[: opts.max_inputs]
    sample = order[:KIND_SAMPLE]
    with about("hypotheses"):
        hyps = [h.settle(session, int(order[0])) if isinstance(h, AnyFunction) else h for h in hyps]

    levels = {h.level for h in hyps}
    raw, shapes, lengths = {}, {}, {}
    for name, s in models.items():
        raw[name] = {v.layer: s.view(v.layer) for v in vs[name]} if levels - {"input"} else {}
        shape_views = list({v.name: v for v in vs[name] + list(raw[name].values())}.values())
        shapes[name] = dict(zip([v.name for v in shape_views], s.source.view_shapes(shape_views)))
        lengths[name] = _token_length(hyps, vs[name], raw[name], shapes[name], tokenizer)
    token_length = _one_token_length(lengths)
    with about("tokenizer"):
        tokens = token_batch(session, sample, tokenizer, token_length) if token_length else None
    encoders = {}
    for h in hyps:
        with about("hypotheses"):
            if h.kind is None:
                h.kind = _infer(h, session, sample, tokens)
            if h.level == "position" and h.kind == "categorical":
                raise QueryError(f"concept mask {h.name!r} must be boolean or numeric, not categorical")
            encoders[h.name] = Encoder(h)

    blocks, skipped, fetch = [], [], {}
    for name in models:
        mine, notes = [], []
        for v in vs[name]:
            for level in ("input", "position", "token"):
                src = v if level == "input" else raw[name].get(v.layer)
                with about("hypotheses"):   # (a unit list error names the units)
                    mine += _blocks(session, v, src, level, [h for h in hyps if h.level == level],
                                    shapes[name].get(src.name) if src else None, wanted, units, encoders, sample,
                                    notes)
        for b in mine:
            b.model = name
        blocks += mine
        skipped += [(what, on if name is None else f"{on} ({name})", why) for what, on, why in notes]
        fetch[name] = list({b.source.name: b.source for b in mine}.values())
    _check_coverage(hyps, wanted, blocks, skipped)
    desc = " | ".join(f"inspect {'' if name is None else name + ': '}{' '.join(v.name for v in vs[name])}"
                      for name in models) + f" ~ {', '.join(h.name for h in hyps)}"
    notes = list(dict.fromkeys(f"{what} x {on}: {why}" for what, on, why in skipped))
    return Plan(session, blocks, hyps, encoders, order, len(candidates), fetch, opts, tokenizer, token_length,
                notes, desc, models)


def resolve_models(sessions: Any) -> dict[str | None, Any]:
    """Model name -> Session: {None: s} for one Session, the dict given, or a list named by `.name`.

    Every model must read the same data (same inputs, by the data's fingerprint)."""
    if isinstance(sessions, Mapping):
        models = {str(k): v for k, v in sessions.items()}
    elif isinstance(sessions, (list, tuple)):
        models = {getattr(s, "name", None): s for s in sessions}
        names = [getattr(s, "name", None) for s in sessions]
        dup = sorted({str(n) for n in names if names.count(n) > 1})
        if dup:
            raise QueryError(f"models given as a list are named by their session's name; {', '.join(map(repr, dup))} "
                             "appears more than once (pass a dict name -> session)", param="sessions")
    else:
        models = {None: sessions}
    if not models:
        raise QueryError("no models to inspect; pass a session, or a dict name -> session", param="sessions")
    bad = [k for k, s in models.items() if not isinstance(s, Session)]
    if bad:
        raise QueryError(f"a model to inspect is given by its everest_magic Session; {bad[0]!r} is a "
                         f"{type(models[bad[0]]).__name__}", param="sessions")
    first_name, first = next(iter(models.items()))
    for name, s in models.items():
        if s.n != first.n or s.data.fingerprint() != first.data.fingerprint():
            raise QueryError(f"models inspected together must read the same data: model {name!r} has {s.n} inputs "
                             f"(data fingerprint {s.data.fingerprint()}), model {first_name!r} {first.n} "
                             f"({first.data.fingerprint()})", param="sessions")
    return models


def _model_views(views: Any, name: str | None, models: dict) -> Any:
    """The views of one model: `views` itself, or its entry when `views` is a dict per model."""
    if not isinstance(views, Mapping):
        return views
    unknown = [k for k in views if str(k) not in models]
    if unknown:
        raise UnknownNameError("model", str(unknown[0]), [str(m) for m in models], param="views")
    if name not in views:
        raise QueryError(f"views given per model must name every model; {name!r} has none "
                         f"(models: {', '.join(map(str, models))})", param="views")
    return views[name]


def _one_token_length(lengths: dict) -> int | None:
    """The token axis length shared by the models that have one (their data must align the same tokens)."""
    found = {n for n in lengths.values() if n is not None}
    if len(found) > 1:
        raise QueryError("models inspected together with token hypotheses must read the same tokens; their token "
                         f"axes have lengths {sorted(found)}", param="sessions")
    return found.pop() if found else None


def _views(session: Any, views: Any) -> list[View]:
    names = [views] if isinstance(views, (str, View)) else list(views or [])
    if not names:
        raise QueryError("no views to inspect; name one or more layers, e.g. 'conv2:mean'", param="views")
    bad = [v for v in names if not isinstance(v, (str, View))]
    if bad:
        raise QueryError(f"a view is a layer name such as 'conv2' or 'fc1', got {bad[0]!r}", param="views")
    return [session.view(v) for v in names]


def _token_length(hyps: list[Hypothesis], vs: list[View], raw: dict, shapes: dict, tokenizer: Any) -> int | None:
    """Length of the model's token axis when a token hypothesis meets a (tokens, features) layer."""
    token_hyps = [h.name for h in hyps if h.level == "token"]
    token_views = [raw[v.layer] for v in vs if token_hyps and len(shapes[raw[v.layer].name]) == 2]
    if not token_views:
        return None
    if tokenizer is None:
        raise QueryError(f"token hypotheses ({', '.join(map(repr, token_hyps))}) need tokenizer=, the tokenizer "
                         "whose tokens the model reads", param="tokenizer")
    return shapes[token_views[0].name][0]


def _blocks(session: Any, v: View, src: View | None, level: str, hyps: list[Hypothesis], shape: tuple | None,
            wanted: tuple | None, units: Any, encoders: dict, sample: np.ndarray, skipped: list) -> list[Block]:
    """The blocks of one view at one level (none when nothing applies; reasons go to `skipped`)."""
    if not hyps:
        return []
    why = _level_problem(level, v, shape)
    if why:
        skipped += [(h.name, v.name, why) for h in hyps]
        return []
    chosen = {}
    for h in hyps:
        ms = AUTO[(level, h.kind)] if wanted is None else wanted
        skipped += [(m, h.name, applicable(m, level, h.kind)) for m in ms if applicable(m, level, h.kind)]
        ok = tuple(m for m in ms if applicable(m, level, h.kind) is None)
        if ok:
            chosen[h.name] = ok
    hyps = [h for h in hyps if h.name in chosen]
    if not hyps:
        return []
    name = _reported_name(v, level)
    n_units = int(np.prod(shape)) if level == "input" else shape[0] if level == "position" else shape[1]
    args = (name, src, shape, _units(units, v.name, name, n_units))
    if level != "position":
        cls = InputBlock if level == "input" else TokenBlock
        return [cls(*args, hyps, {h.name: chosen[h.name] for h in hyps}, encoders)]
    grids: dict[tuple, list] = {}
    for h in hyps:
        grids.setdefault(_grid(h, session, sample), []).append(h)
    return [PositionBlock(*args, hs, {h.name: chosen[h.name] for h in hs}, encoders, grid=grid)
            for grid, hs in grids.items()]


def _check_coverage(hyps: list[Hypothesis], wanted: tuple | None, blocks: list[Block], skipped: list) -> None:
    """Every requested measure and every hypothesis must be scored somewhere."""
    used = {m for b in blocks for ms in b.measures.values() for m in ms}
    unused = [m for m in (wanted or ()) if m not in used]
    if unused:
        reasons = sorted({why for what, _, why in skipped if what in unused})
        raise QueryError(f"measure {', '.join(map(repr, unused))} applies to none of the hypotheses"
                         + (f" ({'; '.join(reasons)})" if reasons else ""), param="measures")
    unscored = [h.name for h in hyps if not any(h in b.hyps for b in blocks)]
    if unscored:
        reasons = dict.fromkeys(f"{what} x {on}: {why}" for what, on, why in skipped if what in unscored)
        raise QueryError(f"hypothesis {', '.join(map(repr, unscored))} applies to none of the views: "
                         + "; ".join(reasons), param="hypotheses")


def _infer(h: Hypothesis, session: Any, sample: np.ndarray, tokens: Any) -> str:
    """Kind of a function hypothesis from its values on the first inputs of the run."""
    if h.level == "token" and tokens is None:
        return "numeric"   # no view has a token axis: the hypothesis is skipped, with the reason
    vals = h.values(session, sample, tokens if h.level == "token" else None)
    flat = np.concatenate([np.ravel(v) for v in vals]) if h.level != "input" else np.asarray(vals)
    kind = infer_kind(flat, complete=False)
    return "numeric" if h.level == "position" and kind == "categorical" else kind


def _grid(h: Hypothesis, session: Any, sample: np.ndarray) -> tuple[int, int]:
    return tuple(np.shape(h.values(session, sample[:1])[0]))


def _level_problem(level: str, v: View, shape: tuple | None) -> str | None:
    if level == "position" and len(shape) != 3:
        return f"concept masks need a conv layer with (channels, height, width) output; {v.layer!r} has shape {shape}"
    if level == "token" and len(shape) != 2:
        return f"token hypotheses need a (tokens, features) layer output; {v.layer!r} has shape {shape}"
    return None


def _reported_name(v: View, level: str) -> str:
    """The view named in the rows: per-position/per-token units are channels/features, reported
    under the channel view (`layer:mean` / `layer:token_mean`) so (layer, unit) is a valid top-k query."""
    if level == "position" and v.reduce not in ("mean", "max"):
        return f"{v.layer}:mean"
    if level == "token" and v.reduce not in ("token_mean", "token_max"):
        return f"{v.layer}:token_mean"
    return v.name


def _units(units: Any, view: str, reported: str, n: int) -> np.ndarray:
    """The selected units of a block: all of them, one list for every view, or a dict per view."""
    if isinstance(units, Mapping):
        units = units.get(reported, units.get(view))
    if units is None:
        return np.arange(n)
    if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        units = [units]
    arr = np.asarray(list(units) if isinstance(units, range) else units)
    if arr.ndim != 1 or (len(arr) and arr.dtype.kind not in "iu"):
        raise QueryError(f"units must be a list of unit indices, got {units!r}", param="units")
    if len(arr) == 0:
        raise QueryError("the unit list is empty", param="units")
    if arr.min() < 0 or arr.max() >= n:
        raise QueryError(f"unit {int(arr.max() if arr.max() >= n else arr.min())} is out of range: {reported!r} has "
                         f"{n} units", param="units")
    return arr.astype(np.int64)
