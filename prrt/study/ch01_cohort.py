"""Chapter 01, the cohort: who enters the analysis, Table 1 by PFS group, PFS survival and a few patients' images.

Table 1 compares the short-PFS and long-PFS groups (labelled patients only):

* numeric variables: median [interquartile range], two-sided Mann–Whitney U test;
* categorical variables: n (%), Pearson's chi-square test (with Yates' continuity correction for
  2×2 tables, as ``scipy.stats.chi2_contingency`` applies it) when every expected count is at least
  5, otherwise Fisher's exact test (exact for 2×2 tables; for larger tables its p-value is estimated
  from 20 000 random tables with a seeded generator, so it is reproducible).

Percentages are of patients with a value; missing values are counted in their own column. A level of
a categorical variable seen in fewer than ``RARE_LEVEL`` (5) of the patients described is never shown
by name: such levels are pooled into one row, ``other (n < 5)``, so that a rare value (a birth date or
a ward put into a clinical column by mistake) is not published.

For a synthetic cohort, :func:`achievable_bounds` sets the generator's achievable AUROC of every input set
(:func:`prrt.data.synthetic.achievable_aurocs`) beside a logistic regression fitted on that set's exact
per-patient parameters under the run's own cross-validation, the empirical check of the bound.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import INPUT_SETS, exact_parameter_aurocs
from ..evaluation import (
    cohort_table1,
    display_table1,
    exclusion_summary,
    iter_folds,
    km_summary,
)
from ..imaging import preprocess_cohort
from .names import INPUT_SET_NAMES, LATENT_NAMES
from .notebook import synthetic_report


def pick_example_patients(cohort, n: int, seed: int, modality: str = "pet") -> list[str]:
    """Pseudonyms of ``n`` patients with images for the montage, half short and half long PFS."""
    rng = np.random.default_rng(seed)
    d = cohort.labelled
    col = f"{modality}_path" if f"{modality}_path" in d.columns else None
    if col is not None:
        d = d[d[col].notna()]
    picks = []
    for lab, k in ((1, n // 2), (0, n - n // 2)):
        pool = sorted(d.index[d["label"] == lab])
        picks += list(rng.choice(pool, size=min(k, len(pool)), replace=False))
    return sorted(str(p) for p in picks)


# ---- what chapter 01 shows ---------------------------------------------------------------------------
def exclusion_table(cohort):
    """Who enters the binary task and who is left out (censored before the horizon), as the page shows it: a
    table without its index (a pandas ``Styler``)."""
    return exclusion_summary(cohort).style.hide(axis="index")


def table1_of_run(ctx) -> pd.DataFrame:
    """Table 1 of the run's cohort by PFS group (one row per variable or level, with its test and p-values, Holm's
    adjustment included), written to ``cohort/table1.csv``; empty when the manifest lists no clinical or
    laboratory variable."""
    table = cohort_table1(ctx.cohort, seed=ctx.seed)
    table.to_csv(ctx.path("cohort", "table1.csv"), index=False)
    return table


def table1_view(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (:func:`table1_of_run`) as the page shows it."""
    return display_table1(table)


def significance_lines(table: pd.DataFrame) -> list[str]:
    """Two sentences on Table 1: the variables with p < 0.05, and those still below 0.05 after Holm's adjustment
    ("none" when there is none); no sentence when no variable was tested."""
    tested = table[table["test"] != ""]
    if not len(tested):
        return []
    return ["Variables with p < 0.05: " + (", ".join(tested.loc[tested["p"] < 0.05, "variable"]) or "none"),
            "... and still below 0.05 after Holm's adjustment: "
            + (", ".join(tested.loc[tested["p_holm"] < 0.05, "variable"]) or "none")]


def pfs_lines(cohort) -> list[str]:
    """The Kaplan–Meier estimates of the cohort in two sentences: median PFS and PFS at the horizon, each with its
    95 % confidence interval (a cohort with PFS times and a horizon)."""
    km = km_summary(cohort.data["pfs_months"], cohort.data["event"], cohort.horizon_months)
    return [f"Median PFS: {km['median_pfs_months']:.1f} months "
            f"(95 % CI {km['median_pfs_ci'][0]:.1f}–{km['median_pfs_ci'][1]:.1f})",
            f"PFS at {cohort.horizon_months:g} months: {100 * km['pfs_rate_at_horizon']:.0f} % "
            f"(95 % CI {100 * km['pfs_rate_ci'][0]:.0f}–{100 * km['pfs_rate_ci'][1]:.0f} %)"]


def montage_patients(ctx) -> tuple[dict, dict]:
    """The patients of the montage (the profile's ``montage_patients``, half of each PFS group, chosen by the
    seed), preprocessed on the display grid around the body: ``({pseudonym: arrays}, {pseudonym: title})``, the
    title naming the patient's PFS group."""
    cohort = ctx.cohort
    examples = pick_example_patients(cohort, ctx.profile.montage_patients, ctx.seed)
    arrays = preprocess_cohort(cohort, ctx.profile, ctx.cache_dir, patients=examples,
                               size=ctx.profile.display_size_voxels, roi="body")
    group = {1.0: cohort.group_names[0], 0.0: cohort.group_names[1]}
    titles = {p: f"{p} · {group[cohort.data.at[p, 'label']]}" for p in examples}
    return arrays, titles


# ---- how much signal there is to find (synthetic cohorts) --------------------------------------------
def achievable_bounds(ctx) -> pd.DataFrame | None:
    """For a synthetic cohort, one row per input set: what a perfect reader of it sees, its achievable AUROC
    (with the bootstrap interval of the generator's report, when it has one), and the cross-validated AUROC (mean over the run's repeats) of a logistic regression fitted on its exact
    per-patient parameters (``truth.csv``; the run's own splits). ``None`` for a real cohort or a synthetic one
    without its generator's report; the check column is empty when ``truth.csv`` does not cover the patients
    of the splits."""
    report = synthetic_report(ctx.cohort)
    if not report or "achievable_auroc" not in report:
        return None
    folder = ctx.cohort.input_files[1].parent
    checked = {}
    truth_file, table_file = folder / "truth.csv", folder / "cohort.csv"
    if truth_file.is_file() and table_file.is_file():
        truth, table = pd.read_csv(truth_file), pd.read_csv(table_file)
        id_of = {ps: pid for pid, ps in ctx.cohort.pseudonym_of_id().items()}
        known = set(truth["patient_id"])
        folds = [(f.repeat, [id_of.get(p) for p in f.train], [id_of.get(p) for p in f.test])
                 for f in iter_folds(ctx.splits)]
        if all(set(train) | set(test) <= known for _, train, test in folds):
            checked = exact_parameter_aurocs(table, truth, folds)
    sets = report.get("input_sets", {k: list(v) for k, v in INPUT_SETS.items()})
    interval = report.get("achievable_auroc_interval", {})
    rows = [{"input set": INPUT_SET_NAMES.get(name, name),
             "what a perfect reader of it sees": "; ".join(LATENT_NAMES.get(k, k) for k in sets.get(name, [])),
             "achievable AUROC": round(bound, 3),
             "95 % interval (bootstrap over patients)": "{:.2f}–{:.2f}".format(*interval[name]) if name in interval
             else "–",
             "logistic regression on the exact parameters (CV)": round(checked[name], 3) if name in checked else None}
            for name, bound in report["achievable_auroc"].items()]
    return pd.DataFrame(rows).set_index("input set")


def bounds_sentence(bounds: pd.DataFrame | None) -> str:
    """What the table of :func:`achievable_bounds` says about the images, in one sentence (or why there is none)."""
    if bounds is None:
        return "Real data: there is no achievable bound to show; only a synthetic cohort knows its own."
    b = bounds["achievable AUROC"]
    full, features = INPUT_SET_NAMES["lab_pet_ct"], INPUT_SET_NAMES["lab_pet_features"]
    if full not in b or features not in b:
        return "The generator's report does not give the two input sets that show what the images add."
    return (f"What the images add beyond the laboratory values and the lesion features: {b[full] - b[features]:+.2f} "
            f"achievable AUROC ({b[features]:.2f} → {b[full]:.2f}), the receptor-negative liver metastases, which the "
            "lesion mask leaves out. That the images add something is a choice of the generator's design (its risk "
            "weights were set for it), not a finding." + _same_sight_sentence(bounds))


def _same_sight_sentence(bounds: pd.DataFrame) -> str:
    """When the SR-PET images alone show every factor that SR-PET + CT show (as in this generator), one sentence
    that says so: their bounds are equal by definition, and no model can gain from adding the CT to the SR-PET."""
    sight = bounds["what a perfect reader of it sees"]
    pet, both = INPUT_SET_NAMES["pet"], INPUT_SET_NAMES["pet_ct"]
    if pet not in sight or both not in sight or sight[pet] != sight[both]:
        return ""
    return (f" The {pet} show every factor the {both} show, so the two share one bound by definition: in this "
            "generator the CT adds nothing a perfect reader of the SR-PET would miss (its receptor-negative metastases "
            "are cold on the SR-PET too), and a model that gains from adding the CT to the SR-PET gains from reading "
            "better, not from seeing more. On real scans the CT shows what this generator does not draw.")
