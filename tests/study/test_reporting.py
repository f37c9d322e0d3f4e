"""The TRIPOD+AI page (prrt.study.ch07_reporting): every item of the statement, each answered from the run or said why not."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from prrt.data.load import load_cohort
from prrt.profiles import get_profile
from prrt.study import ch07_reporting as reporting

REPO = Path(__file__).resolve().parents[2]

#: The items and parts of TRIPOD+AI in the statement's order (Collins et al., BMJ 2024;385:e078378, table 1).
STATEMENT = ["1", "2", "3a", "3b", "3c", "4", "5a", "5b", "6a", "6b", "6c", "7", "8a", "8b", "8c", "9a", "9b", "9c",
             "10", "11", "12a", "12b", "12c", "12d", "12e", "12f", "12g", "13", "14", "15", "16", "17", "18a", "18b",
             "18c", "18d", "18e", "18f", "19", "20a", "20b", "20c", "21", "22", "23a", "23b", "24", "25", "26", "27a",
             "27b", "27c"]


def test_the_checklist_has_every_item_of_the_statement_in_order():
    assert [i for i, _, _ in reporting.ITEMS] == STATEMENT and len(STATEMENT) == 52
    assert len({int(re.match(r"\d+", i).group()) for i in STATEMENT}) == 27


def test_every_page_the_checklist_links_to_is_in_the_book():
    toc = (REPO / "_toc.yml").read_text()
    for href, _ in reporting.PAGES.values():
        name = Path(href).with_suffix("").as_posix().removeprefix("../")
        target = name if name.startswith(("book/", "data_manifest/")) else f"notebooks/{name}"
        assert f"file: {target}" in toc or f"root: {target}" in toc, href


def _facts(cohort, external=None, subgroups=None):
    summary = pd.DataFrame([
        {"model": "lab_rf", "status": "ran", "auroc_mean": 0.61, "auroc_sd": 0.02, "auroc_ci_low": 0.5,
         "auroc_ci_high": 0.7, "auprc_mean": 0.5, "auprc_ci_low": 0.4, "auprc_ci_high": 0.6, "n_repeats": 2,
         "c_index": 0.6},
        {"model": "pet_cnn", "status": "skipped: the manifest names no PET images"},
    ])
    labelled = sorted(cohort.labelled.index)
    splits = pd.DataFrame({"patient": labelled * 2, "repeat": [0] * len(labelled) + [1] * len(labelled),
                           "fold": [i % 3 for i in range(len(labelled))] * 2})
    ext = ({"patients_labelled": 30, "short": 11, "with_pfs": 32} if external else None)
    return reporting.RunFacts(cohort, get_profile("smoke"), 5, summary, splits, None, ext,
                              subgroups if subgroups is not None else pd.DataFrame(), code="commit abc")


def test_the_answers_carry_the_numbers_of_the_run(small_cohort_dir):
    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    table = reporting.checklist(_facts(cohort)).set_index("item")
    s = cohort.summary()
    assert list(table.index) == STATEMENT and not table["this run"].str.contains("nan").any()
    assert f"{s['labelled']} labelled patients, {s['short_pfs']} with short PFS" in table.loc["10", "this run"]
    n_missing = int(cohort.data[cohort.labs + cohort.clinical].isna().sum().sum())
    assert table.loc["11", "this run"].startswith(f"{n_missing} of ")
    assert table.loc["20a", "this run"] == (f"{s['patients']} patients: {s['short_pfs']} short PFS, {s['long_pfs']} long "
                                             f"PFS, {s['excluded_censored_before_horizon']} censored before the horizon.")
    assert "about 16 training patients per fold" in table.loc["12a", "this run"]  # 24 labelled, 3 folds
    assert ", 8 test patients;" in table.loc["21", "this run"]  # three folds of 8
    assert "1 models ran" in table.loc["12c", "this run"] and "skipped for this manifest or profile: pet_cnn" in \
        table.loc["12c", "this run"]
    assert table.loc["23a", "this run"].startswith("lab_rf: AUROC 0.61 ± 0.02 over 2 repeats, 0.61 (95 % CI 0.50 to 0.70)")
    assert table.loc["20c", "this run"] == "No external cohort in this run." and table.loc["20c", "where in this book"] == "–"
    assert "not applicable: synthetic data" in table.loc["17", "this run"]
    assert table.loc["8a", "this run"].startswith("short PFS = progression or death at or before 12 months")
    # with an external cohort, the items on evaluation data point to chapter 6
    ext = reporting.checklist(_facts(cohort, external=True)).set_index("item")
    assert "06_external_validation.html" in ext.loc["20c", "where in this book"]
    assert "external: 30 labelled patients, 11 short PFS" in ext.loc["21", "this run"]
    assert "Two cohorts" in ext.loc["12d", "this run"]


def test_the_answers_on_kept_weights_and_calibration_follow_the_settings_and_the_results(small_cohort_dir):
    from dataclasses import replace

    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    facts = _facts(cohort)
    smoke = facts.profile  # val_fraction 0.2, the last epoch kept
    table = reporting.checklist(facts).set_index("item")
    assert ("the CNNs train for 2 epochs (batch 8), the neural fusions for 10 (batch 64); each keeps its weights after "
            "its last epoch (no early stopping); 20 % of each fold's training patients form an inner validation part "
            "that does not fit the network and only draws its learning curves;") in table.loc["12c", "this run"]
    assert ("the logistic regressions' L2 penalty is chosen by an inner stratified 3-fold cross-validation of the "
            "training part") in table.loc["12c", "this run"]
    assert "cross-fitted inside the training part" in table.loc["12c", "this run"]  # the smoke profile's branches
    assert "C = 1" in table.loc["12c", "this run"]
    ends = reporting.checklist(replace(facts, profile=replace(smoke, fusion_image_branches="end_to_end")))
    assert "cross-fitted" not in ends.set_index("item").loc["12c", "this run"]
    assert "early stopping on" not in table.loc["12c", "this run"]
    assert ("(for the networks, 20 % of them an inner validation part that does not fit them)"
            in table.loc["21", "this run"])
    # flipped: the epoch of the lowest validation loss is kept
    stop = reporting.checklist(replace(facts, profile=replace(smoke, selection="val_loss"))).set_index("item")
    assert ("each network keeps the weights of the epoch with the lowest loss on an inner validation part (20 % of the "
            "fold's training patients, which do not fit it): early stopping on training patients only"
            in stop.loc["12c", "this run"])
    assert "and chooses the kept epoch)" in stop.loc["21", "this run"]
    # no inner validation part (the demo profile's setting): nothing to stop on, whatever the selection
    none = reporting.checklist(replace(facts, profile=replace(smoke, val_fraction=0.0, selection="val_loss")))
    none = none.set_index("item")
    assert "every training patient fits the network (no inner validation part)" in none.loc["12c", "this run"]
    assert "(all of them fit every model)" in none.loc["21", "this run"]
    # calibration: the headline's Brier score and slope when the summary has them
    assert "Brier" not in table.loc["23a", "this run"]
    summary = facts.summary.assign(brier_mean=[0.2134, np.nan], calibration_slope=[0.712, np.nan],
                                   calibration_in_the_large=[-0.05, np.nan])
    calibrated = reporting.checklist(replace(facts, summary=summary)).set_index("item")
    assert ("; Brier score 0.213, calibration slope 0.71 and calibration-in-the-large -0.05 (means over the repeats)."
            in calibrated.loc["23a", "this run"])
    assert "calibration slope and calibration-in-the-large" in calibrated.loc["12e", "this run"]


def test_the_limitations_and_the_predictors_are_read_from_the_run(small_cohort_dir):
    from dataclasses import replace

    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    facts = _facts(cohort)
    table = reporting.checklist(facts).set_index("item")
    n = len(cohort.labelled)
    assert table.loc["26", "this run"] == (
        f"A small cohort ({n} labelled patients): the 95 % CI of lab_rf's AUROC spans 0.20 (0.50 to 0.70); a single "
        "centre, no external validation in this run; synthetic data: the numbers demonstrate the method, not a "
        "clinical finding.")
    fusion = pd.concat([facts.summary, pd.DataFrame([
        {"model": "lab_pet_ct_fusion", "status": "ran", "auroc_mean": 0.70, "auroc_sd": 0.02, "auroc_ci_low": 0.6,
         "auroc_ci_high": 0.8, "auprc_mean": 0.5, "auprc_ci_low": 0.4, "auprc_ci_high": 0.6, "n_repeats": 2},
        {"model": "pet_features_logreg", "status": "ran", "auroc_mean": 0.75}])], ignore_index=True)
    limits = reporting.checklist(replace(facts, summary=fusion)).set_index("item").loc["26", "this run"]
    assert "lab_pet_ct_fusion's AUROC spans 0.20" in limits
    assert "the fusion's AUROC (0.70) is not above that of the best model without a CNN, pet_features_logreg (0.75)" \
        in limits
    better = fusion.assign(auroc_mean=[0.61, np.nan, 0.8, 0.75])
    assert "(0.80) is above that of" in reporting.checklist(replace(facts, summary=better)).set_index("item").loc[
        "26", "this run"]
    b9 = table.loc["9b", "this run"]
    for lab in cohort.labs:
        assert f"{lab} ({cohort.units.get(lab) or 'no unit given'})" in b9
    assert "resampled to 8 mm voxels, centred on the liver" in b9  # the smoke profile's grid


def test_a_real_cohort_leaves_the_authors_items_to_them(small_cohort_dir, tmp_path):
    doc = yaml.safe_load((small_cohort_dir / "manifest.yaml").read_text())
    doc.update(synthetic=False, table=str(small_cohort_dir / "cohort.csv"), image_root=str(small_cohort_dir))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    table = reporting.checklist(_facts(load_cohort(tmp_path / "m.yaml", check_images="none"))).set_index("item")
    for item in ("17", "18a", "18b", "18d", "19"):
        assert "to be stated by the authors of the study" in table.loc[item, "this run"], item
    assert "not recorded in the data manifest" in table.loc["5b", "this run"]


def test_subgroup_performance_pools_rare_levels_and_needs_both_classes(small_cohort_dir):
    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    lab = cohort.labelled
    ids = list(lab.index)
    # a model that is right in every woman (5 of each class) and random elsewhere; one rare level
    data = cohort.data.copy()
    women = list(lab.index[lab["label"] == 1][:5]) + list(lab.index[lab["label"] == 0][:5])
    data["sex"] = ["F" if p in women else "M" for p in data.index]
    rare = next(p for p in ids if p not in women)
    data.loc[rare, "sex"] = "X"
    cohort.data = data
    rng = np.random.default_rng(0)
    prob = [lab.at[p, "label"] if p in women else rng.uniform() for p in ids]
    pred = pd.DataFrame({"patient": ids, "repeat": 0, "fold": 0, "probability": prob, "label": lab["label"].to_numpy()})
    out = reporting.subgroup_performance(pred, cohort, ["sex"], n_boot=50).set_index("level")
    assert "X" not in out.index and "other (n < 5)" in out.index  # the rare level is pooled
    assert out.loc["F", "auroc"] == 1.0 and (out.loc["F", "patients"], out.loc["F", "short"]) == (10, 5)
    assert out.loc["M", "short"] <= 4 and out.loc["M", "note"].startswith("fewer than 5")  # 9 short in all
    assert out.loc["other (n < 5)", "note"].startswith("fewer than 5") and np.isnan(out.loc["other (n < 5)", "auroc"])
    assert out["patients"].sum() == len(ids)


def test_the_checklist_renders_as_an_html_table_with_its_links(small_cohort_dir):
    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="none")
    html = reporting.checklist_html(reporting.checklist(_facts(cohort)))
    assert html.count("<tr") == 53 and '<a href="01_cohort.html">Chapter 1</a>' in html
