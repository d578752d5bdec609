"""The demo: train the quickstart CNN on the real MNIST, index it, and ask it questions.

    python -m everest_magic.demo [--workdir DIR]

Prints each query's answer with how many inputs the model had to re-run, next to a full
recomputation (ReprocessAll) that checks the answer is exact.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import everest_magic as em
from everest_magic import examples as ex
from everest_magic.engine.baselines import ReprocessAll


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="demo_out", help="where the weights and the index go")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(exist_ok=True)
    torch.manual_seed(0)

    t = time.perf_counter()
    if not (work / "mnist_cnn.pt").exists():
        print("training the quickstart CNN on 50,000 MNIST images: 10-20 s on a 2-core CPU, longer when it is busy "
              "(the bar shows the time left, measured as it goes)", flush=True)
    model, x, y = ex.trained_mnist_cnn(cache=work / "mnist_cnn.pt")
    xv, yv = ex.load_mnist("valid")
    print(f"MNIST CNN ready in {time.perf_counter() - t:.1f} s, validation accuracy {ex.accuracy(model, xv, yv):.3f}")

    s = em.Session(model, x, index=work / "mnist_index", labels=y, batch_size=128)
    todo = [v for v in ["conv2", "fc1"] if v not in s.indexed()]
    if todo:
        job = s.build_index(todo)
        while not job.wait(2):
            print(f"  indexing {todo}: {100 * job.progress:.0f}%", flush=True)
        job.result()
    for name, info in s.indexed().items():
        print(f"index {name}: {info.neurons} neurons, {info.bytes_on_disk / 1e6:.1f} MB = "
              f"{100 * info.size_ratio:.1f}% of the float32 activations, built in {info.build['seconds_total']:.0f} s")

    brute = ReprocessAll(s)
    target = 4711
    group = s.top_neurons(target, "conv2", 10)
    queries = [
        ("top-20 of conv2 neurons 5, 17, 301 by sum", lambda o: o.topk("conv2", [5, 17, 301], k=20)),
        ("bottom-10 of fc1 neurons 0-9 by mean", lambda o: o.bottomk("fc1", list(range(10)), k=10, by="mean")),
        (f"20 nearest to input {target} over its 10 most activated conv2 neurons",
         lambda o: o.knn(target, "conv2", group, k=20)),
    ]
    for title, q in queries:
        r = q(s)
        b = q(brute)
        assert r.ids.tolist() == b.ids.tolist(), "the index answer differs from brute force"
        print(f"\n{title}\n  ids    {r.ids[:10].tolist()}{' ...' if len(r.ids) > 10 else ''}\n"
              f"  labels {y[r.ids[:10]].tolist()}\n"
              f"  index: {r.stats.seconds * 1000:.0f} ms, recomputed {r.stats.inputs_recomputed} of {s.n} inputs "
              f"({100 * r.stats.fraction_recomputed:.2f}%); full recomputation: {b.stats.seconds:.1f} s "
              f"({b.stats.seconds / max(r.stats.seconds, 1e-9):.0f}x slower); same answer: yes")
    s.close()


if __name__ == "__main__":
    main()
