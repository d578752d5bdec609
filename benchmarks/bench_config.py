"""What a benchmark run measures: `Config` (the full run and the smoke run) and the sweep's P.

Shared by benchmarks/run.py and benchmarks/sweep_latency.py (neither imports the other).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from everest_magic.engine.build import DEFAULT_RATIO, DEFAULT_SCHEME

import queries as QS
import workloads as W

SWEEP_P = 64   # the P the engine picks for conv2 (the sweep's view); ratio varies at it


@dataclass
class Config:
    """What one run measures. `full()` is the documented run; `smoke()` the tiny one."""

    name: str = "full"
    mnist_n: int = 50000
    mnist_views: list[str] = field(default_factory=lambda: ["conv1", "conv2", "fc1"])
    batch_size: int = 128
    queries: int = 20                       # MNIST: per view and family
    families: list[str] = field(default_factory=lambda: list(QS.FAMILIES))
    minilm_n: int = 5000                    # 0 skips MiniLM
    # MiniLM recomputes cost ~15-30 ms a sentence here, so a recompute batch is smaller
    # (same throughput per sentence as 128, see docs) and fewer queries per family
    minilm_batch_size: int = 32
    minilm_queries: dict[str, int] = field(default_factory=lambda: {"topk": 4, "bottomk": 20, "knn": 10})
    # the bare pass of MiniLM is timed on this many sentences and scaled to n (every
    # batch has the same padded shape, so its cost is linear in batches); None: all
    minilm_bare_sample: int | None = 1024
    # ReprocessAll costs one full inference pass per query whatever the query asks, so it
    # answers (and is checked on) the first query of these families on every view; the
    # first family must be a random-group one (its pass also yields the brute-force rows)
    reprocess_families: list[str] = field(default_factory=lambda: ["topk-g3-rand"])
    drilldown_views: list[str] = field(default_factory=lambda: ["conv2"])
    threads: int = 1                        # torch (and FAISS) intra-op threads, see docs
    partitions: int | None = None          # the engine's default: P chosen per view (build.choose_partitions)
    ratio: float = DEFAULT_RATIO
    scheme: str = DEFAULT_SCHEME
    sweep: bool = True
    sweep_n: int = 50000
    sweep_queries: int = 5
    # P in {8, 16, 32, 64} at the default ratio, and ratio 0 / 0.01 at the default P
    sweep_settings: list[tuple[int, float, str]] = field(default_factory=lambda: sorted(
        {(P, DEFAULT_RATIO, DEFAULT_SCHEME) for P in (8, 16, 32, 48, 64, 128)}
        | {(SWEEP_P, r, DEFAULT_SCHEME) for r in (0.0, 0.01)}))
    seed: int = 0

    @classmethod
    def full(cls) -> "Config":
        return cls()

    @classmethod
    def smoke(cls) -> "Config":
        return cls(name="smoke", mnist_n=2000, mnist_views=["conv2", "fc1"], queries=3, minilm_n=100,
                   drilldown_views=["conv2", W.MINILM_VIEW],
                   minilm_batch_size=16, minilm_queries={"topk": 2, "bottomk": 2, "knn": 2}, minilm_bare_sample=None,
                   sweep_n=2000, sweep_queries=2,
                   sweep_settings=sorted({(8, DEFAULT_RATIO, DEFAULT_SCHEME), (SWEEP_P, DEFAULT_RATIO, DEFAULT_SCHEME)}))

    def counts(self, workload: str) -> dict[str, int]:
        """Queries per family for a workload."""
        if workload == "minilm":
            return {f: self.minilm_queries[QS.parse_family(f)[0]] for f in self.families}
        return {f: self.queries for f in self.families}
