"""Index size against inputs recomputed, for many P, by replaying queries without the model.

    python benchmarks/replay_partitions.py --workload minilm --n 5000 --P 16,20,24,32
    python benchmarks/replay_partitions.py --workload mnist --view fc1 --P 24,32,48,64

The view's activations are computed once (one inference pass); each P's index is built from
them into a real index file (the build's own `partition_block`, compression and writer), and
the benchmark's query families run through the engine's own threshold walk (`query.topk`,
`query.knn`) with a stand-in context whose `fetch` reads the activations instead of running
the model and whose recompute batches follow the real session's (`Session.walk_steps`). So
the counts of inputs recomputed are the engine's, at a fraction of the time; latency is not
measured (see run.py's sweep for that). Every answer is checked against brute force.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import everest_magic as em  # noqa: E402
from everest_magic.engine import query as Q  # noqa: E402
from everest_magic.engine.baselines import ReprocessAll  # noqa: E402
from everest_magic.engine.build import DEFAULT_RATIO  # noqa: E402
from everest_magic.engine.cache import ActivationCache  # noqa: E402
from everest_magic.engine.store import IndexStore  # noqa: E402

import queries as QS  # noqa: E402
import workloads as W  # noqa: E402
from systems import reference  # noqa: E402

FAMILIES = ("topk-g1-top", "topk-g3-top", "topk-g10-rand", "bottomk-g3-top", "knn-g3-top", "knn-g10-top")


class Replay:
    """A query context over saved activations: the index of one view, no model."""

    def __init__(self, A: np.ndarray, store: IndexStore, steps):
        self.A, self.store, self.n = A, store, len(A)
        self.cache, self.tolerance, self._steps = ActivationCache(0), 1e-5, steps

    def fetch(self, view, ids, stats):
        stats.inputs_recomputed += len(ids)
        stats.batches += 1
        return self.A[ids]

    def walk_steps(self, view):
        return self._steps()


def build(A: np.ndarray, path: Path, P: int, scheme: str) -> IndexStore:
    """The engine's own build over the saved activations: the "model" is an identity whose
    layer "v" outputs each input's row."""
    model = torch.nn.Sequential()
    model.add_module("v", torch.nn.Identity())
    s = em.Session(model, torch.from_numpy(A), index=path, partitions=P, scheme=scheme, ratio=DEFAULT_RATIO,
                   batch_size=256)
    s.build_index(["v"], wait=True)
    return s.store


def run(spec: QS.QuerySpec, ctx: Replay) -> tuple[np.ndarray, int]:
    allowed = np.ones(ctx.n, bool)
    if spec.kind == "knn":
        allowed[spec.target] = False
        ids, _, st = Q.knn(ctx, "v", spec.group, spec.k, ctx.A[spec.target, spec.group], "l2", allowed)
    else:
        agg = Q.make_aggregation("sum", len(spec.group))
        ids, _, st = Q.topk(ctx, "v", spec.group, spec.k, agg, spec.kind == "bottomk", allowed)
    return ids, st.inputs_recomputed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("mnist", "minilm"), default="minilm")
    ap.add_argument("--view", default=None, help="mnist: conv1, conv2 or fc1 (default conv2)")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--P", default="16,20,24,32")
    ap.add_argument("--scheme", default="tails")
    ap.add_argument("--queries", type=int, default=30)
    a = ap.parse_args()
    if a.workload == "minilm":
        w, view = W.minilm(a.n, batch_size=32), W.MINILM_VIEW
    else:
        w, view = W.mnist(a.n, HERE / "out" / "mnist_cnn.pt"), a.view or "conv2"
    s = em.Session(w.model, w.data, collate=w.collate, batch_size=w.batch_size)
    A = ReprocessAll(s).all_activations(view)
    print(f"{w.name} {view}: n={len(A):,}, {A.shape[1]:,} neurons; walk batches {list(_take(s.walk_steps(view), 6))}")
    specs = {f: QS.draw(A.shape, A.__getitem__, view, f, a.queries) for f in FAMILIES}
    with tempfile.TemporaryDirectory(prefix="everest-replay-") as tmp:
        for P in [int(p) for p in a.P.split(",")]:
            store = build(A, Path(tmp) / f"P{P}", P, a.scheme)
            ctx = Replay(A, store, lambda: s.walk_steps(view))
            cells = []
            for f, qs in specs.items():
                rec = []
                for q in qs:
                    ids, r = run(q, ctx)
                    assert ids.tolist() == reference(q, A)[1].tolist(), (P, f, q.group.tolist())
                    rec.append(r)
                cells.append(f"{f} {np.median(rec):.0f}")
            print(f"P={P:3d} {a.scheme}: index {100 * store.views['v'].size_ratio:5.2f}% of float32; "
                  "median inputs recomputed: " + ", ".join(cells), flush=True)
            store.close()
    s.close()


def _take(it, count: int) -> list:
    return [next(it) for _ in range(count)]


if __name__ == "__main__":
    main()
