"""The benchmark script works end to end: `python benchmarks/run.py --smoke` in a subprocess.

The smoke configuration is tiny (2,000 MNIST images, 3 queries a family, MiniLM over 100
sentences); the full run (`python benchmarks/run.py`, ~15 min) is never a test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = {"engine", "reprocess_all", "preprocess_cold", "preprocess_warm", "numpy_ram", "faiss_flat"}
KINDS = {"topk", "bottomk", "knn"}
FIGURES = ["latency.png", "speedup.png", "vs_preprocess.png", "recomputed.png", "index_size.png", "build.png",
           "drilldown.png", "answers.png", "sweep.png"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    for module in ("faiss", "matplotlib", "tqdm"):   # missing ones fail the test, they never skip it
        try:
            __import__(module)
        except ImportError:
            pytest.fail(f"the benchmarks need {module} (pip install -e '.[test]' installs faiss-cpu, matplotlib, tqdm)")
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"benchmark smoke run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out, json.loads((out / "results.json").read_text()), proc


def test_smoke_writes_every_file(smoke):
    out, results, proc = smoke
    assert (out / "results.md").read_text().count("| conv2 |") > 0
    for name in FIGURES:
        assert (out / name).stat().st_size > 1000, name
    assert "answers checked" in proc.stdout
    assert not list(out.glob("*.h5")) and not list(out.glob("bench_*_index")), "index and materialised files are removed"


def test_smoke_covers_every_system_and_kind(smoke):
    _, results, _ = smoke
    assert set(results["workloads"]) == {"mnist", "minilm"}
    for name, wr in results["workloads"].items():
        systems = {sysname for q in wr["queries"] for sysname in q["systems"]}
        assert systems == SYSTEMS, (name, systems)
        kinds = {q["spec"]["kind"] for q in wr["queries"]}
        assert kinds == KINDS, (name, kinds)
        faiss_kinds = {q["spec"]["kind"] for q in wr["queries"] if "faiss_flat" in q["systems"]}
        assert faiss_kinds == {"knn"}
        for view in wr["views"]:
            families = {q["spec"]["family"] for q in wr["queries"] if q["spec"]["view"] == view}
            assert len(families) == len(results["config"]["families"])
            assert any("reprocess_all" in q["systems"] for q in wr["queries"] if q["spec"]["view"] == view)
        assert wr["build"]["memory"]["rss_peak_bytes"] > 0
        assert wr["bare_pass_seconds"] > 0
        assert wr["cold_cache"]["method"] in {"fadvise", "drop_caches", "copy"}
    dd = results["workloads"]["mnist"]["drilldown"]["conv2"]
    assert len(dd["queries"]) == len(dd["session"]) == len(dd["independent"]) == 10
    assert results["sweep"]["rows"]


def test_smoke_answers_match_brute_force(smoke):
    _, results, _ = smoke
    for wr in results["workloads"].values():
        for q in wr["queries"]:
            for sysname, o in q["systems"].items():
                assert o["match"], (q["spec"], sysname)
                if sysname != "faiss_flat":   # exact systems: same ids, same order
                    assert o["exact_ids"], (q["spec"], sysname)
    checks = results["summary"]["checks"]
    assert checks["mismatches"] == 0 and checks["answers"] > 200
    targets = {t["target"] for t in results["summary"]["targets"]}
    assert any("kNN" in t for t in targets) and any("build" in t for t in targets)


def test_replay_of_partitions_checks_answers_and_reports_each_P():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "replay_partitions.py"), "--workload", "mnist",
                           "--view", "fc1", "--n", "2000", "--P", "8,32", "--queries", "4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("P=")]
    assert len(rows) == 2 and all("of float32" in r and "knn-g10-top" in r for r in rows)
