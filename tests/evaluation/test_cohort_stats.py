"""Table 1 statistics against scipy and known answers; Kaplan–Meier summary against a hand calculation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prrt.evaluation import comparison, survival, table1
from prrt.study import ch01_cohort


@pytest.fixture
def small():
    """10 patients: 4 short PFS, 6 long PFS."""
    return pd.DataFrame({
        "label": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        "cga": [900.0, 1200.0, 450.0, np.nan, 150.0, 210.0, 95.0, 300.0, 180.0, 120.0],
        "sex": ["F", "F", "F", "M", "M", "M", "M", "F", "M", "M"],
        "site": ["a", "b", "c", "a", "a", "b", "a", "c", "b", "a"],
    })


def test_mann_whitney_matches_scipy(small):
    t = table1.table1(small, "label", ["cga"])
    expected = stats.mannwhitneyu([900, 1200, 450], [150, 210, 95, 300, 180, 120], alternative="two-sided").pvalue
    row = t.iloc[0]
    assert row["test"] == "Mann–Whitney U"
    assert row["p"] == pytest.approx(expected)
    assert row["p"] == pytest.approx(1 / 42, rel=1e-9)  # exact: the 3 short values are the 3 largest of 9
    assert row["missing"] == 1
    assert row["Short PFS (n=4)"] == "900 [675–1050]"


def test_fisher_exact_2x2_known_answer():
    # Fisher's tea-tasting experiment: [[3, 1], [1, 3]], two-sided p = 34/70
    test, p = table1.compare_categorical(np.array([[3, 1], [1, 3]]))
    assert test == "Fisher exact" and p == pytest.approx(34 / 70)


def test_chi_square_when_expected_counts_are_large():
    table = np.array([[30, 12], [40, 34]])
    test, p = table1.compare_categorical(table)
    assert test == "chi-square"
    assert p == pytest.approx(stats.chi2_contingency(table).pvalue)


def test_fisher_r_by_c_is_reproducible_and_close_to_exact():
    table = np.array([[3, 1, 0], [1, 3, 4]])
    t1, p1 = table1.compare_categorical(table, seed=1)
    _, p2 = table1.compare_categorical(table, seed=1)
    assert t1 == "Fisher (Monte Carlo)" and p1 == p2
    # exact p by enumeration of all tables with these margins (small enough here)
    exact = _exact_fisher_rxc(table)
    assert p1 == pytest.approx(exact, abs=0.01)


def _exact_fisher_rxc(table):
    from itertools import product
    from math import comb

    rows, cols = table.sum(axis=1), table.sum(axis=0)
    n = table.sum()

    def prob(t):
        p = 1.0
        remaining = n
        col_left = cols.copy()
        for r in t[:-1]:
            p_row = 1
            for k, c in zip(r, col_left):
                p_row *= comb(int(c), int(k))
            p *= p_row / comb(int(remaining), int(r.sum()))
            remaining -= r.sum()
            col_left = col_left - r
        return p

    p_obs = prob(table)
    total = 0.0
    for first in product(*[range(int(c) + 1) for c in cols]):
        first = np.array(first)
        if first.sum() != rows[0]:
            continue
        t = np.vstack([first, cols - first])
        pt = prob(t)
        if pt <= p_obs * (1 + 1e-7):
            total += pt
    return total


def test_categorical_rows_and_percentages(small):
    t = table1.table1(small, "label", ["sex", "site"], categorical=["sex", "site"], rare_level=1)  # no pooling
    head = t[t["variable"] == "sex, n (%)"].iloc[0]
    assert head["test"] == "Fisher exact"
    assert head["p"] == pytest.approx(stats.fisher_exact([[3, 1], [1, 5]]).pvalue)
    f_row = t[t["variable"] == "    F"].iloc[0]
    assert f_row["Short PFS (n=4)"] == "3 (75 %)" and f_row["Long PFS (n=6)"] == "1 (17 %)"


def test_rare_levels_are_pooled_and_never_named(small):
    """With the default threshold (5 patients): F (4 patients) and every site (<= 5 … a: 5) — only the levels
    seen in at least 5 of the described patients are named; the rest are one row, 'other (n < 5)'."""
    t = table1.table1(small, "label", ["sex", "site"], categorical=["sex", "site"])
    rows = list(t["variable"])
    assert "    F" not in rows and "    M" in rows and "    a" in rows and "    b" not in rows and "    c" not in rows
    other = t[t["variable"] == "    other (n < 5)"]
    assert len(other) == 2  # one per variable
    assert other.iloc[0]["All (n=10)"] == "4 (40 %)" and other.iloc[1]["All (n=10)"] == "5 (50 %)"
    # the test compares the pooled table: sex is then M against other
    head = t[t["variable"] == "sex, n (%)"].iloc[0]
    assert head["p"] == pytest.approx(stats.fisher_exact([[1, 3], [5, 1]]).pvalue)
    pooled = table1.pool_rare_levels(pd.Series(["x", None, "y"] + ["z"] * 5))
    assert pooled.fillna("missing").tolist() == ["other (n < 5)", "missing", "other (n < 5)"] + ["z"] * 5


def test_unlabelled_patients_are_left_out(small):
    d = small.copy()
    d.loc[len(d)] = [np.nan, 5000.0, "F", "a"]
    t = table1.table1(d, "label", ["cga"])
    assert "All labelled (n=10 of 11)" in t.columns  # the column says whom it holds
    assert "All (n=10)" in table1.table1(small, "label", ["cga"]).columns


def test_holm_adjusted_p_values(small):
    t = table1.table1(small, "label", ["cga", "sex", "site"], categorical=["sex", "site"], rare_level=1)
    tested = t[t["test"] != ""]
    p = tested["p"].to_numpy()
    # Holm by hand: sort, multiply by (m - rank), running maximum, cap at 1
    order = np.argsort(p)
    m = len(p)
    adj = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    expected = np.empty(m)
    expected[order] = adj
    np.testing.assert_allclose(tested["p_holm"].to_numpy(), expected)
    assert (tested["p_holm"] >= tested["p"]).all()
    assert t.loc[t["test"] == "", "p_holm"].isna().all()
    shown = table1.display_table1(t)
    assert "p (Holm)" in shown.columns and "p_holm" not in shown.columns


def test_format_p():
    assert comparison.format_p(0.0004) == "<0.001" and comparison.format_p(0.0312) == "0.031" and comparison.format_p(np.nan) == "–"


def test_km_summary_against_a_hand_calculation():
    """Every number worked out by hand (product-limit, Greenwood with the log(-log) transform)."""
    time = np.array([2, 4, 6, 8, 10, 14, 16, 20, 24, 30.0])
    event = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0, 0])
    s = survival.km_summary(time, event, 12)
    # S(t) steps at 2, 4, 8, 10, 14: 9/10, 8/10, 8/10*6/7, *5/6 = 4/7, *4/5 = 16/35 (first <= 0.5)
    assert s["median_pfs_months"] == 14.0
    assert s["pfs_rate_at_horizon"] == pytest.approx(4 / 7, abs=1e-12)
    # Greenwood: sum d/(n(n-d)) over the events up to 12 months; CI S^exp(+-z se), se = sqrt(v)/|log S|
    z = 1.959963984540054
    v = 1 / (10 * 9) + 1 / (9 * 8) + 1 / (7 * 6) + 1 / (6 * 5)
    se = np.sqrt(v) / abs(np.log(4 / 7))
    lo, hi = s["pfs_rate_ci"]
    assert lo == pytest.approx((4 / 7) ** np.exp(z * se), abs=1e-9)  # 0.2172
    assert hi == pytest.approx((4 / 7) ** np.exp(-z * se), abs=1e-9)  # 0.8146
    # median CI: the lower band is already below 0.5 after the first event (0.9^exp(z*0.35) = 0.473),
    # the upper band never reaches 0.5 before the last event (0.617 at 20 months) -> (2, inf)
    assert s["median_pfs_ci"] == (2.0, np.inf)


def test_cohort_table1_and_examples(small_cohort_dir):
    from prrt.data.load import load_cohort

    c = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    t = table1.cohort_table1(c, seed=0)
    first = [v for v in t["variable"] if not v.startswith("    ")]
    assert first[0].startswith("age") and first[-1].startswith("ldh")
    assert len(first) == len(c.clinical) + len(c.labs)
    shown = table1.display_table1(t)
    assert "p" in shown.columns and "p_text" not in shown.columns
    ex = ch01_cohort.pick_example_patients(c, 4, seed=3)
    assert len(ex) == 4 and sorted(c.data.loc[ex, "label"]) == [0, 0, 1, 1]
    assert ex == ch01_cohort.pick_example_patients(c, 4, seed=3)
    e = table1.exclusion_summary(c).set_index("")["patients"]
    assert e.iloc[0] == 26 and e.iloc[1] == 2


def test_holm_keeps_the_missing_p_values_missing_in_a_column_of_numbers():
    out = comparison.holm(pd.Series([0.01, np.nan, 0.04, 0.03], index=list("abcd")))
    assert out.dtype == np.float64  # a column of numbers, not of objects with None in it
    assert np.isnan(out["b"])
    np.testing.assert_allclose(out.drop("b").to_numpy(), [0.03, 0.06, 0.06])
    empty = comparison.holm(pd.Series([np.nan, np.nan], index=["a", "b"]))
    assert empty.dtype == np.float64 and empty.isna().all()
    none = comparison.holm(pd.Series([], dtype=float))  # a family without tests: still a column of numbers
    assert none.empty and none.dtype == np.float64


def test_p_phrase_takes_a_number_or_the_text_format_p_gave():
    assert comparison.p_phrase(0.2149) == "= 0.215" and comparison.p_phrase(0.0004) == "<0.001"
    assert comparison.p_phrase("0.215") == "= 0.215" and comparison.p_phrase("<0.001") == "<0.001"
