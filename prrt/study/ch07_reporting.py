"""The TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378) mapped to this book, filled from a run.

TRIPOD+AI lists what a report of a prediction-model study should contain: 27 items, 52 with their
parts. :data:`ITEMS` holds each item's number, its section and a short topic in our own words (the
statement's wording is in the paper). :func:`checklist` returns one row per item: where this book
answers it (a link to the chapter or page) and, where the answer is a number, that number from the run
(sample size, events, missing values, censoring, the models and their settings, performance with
confidence intervals, subgroups); where the book cannot answer (ethics approval, funding, dates of
accrual), it says so and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..evaluation import (
    bootstrap_ci,
    labelled,
    load_splits,
    per_repeat_metrics,
    pool_rare_levels,
    read_predictions,
)
from ..learn import config_from_profile, fusion_config
from ..provenance import git_state, repository_url
from .ch06_external import RESULTS_FILE
from .names import HEADLINE, HEADLINE_ORDER, WITHOUT_CNN

#: (item, section, topic): the 52 items and parts of TRIPOD+AI, in the statement's order.
ITEMS = [
    ("1", "Title", "what the study is, its population and outcome"),
    ("2", "Abstract", "a structured summary"),
    ("3a", "Background", "healthcare context and why a model"),
    ("3b", "Background", "target population, purpose and intended users"),
    ("3c", "Background", "known health inequalities"),
    ("4", "Objectives", "development, evaluation, or both"),
    ("5a", "Data", "data sources and their representativeness"),
    ("5b", "Data", "dates of accrual and follow-up"),
    ("6a", "Participants", "setting, number and location of centres"),
    ("6b", "Participants", "eligibility criteria"),
    ("6c", "Participants", "treatments received and how they were handled"),
    ("7", "Data preparation", "pre-processing and quality checks"),
    ("8a", "Outcome", "the outcome, its horizon and how it was assessed"),
    ("8b", "Outcome", "who assessed the outcome, where it needs judgement"),
    ("8c", "Outcome", "blinding of the outcome assessment"),
    ("9a", "Predictors", "choice of the initial predictors"),
    ("9b", "Predictors", "definition and measurement of every predictor"),
    ("9c", "Predictors", "who assessed predictors that need judgement"),
    ("10", "Sample size", "how the study size came about, and whether it suffices"),
    ("11", "Missing data", "how missing data were handled"),
    ("12a", "Analytical methods", "how the data were used and partitioned"),
    ("12b", "Analytical methods", "how predictors were handled (scaling, transformation)"),
    ("12c", "Analytical methods", "type of model, building steps, tuning, internal validation"),
    ("12d", "Analytical methods", "heterogeneity across clusters (centres)"),
    ("12e", "Analytical methods", "performance measures and plots, comparison of models"),
    ("12f", "Analytical methods", "model updating after evaluation"),
    ("12g", "Analytical methods", "how the predictions for evaluation were computed"),
    ("13", "Class imbalance", "methods for class imbalance and recalibration"),
    ("14", "Fairness", "approaches to model fairness"),
    ("15", "Model output", "what the model outputs; thresholds"),
    ("16", "Training versus evaluation", "differences between development and evaluation data"),
    ("17", "Ethical approval", "ethics committee and consent"),
    ("18a", "Open science", "funding"),
    ("18b", "Open science", "conflicts of interest"),
    ("18c", "Open science", "protocol"),
    ("18d", "Open science", "registration"),
    ("18e", "Open science", "data availability"),
    ("18f", "Open science", "code availability"),
    ("19", "Patient and public involvement", "involvement of patients and the public"),
    ("20a", "Participants", "flow of participants, outcomes, follow-up"),
    ("20b", "Participants", "characteristics, events, missing data"),
    ("20c", "Participants", "evaluation data compared with development data"),
    ("21", "Model development", "participants and events in each analysis"),
    ("22", "Model specification", "the full model, for predictions in new patients"),
    ("23a", "Model performance", "performance with confidence intervals, also in subgroups"),
    ("23b", "Model performance", "heterogeneity of performance across clusters"),
    ("24", "Model updating", "results of any updating"),
    ("25", "Interpretation", "overall interpretation, fairness"),
    ("26", "Limitations", "limitations and their effects"),
    ("27a", "Usability", "poor-quality or missing inputs in use"),
    ("27b", "Usability", "what users must do and know"),
    ("27c", "Usability", "next steps for research"),
]

#: Pages of the book, relative to a chapter's page (``notebooks/<chapter>.html``).
PAGES = {
    "intro": ("../book/intro.html", "Introduction"),
    "data": ("../book/data.html", "The data"),
    "manifest": ("../data_manifest/README.html", "Data manifest"),
    "methods": ("../book/methods.html", "Methods"),
    "reproducibility": ("../book/reproducibility.html", "Reproducibility"),
    "this_run": ("../book/this_run.html", "This run"),
    "01": ("01_cohort.html", "Chapter 1"),
    "02": ("02_lab_random_forest.html", "Chapter 2"),
    "03": ("03_unimodal_cnn.html", "Chapter 3"),
    "04": ("04_fusion.html", "Chapter 4"),
    "05": ("05_explainability.html", "Chapter 5"),
    "06": ("06_external_validation.html", "Chapter 6"),
    "07": ("07_reporting_checklist.html", "this page"),
}


#: What the "where in this book" column says for an item that no page of the book answers.
UNANSWERED = "–"


def link(page: str, where: str = "") -> str:
    href, name = PAGES[page]
    return f'<a href="{href}">{name}</a>' + (f" ({where})" if where else "")


@dataclass
class RunFacts:
    """What the checklist reads from a run: the cohort, the profile, the results and, if any, the external
    validation."""

    cohort: object
    profile: object
    seed: int
    summary: pd.DataFrame
    splits: pd.DataFrame
    external: pd.DataFrame | None = None  # results/06_external_validation.csv
    external_cohort: dict | None = None  # name, patients, labelled
    subgroups: pd.DataFrame = field(default_factory=pd.DataFrame)
    code: str = ""  # where the code is (repository and commit)


def run_facts(ctx, subgroup_columns: list[str] | None = None) -> RunFacts:
    """The facts of the run in ``ctx`` (:class:`prrt.study.notebook.Context`) after chapters 01-06."""
    summary = pd.read_csv(ctx.run_dir / "results" / "summary.csv")
    splits = load_splits(ctx.run_dir)
    ext_file = ctx.run_dir / "results" / RESULTS_FILE
    external = pd.read_csv(ext_file) if ext_file.is_file() else None
    ext_cohort = None
    if external is not None and len(external):
        ext_cohort = {"patients_labelled": int(external["n_patients"].iloc[0]),
                      "short": int(external["n_short"].iloc[0]),
                      "with_pfs": int(external["n_patients_survival"].iloc[0])}
    git = git_state()
    url = repository_url()
    code = (f"{url}, commit {git['commit'][:12]}" if url and git["commit"] else
            f"commit {git['commit'][:12]} of this repository" if git["commit"] else "this repository")
    facts = RunFacts(ctx.cohort, ctx.profile, ctx.seed, summary, splits, external, ext_cohort, code=code)
    model = headline_model(summary)
    if model is not None:
        columns = subgroup_columns if subgroup_columns is not None else list(ctx.cohort.categorical)
        facts.subgroups = subgroup_performance(read_predictions(ctx.run_dir, model), ctx.cohort, columns,
                                               n_boot=ctx.profile.n_bootstrap, seed=ctx.seed).assign(model=model)
    return facts


def headline_model(summary: pd.DataFrame) -> str | None:
    ran = list(summary.loc[summary["status"] == "ran", "model"])
    return next((m for m in HEADLINE_ORDER if m in ran), ran[0] if ran else None)


def subgroup_performance(pred: pd.DataFrame, cohort, columns: list[str], n_boot: int = 1000, seed: int = 0,
                         min_per_class: int = 5) -> pd.DataFrame:
    """AUROC (mean over repeats of the out-of-fold predictions) with a bootstrap 95 % CI in each level of each
    column; a level with fewer than ``min_per_class`` patients of either class gets no AUROC (``note`` says so).
    Levels seen in fewer than 5 patients are pooled first, as in Table 1 (a rare value may identify a patient)."""
    lab = labelled(pred)
    rows = []
    for col in columns:
        values = pool_rare_levels(cohort.data[col])
        for level in sorted(values.dropna().astype(str).unique()):
            who = set(values.index[values.astype(str) == level])
            part = lab[lab["patient"].isin(who)]
            y = part.drop_duplicates("patient")["label"]
            row = {"column": col, "level": level, "patients": int(len(y)), "short": int(y.sum()),
                   "auroc": np.nan, "auroc_ci_low": np.nan, "auroc_ci_high": np.nan, "note": ""}
            if min(y.sum(), len(y) - y.sum()) < min_per_class:
                row["note"] = f"fewer than {min_per_class} patients in a class: no AUROC"
            else:
                ci = bootstrap_ci(part, n_boot=n_boot, seed=seed)["auroc_ci"]
                row.update(auroc=float(per_repeat_metrics(part)["auroc"].mean()), auroc_ci_low=ci[0],
                           auroc_ci_high=ci[1])
            rows.append(row)
    return pd.DataFrame(rows, columns=["column", "level", "patients", "short", "auroc", "auroc_ci_low",
                                       "auroc_ci_high", "note"])


def kept_weights(profile) -> str:
    """How long each kind of network trains, which weights it keeps and what the inner validation part does, read
    from the training settings that the profile gives the CNNs (:func:`prrt.learn.config_from_profile`) and the
    neural fusions (:func:`prrt.learn.fusion_config`)."""
    cfg = config_from_profile(profile)
    fusion = fusion_config(profile, "adaptive").train
    share = f"{100 * cfg.val_fraction:.0f} %"
    runs = (f"the CNNs train for {cfg.epochs} epochs (batch {cfg.batch_size}), the neural fusions for {fusion.epochs} "
            f"(batch {fusion.batch_size})")
    if cfg.selection == "val_loss" and cfg.val_fraction > 0:
        text = (f"{runs}; each network keeps the weights of the epoch with the lowest loss on an inner validation part "
                f"({share} of the fold's training patients, which do not fit it): early stopping on training patients "
                "only")
    else:
        text = f"{runs}; each keeps its weights after its last epoch (no early stopping)"
        text += (f"; {share} of each fold's training patients form an inner validation part that does not fit the "
                 "network and only draws its learning curves" if cfg.val_fraction > 0 else
                 "; every training patient fits the network (no inner validation part)")
    branches = getattr(profile, "fusion_image_branches", "end_to_end")
    if branches == "cross_fitted":
        text += ("; the neural fusions read the CNNs' scores, a training patient's from CNNs fitted without that "
                 "patient (cross-fitted inside the training part), and the lesion features as the score of a logistic "
                 "regression cross-fitted the same way (three inner folds)")
    elif branches == "fold_models":
        text += "; the neural fusions read the scores of the fold's CNNs"
    return (text + "; the logistic regressions' L2 penalty is chosen by an inner stratified 3-fold cross-validation of "
            "the training part (the late fusion's stacking regression has a fixed penalty, C = 1)")


def _missing_images(c) -> str:
    """Item 11's part on images: how many patients lack each image, and what the models do about it."""
    counts = [(m, int(c.data[f"{m}_path"].isna().sum())) for m in ("pet", "ct") if f"{m}_path" in c.data.columns]
    if not counts:
        return "The manifest names no images."
    lacking = [f"{n} without {m.upper()}" for m, n in counts if n]
    if not lacking:
        return "Every patient has every image the manifest names."
    return (f"Images: {', '.join(lacking)}; a single-image model is fitted and evaluated on the patients with its "
            "image (the summary gives how many), a fusion predicts every patient with the sources it has (a missing "
            "source is masked).")


def _predictor_definitions(c, p) -> str:
    """Item 9b from the manifest and the profile: each laboratory value with its unit, the images and their grid."""
    labs = "; ".join(f"{lab} ({c.units.get(lab) or 'no unit given'})" for lab in c.labs) or "none"
    mods = [m for m in c.modalities if m in ("pet", "ct")]
    spacing = sorted(set(p.voxel_spacing_mm))
    size = " × ".join(f"{v:g}" for v in p.voxel_spacing_mm) if len(spacing) > 1 else f"{spacing[0]:g}"
    where = f"centred on the {p.roi}" if p.roi != "body" else "the whole body"
    grid = (f"resampled to {size} mm voxels, {where} (CT windowed to {p.hu_window[0]:g} to {p.hu_window[1]:g} HU, "
            f"SR-PET SUV {p.suv_range[0]:g} to {p.suv_range[1]:g} on a {p.suv_scale} scale)")
    images = f"images: {', '.join(m.upper() for m in mods)}, {grid}" if mods else "no images"
    return (f"Laboratory values as the manifest gives them: {labs}; {images}; the SR-PET lesion features are computed "
            "from the lesion masks as the methods define them. When the values were measured relative to treatment "
            "is not recorded in the manifest" + (" (the synthetic cohort has no dates)." if c.synthetic else
                                                  ": the study's own report must state it."))


def _calibration(r) -> str:
    slope = r.get("calibration_slope", np.nan)
    return (f"Brier score {r['brier_mean']:.3f}" if pd.isna(slope) else
            f"Brier score {r['brier_mean']:.3f}, calibration slope {slope:.2f} and calibration-in-the-large "
            f"{r.get('calibration_in_the_large', np.nan):.2f} (means over the repeats)")


def _limitations(f: RunFacts, labelled_n: int) -> str:
    """Item 26 from the run: the cohort's size and the headline's interval, whether the fusion beat the models
    without a CNN, one centre or two, synthetic or not."""
    out = [f"A small cohort ({labelled_n} labelled patients)"]
    model = headline_model(f.summary)
    rows = f.summary.set_index("model")
    if model is not None:
        r = rows.loc[model]
        out[0] += (f": the 95 % CI of {model}'s AUROC spans {r['auroc_ci_high'] - r['auroc_ci_low']:.2f} "
                   f"({r['auroc_ci_low']:.2f} to {r['auroc_ci_high']:.2f})")
    ran = rows[rows["status"] == "ran"]
    rivals = [m for m in WITHOUT_CNN if m in ran.index]
    if HEADLINE in ran.index and rivals:
        best = max(rivals, key=lambda m: ran.loc[m, "auroc_mean"])
        a, b = ran.loc[HEADLINE, "auroc_mean"], ran.loc[best, "auroc_mean"]
        out.append(f"the fusion's AUROC ({a:.2f}) is {'above' if a > b else 'not above'} that of the best model "
                   f"without a CNN, {best} ({b:.2f}); chapter 4 tests the difference")
    out.append("two cohorts (chapter 6)" if f.external_cohort else "a single centre, no external validation in this run")
    out.append("synthetic data: the numbers demonstrate the method, not a clinical finding" if f.cohort.synthetic
               else "retrospective data")
    return "; ".join(out) + "."


def _ci(v, lo, hi) -> str:
    return f"{v:.2f} (95 % CI {lo:.2f} to {hi:.2f})"


def _performance(f: RunFacts) -> str:
    model = headline_model(f.summary)
    if model is None:
        return "No model ran for this manifest."
    r = f.summary.set_index("model").loc[model]
    text = (f"{model}: AUROC {r['auroc_mean']:.2f} ± {r['auroc_sd']:.2f} over {int(r['n_repeats'])} repeats, "
            f"{_ci(r['auroc_mean'], r['auroc_ci_low'], r['auroc_ci_high'])}; AUPRC (short PFS positive) {r['auprc_mean']:.2f} "
            f"(95 % CI {r['auprc_ci_low']:.2f} to {r['auprc_ci_high']:.2f})")
    if not pd.isna(r.get("c_index", np.nan)):
        text += f"; C-index {r['c_index']:.2f}"
    if not pd.isna(r.get("brier_mean", np.nan)):
        text += f"; {_calibration(r)}"
    n_ran = int((f.summary["status"] == "ran").sum())
    return text + f". All {n_ran} models that ran, each with its CI: chapters 2 to 4."


def _subgroups(f: RunFacts) -> str:
    if f.subgroups.empty:
        return "No categorical clinical column in the manifest: no subgroups."
    shown = f.subgroups.dropna(subset=["auroc"])
    parts = [f"{r['column']} = {r['level']} ({r['patients']} patients): "
             f"{_ci(r['auroc'], r['auroc_ci_low'], r['auroc_ci_high'])}" for _, r in shown.iterrows()]
    small = len(f.subgroups) - len(shown)
    return (f"By subgroup ({f.subgroups['model'].iloc[0]}, table below): " + ("; ".join(parts) if parts else "none large enough")
            + (f"; {small} subgroups too small for an AUROC." if small else "."))


def checklist(f: RunFacts) -> pd.DataFrame:
    """One row per TRIPOD+AI item: item, section, topic, where the book answers it, and this run's answer."""
    c, p = f.cohort, f.profile
    s = c.summary()
    one, zero = c.group_names
    labelled, short = s["labelled"], s["short_pfs"]
    synthetic = c.synthetic
    ext = f.external_cohort
    n_models = int((f.summary["status"] == "ran").sum())
    skipped = f.summary.loc[f.summary["status"] != "ran", "model"].tolist()
    missing = s["missing_values"]
    n_cells = len(c.data) * len(c.labs + c.clinical)
    n_missing = int(sum(missing.values()))
    fold_sizes = f.splits.groupby(["repeat", "fold"]).size()
    train = int(round((labelled - fold_sizes).mean())) if labelled else 0
    tests = (f"{fold_sizes.min()}" if fold_sizes.min() == fold_sizes.max() else
             f"{fold_sizes.min()} or {fold_sizes.max()}") if len(fold_sizes) else "0"
    outcome = (f"{one} = progression or death at or before {c.horizon_months:g} months after the start of PRRT"
               if c.horizon_months is not None else f"the manifest's own binary label ({one} / {zero})")
    not_in_data = ("not recorded: the data manifest has no field for it, and the synthetic cohort has no such "
                   "thing" if synthetic else "not recorded in the data manifest: the study's own report must state it")
    author = ("not applicable: synthetic data, no patients" if synthetic
              else "to be stated by the authors of the study that uses this book")
    epv = short / max(len(c.labs), 1) if c.labs else np.nan
    lab_names = ", ".join(c.labs) if c.labs else "none"
    mods = ", ".join(m for m in c.modalities if m in ("pet", "ct")) or "none"
    cfg = config_from_profile(p)
    held_out = (f"for the networks, {100 * cfg.val_fraction:.0f} % of them an inner validation part that does not fit "
                "them" + (" and chooses the kept epoch" if cfg.selection == "val_loss" else "")
                if cfg.val_fraction > 0 else "all of them fit every model")

    answers = {
        "1": (link("intro"), "Prediction of short PFS after 177Lu-DOTATOC PRRT in neuroendocrine tumours from "
                             "laboratory values, SR-PET and CT: development with internal validation"
                             + (", and external validation" if ext else "") + "."),
        "2": (link("intro"), "The book has no abstract; its introduction summarises the study and the book."),
        "3a": (link("intro"), "Prognostic; the introduction states the context and the study it rebuilds."),
        "3b": (link("intro"), "Patients with somatostatin-receptor-positive NET before PRRT; intended users: "
                              "nuclear-medicine physicians and oncologists, for planning treatment and follow-up."),
        "3c": ("", "Not discussed: the study reported none, and the book has no data on sociodemographic groups "
                   "beyond the manifest's clinical columns (see 14, 23a)."),
        "4": (link("intro"), "Development and internal validation of each model"
                             + ("; external validation on a second cohort (chapter 6)." if ext else
                                "; external validation when the run is given a second cohort (chapter 6).")),
        "5a": (link("data") + ", " + link("01"),
               f"{'Synthetic cohort made by prrt demo-data (it mirrors the study design)' if synthetic else 'The cohort of the manifest'}"
               f": {c.name}, {s['patients']} patients." + (" A second cohort for external validation: chapter 6."
                                                           if ext else "")),
        "5b": ("", f"Dates of accrual and end of follow-up: {not_in_data}."),
        "6a": (link("01"), f"{'One centre' if not ext else 'Two cohorts: development and external'}; "
                           "setting: nuclear medicine, patients referred for PRRT."),
        "6b": (link("01", "who is in the cohort"),
               f"Every patient of the manifest; {s['excluded_censored_before_horizon']} censored before the horizon "
               "are excluded from the binary task and kept in the survival analyses."),
        "6c": (link("02", "sensitivity analysis with PRRT cycles"),
               "All patients received 177Lu-DOTATOC PRRT; the number of cycles is not a predictor (it follows "
               "early progression) and appears only in a sensitivity model."),
        "7": (link("methods", "Image preprocessing") + ", " + link("manifest", "Check before you run"),
              "Every input is checked by prrt validate before a run (units, plausible ranges, image geometry, "
              "masks); images are resampled to a common grid with fixed intensity windows. The same rules apply "
              "to every patient; checks by sociodemographic group were not made."),
        "8a": (link("01") + ", " + link("methods", "Endpoint"), outcome + "."),
        "8b": ("", f"Progression assessment (e.g. RECIST) and its readers: {not_in_data}."),
        "8c": ("", f"Blinding of the outcome assessment: {not_in_data}."),
        "9a": (link("02") + ", " + link("03"),
               f"All laboratory values the manifest lists ({len(c.labs)}: {lab_names}), the SR-PET lesion features, "
               f"and the images ({mods}); no selection of predictors before modelling."),
        "9b": (link("manifest") + ", " + link("methods", "Quantitative SR-PET features"),
               _predictor_definitions(c, p)),
        "9c": ("", f"Lesion masks (segmentations) need judgement; who drew them: {not_in_data}."),
        "10": (link("01"),
               f"The sample is the cohort as it is, without a sample-size calculation: {labelled} labelled patients, "
               f"{short} with {one}"
               + (f" ({epv:.1f} events per laboratory predictor)" if not np.isnan(epv) else "") + "."),
        "11": (link("methods", "Laboratory Random Forest") + ", " + link("04"),
               f"{n_missing} of {n_cells} table values missing ({100 * n_missing / max(n_cells, 1):.1f} %), in "
               f"{len(missing)} columns; imputed with the median of the training part of each fold, as are the SR-PET "
               "lesion features of a patient without a lesion in the mask (undefined there). "
               + _missing_images(c)),
        "12a": (link("02", "the splits") + ", " + link("methods", "Cross-validation protocol"),
                f"{p.n_repeats} × repeated stratified {p.n_folds}-fold cross-validation on the same saved splits for "
                f"every model (seed {f.seed}); about {train} training patients per fold."),
        "12b": (link("methods"),
                "Laboratory values and lesion features: median imputation, then a Yeo-Johnson transformation and "
                "standardisation (logistic regression) or standardisation (fusion), each fitted on the training part; "
                "the Random Forest reads the values as they are; images: fixed HU and SUV windows mapped to [0, 1]."),
        "12c": (link("02") + ", " + link("03") + ", " + link("04"),
                f"{n_models} models ran (Random Forests, logistic regressions, 3D CNNs, fusions)"
                + (f"; skipped for this manifest or profile: {', '.join(skipped)}" if skipped else "")
                + f". Settings: profile {p.name}; {kept_weights(p)}"
                + ("; the pretrained CT CNN's encoder first learns without labels from CTs outside the cohort (chapter 4)"
                   if c.ct_pretraining else "") + "; no test fold is used for tuning."),
        "12d": ((link("06") if ext else ""),
                "Two cohorts, each evaluated separately (chapter 6)." if ext else "One centre: not applicable."),
        "12e": (link("methods", "Metrics, confidence intervals and tests"),
                "AUROC and AUPRC (mean ± SD over repeats, bootstrap 95 % CIs), Brier score, calibration slope and "
                "calibration-in-the-large (results/summary.csv, chapters 2 to 4), C-index against PFS, "
                "calibration and decision curves, Kaplan–Meier curves of risk groups; models compared by the "
                "corrected resampled t-test and DeLong's test."),
        "12f": ((link("06") if ext else ""), "No model was updated or recalibrated after evaluation."),
        "12g": ((link("06") + ", " + link("methods", "External validation")) if ext else "",
                "External: each model fitted on all development patients, frozen, predicts each external patient "
                "once (prrt.study.ch06_external)." if ext else "No external evaluation in this run."),
        "13": (link("methods", "3D CNNs"),
               "Random Forests: balanced class weights; networks: a positive-class weight (long / short PFS in the "
               "training part); both have their probabilities corrected back to the training prevalence, so that they "
               "read as risks. Logistic regressions: none."),
        "14": ("this page (subgroups)",
               "No fairness method was applied; performance by subgroup of the manifest's categorical columns is "
               "reported below (item 23a)."),
        "15": (link("methods", "Metrics, confidence intervals and tests"),
               f"The probability of {one}; no classification threshold is set (the risk groups split at the "
               "median, for illustration)."),
        "16": ((link("06", "the two cohorts") if ext else link("methods", "Cross-validation protocol")),
               "External cohort compared with the development cohort in chapter 6." if ext else
               "Development and evaluation (test folds) come from the same cohort and the same rules."),
        "17": ("", f"Ethics approval and consent: {author}."),
        "18a": ("", f"Funding: {author}."),
        "18b": ("", f"Conflicts of interest: {author}."),
        "18c": ("", f"Protocol: {author}; the analysis plan is the code and its methods page."),
        "18d": ("", f"Registration: {author}."),
        "18e": (link("data"),
                "The synthetic data are regenerated by prrt demo-data (seeded)." if synthetic else
                "Patient data are not published; the book holds no patient ID (checked before publishing)."),
        "18f": (link("reproducibility") + ", " + link("this_run"), f"Open source: {f.code}."),
        "19": ("", f"Patient and public involvement: {author}."),
        "20a": (link("01"),
                f"{s['patients']} patients: {short} {one}, {s['long_pfs']} {zero}, "
                f"{s['excluded_censored_before_horizon']} censored before the horizon."),
        "20b": (link("01", "Table 1"), f"Table 1 by outcome group, with missing values per variable ({n_missing} in all)."),
        "20c": ((link("06", "the two cohorts"), "Both cohorts side by side in chapter 6.") if ext else
                ("", "No external cohort in this run.")),
        "21": (link("02", "the splits") + (", " + link("06") if ext else ""),
               f"Per fold: about {train} training patients ({held_out}), "
               f"{tests} test patients; {labelled} labelled patients with {short} events in all"
               + (f"; external: {ext['patients_labelled']} labelled patients, {ext['short']} {one}." if ext else ".")),
        "22": (link("this_run") + ", " + link("reproducibility"),
               "The code (prrt) and each fold's fitted model (checkpoints/ of the run folder; external/checkpoints/ "
               "for the models fitted on all development patients) allow predictions in new patients; the book "
               "publishes no single final model."),
        "23a": ("this page (subgroups below), " + link("04"), _performance(f) + " " + _subgroups(f)),
        "23b": ((link("06"), "Performance on the external cohort is reported separately, with CIs.") if ext else
                ("", "One centre: not applicable.")),
        "24": ("", "No model updating."),
        "25": (link("04") + ", " + link("05"),
               "The chapters compare with the study's numbers; on synthetic data the results demonstrate the "
               "method only." if synthetic else "The chapters compare the results with the study's."),
        "26": (link("04") + ", " + link("methods"), _limitations(f, labelled)),
        "27a": (link("manifest", "Check before you run"),
                "prrt validate names every unusable input (patient, file, column) before a run; a missing modality "
                "is allowed for the fusion models, not for the single-modality models."),
        "27b": (link("manifest"),
                "Users prepare a data manifest (a YAML file and a table) and lesion masks, and run one command; "
                "reading the results needs the clinical background of the intended users."),
        "27c": (link("06"), "External validation on other centres' patients (chapter 6), then a prospective study."),
    }
    rows = []
    for item, section, topic in ITEMS:
        where, answer = answers[item]
        rows.append({"item": item, "section": section, "topic": topic, "where in this book": where or UNANSWERED,
                     "this run": answer})
    return pd.DataFrame(rows)


def checklist_html(table: pd.DataFrame) -> str:
    """The checklist as an HTML table (links kept), for the book page."""
    return table.to_html(index=False, escape=False, classes="tripod-checklist", border=0, justify="left")


# ---- the chapter's steps ---------------------------------------------------------------------------------
def checklist_of_run(ctx, facts: RunFacts) -> pd.DataFrame:
    """The checklist of the run (:func:`checklist`), written to ``results/07_tripod_ai.csv``."""
    table = checklist(facts)
    table.to_csv(ctx.path("results", "07_tripod_ai.csv"), index=False)
    return table


def unanswered(table: pd.DataFrame) -> int:
    """How many items and parts of the checklist no page of the book answers."""
    return int(table["where in this book"].eq(UNANSWERED).sum())


def subgroups_of_run(ctx, facts: RunFacts) -> pd.DataFrame | None:
    """The AUROC of the quoted model within each level of the categorical clinical columns, as the page shows it
    (patients, AUROC with its 95 % CI), its numbers written to ``results/07_subgroups.csv``; ``None`` when there are
    no subgroups."""
    if facts.subgroups.empty:
        return None
    facts.subgroups.to_csv(ctx.path("results", "07_subgroups.csv"), index=False)
    g = facts.subgroups
    return pd.DataFrame({
        "patients (short PFS)": [f"{n} ({k})" for n, k in zip(g["patients"], g["short"])],
        "AUROC [95 % CI]": ["–" if pd.isna(a) else f"{a:.2f} [{lo:.2f}, {hi:.2f}]"
                            for a, lo, hi in zip(g["auroc"], g["auroc_ci_low"], g["auroc_ci_high"])],
        "note": g["note"].to_numpy(),
    }, index=pd.MultiIndex.from_frame(g[["column", "level"]]))
