"""The large run of the %everest cell fuzzer (tests/fuzz_cells.py): N generated cells through a
real IPython shell with a session on the digits CNN (as tests/conftest.py makes it); prints and
saves the counts: cells, successes, project errors, anything else (must be 0), slowest cell.

    python benchmarks/fuzz_cells.py [--cells 20000] [--seed 1] [--out benchmarks/out/fuzz_cells.json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzz_cells import fuzz, open_shell  # noqa: E402

from everest_magic import examples as ex  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=None, help="another set of cells (default: the suite's)")
    ap.add_argument("--out", default="benchmarks/out/fuzz_cells.json")
    args = ap.parse_args()
    model, x, y = ex.trained_digits_cnn(epochs=10)
    dup = np.random.default_rng(1).choice(len(x), 40, replace=False)
    x, y = torch.cat([x, x[dup]]), np.concatenate([y, y[dup]])
    with tempfile.TemporaryDirectory() as tmp:
        shell = open_shell(model, x, y, Path(tmp))
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            tally = fuzz(shell, args.cells, args.seed)
        wall = time.perf_counter() - t0
    print(tally.line(), f"({wall:.0f} s in all)")
    print("slowest:", repr(tally.slowest[1]))
    for cell, what in tally.other[:20]:
        print(f"---- {cell!r}\n  -> {what}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cells": tally.cells, "successes": tally.successes,
                               "project_errors": tally.project_errors, "other": len(tally.other),
                               "slowest_seconds": round(tally.slowest[0], 3), "slowest_cell": tally.slowest[1],
                               "ms_a_cell": round(1000 * tally.seconds / max(tally.cells, 1), 2),
                               "wall_seconds": round(wall, 1), "seed": args.seed}, indent=1))


if __name__ == "__main__":
    main()
