"""Table 1: the cohort described by PFS group, with the tests that compare the groups.

Table 1 (:func:`table1`, :func:`cohort_table1`) compares the short-PFS and long-PFS groups (labelled
patients only):

* numeric variables: median [interquartile range], two-sided Mann–Whitney U test;
* categorical variables: n (%), Pearson's chi-square test (with Yates' continuity correction for
  2×2 tables, as ``scipy.stats.chi2_contingency`` applies it) when every expected count is at least
  5, otherwise Fisher's exact test (exact for 2×2 tables; for larger tables its p-value is estimated
  from 20 000 random tables with a seeded generator, so it is reproducible).

Each p-value is given as it is and Holm-adjusted over the table's variables (:func:`holm`). Percentages are
of patients with a value; missing values are counted in their own column. A level of a categorical
variable seen in fewer than ``RARE_LEVEL`` (5) of the patients described is never shown by name: such
levels are pooled into one row, ``other (n < 5)``, so that a rare value (a birth date or a ward put into a
clinical column by mistake) is not published.

Also here: :func:`exclusion_summary` (who enters the binary task, and why the others do not) and
:func:`odds_ratio_table` (univariable logistic regressions on all labelled patients: descriptive, nothing
held out). Kaplan–Meier summaries of PFS are in :mod:`prrt.evaluation.survival`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .comparison import format_p, holm

FISHER_MONTE_CARLO_TABLES = 20_000
RARE_LEVEL = 5
POOLED_LEVEL = f"other (n < {RARE_LEVEL})"


def _fmt_num(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def median_iqr(values: pd.Series) -> str:
    v = pd.Series(values).dropna().astype(float)
    if v.empty:
        return "–"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{_fmt_num(med)} [{_fmt_num(q1)}–{_fmt_num(q3)}]"


def compare_numeric(a, b) -> tuple[str, float]:
    """Two-sided Mann–Whitney U test of two samples (NaN dropped)."""
    a = pd.Series(a).dropna().astype(float)
    b = pd.Series(b).dropna().astype(float)
    if len(a) == 0 or len(b) == 0:
        return "Mann–Whitney U", float("nan")
    return "Mann–Whitney U", float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def compare_categorical(table: np.ndarray, seed: int = 0) -> tuple[str, float]:
    """Chi-square when all expected counts ≥ 5, else Fisher's exact test (see module docstring).

    ``table``: contingency table, groups × levels (levels with no patient are dropped).
    """
    table = np.asarray(table, dtype=int)
    table = table[:, table.sum(axis=0) > 0]
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return "–", float("nan")
    chi2 = stats.chi2_contingency(table)
    if (chi2.expected_freq >= 5).all():
        return "chi-square", float(chi2.pvalue)
    if table.shape == (2, 2):
        return "Fisher exact", float(stats.fisher_exact(table).pvalue)
    method = stats.MonteCarloMethod(n_resamples=FISHER_MONTE_CARLO_TABLES, rng=np.random.default_rng(seed))
    return "Fisher (Monte Carlo)", float(stats.fisher_exact(table, method=method).pvalue)


def table1(data: pd.DataFrame, group: str, variables: list[str], categorical: list[str] = (),
           units: dict | None = None, group_names=("Short PFS", "Long PFS"), seed: int = 0,
           rare_level: int = RARE_LEVEL) -> pd.DataFrame:
    """Table 1 of ``data`` split by the binary column ``group`` (1 = first group name).

    ``variables`` are described in the order given; those in ``categorical`` as n (%), the others
    as median [IQR]; their levels seen in fewer than ``rare_level`` of the described patients are pooled
    (``POOLED_LEVEL``). Rows with a missing ``group`` are left out (they are not labelled). Returns one
    row per numeric variable and, for each categorical variable, a row with its test followed by
    one row per level. Columns: variable, all, the two groups, missing, test, p (float), p_text.
    """
    units = units or {}
    d = data[data[group].notna()]
    g1, g0 = d[d[group] == 1], d[d[group] == 0]
    n_all, n1, n0 = len(d), len(g1), len(g0)
    c_all = f"All (n={n_all})" if n_all == len(data) else f"All labelled (n={n_all} of {len(data)})"
    c1, c0 = f"{group_names[0]} (n={n1})", f"{group_names[1]} (n={n0})"
    rows = []
    for var in variables:
        unit = units.get(var)
        label = var.replace("_", " ") + (f" ({unit})" if unit else "")
        missing = int(d[var].isna().sum())
        if var not in categorical:
            test, p = compare_numeric(g1[var], g0[var])
            rows.append({"variable": label, c_all: median_iqr(d[var]), c1: median_iqr(g1[var]),
                         c0: median_iqr(g0[var]), "missing": missing, "test": test, "p": p})
        else:
            values = pool_rare_levels(d[var], rare_level)
            levels = sorted(set(values.dropna()) - {POOLED_LEVEL}, key=_natural_key)
            levels += [POOLED_LEVEL] if (values == POOLED_LEVEL).any() else []
            counts = np.array([[int((values.loc[grp.index] == lv).sum()) for lv in levels] for grp in (g1, g0)])
            test, p = compare_categorical(counts, seed=seed)
            rows.append({"variable": label + ", n (%)", c_all: "", c1: "", c0: "", "missing": missing,
                         "test": test, "p": p})
            for k, lv in enumerate(levels):
                rows.append({"variable": f"    {lv}",
                             c_all: _n_pct(counts[:, k].sum(), d[var].notna().sum()),
                             c1: _n_pct(counts[0, k], g1[var].notna().sum()),
                             c0: _n_pct(counts[1, k], g0[var].notna().sum()),
                             "missing": np.nan, "test": "", "p": np.nan})
    out = pd.DataFrame(rows, columns=None if rows else ["variable", c_all, c1, c0, "missing", "test", "p"])
    out["p_text"] = [format_p(p) if t else "" for p, t in zip(out["p"], out["test"])]
    out["p_holm"] = holm(out["p"].where(out["test"] != ""))
    out["p_holm_text"] = [format_p(p) if t else "" for p, t in zip(out["p_holm"], out["test"])]
    return out


def pool_rare_levels(values: pd.Series, rare: int = RARE_LEVEL) -> pd.Series:
    """Levels (as text) with those seen in fewer than ``rare`` patients replaced by ``POOLED_LEVEL``."""
    text = values.dropna().astype(str)
    counts = text.value_counts()
    out = text.where(~text.isin(counts.index[counts < rare]), POOLED_LEVEL)
    return out.reindex(values.index)


def _natural_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def _n_pct(k, n) -> str:
    return f"{int(k)} ({100 * k / n:.0f} %)" if n else "–"


def cohort_table1(cohort, seed: int = 0) -> pd.DataFrame:
    """Table 1 of a :class:`prrt.data.Cohort`: clinical variables, then laboratory values (an empty
    table, with its columns, when the manifest lists neither)."""
    names = tuple(n[0].upper() + n[1:] for n in cohort.group_names)
    return table1(cohort.data, "label", cohort.clinical + cohort.labs, cohort.categorical, cohort.units,
                  group_names=names, seed=seed)


def exclusion_summary(cohort) -> pd.DataFrame:
    """How many patients enter the binary task, and why the others do not."""
    excluded = ("censored before the horizon (no label; kept for survival analyses)" if cohort.horizon_months
                is not None else "without a label")
    rows = [("patients in the manifest", cohort.n_patients),
            (excluded, cohort.n_excluded_censored),
            (f"labelled: {cohort.group_names[0]}", int((cohort.data["label"] == 1).sum())),
            (f"labelled: {cohort.group_names[1]}", int((cohort.data["label"] == 0).sum()))]
    return pd.DataFrame(rows, columns=["", "patients"])


def display_table1(t: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as shown in the book: formatted p-values, variables as the index."""
    out = t.drop(columns=["p", "p_holm"]).rename(columns={"p_text": "p", "p_holm_text": "p (Holm)"})
    out["missing"] = [("" if pd.isna(m) else str(int(m))) for m in out["missing"]]
    return out.set_index("variable")


def odds_ratio_table(data: pd.DataFrame, features: list[str], label: str = "label") -> pd.DataFrame:
    """Univariable logistic regressions (statsmodels ``Logit``) on all labelled patients: descriptive.

    One model per feature, on the patients with a value. A feature whose values are all positive and
    right-skewed (sample skewness above 1) enters as log2, and its odds ratio is per doubling;
    any other per standard deviation. Returns odds ratio, 95 % CI (Wald), p-value and patients, one
    row per feature. These are associations in the whole cohort, not a validated model: nothing is
    held out.
    """
    import statsmodels.api as sm
    from scipy.stats import skew

    rows = []
    d = data[data[label].notna()]
    for feat in features:
        x = d[feat].astype(float)
        ok = x.notna()
        x, y = x[ok], d.loc[ok, label].astype(int)
        if len(x) < 10 or y.nunique() < 2 or x.nunique() < 2:
            rows.append({"feature": feat, "scale": "–", "odds_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                         "p": np.nan, "n": int(len(x))})
            continue
        if (x > 0).all() and skew(x) > 1:
            z, scale = np.log2(x), "per doubling"
        else:
            z, scale = (x - x.mean()) / x.std(ddof=1), "per SD"
        fit = sm.Logit(y.to_numpy(), sm.add_constant(z.to_numpy())).fit(disp=0)
        lo, hi = fit.conf_int()[1]
        rows.append({"feature": feat, "scale": scale, "odds_ratio": float(np.exp(fit.params[1])),
                     "ci_low": float(np.exp(lo)), "ci_high": float(np.exp(hi)), "p": float(fit.pvalues[1]),
                     "n": int(len(x))})
    return pd.DataFrame(rows).set_index("feature")
