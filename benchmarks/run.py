"""Benchmarks: everest_magic against the baselines, on real models and real data.

    python benchmarks/run.py              # the full run (< 15 min on a 2-core CPU machine)
    python benchmarks/run.py --smoke      # a tiny run that proves the script works (< 2 min)

Writes under ``--out`` (default ``benchmarks/out/``, ``benchmarks/out/smoke/`` with
``--smoke``): ``results.json`` (every query, every system, every check), ``results.md``
(the tables) and PNG figures; the full run also refreshes the generated part of
``docs/benchmarks.md`` and copies the figures to ``docs/img/`` (``--no-docs`` skips it).
Every answer of every system is compared with brute force; any mismatch makes the
command exit with status 1 (after writing the report).

Workloads: the quickstart CNN on the real MNIST training images (views conv1, conv2,
fc1) and all-MiniLM-L6-v2 over ~5,000 sentences of Python's docs
(``encoder.layer.3.intermediate:token_mean``). Systems: the engine, ReprocessAll,
PreprocessAll from HDF5 (cold and warm page cache), the layer in RAM with numpy, and
FAISS IndexFlatL2 (kNN). See docs/benchmarks.md for what is measured and why.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import everest_magic as em  # noqa: E402
from everest_magic.engine.build import (DEFAULT_MIN_LIST, DEFAULT_RATIO, DEFAULT_SCHEME,  # noqa: E402
                                        P_CANDIDATES, SIZE_BUDGET)

import queries as QS  # noqa: E402
import report  # noqa: E402
import sweep_latency  # noqa: E402
import workloads as W  # noqa: E402
from bench_config import SWEEP_P, Config  # noqa: E402
from coldcache import ColdFile  # noqa: E402
from memory import PeakRSS  # noqa: E402
from systems import (CapturingReprocessAll, FaissFlat, NumpyRAM, Outcome, Preprocess, faiss_equivalent,  # noqa: E402
                     reference, timed)


# -- machine ----------------------------------------------------------------------------------------

def machine_info() -> dict:
    import psutil
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "nproc": os.cpu_count(),
            "ram_bytes": psutil.virtual_memory().total}
    try:
        import tables
        info["pytables"] = tables.__version__
    except Exception:
        pass
    try:
        import faiss
        info["faiss"] = faiss.__version__
    except Exception:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache",
                "Hypervisor vendor", "Flags")
        info["lscpu"] = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lscpu.splitlines())
                         if k.strip() in keep and k.strip() != "Flags"}
        flags = next((v for k, _, v in (line.partition(":") for line in lscpu.splitlines()) if k.strip() == "Flags"), "")
        info["lscpu"]["simd"] = " ".join(f for f in flags.split() if f.startswith(("avx", "sse4", "fma")))
    except Exception:
        pass
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


# -- progress ---------------------------------------------------------------------------------------

class Progress:
    """One tqdm bar over the run's steps (stages and queries), on stderr."""

    def __init__(self, total: int, enabled: bool = True):
        from tqdm import tqdm
        self.stages: dict[str, float] = {}
        self.live = sys.stderr.isatty()   # redraw on every note only on a terminal
        self._current: tuple[str, float] | None = None
        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, disable=not enabled, file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 5.0,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")

    def stage(self, text: str) -> None:
        """Start a named stage (its wall time is recorded under its name up to the first ':' + ' ')."""
        self._close_stage()
        self._current = (text.split(": ")[0] + ": " + text.split(": ")[1].split(" (")[0] if ": " in text else text,
                         time.perf_counter())
        self.bar.set_description_str(text, refresh=self.live)

    def _close_stage(self) -> None:
        if self._current is not None:
            name, t0 = self._current
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0
            self._current = None

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=self.live)

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self._close_stage()
        self.bar.close()


def planned_steps(cfg: Config) -> int:
    # bare pass, build, materialise, done; per view: the ReprocessAll capture pass, the
    # queries (a query that ReprocessAll also answers counts twice), the drill-down
    steps = 0
    for name, views, n in (("mnist", cfg.mnist_views, cfg.mnist_n), ("minilm", [W.MINILM_VIEW], cfg.minilm_n)):
        if n:
            per_view = sum(cfg.counts(name).values()) + len(cfg.reprocess_families) - 1
            steps += 4 + len(views) * (1 + per_view) + sum(1 for v in cfg.drilldown_views if v in views)
    if cfg.sweep:
        steps += 1 + len(cfg.sweep_settings)
    return steps


def _short(view: str) -> str:
    return "L3-FFN" if view == W.MINILM_VIEW else view


# -- one workload -----------------------------------------------------------------------------------

def bare_pass(w: W.Workload, sample: int | None = None) -> tuple[float, dict]:
    """Seconds of the model's forward over every input, batch_size at a time, no hooks.

    With `sample`, only the first `sample` inputs (whole batches) run and the time is
    scaled by n / sample; the note says so.
    """
    limit = w.n if not sample or sample >= w.n else max(w.batch_size, sample // w.batch_size * w.batch_size)
    with torch.inference_mode():   # one untimed batch first: one-time kernel setup is not inference
        w.bare_forward(next(iter(w.bare_batches())))
    t0 = time.perf_counter()
    done = 0
    with torch.inference_mode():
        for batch in w.bare_batches():
            w.bare_forward(batch)
            done += w.batch_size
            if done >= limit:
                break
    seconds = time.perf_counter() - t0
    if limit >= w.n:
        return seconds, {"measured_inputs": w.n, "scaled": False}
    return seconds * w.n / limit, {"measured_inputs": limit, "measured_seconds": seconds, "scaled": True}


def run_query(spec: QS.QuerySpec, s, A: np.ndarray, pre: Preprocess, cold: ColdFile, ram: NumpyRAM,
              fa: FaissFlat | None, ra: CapturingReprocessAll | None = None) -> dict:
    ref_keys, ref_ids = reference(spec, A)
    out = {}
    s.clear_caches()   # independent queries: nothing carried over
    out["engine"] = timed("engine", lambda: spec.run(s), ref_ids)
    pre.path = cold.prepare()
    out["preprocess_cold"] = timed("preprocess_cold", lambda: spec.run(pre), ref_ids)
    out["preprocess_warm"] = timed("preprocess_warm", lambda: spec.run(pre), ref_ids)
    out["numpy_ram"] = timed("numpy_ram", lambda: spec.run(ram), ref_ids)
    if spec.kind == "knn" and fa is not None:
        out["faiss_flat"] = timed("faiss_flat", lambda: fa.knn(spec.target, spec.view, spec.group, spec.k), ref_ids,
                                  check=lambda ids: faiss_equivalent(spec, A, ids, ref_keys))
    if ra is not None:
        out["reprocess_all"] = timed("reprocess_all", lambda: spec.run(ra), ref_ids)
    return {"spec": spec.describe(), "reference_ids": ref_ids.tolist(),
            "systems": {k: o.as_dict() for k, o in out.items()}}


def run_drilldown(specs: list[QS.QuerySpec], s, A: np.ndarray) -> dict:
    """The session twice: cache kept between its queries, then cleared before each."""
    refs = [reference(q, A)[1] for q in specs]
    res = {"queries": [q.describe() for q in specs]}
    for mode in ("session", "independent"):
        s.clear_caches()
        steps = []
        for q, ref in zip(specs, refs):
            if mode == "independent":
                s.clear_caches()
            steps.append(timed("engine", lambda: q.run(s), ref).as_dict())
        res[mode] = steps
    s.clear_caches()
    return res


def bench_workload(w: W.Workload, cfg: Config, out: Path, bar: Progress, created: list[Path], cold_method: str,
                   bare_sample: int | None = None) -> dict:
    counts = cfg.counts(w.name)
    reprocess_families = cfg.reprocess_families
    res: dict = {"name": w.name, "description": w.description, "n": w.n, "views": w.views,
                 "batch_size": w.batch_size, "setup_seconds": w.setup_seconds, "meta": w.meta}
    bar.stage(f"{w.name}: bare inference pass")
    res["bare_pass_seconds"], res["bare_pass"] = bare_pass(w, bare_sample)
    bar.step()

    bar.stage(f"{w.name}: index build")
    index_path = out / f"bench_{w.name}_index"
    created.append(index_path)
    s = em.Session(w.model, w.data, index=index_path, labels=w.labels, collate=w.collate, batch_size=w.batch_size,
                   partitions=cfg.partitions, ratio=cfg.ratio, scheme=cfg.scheme, rebuild=True)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        job = s.build_index(w.views)
        while not job.wait(0.5):
            bar.note(f"build {100 * job.progress:.0f}%")
        build_stats = job.result()
        build_wall = time.perf_counter() - t0
    bar.note("")
    info = s.indexed()
    res["build"] = {"wall_seconds": build_wall, "memory": mem.as_dict(), "per_view": build_stats,
                    "settings": {"partitions": {v: i.partitions for v, i in info.items()}, "ratio": cfg.ratio, "scheme": cfg.scheme,
                                 "min_list": s.min_list},
                    "index_file_bytes": sum(f.stat().st_size for f in index_path.rglob("*") if f.is_file())}
    res["index"] = {v: {"neurons": i.neurons, "bytes_on_disk": i.bytes_on_disk, "full_bytes": i.full_bytes,
                        "size_ratio": i.size_ratio, "P": i.partitions, "t": i.list_length} for v, i in info.items()}
    bar.step()

    # ReprocessAll: one timed query per view (a random group: it needs no activations to
    # draw); its inference pass also yields the view's brute-force activations
    ra = CapturingReprocessAll(s)
    A: dict[str, np.ndarray] = {}
    ra_first: dict[str, Outcome] = {}
    capture_family = reprocess_families[0]
    for v in w.views:
        bar.stage(f"{w.name}/{_short(v)}: ReprocessAll (one full inference pass)")
        m = int(np.prod(s.shape(v)))
        spec = QS.draw((s.n, m), None, v, capture_family, 1, cfg.seed)[0]
        t0 = time.perf_counter()
        r = spec.run(ra)
        seconds = time.perf_counter() - t0
        A[v] = ra.captured.pop(v)
        ref = reference(spec, A[v])[1]
        same = np.asarray(r.ids).tolist() == ref.tolist()
        ra_first[v] = Outcome("reprocess_all", seconds, same, same, s.n)
        bar.step()
    res["activation_bytes"] = {v: int(a.nbytes) for v, a in A.items()}

    bar.stage(f"{w.name}: materialise (PreprocessAll)")
    pre = Preprocess(s, out / f"bench_{w.name}_full.h5")
    created += [pre.path, pre.path.with_name(pre.path.name + ".cold-copy")]
    write_s = pre.write(A)
    os.sync()
    ra_seconds = sum(o.seconds for o in ra_first.values())
    res["preprocess"] = {"write_seconds": write_s, "file_bytes": pre.path.stat().st_size,
                         "materialise_seconds": ra_seconds + write_s,
                         "materialise_note": "one inference pass per view (the ReprocessAll passes) + the HDF5 write",
                         "bytes": {v: pre.size(v) for v in w.views}}
    cold = ColdFile(pre.path, cold_method)
    res["cold_cache"] = {"method": cold.method, "note": cold.note}
    bar.step()

    ram = NumpyRAM(s, A)
    try:
        fa = FaissFlat(A)
    except ImportError:
        fa = None
        res["faiss_missing"] = True
    res["queries"] = []
    for v in w.views:
        for fam in cfg.families:
            bar.stage(f"{w.name}/{_short(v)}: {fam}")
            for i, spec in enumerate(QS.draw(A[v].shape, A[v].__getitem__, v, fam, counts[fam], cfg.seed)):
                with_ra = ra if (i == 0 and fam in reprocess_families[1:]) else None
                if with_ra is not None:
                    bar.note("ReprocessAll: one full inference pass")
                rec = run_query(spec, s, A[v], pre, cold, ram, fa, with_ra)
                if i == 0 and fam == capture_family:
                    rec["systems"]["reprocess_all"] = ra_first[v].as_dict()
                res["queries"].append(rec)
                e = rec["systems"]["engine"]
                bar.note(f"engine {1000 * e['seconds']:.0f} ms, recomputed {e['recomputed']}")
                bar.step(2 if with_ra is not None else 1)
    res["cold_cache"]["resident_after_evict"] = cold.residency
    cold.cleanup()

    res["drilldown"] = {}
    for v in w.views:
        if v in cfg.drilldown_views:
            bar.stage(f"{w.name}/{_short(v)}: drill-down session")
            res["drilldown"][v] = run_drilldown(QS.drilldown(A[v], v, cfg.seed), s, A[v])
            bar.step()
    bar.stage(f"{w.name}: done")
    bar.step()
    s.close()
    del A, ram, fa
    return res


# -- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny configuration: 2,000 MNIST images, 3 queries a family")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/out, or benchmarks/out/smoke)")
    ap.add_argument("--cache-dir", default=str(HERE / "out"), help="where the trained CNN weights are cached")
    ap.add_argument("--skip-minilm", action="store_true", help="leave out the MiniLM workload")
    ap.add_argument("--no-sweep", action="store_true", help="leave out the P / ratio sweep")
    ap.add_argument("--no-docs", action="store_true", help="do not refresh docs/benchmarks.md and docs/img/")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--cold-method", default="auto", choices=["auto", "fadvise", "drop_caches", "copy"],
                    help="how PreprocessAll's file is evicted before a cold query (auto: first that verifies)")
    ap.add_argument("--queries", type=int, default=None, help="queries per view and family, every workload (override)")
    ap.add_argument("--mnist-n", type=int, default=None, help="MNIST images (override)")
    ap.add_argument("--minilm-n", type=int, default=None, help="MiniLM sentences (override)")
    ap.add_argument("--keep-files", action="store_true", help="keep the index and materialised HDF5 files")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild results.md, the figures (and the docs) from an existing results.json; no measurement")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and FAISS intra-op threads (default 1: robust when other work shares the cores)")
    a = ap.parse_args(argv)

    if a.report_only:
        out = Path(a.out) if a.out else (HERE / "out" / "smoke" if a.smoke else HERE / "out")
        results = json.loads((out / "results.json").read_text())
        results["out_dir"] = str(out)
        results["summary"] = report.summarize(results)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
        figures = report.plots(results, out)
        (out / "results.md").write_text(report.markdown(results, figures))
        if not a.smoke and not a.no_docs:
            report.update_docs(results, figures, ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "img")
        print(f"rewrote {out / 'results.md'} and {len(figures)} figures from {out / 'results.json'}")
        return 0

    cfg = Config.smoke() if a.smoke else Config.full()
    if a.queries is not None:
        cfg.queries = a.queries
        cfg.minilm_queries = {k: a.queries for k in cfg.minilm_queries}
    if a.mnist_n is not None:
        cfg.mnist_n = a.mnist_n
    if a.minilm_n is not None:
        cfg.minilm_n = a.minilm_n
    if a.skip_minilm:
        cfg.minilm_n = 0
    if a.no_sweep:
        cfg.sweep = False
    if a.threads is not None:
        cfg.threads = a.threads
    torch.set_num_threads(cfg.threads)
    try:
        import faiss
        faiss.omp_set_num_threads(cfg.threads)
    except ImportError:
        pass
    out = Path(a.out) if a.out else (HERE / "out" / "smoke" if a.smoke else HERE / "out")
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(a.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    t_start = time.perf_counter()
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict = {"command": command.strip(), "config": asdict(cfg), "machine": machine_info(),
                     "defaults": {"P_candidates": list(P_CANDIDATES), "size_budget": SIZE_BUDGET, "ratio": DEFAULT_RATIO,
                                  "scheme": DEFAULT_SCHEME, "min_list": DEFAULT_MIN_LIST},
                     "sweep_default_P": SWEEP_P, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "workloads": {}}
    if a.skip_minilm:
        results["skipped"] = ["minilm (--skip-minilm)"]
    bar = Progress(planned_steps(cfg), enabled=not a.no_progress)
    created: list[Path] = []   # files this run writes and removes (never anything else in --out)
    try:
        if cfg.mnist_n:
            bar.stage("mnist: loading the CNN and MNIST")
            w = W.mnist(cfg.mnist_n, cache_dir / "mnist_cnn.pt", cfg.mnist_views, cfg.batch_size)
            results["workloads"]["mnist"] = bench_workload(w, cfg, out, bar, created, a.cold_method)
            del w
        if cfg.minilm_n:
            bar.stage("minilm: loading all-MiniLM-L6-v2 and the sentences")
            w = W.minilm(cfg.minilm_n, cfg.minilm_batch_size)
            results["workloads"]["minilm"] = bench_workload(w, cfg, out, bar, created, a.cold_method,
                                                            cfg.minilm_bare_sample)
            del w
        if cfg.sweep:
            bar.stage("sweep: P and ratio")
            created.append(out / sweep_latency.INDEX_NAME)
            results["sweep"] = sweep_latency.run(cfg, cache_dir / "mnist_cnn.pt", out, bar)
    finally:
        bar.close()
        if not a.keep_files:
            for p in created:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    results["out_dir"] = str(out)
    results["stage_seconds"] = bar.stages
    try:
        results["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    results["wall_seconds"] = time.perf_counter() - t_start
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    summary = report.summarize(results)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    figures = report.plots(results, out)
    md = report.markdown(results, figures)
    (out / "results.md").write_text(md)
    if not a.smoke and not a.no_docs:
        report.update_docs(results, figures, ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "img")
    checks = summary["checks"]
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {len(figures)} figures in "
          f"{results['wall_seconds']:.0f} s; answers checked: {checks['answers']}, mismatches: {checks['mismatches']}")
    for line in summary["target_lines"]:
        print("  " + line)
    if checks["mismatches"]:
        print("FAILED: some answers differ from brute force:", file=sys.stderr)
        for m in checks["mismatch_list"][:20]:
            print("  " + m, file=sys.stderr)
        return 1
    return 0


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    sys.exit(main())
