"""The streaming pass: shuffled batches through every block, checkpoints, early stopping.

One pass over the planned inputs (a seeded shuffle, capped at `max_inputs`), in chunks of
whole model batches. Per chunk: the activations of every view the blocks need (one forward
pass, cached rows reused), the hypotheses' values (cached per session), one update per block.
At checkpoints (from `min_inputs` on, then every `growth` x more inputs, or sooner where the
widest interval should shrink below epsilon as widths go like 1/sqrt(n); without the stability
rule, right there) all scores and
their confidence intervals are computed; the pass stops early when

- every finite interval is narrower than `epsilon` (stop_reason "epsilon"), or
- the top `top` units of every (view, hypothesis, label, measure) stayed the same for
  `patience` consecutive checkpoints (stop_reason "stable");

otherwise it ends at the sample cap ("max_inputs") or when every input was seen ("complete").
Probe rows are fitted once, on the final sample.

Several models over the same data share the pass: each chunk's inputs are loaded once and
run through every model, each hypothesis is computed once for all of them, and the stopping
rules look at the scores of every model together.

The run limits numpy's BLAS to one thread: its idle threads spin for a while after each
product, and on a small machine they take the cores from the model's forward passes (the
Pearson updates interleave with them), which made the pass's model time nearly twice a bare
inference pass.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..engine.errors import QueryError
from ..engine.jobs import Job
from .activations import fetch_models, token_batch
from .blocks import Scores
from .measures import strength
from .plan import Plan
from .results import InspectStats, make_frame


def run_plan(plan: Plan, job: Job | None = None) -> pd.DataFrame:
    """Run a plan; returns the long DataFrame of scores (see `results.make_frame`)."""
    with threadpool_limits(1, user_api="blas"):
        return _run(plan, job)


def _run(plan: Plan, job: Job | None) -> pd.DataFrame:
    t0 = time.perf_counter()
    s, opts = plan.session, plan.options
    total = len(plan.order)
    batch = s.runner.batch_size
    chunk = opts.chunk or batch * max(1, round(256 / batch))
    remote = getattr(s.runner, "remote", None)
    if opts.chunk is None and remote is not None:    # a cluster session: chunks its workers share
        chunk = max(chunk, remote.min_inputs)
    seen = from_cache = checkpoints = stable = 0
    clock = {"model": 0.0, "hypotheses": 0.0, "scoring": 0.0}
    next_check = opts.min_inputs
    tops = None
    reason = None
    scores: list[list[Scores]] | None = None
    levels = {b.level for b in plan.blocks}
    models = {name: (plan.models[name], views) for name, views in plan.fetch.items() if views}
    for start in range(0, total, chunk):
        if job is not None:
            job.step(seen, total)
        ids = plan.order[start:start + chunk]
        t = time.perf_counter()
        acts, hits = fetch_models(models, ids)
        from_cache += int(hits.sum())
        t = _tick(clock, "model", t)
        tokens = token_batch(s, ids, plan.tokenizer, plan.token_length) if "token" in levels else None
        coded = _coded(plan, ids, tokens)
        t = _tick(clock, "hypotheses", t)
        for b in plan.blocks:
            b.update(ids, acts[b.model], coded, tokens)
        seen += len(ids)
        scores = None
        if opts.early_stop and seen >= next_check and seen < total:
            scores = [b.scores(opts) for b in plan.blocks]
            checkpoints += 1
            new_tops = _tops(plan, scores, opts.top)
            stable = stable + 1 if new_tops == tops else 0
            tops = new_tops
            if _all_narrow(scores, opts.epsilon):
                reason = "epsilon"
            elif opts.patience is not None and stable >= opts.patience:
                reason = "stable"
            next_check = _next_check(scores, seen, total, opts)
        _tick(clock, "scoring", t)
        if reason:
            break
    if reason is None:
        reason = "complete" if seen >= plan.available else "max_inputs"
    t = time.perf_counter()
    if scores is None:
        scores = [b.scores(opts) for b in plan.blocks]
    probes = [b.probes(opts) for b in plan.blocks]
    _tick(clock, "scoring", t)
    if job is not None:
        job.step(seen, seen)
    stats = InspectStats(seconds=time.perf_counter() - t0, inputs_seen=seen, inputs_planned=total,
                         inputs_available=plan.available, inputs_from_cache=from_cache,
                         inputs_recomputed=seen - from_cache, checkpoints=checkpoints, stop_reason=reason,
                         skipped=list(plan.skipped), ids=plan.order[:seen].copy(), options=opts,
                         seconds_model=clock["model"], seconds_hypotheses=clock["hypotheses"],
                         seconds_scoring=clock["scoring"], models=[] if not plan.multi else list(plan.models))
    return make_frame(plan.blocks, scores, probes, stats)


def _tick(clock: dict, key: str, since: float) -> float:
    now = time.perf_counter()
    clock[key] += now - since
    return now


def _coded(plan: Plan, ids: np.ndarray, tokens: Any) -> dict[str, np.ndarray]:
    """Every scored hypothesis's values on a chunk, encoded (floats, 0/1 or label codes)."""
    s = plan.session
    out = {}
    for h in plan.hyps:
        if not any(h in b.hyps for b in plan.blocks):
            continue
        vals = h.values(s, ids, tokens if h.level == "token" else None)
        where = f" (inputs {int(ids[0])}...)"
        if h.level == "token":
            flat = np.concatenate([np.asarray(v) for v in vals]) if vals else np.zeros(0)
            out[h.name] = plan.encoders[h.name].encode(flat, where)
        elif h.level == "position":
            shapes = {np.shape(v) for v in vals}
            if len(shapes) > 1:
                raise QueryError(f"concept masks of {h.name!r} must all have the same shape; got {sorted(shapes)}")
            out[h.name] = plan.encoders[h.name].encode(np.stack(vals), where)
        else:
            out[h.name] = plan.encoders[h.name].encode(np.asarray(vals, dtype=object) if
                                                       plan.encoders[h.name].kind == "categorical" else vals, where)
    return out


def _all_narrow(scores: list[list[Scores]], epsilon: float) -> bool:
    """True when every finite confidence interval is narrower than epsilon (and there is one)."""
    any_finite = False
    for block in scores:
        for sc in block:
            w = sc.high - sc.low
            fin = np.isfinite(w)
            if fin.any():
                any_finite = True
                if (w[fin] > epsilon).any():
                    return False
    return any_finite


def _next_check(scores: list[list[Scores]], seen: int, total: int, opts: Any) -> int:
    """The next checkpoint: `growth` x more inputs, or where the widest interval should fall below
    epsilon if that comes first; without the stability rule, never before that point."""
    grown = max(seen + 1, int(np.ceil(seen * opts.growth)))
    predicted = max(seen + 1, _predicted(scores, seen, opts.epsilon))
    if opts.patience is None:
        return max(grown, min(predicted, total))
    return min(grown, predicted)


def _predicted(scores: list[list[Scores]], n: int, epsilon: float) -> int:
    """The sample size at which every interval should be narrower than epsilon (widths ~ 1/sqrt(n))."""
    worst = 0.0
    for block in scores:
        for sc in block:
            w = sc.high - sc.low
            w = w[np.isfinite(w)]
            if len(w):
                worst = max(worst, float(w.max()))
    return int(np.ceil(n * (worst / epsilon) ** 2))


def _tops(plan: Plan, scores: list[list[Scores]], top: int) -> dict:
    """The set of the `top` strongest units of every score list."""
    out = {}
    for b, block in zip(plan.blocks, scores):
        for sc in block:
            order = np.argsort(-strength(sc.measure, sc.score), kind="stable")[:top]
            key = (b.model, b.name, b.level, sc.hypothesis, repr(sc.label), sc.measure)
            out[key] = frozenset(b.units[order].tolist())
    return out
