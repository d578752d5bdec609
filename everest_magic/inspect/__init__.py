"""Deep neural inspection (DeepBase, SIGMOD 2019): which units track a human hypothesis, and how strongly.

    from everest_magic.inspect import inspect, library as lib
    df = inspect(session, ["conv2:mean", "fc1"], {"class": "class", "ink": lib.ink()},
                 measures=["pearson", "auroc", "probe"])
    ckpt = inspect({"epoch1": s1, "epoch4": s4}, "fc1", "class")   # several models, one pass
    compare(ckpt)                                                  # their best units side by side

Units of one or more views x hypotheses x measures -> a long DataFrame (layer, unit,
hypothesis, label, measure, score, ci_low, ci_high, n_inputs, converged, stop_reason),
computed in one streaming pass over shuffled batches with early stopping (several models over
the same data: one shared pass, and a `model` column). See docs/inspect.md.
Imports no IPython and no widgets.
"""
from . import library
from .api import inspect, inspect_job, run_inspect
from .blocks import GROUP
from .hypotheses import (Hypothesis, InputFunction, Labels, MaskFunction, Masks, TokenFunction, Tokens,
                         hypothesis_cache)
from .measures import MEASURES
from .results import COLUMNS, DETECTOR_IOU, THRESHOLDS, InspectStats, compare, detectors, ranked

__all__ = ["inspect", "run_inspect", "inspect_job", "library", "Hypothesis", "Labels", "InputFunction",
           "MaskFunction", "Masks", "TokenFunction", "Tokens", "hypothesis_cache", "MEASURES", "COLUMNS",
           "GROUP", "DETECTOR_IOU", "THRESHOLDS", "InspectStats", "compare", "detectors", "ranked"]
