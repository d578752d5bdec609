"""Deep neural inspection: `everest_magic.inspect` against a naive loop per (unit, hypothesis) pair.

Both sides score the same units (MNIST CNN: every element of conv3, the channel means of
conv2, fc1) against the same hypotheses (digit class, ink, brightness, stroke thickness) with
the same measures (Pearson r, AUROC per class, mutual information over 10 quantile bins):

- naive: one inference pass materialising every activation of all inputs, the hypotheses
  computed once per input, then a Python loop over (unit, hypothesis[, class]) calling
  scipy.stats.pearsonr, sklearn.metrics.roc_auc_score and sklearn.metrics.mutual_info_score;
- inspect, exact: `run_inspect(..., early_stop=False, max_inputs=None)` over all inputs
  (same numbers as the naive loop, checked);
- inspect, early stopping: the defaults (epsilon 0.05, stable top-5 for 3 checkpoints,
  at most 10,000 inputs), and epsilon 0.1; checked against the full-data scores.

The model is the last of the MNIST CNN's checkpoints after 1, 2 and 4 epochs of one training
run (`examples.mnist_cnn_checkpoints`, cached in the output folder). A second table scores the
three checkpoints: one multi-model `run_inspect({"epoch1": s1, "epoch2": s2, "epoch4": s4}, ...)`
(one pass: each batch loaded once, hypotheses computed once) against one call per checkpoint
and the naive loop (measured on one checkpoint and multiplied by 3), exact and at the defaults;
the multi-model scores are checked against the per-checkpoint calls and the naive loop.

"speedup" is end to end (inference, hypotheses and scores); "scoring speedup" compares the
naive scipy/sklearn loop with the time inspect spends on statistics (same inputs' inference
and hypotheses excluded on both sides).

Every run starts from a fresh Session (empty activation and hypothesis caches).

    python benchmarks/inspect_bench.py            # 50,000 images, 20-30 minutes on 2 cores (the naive loop)
    python benchmarks/inspect_bench.py --smoke    # 2,000 images (checkpoints trained on them), about a minute

Writes benchmarks/out/inspect_bench.json and benchmarks/out/inspect_bench.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr, rankdata
from sklearn.metrics import mutual_info_score, roc_auc_score

import everest_magic as em
from everest_magic import examples as ex
from everest_magic.inspect import library as lib
from everest_magic.inspect import run_inspect

HYPOTHESES = {"class": "class", "ink": "ink", "brightness": "brightness", "thickness": "thickness"}
MEASURES = ["pearson", "auroc", "mi"]
BINS = 10
EPOCHS = (1, 2, 4)   # the checkpoints compared


def session(model, x, y, name: str = "default") -> em.Session:
    return em.Session(model, x, labels=y, batch_size=250, cache_bytes=2 << 30, name=name)


def naive(model, x, y, views: list[str]) -> tuple[dict, dict]:
    """Scores {(view, unit, hypothesis, label, measure): score} by a per-pair loop, and timings."""
    s = session(model, x, y)
    vs = [s.view(v) for v in views]
    t0 = time.perf_counter()
    acts = dict(zip(views, s.runner.views(vs, np.arange(s.n))))
    t_forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    fns = {"ink": lib.ink().fn, "brightness": lib.brightness().fn, "thickness": lib.thickness().fn}
    numeric = {name: np.array([fn(x[i]) for i in range(len(x))]) for name, fn in fns.items()}
    t_hyp = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = {}
    classes = np.unique(y)
    hbins = {name: _bins(v) for name, v in numeric.items()}
    for view in views:
        a_all = acts[view]
        for u in range(a_all.shape[1]):
            a = a_all[:, u].astype(np.float64)
            const = a.min() == a.max()
            abins = _bins(a)
            for name, h in numeric.items():
                scores[(view, u, name, None, "pearson")] = np.nan if const else pearsonr(a, h)[0]
                scores[(view, u, name, None, "mi")] = mutual_info_score(hbins[name], abins)
            for c in classes:
                ind = (y == c).astype(np.float64)
                scores[(view, u, "class", str(c), "pearson")] = np.nan if const else pearsonr(a, ind)[0]
                scores[(view, u, "class", str(c), "auroc")] = roc_auc_score(ind, a)
            scores[(view, u, "class", None, "mi")] = mutual_info_score(y, abins)
    t_pairs = time.perf_counter() - t0
    s.close()
    return scores, {"forward_s": t_forward, "hypotheses_s": t_hyp, "pairs_s": t_pairs,
                    "total_s": t_forward + t_hyp + t_pairs, "pairs": len(scores)}


def _bins(v: np.ndarray) -> np.ndarray:
    return ((rankdata(v, method="min") - 1) * BINS) // len(v)


def ours(model, x, y, views: list[str], **options):
    s = session(model, x, y)
    t0 = time.perf_counter()
    df = run_inspect(s, views, HYPOTHESES, MEASURES, bins=BINS, **options)
    seconds = time.perf_counter() - t0
    s.close()
    return df, seconds


def as_dict(df) -> dict:
    return {(r.layer, int(r.unit), r.hypothesis, None if not isinstance(r.label, str) else r.label, r.measure): r.score
            for r in df.itertuples()}


def checkpoints(out: Path, smoke: bool, n: int):
    """The MNIST CNN's checkpoints after 1, 2 and 4 epochs of one training run (cached in `out`);
    for --smoke, a quick run on the first n images (not cached)."""
    if not smoke:
        models, x, y = ex.mnist_cnn_checkpoints(EPOCHS, cache=out)
        return models, x[:n], y[:n]
    x, y = ex.load_mnist("train")
    x, y = x[:n], y[:n]
    states = {}
    torch.manual_seed(0)
    ex.train(ex.MnistCNN(), x, y, epochs=max(EPOCHS), seed=0,
             on_epoch=lambda e, m: states.update({e: {k: v.clone() for k, v in m.state_dict().items()}}))
    models = {}
    for e in EPOCHS:
        models[f"epoch{e}"] = ex.MnistCNN()
        models[f"epoch{e}"].load_state_dict(states[e])
        models[f"epoch{e}"].eval()
    return models, x, y


def compare_runs(df, full, key) -> dict:
    """Early-stopped scores against the full-data ones (same rows)."""
    m = df.merge(full, on=key, suffixes=("", "_full")).dropna(subset=["score", "score_full"])
    return {"inside_full_ci": float(((m.score >= m.ci_low_full) & (m.score <= m.ci_high_full)).mean()),
            "ci_covers_full": float(((m.score_full >= m.ci_low) & (m.score_full <= m.ci_high)).mean()),
            "max_abs_diff_vs_full": float((m.score - m.score_full).abs().max())}


def several_models(models: dict, x, y, views: list[str], naive_one: dict, ref: dict) -> list[dict]:
    """One multi-model call vs one call per checkpoint vs the naive loop, exact and at the defaults."""
    key = ["model", "layer", "unit", "hypothesis", "label", "measure"]
    rows = []
    last = list(models)[-1]
    for setting, opts in (("exact", dict(early_stop=False, max_inputs=None)), ("defaults", {})):
        ss = {name: session(m, x, y, name) for name, m in models.items()}
        t0 = time.perf_counter()
        multi = run_inspect(ss, views, HYPOTHESES, MEASURES, bins=BINS, **opts)
        t_multi = time.perf_counter() - t0
        st = multi.attrs["inspect"]
        for s in ss.values():
            s.close()
        singles, t_single, model_single = [], 0.0, 0.0
        for name, m in models.items():
            df, sec = ours(m, x, y, views, **opts)
            singles.append(df.assign(model=name))
            t_single += sec
            model_single += df.attrs["inspect"].seconds_model
        singles = pd.concat(singles)
        row = {"setting": setting, "multi_s": t_multi, "single_calls_s": t_single,
               "naive_s": 3 * naive_one["total_s"], "naive_measured_on": "one checkpoint, x3",
               "speedup_vs_single_calls": t_single / t_multi, "speedup_vs_naive": 3 * naive_one["total_s"] / t_multi,
               "multi_model_s": st.seconds_model, "multi_hypotheses_s": st.seconds_hypotheses,
               "multi_scoring_s": st.seconds_scoring, "single_model_s": model_single,
               "inputs_seen": st.inputs_seen, "stop_reason": st.stop_reason, "scores": len(multi)}
        m = multi.merge(singles, on=key, suffixes=("", "_single"))
        assert len(m) == len(multi) == len(singles)
        both = m.score.notna() & m.score_single.notna()
        row["max_abs_diff_vs_single_calls"] = float((m.score[both] - m.score_single[both]).abs().max())
        if setting == "exact":
            got = as_dict(multi[multi.model == last].drop(columns="model"))
            keys = [k for k in ref if not (np.isnan(ref[k]) and np.isnan(got[k]))]
            row["max_abs_diff_vs_naive"] = float(max(abs(got[k] - ref[k]) for k in keys))
            full = multi
        else:
            row.update(compare_runs(multi, full, key))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000, help="MNIST training images (default all 50,000)")
    ap.add_argument("--smoke", action="store_true", help="a tiny run: 2,000 images, channel views only")
    ap.add_argument("--out", default="benchmarks/out")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = 2000 if a.smoke else a.n
    views = ["conv2:mean", "fc1"] if a.smoke else ["conv3", "conv2:mean", "fc1"]
    models, x, y = checkpoints(out, a.smoke, n)
    last = list(models)[-1]
    model = models[last]

    ref, t_naive = naive(model, x, y, views)
    print(f"naive ({last}): {t_naive['total_s']:.1f} s ({t_naive['pairs']} scores)", flush=True)
    runs = {"exact (all inputs)": dict(early_stop=False, max_inputs=None),
            "early stopping (defaults)": {},
            "early stopping (epsilon 0.1)": dict(epsilon=0.1)}
    rows = []
    full = None
    for name, opts in runs.items():
        df, sec = ours(model, x, y, views, **opts)
        st = df.attrs["inspect"]
        got = as_dict(df)
        keys = [k for k in ref if not (np.isnan(ref[k]) and np.isnan(got[k]))]
        row = {"run": name, "seconds": sec, "speedup": t_naive["total_s"] / sec, "inputs_seen": st.inputs_seen,
               "stop_reason": st.stop_reason, "scores": len(df), "model_s": st.seconds_model,
               "hypotheses_s": st.seconds_hypotheses, "scoring_s": st.seconds_scoring,
               "scoring_speedup": t_naive["pairs_s"] / st.seconds_scoring}
        if full is None:
            full = df
            row["max_abs_diff_vs_naive"] = float(max(abs(got[k] - ref[k]) for k in keys))
            row["model_vs_bare_pass"] = st.seconds_model / t_naive["forward_s"]
        else:
            row.update(compare_runs(df, full, ["layer", "unit", "hypothesis", "label", "measure"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    multi = several_models(models, x, y, views, t_naive, ref)
    units = int(sum(full[full.layer == v].unit.nunique() for v in views))
    result = {"n": n, "views": views, "units": units, "hypotheses": list(HYPOTHESES), "measures": MEASURES,
              "model": last, "naive": t_naive, "runs": rows, "models": list(models), "several_models": multi,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__}
    name = "inspect_bench_smoke" if a.smoke else "inspect_bench"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = [f"# inspect benchmark ({n} MNIST images, {units} units, {t_naive['pairs']} scores per model)", "",
          f"## One model ({last})", "",
          f"naive per-pair loop: {t_naive['total_s']:.1f} s (inference {t_naive['forward_s']:.1f} s, hypotheses "
          f"{t_naive['hypotheses_s']:.1f} s, scipy/sklearn loop {t_naive['pairs_s']:.1f} s)", "",
          "| run | seconds (model / hypotheses / scoring) | speedup | scoring speedup | inputs seen | stop | check |",
          "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        check = (f"max diff vs naive {r['max_abs_diff_vs_naive']:.1e}; model time {r['model_vs_bare_pass']:.2f}x "
                 f"the bare inference pass" if "max_abs_diff_vs_naive" in r else
                 f"its CI covers the full-data score: {100 * r['ci_covers_full']:.1f}%; inside the full-data CI: "
                 f"{100 * r['inside_full_ci']:.1f}%")
        md.append(f"| {r['run']} | {r['seconds']:.1f} ({r['model_s']:.1f} / {r['hypotheses_s']:.1f} / "
                  f"{r['scoring_s']:.1f}) | {r['speedup']:.0f}x | {r['scoring_speedup']:.0f}x | {r['inputs_seen']} | "
                  f"{r['stop_reason']} | {check} |")
    md += ["", f"## {len(models)} checkpoints ({', '.join(models)}), the same units and hypotheses", "",
           "naive: the per-pair loop measured on one checkpoint, times 3.", "",
           "| setting | one multi-model call (model / hypotheses / scoring) | one call per checkpoint | naive loop "
           "| speedup vs per-checkpoint calls | speedup vs naive | inputs | stop | check |",
           "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in multi:
        check = f"max diff vs per-checkpoint calls {r['max_abs_diff_vs_single_calls']:.1e}"
        if "max_abs_diff_vs_naive" in r:
            check += f"; vs naive {r['max_abs_diff_vs_naive']:.1e}"
        else:
            check += f"; its CI covers the full-data score: {100 * r['ci_covers_full']:.1f}%"
        md.append(f"| {r['setting']} | {r['multi_s']:.1f} ({r['multi_model_s']:.1f} / {r['multi_hypotheses_s']:.1f} / "
                  f"{r['multi_scoring_s']:.1f}) | {r['single_calls_s']:.1f} | {r['naive_s']:.1f} | "
                  f"{r['speedup_vs_single_calls']:.2f}x | {r['speedup_vs_naive']:.0f}x | {r['inputs_seen']} | "
                  f"{r['stop_reason']} | {check} |")
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
