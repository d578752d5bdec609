"""Query results: ids and scores best first, with statistics of how they were found."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class QueryStats:
    """How a query was answered."""

    n: int
    method: str = "index"          # "index" (threshold algorithm) or "scan"
    reason: str = ""               # why a scan was used, when it was
    inputs_recomputed: int = 0     # inputs run through the model for this query
    rows_run: int = 0              # rows the model ran for it: the inputs, the padding of short
                                   # batches, and a view's first batch-size check when it paid it
    inputs_from_cache: int = 0     # inputs whose activations came from the cache
    inputs_exact_from_index: int = 0  # inputs scored from exact top/bottom lists alone
    batches: int = 0               # model batches run
    walk_plan: str = ""            # the threshold walk's batch plan (see Session.walk_steps)
    seconds: float = 0.0

    @property
    def fraction_recomputed(self) -> float:
        return self.inputs_recomputed / max(self.n, 1)

    @property
    def answered_by_index(self) -> bool:
        return self.method == "index"

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["fraction_recomputed"] = self.fraction_recomputed
        return d


@dataclass
class Result:
    """The answer of a top-k, bottom-k or kNN query.

    `ids` and `scores` are numpy arrays, best first. For top-k the score is the aggregate
    activation (highest first), for bottom-k the aggregate (lowest first), for kNN the
    distance (nearest first). Ties are broken by the smaller input id.
    """

    kind: str
    view: str
    neurons: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    stats: QueryStats
    params: dict = field(default_factory=dict)
    labels: np.ndarray | None = None
    text: str | None = None        # the magic text that made it, when it came from one

    def __len__(self) -> int:
        return len(self.ids)

    def to_frame(self):
        """A pandas DataFrame: rank, id, score (and label when the session has labels)."""
        import pandas as pd
        df = pd.DataFrame({"rank": np.arange(1, len(self.ids) + 1), "id": self.ids, "score": self.scores})
        if self.labels is not None:
            df["label"] = self.labels
        return df

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.ids, dtype=dtype)

    def __repr__(self) -> str:
        head = ", ".join(f"{i}:{s:.4g}" for i, s in zip(self.ids[:5], self.scores[:5]))
        more = ", ..." if len(self.ids) > 5 else ""
        return (f"<Result {self.kind} k={len(self.ids)} view={self.view!r} neurons={len(self.neurons)} "
                f"[{head}{more}] recomputed={self.stats.inputs_recomputed}/{self.stats.n} "
                f"via {self.stats.method} in {self.stats.seconds * 1000:.1f} ms>")
