"""Summaries, the markdown report, the figures and the generated part of docs/benchmarks.md."""
from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

SYSTEMS = ("engine", "reprocess_all", "preprocess_cold", "preprocess_warm", "numpy_ram", "faiss_flat")
LABELS = {"engine": "engine (index)", "reprocess_all": "ReprocessAll", "preprocess_cold": "PreprocessAll HDF5 cold",
          "preprocess_warm": "PreprocessAll HDF5 warm", "numpy_ram": "layer in RAM (numpy)",
          "faiss_flat": "FAISS IndexFlatL2"}
COLORS = {"engine": "#d62728", "reprocess_all": "#7f7f7f", "preprocess_cold": "#1f77b4", "preprocess_warm": "#aec7e8",
          "numpy_ram": "#2ca02c", "faiss_flat": "#9467bd"}
KINDS = ("topk", "bottomk", "knn")
TARGETS = {"size": 0.15, "knn_recomputed": 0.03, "knn_speedup": 50.0, "topk_speedup": 200.0, "vs_preprocess": 2.0,
           "build_vs_bare": 2.0}
BEGIN, END = "<!-- BEGIN GENERATED: python benchmarks/run.py -->", "<!-- END GENERATED -->"


def _med(x) -> float:
    return float(np.median(x)) if len(x) else float("nan")


def _p90(x) -> float:
    return float(np.percentile(x, 90)) if len(x) else float("nan")


def _kind(family: str) -> str:
    return family.split("-")[0]


# -- summary ------------------------------------------------------------------------------------

def summarize(results: dict) -> dict:
    rows, kinds, views = [], [], []
    mismatches, answers = [], defaultdict(int)
    for wname, wr in results.get("workloads", {}).items():
        n = wr["n"]
        by_group: dict[tuple, list] = defaultdict(list)
        ra_by_view: dict[str, list] = defaultdict(list)
        for q in wr["queries"]:
            spec = q["spec"]
            by_group[(spec["view"], spec["family"])].append(q)
            for sysname, o in q["systems"].items():
                answers[sysname] += 1
                if not o["match"]:
                    mismatches.append(f"{wname}/{spec['view']} {spec['family']} {sysname}: group={spec['group']} "
                                      f"target={spec['target']}")
            if "reprocess_all" in q["systems"]:
                ra_by_view[spec["view"]].append(q["systems"]["reprocess_all"]["seconds"])
        for (view, family), qs in by_group.items():
            ra = _med(ra_by_view.get(view, []))
            rows.append(_row(wname, view, family, qs, n, ra))
        for view in wr["views"]:
            ra = _med(ra_by_view.get(view, []))
            vq = [q for q in wr["queries"] if q["spec"]["view"] == view]
            for kind in KINDS:
                kq = [q for q in vq if q["spec"]["kind"] == kind]
                if kq:
                    kinds.append(_row(wname, view, kind, kq, n, ra))
            views.append(_view_row(wname, view, wr, vq, n, ra))
        for view, dd in wr.get("drilldown", {}).items():
            for mode in ("session", "independent"):
                for q, o in zip(dd["queries"], dd[mode]):
                    answers["engine (drill-down)"] += 1
                    if not o["match"]:
                        mismatches.append(f"{wname}/{view} drill-down {mode} {q['family']}")
    sweep = results.get("sweep")
    if sweep:
        for r in sweep["rows"]:
            answers["engine (sweep)"] += r["answers"]
            mismatches.extend(r["mismatches"])
    builds = []
    for wname, wr in results.get("workloads", {}).items():
        b = wr["build"]
        builds.append({"workload": wname, "n": wr["n"], "views": wr["views"], "bare_pass_seconds": wr["bare_pass_seconds"],
                       "build_seconds": b["wall_seconds"],
                       "build_inference_seconds": max(v["seconds_inference"] for v in b["per_view"].values()),
                       "build_partition_seconds": max(v["seconds_partition"] for v in b["per_view"].values()),
                       "build_vs_bare": b["wall_seconds"] / wr["bare_pass_seconds"],
                       "rss_peak_increase_bytes": b["memory"]["rss_peak_increase_bytes"],
                       "rss_peak_bytes": b["memory"]["rss_peak_bytes"],
                       "activation_bytes": sum(wr["activation_bytes"].values()),
                       "materialise_seconds": wr["preprocess"]["materialise_seconds"]})
    summary = {"rows": rows, "kinds": kinds, "views": views, "builds": builds,
               "checks": {"answers": int(sum(answers.values())), "by_system": dict(answers),
                          "mismatches": len(mismatches), "mismatch_list": mismatches}}
    summary["targets"] = _targets(summary)
    summary["target_lines"] = [f"{'MET ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}" for t in summary["targets"]]
    return summary


def _row(wname: str, view: str, label: str, qs: list, n: int, ra: float) -> dict:
    def sec(system):
        return [q["systems"][system]["seconds"] for q in qs if system in q["systems"]]

    eng = np.array(sec("engine"))
    rec = np.array([q["systems"]["engine"]["recomputed"] for q in qs]) / n
    rows_run = np.array([q["systems"]["engine"].get("rows_run", 0) for q in qs])
    row = {"workload": wname, "view": view, "family": label, "queries": len(qs), "n": n,
           "rows_run_median": _med(rows_run),
           "engine_median_ms": 1000 * _med(eng), "engine_p90_ms": 1000 * _p90(eng),
           "recomputed_median_pct": 100 * _med(rec), "recomputed_p90_pct": 100 * _p90(rec),
           "reprocess_s": ra, "speedup_median": ra / _med(eng) if len(eng) else float("nan"),
           "speedup_p10": ra / _p90(eng) if len(eng) else float("nan")}
    for system in SYSTEMS[2:]:
        s = sec(system)
        row[f"{system}_median_ms"] = 1000 * _med(s)
        row[f"{system}_p90_ms"] = 1000 * _p90(s)
    for system in ("preprocess_cold", "preprocess_warm"):
        ratio = [q["systems"]["engine"]["seconds"] / q["systems"][system]["seconds"] for q in qs if system in q["systems"]]
        row[f"vs_{system}_median"] = _med(ratio)
    row["matched"] = all(o["match"] for q in qs for o in q["systems"].values())
    row["answers"] = sum(len(q["systems"]) for q in qs)
    return row


def _view_row(wname: str, view: str, wr: dict, vq: list, n: int, ra: float) -> dict:
    idx = wr["index"][view]
    pa_bytes = wr["preprocess"]["bytes"][view]
    eng = [q["systems"]["engine"]["seconds"] for q in vq]
    cold = [q["systems"]["preprocess_cold"]["seconds"] for q in vq]
    warm = [q["systems"]["preprocess_warm"]["seconds"] for q in vq]
    return {"workload": wname, "view": view, "n": n, "neurons": idx["neurons"], "index_bytes": idx["bytes_on_disk"],
            "full_bytes": idx["full_bytes"], "size_ratio": idx["size_ratio"], "preprocess_bytes": pa_bytes,
            "vs_preprocess_bytes": idx["bytes_on_disk"] / pa_bytes, "reprocess_s": ra,
            "engine_median_ms": 1000 * _med(eng), "preprocess_cold_median_ms": 1000 * _med(cold),
            "preprocess_warm_median_ms": 1000 * _med(warm),
            "median_vs_cold": _med(eng) / _med(cold), "median_vs_warm": _med(eng) / _med(warm)}


def _targets(summary: dict) -> list[dict]:
    out = []

    def add(target, values: dict, ok, fmt):
        measured = ", ".join(f"{k}: {fmt(v)}" for k, v in values.items())
        out.append({"target": target, "measured": measured or "n/a", "values": values,
                    "met": bool(values) and all(ok(v) for v in values.values())})

    views = summary["views"]
    add("index size <= 15% of full float32 materialisation (DeepEverest < 20%)",
        {f"{v['view']}": v["size_ratio"] for v in views}, lambda x: x <= TARGETS["size"], lambda x: f"{100 * x:.1f}%")
    knn = [k for k in summary["kinds"] if k["family"] == "knn"]
    add("kNN median inputs recomputed <= 3% of n", {k["view"]: k["recomputed_median_pct"] / 100 for k in knn},
        lambda x: x <= TARGETS["knn_recomputed"], lambda x: f"{100 * x:.2f}%")
    add("kNN median speedup vs ReprocessAll >= 50x", {k["view"]: k["speedup_median"] for k in knn},
        lambda x: x >= TARGETS["knn_speedup"], lambda x: f"{x:.0f}x")
    top = [k for k in summary["kinds"] if k["family"] == "topk"]
    add("top-k median speedup vs ReprocessAll >= 200x", {k["view"]: k["speedup_median"] for k in top},
        lambda x: x >= TARGETS["topk_speedup"], lambda x: f"{x:.0f}x")
    add("median latency <= 2x PreprocessAll from HDF5 (cold page cache)", {v["view"]: v["median_vs_cold"] for v in views},
        lambda x: x <= TARGETS["vs_preprocess"], lambda x: f"{x:.1f}x")
    add("median latency <= 2x PreprocessAll from HDF5 (warm page cache)", {v["view"]: v["median_vs_warm"] for v in views},
        lambda x: x <= TARGETS["vs_preprocess"], lambda x: f"{x:.1f}x")
    add("... at <= 15% of PreprocessAll's storage (its lz4 HDF5 file)", {v["view"]: v["vs_preprocess_bytes"] for v in views},
        lambda x: x <= TARGETS["size"], lambda x: f"{100 * x:.1f}%")
    add("index build <= 2x one bare inference pass", {b["workload"]: b["build_vs_bare"] for b in summary["builds"]},
        lambda x: x <= TARGETS["build_vs_bare"], lambda x: f"{x:.1f}x")
    return out


# -- markdown -----------------------------------------------------------------------------------

def _f(x, fmt="{:.1f}") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return fmt.format(x)


def _mb(b) -> str:
    return f"{b / 1e6:,.1f} MB"


def markdown(results: dict, figures: dict[str, str], img_prefix: str = "") -> str:
    s = results["summary"]
    m = results["machine"]
    L = []
    cpu = m.get("lscpu", {})
    L.append(f"Command: `{results['command']}` — wall time **{results['wall_seconds']:.0f} s** "
             f"({results['wall_seconds'] / 60:.1f} min), {results['started']} to {results['finished']}.")
    L.append("")
    L.append(f"Machine: {cpu.get('Model name', '?')}, {m.get('nproc')} CPUs ({cpu.get('Core(s) per socket', '?')} cores, "
             f"{cpu.get('Thread(s) per core', '?')} thread(s) per core, {cpu.get('Hypervisor vendor', 'no')} hypervisor, "
             f"SIMD: {cpu.get('simd', '?')}), {m['ram_bytes'] / 2**30:.1f} GiB RAM; Python {m['python']}, "
             f"torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}, PyTables {m.get('pytables', '?')}, "
             f"FAISS {m.get('faiss', 'missing')}; load average at start {tuple(round(x, 2) for x in m.get('load_average_at_start', ()))}.")
    L.append("")
    for wname, wr in results["workloads"].items():
        cc = wr["cold_cache"]
        L.append(f"- **{wname}**: {wr['description']}; views {', '.join(f'`{v}`' for v in wr['views'])}; "
                 f"batch size {wr['batch_size']}; PreprocessAll cold reads: `{cc['method']}` ({cc['note']}).")
    cfg = results["config"]
    Ps = ", ".join(f"{v}: {i['P']}" for wr in results["workloads"].values() for v, i in wr["index"].items())
    tl = ", ".join(f"{v}: {i['t']}" for wr in results["workloads"].values() for v, i in wr["index"].items())
    L.append(f"- engine settings: the engine's defaults: P = {Ps or '?'} (per view, the largest that fits 14% of "
             f"float32 on a sample of its neurons), "
             f"ratio = {cfg['ratio']} (lists of t = {tl or '?'} inputs, at least 32), scheme `{cfg['scheme']}`; "
             f"torch / FAISS threads: {cfg['threads']}; k = 20; the activation cache and the index row cache "
             f"cleared before every independent query.")
    if results.get("skipped"):
        L.append(f"- skipped: {', '.join(results['skipped'])}")
    c = s["checks"]
    L.append("")
    L.append(f"**Answers checked against brute force: {c['answers']:,}; mismatches: {c['mismatches']}** "
             f"({', '.join(f'{k}: {v}' for k, v in c['by_system'].items())}).")
    L.append("")
    L.append("### Targets")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for t in s["targets"]:
        L.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    L.append("")
    L.append("### Latency by query family")
    L.append("")
    L.append("Engine latency is the wall time of the `Session` call with the activation cache cleared before it; "
             "*rows run* counts every row the model ran for the query (its inputs, the padding of short batches, "
             "and a view's batch-size check when the query paid it), *recomputed* only its inputs. "
             "ReprocessAll is one full inference pass whatever the query, so it answers one query per view "
             "(checked like the rest) and the speedup divides its time by the engine's median. Ratios to PreprocessAll are medians "
             "of per-query ratios (engine / PreprocessAll on the same query).")
    L.append("")
    L.append("| view | family | q | engine median ms | p90 ms | recomputed median (p90) | rows run median | "
             "speedup vs ReprocessAll | PA cold ms | PA warm ms | engine / PA cold | engine / PA warm | numpy RAM ms | "
             "FAISS ms | answers |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in s["rows"]:
        L.append(f"| {r['view']} | {r['family']} | {r['queries']} | {_f(r['engine_median_ms'])} | {_f(r['engine_p90_ms'])} | "
                 f"{_f(r['recomputed_median_pct'], '{:.2f}')}% ({_f(r['recomputed_p90_pct'], '{:.2f}')}%) | "
                 f"{_f(r.get('rows_run_median', float('nan')), '{:.0f}')} | "
                 f"{_f(r['speedup_median'], '{:,.0f}')}x | {_f(r['preprocess_cold_median_ms'])} | "
                 f"{_f(r['preprocess_warm_median_ms'])} | {_f(r['vs_preprocess_cold_median'])}x | "
                 f"{_f(r['vs_preprocess_warm_median'])}x | {_f(r['numpy_ram_median_ms'])} | {_f(r['faiss_flat_median_ms'])} | "
                 f"{'ok' if r['matched'] else '**MISMATCH**'} |")
    L.append("")
    L.append("### By kind")
    L.append("")
    L.append("| view | kind | q | engine median ms | p90 ms | recomputed median (p90) | ReprocessAll s | speedup | "
             "engine / PA cold | engine / PA warm |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in s["kinds"]:
        L.append(f"| {r['view']} | {r['family']} | {r['queries']} | {_f(r['engine_median_ms'])} | {_f(r['engine_p90_ms'])} | "
                 f"{_f(r['recomputed_median_pct'], '{:.2f}')}% ({_f(r['recomputed_p90_pct'], '{:.2f}')}%) | "
                 f"{_f(r['reprocess_s'], '{:.2f}')} | {_f(r['speedup_median'], '{:,.0f}')}x | "
                 f"{_f(r['vs_preprocess_cold_median'])}x | {_f(r['vs_preprocess_warm_median'])}x |")
    L.append("")
    L.append("### Storage and build")
    L.append("")
    L.append("| view | neurons | n | index | full float32 | index / full | PreprocessAll lz4 file | index / PreprocessAll |")
    L.append("|---|---|---|---|---|---|---|---|")
    for v in s["views"]:
        L.append(f"| {v['view']} | {v['neurons']:,} | {v['n']:,} | {_mb(v['index_bytes'])} | {_mb(v['full_bytes'])} | "
                 f"{100 * v['size_ratio']:.1f}% | {_mb(v['preprocess_bytes'])} | {100 * v['vs_preprocess_bytes']:.1f}% |")
    L.append("")
    L.append("| workload | views | bare inference pass | index build (inference + partition) | build / bare | "
             "peak RSS during build (increase) | activations float32 | PreprocessAll materialise |")
    L.append("|---|---|---|---|---|---|---|---|")
    for b in s["builds"]:
        L.append(f"| {b['workload']} | {', '.join(b['views'])} | {b['bare_pass_seconds']:.1f} s | {b['build_seconds']:.1f} s "
                 f"({b['build_inference_seconds']:.1f} + {b['build_partition_seconds']:.1f}) | {b['build_vs_bare']:.1f}x | "
                 f"{b['rss_peak_bytes'] / 2**30:.2f} GiB (+{b['rss_peak_increase_bytes'] / 2**30:.2f}) | "
                 f"{b['activation_bytes'] / 2**30:.2f} GiB | {b['materialise_seconds']:.1f} s |")
    L.append("")
    for wname, wr in results["workloads"].items():
        for view, dd in wr.get("drilldown", {}).items():
            L.append(f"### Drill-down session ({wname} `{view}`)")
            L.append("")
            L.append("Ten related queries; *session* keeps the activation cache between them, *independent* clears it "
                     "before each.")
            L.append("")
            L.append("| step | session ms | recomputed | from cache | independent ms | recomputed |")
            L.append("|---|---|---|---|---|---|")
            for q, a, b in zip(dd["queries"], dd["session"], dd["independent"]):
                L.append(f"| {q['family']} | {1000 * a['seconds']:.0f} | {a['recomputed']} | {a['from_cache']} | "
                         f"{1000 * b['seconds']:.0f} | {b['recomputed']} |")
            ta = sum(a["seconds"] for a in dd["session"])
            tb = sum(b["seconds"] for b in dd["independent"])
            ra = sum(a["recomputed"] for a in dd["session"])
            rb = sum(b["recomputed"] for b in dd["independent"])
            L.append(f"| **total** | **{1000 * ta:.0f}** | **{ra}** | | **{1000 * tb:.0f}** | **{rb}** |")
            L.append("")
    sw = results.get("sweep")
    if sw:
        L.append(f"### Sweep of P and ratio ({sw['view_note']}, n={sw['n']:,}, {sw['queries_per_family']} queries "
                 f"per family: {', '.join(sw['families'])}; ReprocessAll {sw['reprocess_all_seconds']:.1f} s)")
        L.append("")
        L.append("| P | ratio | scheme | index / full | build s | median ms | p90 ms | " +
                 " | ".join(f"{f} median ms (recomputed)" for f in sw["families"]) + " |")
        L.append("|---|---|---|---|---|---|---|" + "---|" * len(sw["families"]))
        for r in sw["rows"]:
            fams = " | ".join(f"{r['families'][f]['median_ms']:.0f} ({r['families'][f]['median_recomputed_pct']:.2f}%)"
                              for f in sw["families"] if f in r["families"])
            L.append(f"| {r['P']} | {r['ratio']} | {r['scheme']} | {100 * r['size_ratio']:.1f}% | {r['build_seconds']:.1f} | "
                     f"{r['median_ms']:.0f} | {r['p90_ms']:.0f} | {fams} |")
        L.append("")
        sp = sw.get("sweep_py")
        if sp:
            L.append(f"`benchmarks/sweep.py` (size and recompute only, {sp['path']}, {sp['mtime']}):")
            L.append("")
            L.append("| P | ratio | scheme | view | index / full | kNN g3 / g10 recomputed | top-k g3 / g10 recomputed |")
            L.append("|---|---|---|---|---|---|---|")
            for r in sp["rows"]:
                L.append(f"| {r['P']} | {r['ratio']} | {r['scheme']} | {r['view']} | {100 * r['size_ratio']:.1f}% | "
                         f"{r.get('median_knn3_pct', float('nan')):.2f}% / {r.get('median_knn10_pct', float('nan')):.2f}% | "
                         f"{r.get('median_topk3_pct', float('nan')):.2f}% / {r.get('median_topk10_pct', float('nan')):.2f}% |")
            L.append("")
    st = results.get("stage_seconds")
    if st:
        groups: dict[tuple[str, str], float] = defaultdict(float)
        for name, sec in st.items():
            head, _, what = name.partition(": ")
            wl = head.split("/")[0]
            if any(what.startswith(k) for k in ("topk", "bottomk", "knn")):
                what = "queries (every system)"
            elif what.startswith("P="):
                what = "builds + queries per setting"
            groups[(wl, what)] += sec
        L.append("### Where the run's time went")
        L.append("")
        L.append("| part | stage | seconds |")
        L.append("|---|---|---|")
        for (wl, what), sec in groups.items():
            L.append(f"| {wl} | {what} | {sec:.0f} |")
        L.append(f"| **total** | | **{results['wall_seconds']:.0f}** |")
        la = results.get("load_average_at_end")
        if la:
            L.append("")
            L.append(f"Load average at the end: {tuple(round(x, 2) for x in la)} (1, 5, 15 min; 2 CPUs).")
        L.append("")
    if figures:
        L.append("### Figures")
        L.append("")
        for name, title in figures.items():
            L.append(f"![{title}]({img_prefix}{name})")
            L.append("")
    return "\n".join(L)


# -- figures ------------------------------------------------------------------------------------

def plots(results: dict, out: Path) -> dict[str, str]:
    """Write the PNG figures into `out`; returns {file name: title}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    figs: dict[str, str] = {}
    views = [(v["workload"], v["view"]) for v in s["views"]]
    if not views:
        return figs

    def save(fig, name, title):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figs[name] = title

    def short(view):
        return view.replace("encoder.layer.3.intermediate:token_mean", "MiniLM L3 FFN")

    # 1. median and p90 latency per family, per system
    fig, axes = plt.subplots(len(views), 1, figsize=(13, 3.3 * len(views)), squeeze=False)
    for ax, (w, v) in zip(axes[:, 0], views):
        rows = [r for r in s["rows"] if r["view"] == v and r["workload"] == w]
        fams = [r["family"] for r in rows]
        x = np.arange(len(fams))
        systems = [x_ for x_ in ("engine", "preprocess_cold", "preprocess_warm", "numpy_ram", "faiss_flat")]
        width = 0.8 / len(systems)
        for j, system in enumerate(systems):
            med = np.array([r[f"{system}_median_ms"] for r in rows])
            p90 = np.array([r[f"{system}_p90_ms"] for r in rows])
            ax.bar(x + j * width, med, width, color=COLORS[system], label=LABELS[system])
            ax.scatter(x + j * width, p90, marker="_", color="black", s=60, zorder=3)
        ra = rows[0]["reprocess_s"] * 1000 if rows else float("nan")
        ax.axhline(ra, color=COLORS["reprocess_all"], ls="--", label=f"ReprocessAll ({ra / 1000:.1f} s)")
        ax.set_yscale("log")
        ax.set_xticks(x + 0.4 - width / 2, fams, fontsize=8)
        ax.set_ylabel("ms (bar: median, tick: p90)")
        ax.set_title(f"{w} {short(v)}: query latency")
    axes[0, 0].legend(fontsize=7, ncol=3)
    save(fig, "latency.png", "Median (bars) and p90 (ticks) latency per query family and system")

    # 2. speedup vs ReprocessAll
    fig, ax = plt.subplots(figsize=(12, 4))
    fams = list(dict.fromkeys(r["family"] for r in s["rows"]))
    width = 0.8 / len(views)
    for j, (w, v) in enumerate(views):
        vals = [next((r["speedup_median"] for r in s["rows"] if r["view"] == v and r["family"] == f), np.nan) for f in fams]
        ax.bar(np.arange(len(fams)) + j * width, vals, width, label=short(v))
    ax.axhline(TARGETS["topk_speedup"], color="k", ls="--", lw=1, label="target top-k 200x")
    ax.axhline(TARGETS["knn_speedup"], color="k", ls=":", lw=1, label="target kNN 50x")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams, fontsize=8)
    ax.set_ylabel("median speedup vs ReprocessAll")
    ax.legend(fontsize=7, ncol=3)
    save(fig, "speedup.png", "Median speedup over ReprocessAll per query family")

    # 3. ratio to PreprocessAll
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    for ax, system in zip(axes, ("preprocess_cold", "preprocess_warm")):
        for j, (w, v) in enumerate(views):
            vals = [next((r[f"vs_{system}_median"] for r in s["rows"] if r["view"] == v and r["family"] == f), np.nan)
                    for f in fams]
            ax.bar(np.arange(len(fams)) + j * width, vals, width, label=short(v))
        ax.axhline(TARGETS["vs_preprocess"], color="k", ls="--", lw=1, label="target 2x")
        ax.axhline(1, color="grey", lw=0.5)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams, fontsize=7, rotation=30)
        ax.set_title(f"engine latency / {LABELS[system]} (median of per-query ratios)", fontsize=9)
    axes[0].legend(fontsize=7)
    save(fig, "vs_preprocess.png", "Engine latency relative to PreprocessAll from HDF5 (cold and warm page cache)")

    # 4. fraction recomputed
    fig, ax = plt.subplots(figsize=(12, 4))
    for j, (w, v) in enumerate(views):
        wr = results["workloads"][w]
        data = []
        for f in fams:
            data.append([100 * q["systems"]["engine"]["recomputed"] / wr["n"] for q in wr["queries"]
                         if q["spec"]["view"] == v and q["spec"]["family"] == f] or [np.nan])
        pos = np.arange(len(fams)) + j * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True,
                        flierprops={"markersize": 2})
        for patch in bp["boxes"]:
            patch.set_facecolor(plt.cm.tab10(j))
        ax.plot([], [], color=plt.cm.tab10(j), lw=6, label=short(v))
    ax.axhline(100 * TARGETS["knn_recomputed"], color="k", ls="--", lw=1, label="kNN target 3%")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams, fontsize=8)
    ax.set_ylabel("% of inputs recomputed")
    ax.legend(fontsize=7, ncol=3)
    save(fig, "recomputed.png", "Fraction of inputs recomputed per query (box: quartiles, whiskers 1.5 IQR)")

    # 5. storage
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(views))
    full = np.array([v["full_bytes"] for v in s["views"]]) / 1e6
    pa = np.array([v["preprocess_bytes"] for v in s["views"]]) / 1e6
    idx = np.array([v["index_bytes"] for v in s["views"]]) / 1e6
    ax.bar(x - 0.27, full, 0.27, label="full float32", color="#cccccc")
    ax.bar(x, pa, 0.27, label="PreprocessAll (lz4 HDF5)", color=COLORS["preprocess_cold"])
    ax.bar(x + 0.27, idx, 0.27, label="engine index", color=COLORS["engine"])
    for i, v in enumerate(s["views"]):
        ax.text(x[i] + 0.27, idx[i], f"{100 * v['size_ratio']:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(x, [short(v) for _, v in views])
    ax.set_ylabel("MB")
    ax.legend(fontsize=8)
    save(fig, "index_size.png", "Index size vs full materialisation")

    # 6. build time and memory
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    b = s["builds"]
    x = np.arange(len(b))
    axes[0].bar(x - 0.2, [r["bare_pass_seconds"] for r in b], 0.4, label="bare inference pass", color="#7f7f7f")
    axes[0].bar(x + 0.2, [r["build_inference_seconds"] for r in b], 0.4, label="build: inference", color="#ff9896")
    axes[0].bar(x + 0.2, [r["build_seconds"] - r["build_inference_seconds"] for r in b], 0.4,
                bottom=[r["build_inference_seconds"] for r in b], label="build: partition + write", color=COLORS["engine"])
    for i, r in enumerate(b):
        axes[0].text(x[i] + 0.2, r["build_seconds"], f"{r['build_vs_bare']:.1f}x", ha="center", va="bottom", fontsize=8)
    axes[0].set_xticks(x, [f"{r['workload']}\n({', '.join(r['views'])})"[:60] for r in b], fontsize=7)
    axes[0].set_ylabel("seconds")
    axes[0].legend(fontsize=7)
    axes[0].set_title("index build vs one bare inference pass", fontsize=9)
    axes[1].bar(x - 0.2, [r["rss_peak_increase_bytes"] / 2**30 for r in b], 0.4, label="peak RSS increase during build",
                color=COLORS["engine"])
    axes[1].bar(x + 0.2, [r["activation_bytes"] / 2**30 for r in b], 0.4, label="all activations (float32)", color="#cccccc")
    axes[1].set_xticks(x, [r["workload"] for r in b])
    axes[1].set_ylabel("GiB")
    axes[1].legend(fontsize=7)
    axes[1].set_title("peak memory during the build (psutil RSS, 20 ms sampling)", fontsize=9)
    save(fig, "build.png", "Index build time vs a bare inference pass, and peak memory during the build")

    # 7. drill-down
    dds = [(w, v, dd) for w, wr in results["workloads"].items() for v, dd in wr.get("drilldown", {}).items()]
    if dds:
        fig, axes = plt.subplots(1, len(dds), figsize=(6.5 * len(dds), 3.8), squeeze=False)
        for ax, (w, v, dd) in zip(axes[0], dds):
            steps = np.arange(1, len(dd["queries"]) + 1)
            ax.bar(steps - 0.2, [1000 * o["seconds"] for o in dd["independent"]], 0.4, label="cache cleared before each",
                   color="#7f7f7f")
            ax.bar(steps + 0.2, [1000 * o["seconds"] for o in dd["session"]], 0.4, label="one session (cache kept)",
                   color=COLORS["engine"])
            for xs, key in ((steps - 0.2, "independent"), (steps + 0.2, "session")):
                for x_, o in zip(xs, dd[key]):
                    ax.text(x_, 1000 * o["seconds"], str(o["recomputed"]), ha="center", va="bottom", fontsize=6)
            ax.set_xticks(steps)
            ax.set_xlabel("query of the drill-down (numbers: inputs recomputed)")
            ax.set_ylabel("ms")
            ax.set_title(f"{w} {short(v)}", fontsize=9)
            ax.legend(fontsize=7)
        save(fig, "drilldown.png", "Drill-down session: latency per query with and without the activation cache")

    # 8. answers
    systems = [x_ for x_ in SYSTEMS if any(x_ in q["systems"] for wr in results["workloads"].values() for q in wr["queries"])]
    M = np.full((len(systems), len(fams)), np.nan)
    T = np.zeros_like(M)
    for i, system in enumerate(systems):
        for j, f in enumerate(fams):
            os_ = [q["systems"][system] for wr in results["workloads"].values() for q in wr["queries"]
                   if q["spec"]["family"] == f and system in q["systems"]]
            if os_:
                M[i, j] = sum(o["match"] for o in os_)
                T[i, j] = len(os_)
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(systems) + 1.8))
    ok = np.where(T > 0, M / np.maximum(T, 1), np.nan)
    ax.imshow(ok, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(len(systems)):
        for j in range(len(fams)):
            if T[i, j]:
                ax.text(j, i, f"{int(M[i, j])}/{int(T[i, j])}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(fams)), fams, fontsize=7, rotation=20)
    ax.set_yticks(range(len(systems)), [LABELS[x_] for x_ in systems], fontsize=8)
    ax.set_title("answers equal to brute force (matched / asked)", fontsize=9)
    save(fig, "answers.png", "Every answer compared with brute force")

    # 9. sweep
    sw = results.get("sweep")
    if sw and sw["rows"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for i, r in enumerate(sorted(sw["rows"], key=lambda r: r["size_ratio"])):
            lbl = f"P={r['P']} r={r['ratio']}" + ("" if r["scheme"] == "tails" else f" {r['scheme']}")
            d = results["defaults"]
            default = (r["P"], r["ratio"], r["scheme"]) == (results.get("sweep_default_P"), d["ratio"], d["scheme"])
            rec = np.median([r["families"][f]["median_recomputed_pct"] for f in r["families"] if f.startswith("knn")])
            for ax, y in zip(axes, (r["median_ms"], rec)):
                ax.scatter(100 * r["size_ratio"], y, color=COLORS["engine"] if default else "#1f77b4",
                           s=60 if default else 25, zorder=3)
                ax.annotate(lbl + (" (default)" if default else ""), (100 * r["size_ratio"], y), fontsize=7,
                            xytext=(4, 10 if i % 2 else -12), textcoords="offset points")
        from matplotlib.ticker import FormatStrFormatter
        for ax in axes:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.tick_params(axis="y", which="minor", labelsize=7)
        axes[0].set_xlabel("index size, % of full float32")
        axes[0].set_ylabel("median latency, ms (all sweep queries)")
        axes[1].set_xlabel("index size, % of full float32")
        axes[1].set_ylabel("kNN median % of inputs recomputed (median of families)")
        axes[0].set_title(f"storage / latency trade-off ({sw['view_note']}, n={sw['n']:,})", fontsize=9)
        axes[1].set_title("storage / recomputation trade-off", fontsize=9)
        save(fig, "sweep.png", "Sweep of partitions P and top-list ratio: storage vs latency")
    return figs


# -- docs ---------------------------------------------------------------------------------------

def update_docs(results: dict, figures: dict[str, str], doc: Path, img_dir: Path) -> None:
    """Replace the generated section of docs/benchmarks.md and copy the figures to docs/img/."""
    img_dir.mkdir(parents=True, exist_ok=True)
    src_dir = Path(results.get("out_dir", ""))
    for name in figures:
        src = src_dir / name
        if src.exists():
            shutil.copyfile(src, img_dir / name)
    body = markdown(results, figures, img_prefix=f"{img_dir.name}/")
    block = f"{BEGIN}\n\n{body}\n\n{END}"
    if doc.exists() and BEGIN in doc.read_text():
        text = doc.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        doc.write_text(head + block + tail)
    else:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text("# Benchmarks\n\n## Latest results\n\n" + block + "\n")
