"""`inspect`, `run_inspect` and `inspect_job`: which units of a layer track a hypothesis, and how strongly."""
from __future__ import annotations

from typing import Any

import pandas as pd

from ..engine.errors import UnknownNameError
from ..engine.jobs import Job
from .plan import InspectOptions, build_plan
from .scorer import run_plan

PLAN_ARGS = ("units", "tokenizer", "filter")


def _check_names(options: dict) -> None:
    valid = InspectOptions.names() + list(PLAN_ARGS)
    for k in options:
        if k not in valid:
            raise UnknownNameError("inspect option", k, valid, param=k)


Models = Any   # a Session, a dict name -> Session, or a list of Sessions (named by `.name`)
Views = Any    # a view name, a list of them, or a dict model name -> view name(s)


def run_inspect(sessions: Models, views: Views, hypotheses: Any, measures: Any = "auto", *,
                units: Any = None, tokenizer: Any = None, filter: Any = None, job: Job | None = None,
                **options: Any) -> pd.DataFrame:
    """Score every unit of `views` against every hypothesis with every measure, on this thread.

    - `sessions`: one Session, or several models over the same data: a dict name -> Session
      (e.g. training checkpoints) or a list of Sessions (named by `.name`). One pass serves
      them all: each chunk of inputs is loaded once and runs through every model, each
      hypothesis is computed once (on the first session: its data, labels and hypothesis
      cache), and early stopping looks at all the models' scores together. The rows of
      several models carry a `model` column.
    - `views`: view names ("fc1", "conv2:mean", "encoder.layer.3.output:token_mean", ...), the
      same for every model, or a dict model name -> view names.
    - `hypotheses`: one spec, a list, or a dict name -> spec; a spec is a built-in name
      ("ink", "class", "quotes", "keyword:return"...), a `Hypothesis`, a function of a raw
      input (a value, or a 2-D concept mask), one value per input (array, list, Series) or
      masks (n, H, W).
    - `measures`: "auto" or names among pearson, auroc, mi, iou, probe; pairs a measure does
      not apply to are skipped (listed in `frame.attrs["inspect"].skipped`).
    - `units`: all units (None), a list for every view, or a dict view -> list.
    - `tokenizer`: needed by token hypotheses (the tokenizer the model's collate uses).
    - `filter`: the inputs to consider (ids or a boolean mask); default all.
    - `options`: the fields of `InspectOptions` (their defaults are there). Early stopping
      (`early_stop=True`): from `min_inputs` on, stop once every confidence interval (at
      `confidence`) is narrower than `epsilon`, or the `top` units of every score list stayed
      the same for `patience` checkpoints (None: never on that ground). `max_inputs` caps the
      sample (None: no cap). `bins`: quantile bins of mi; `q`: the top quantile of iou;
      `holdout`, `seed`: the probe's split by input and the shuffle.

    Returns the long DataFrame described in `everest_magic.inspect.results`.
    """
    _check_names(options)
    plan = build_plan(sessions, views, hypotheses, measures, units=units, tokenizer=tokenizer, filter=filter,
                      options=InspectOptions(**options))
    return run_plan(plan, job)


def inspect_job(sessions: Models, views: Views, hypotheses: Any, measures: Any = "auto",
                **options: Any) -> Job:
    """`run_inspect` as a background job on the (first) session's queue; `job.result()` is the DataFrame.

    The request is checked before the job starts (bad input raises here); the job reports
    progress in inputs scored of inputs planned and stops at its next batch when cancelled.
    """
    _check_names(options)
    plan_args = {k: options.pop(k) for k in PLAN_ARGS if k in options}
    plan = build_plan(sessions, views, hypotheses, measures, options=InspectOptions(**options), **plan_args)
    return plan.session.submit(lambda job: run_plan(plan, job), plan.description)


def inspect(sessions: Models, views: Views, hypotheses: Any, measures: Any = "auto", *,
            wait: bool = True, **options: Any) -> pd.DataFrame | Job:
    """Deep neural inspection: the DataFrame of scores (`wait=True`), or the background Job.

    See `run_inspect` for the arguments.
    """
    if wait:
        return run_inspect(sessions, views, hypotheses, measures, **options)
    return inspect_job(sessions, views, hypotheses, measures, **options)
