"""Measures of how well units track a hypothesis, each with a confidence interval.

Pure numpy functions over arrays of *symbols* (inputs, pixels or tokens), vectorised
over all units and hypothesis columns at once:

- `PearsonStats`: streaming sufficient statistics (counts, means, centred second moments
  and co-moments, merged batch by batch in float64); CI by Fisher's z.
- `auroc`: tie-aware AUROC of every unit for every binary column (average ranks, one matrix
  product); CI by Hanley & McNeil (1982).
- `mutual_information`: plug-in MI (nats) over per-unit quantile bins; CI by the delta method.
- `iou_counts` / `iou`: Network Dissection's IoU of thresholded units against binary masks;
  CI by the delta method for a ratio over inputs.
- `probe`: a logistic-regression probe on a unit group, with a split by input, the
  majority-class baseline and the selectivity against a control task.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

# the measures, in the order their rows appear
MEASURES = ("pearson", "auroc", "mi", "iou", "probe")
# how strongly a score says "this unit tracks the hypothesis" (used to rank units)
STRENGTH = {
    "pearson": lambda s: np.abs(s),
    "auroc": lambda s: np.abs(s - 0.5),
    "mi": lambda s: s,
    "iou": lambda s: s,
}
_BLOCK = 8_000_000   # elements per unit block in the rank and bin computations


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile of a confidence level (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def strength(measure: str, score: np.ndarray) -> np.ndarray:
    """Ranking key of scores (higher = stronger); NaN scores rank last."""
    s = STRENGTH[measure](np.asarray(score, np.float64))
    return np.where(np.isnan(s), -np.inf, s)


# -- Pearson ------------------------------------------------------------------------------------

class PearsonStats:
    """Streaming Pearson correlation of U units with K hypothesis columns.

    Keeps n, the means and the centred sums of squares and cross products, merged batch by
    batch with Chan et al.'s parallel update (float64), so the result equals a two-pass
    computation over all rows seen. Columns may be added later (a new label of a
    categorical hypothesis): a column added after n rows counts as n zeros.
    """

    def __init__(self, units: int, columns: int = 0):
        self.n = 0
        self.mean_a = np.zeros(units)
        self.m2_a = np.zeros(units)
        self.mean_h = np.zeros(columns)
        self.m2_h = np.zeros(columns)
        self.c = np.zeros((units, columns))

    def add_columns(self, k: int) -> None:
        """Append k columns whose past values were all zero."""
        self.mean_h = np.concatenate([self.mean_h, np.zeros(k)])
        self.m2_h = np.concatenate([self.m2_h, np.zeros(k)])
        self.c = np.concatenate([self.c, np.zeros((self.c.shape[0], k))], axis=1)

    def update(self, a: np.ndarray, h: np.ndarray) -> None:
        """Add rows: activations a (b, U) and hypothesis values h (b, K)."""
        nb = len(a)
        if nb == 0:
            return
        a = np.asarray(a, np.float64)
        h = np.asarray(h, np.float64)
        mb_a, mb_h = a.mean(0), h.mean(0)
        ac, hc = a - mb_a, h - mb_h
        n = self.n + nb
        da, dh = mb_a - self.mean_a, mb_h - self.mean_h
        f = self.n * nb / n
        self.c += ac.T @ hc + f * np.outer(da, dh)
        self.m2_a += np.einsum("ij,ij->j", ac, ac) + f * da * da
        self.m2_h += np.einsum("ij,ij->j", hc, hc) + f * dh * dh
        self.mean_a += da * (nb / n)
        self.mean_h += dh * (nb / n)
        self.n = n

    def r(self) -> np.ndarray:
        """Correlations (U, K); NaN where a unit or a column is constant."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.c / np.sqrt(np.outer(self.m2_a, self.m2_h))
        return np.clip(r, -1.0, 1.0)

    def scores(self, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(r, ci_low, ci_high), each (U, K)."""
        r = self.r()
        return (r, *fisher_ci(r, self.n, confidence))


def fisher_ci(r: np.ndarray, n: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Fisher-z confidence interval of correlations from n pairs."""
    if n <= 3:
        nan = np.full_like(r, np.nan)
        return nan, nan
    z = np.arctanh(np.clip(r, -1.0, 1.0))
    half = z_value(confidence) / np.sqrt(n - 3)
    with np.errstate(invalid="ignore"):
        return np.tanh(z - half), np.tanh(z + half)


# -- ranks, AUROC and mutual information ---------------------------------------------------------

def unit_blocks(units: int, n: int) -> list[slice]:
    """Slices of units so that one block of n rows stays near _BLOCK elements."""
    step = max(1, _BLOCK // max(n, 1))
    return [slice(s, min(s + step, units)) for s in range(0, units, step)]


def ranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of each column of a (N, u): (average ranks, 1-based, float64; number of smaller
    values, int64), both as (u, N). Tied values share both."""
    at = np.ascontiguousarray(np.asarray(a).T)
    u, n = at.shape
    idx = np.argsort(at, axis=1)
    s = np.take_along_axis(at, idx, 1)
    pos = np.arange(n)
    new = np.empty((u, n), bool)                   # first element of a run of ties
    new[:, 0] = True
    np.not_equal(s[:, 1:], s[:, :-1], out=new[:, 1:])
    first = np.where(new, pos, 0)
    np.maximum.accumulate(first, axis=1, out=first)
    last = np.empty((u, n), bool)                  # last element of a run of ties
    last[:, -1] = True
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    avg = np.empty((u, n))
    below = np.empty((u, n), np.int64)
    np.put_along_axis(avg, idx, (first + end) * 0.5 + 1, 1)
    np.put_along_axis(below, idx, first, 1)
    return avg, below


def auroc_from_ranks(avg: np.ndarray, y: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC (u, K) from average ranks (u, N) and binary columns y (N, K), with Hanley & McNeil's CI."""
    y = np.asarray(y, np.float64)
    n = y.shape[0]
    n1 = y.sum(0)
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (avg @ y - n1 * (n1 + 1) / 2) / (n1 * n0)
        q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
        var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc ** 2) + (n0 - 1) * (q2 - auc ** 2)) / (n1 * n0)
        half = z_value(confidence) * np.sqrt(np.maximum(var, 0.0))
    return auc, np.clip(auc - half, 0, 1), np.clip(auc + half, 0, 1)


def auroc(a: np.ndarray, y: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC of every unit (columns of a (N, U)) for every binary column of y (N, K).

    Equals sklearn's `roc_auc_score(y[:, k], a[:, u])` (Mann-Whitney U with average ranks
    for ties). Returns (auc, ci_low, ci_high), each (U, K); NaN where a column of y has
    a single class.
    """
    parts = [auroc_from_ranks(ranks(a[:, b])[0], y, confidence) for b in unit_blocks(a.shape[1], a.shape[0])]
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def bins_from_below(below: np.ndarray, bins: int) -> np.ndarray:
    """Equal-frequency bins from the number of smaller values: floor(bins * below / N)."""
    return below * bins // below.shape[-1]


def quantile_bins(a: np.ndarray, bins: int) -> np.ndarray:
    """Equal-frequency bin of every value of each column of a (N, U), as (U, N) int64.

    A value's bin is floor(bins * (number of values of its column smaller than it) / N),
    so tied values share a bin and each bin holds about N / bins values.
    """
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    return np.concatenate([bins_from_below(ranks(a[:, b])[1], bins) for b in unit_blocks(a.shape[1], a.shape[0])])


def mutual_information(a_bins: np.ndarray, codes: np.ndarray, bins: int, confidence: float,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plug-in mutual information (nats) between each unit's bins a_bins (U, N) and codes (N,).

    Equals sklearn's `mutual_info_score(codes, a_bins[u])`. The CI is the delta-method normal
    interval, widened below by the estimator's first-order bias (B-1)(L-1)/(2N), clipped at 0.
    """
    units, n = a_bins.shape
    codes = np.unique(np.asarray(codes), return_inverse=True)[1].ravel()
    levels = int(codes.max()) + 1 if n else 1
    mi, var, bias = np.empty(units), np.empty(units), np.empty(units)
    for blk in unit_blocks(units, n * levels):
        b = a_bins[blk]
        u = len(b)
        idx = (np.arange(u)[:, None] * bins + b) * levels + codes[None, :]
        c = np.bincount(idx.ravel(), minlength=u * bins * levels).reshape(u, bins, levels).astype(np.float64)
        cx, cy = c.sum(2, keepdims=True), c.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(c > 0, np.log(c * n) - np.log(cx * cy), 0.0)
        p = c / n
        m = np.maximum((p * term).sum((1, 2)), 0.0)
        mi[blk] = m
        var[blk] = np.maximum((p * term ** 2).sum((1, 2)) - m ** 2, 0.0) / n
        bias[blk] = ((cx[:, :, 0] > 0).sum(1) - 1) * ((cy[:, 0, :] > 0).sum(1) - 1) / (2 * n)
    half = z_value(confidence) * np.sqrt(var)
    return mi, np.maximum(mi - bias - half, 0.0), mi + half


# -- IoU (Network Dissection) ---------------------------------------------------------------------------

def iou(inter: np.ndarray, union: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU = sum_x inter_x / sum_x union_x from per-input counts (N, U, K), with a delta-method CI."""
    n = inter.shape[0]
    si, su = inter.sum(0), union.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = si / su
        d = inter - r * union
        se = np.sqrt((d ** 2).sum(0) / max(n * (n - 1), 1)) / (su / n)
    half = z_value(confidence) * se
    return r, np.clip(r - half, 0, 1), np.clip(r + half, 0, 1)


def top_quantile_threshold(a: np.ndarray, q: float) -> np.ndarray:
    """Per-unit threshold T with P(a > T) = q: `np.quantile(a[:, u], 1 - q)` for a (N, U)."""
    return np.quantile(np.asarray(a), 1 - q, axis=0)


# -- linear probe -------------------------------------------------------------------------------------------

def holdout_mask(groups: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    """Test-set mask of symbols whose input (`groups`) is held out.

    The held-out inputs are the first ceil(holdout * m) of the m distinct input ids after
    `np.random.default_rng(seed).permutation(np.unique(groups))`.
    """
    uniq = np.unique(groups)
    test = np.random.default_rng(seed).permutation(uniq)[: int(np.ceil(holdout * len(uniq)))]
    return np.isin(groups, test)


def wilson(p: np.ndarray | float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed over n trials."""
    if n == 0:
        return np.nan, np.nan
    z = z_value(confidence)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


PROBE_MAX_ITER = 300


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out accuracy of `LogisticRegression(max_iter=300)` (sklearn's defaults otherwise:
    L2, C=1, lbfgs) on features standardised with the training set's mean and std."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=PROBE_MAX_ITER).fit(scaler.transform(x_train), y_train)
    return float((clf.predict(scaler.transform(x_test)) == y_test).mean())


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, holdout: float, seed: int, confidence: float,
          types: np.ndarray | None = None) -> dict[str, tuple[float, float, float]]:
    """A linear probe of labels y from the unit group's activations x (N, U).

    Train/test split by input (`groups`: the input id of each symbol, see `holdout_mask`).
    Returns {"probe": accuracy, "probe_majority": the majority-class baseline (the most
    frequent training label, scored on the test set), "probe_selectivity": accuracy minus the
    accuracy on a control task}, each as (score, ci_low, ci_high). The control task gives each
    type (`types`, e.g. a token's vocabulary id; by default the input) a random label drawn
    from the label distribution, as in Hewitt & Liang (2019).
    """
    test = holdout_mask(groups, holdout, seed)
    train = ~test
    nan = (np.nan, np.nan, np.nan)
    if train.sum() == 0 or test.sum() == 0 or len(np.unique(y[train])) < 2:
        return {"probe": nan, "probe_majority": nan, "probe_selectivity": nan}
    nt = int(test.sum())
    acc = fit_probe(x[train], y[train], x[test], y[test])
    labels, counts = np.unique(y[train], return_counts=True)
    base = float((y[test] == labels[np.argmax(counts)]).mean())
    rng = np.random.default_rng(seed + 1)
    types = groups if types is None else types
    uniq, inv = np.unique(types, return_inverse=True)
    control = rng.choice(y, size=len(uniq))[inv.ravel()]
    if len(np.unique(control[train])) < 2:
        acc_c = float((control[test] == control[train][0]).mean())
    else:
        acc_c = fit_probe(x[train], control[train], x[test], control[test])
    sel = acc - acc_c
    half = z_value(confidence) * np.sqrt((acc * (1 - acc) + acc_c * (1 - acc_c)) / nt)
    return {"probe": (acc, *wilson(acc, nt, confidence)),
            "probe_majority": (base, *wilson(base, nt, confidence)),
            "probe_selectivity": (sel, sel - half, sel + half)}
