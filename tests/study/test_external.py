"""External validation (prrt.data.external, prrt.evaluation.external, prrt.study.ch06_external): the two
cohorts as one, the external design, B's numbers, and what a shifted second site does to the frozen models."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml

from prrt import profiles
from prrt.data import external as data_external
from prrt.data.external import check_compatible
from prrt.data.load import load_cohort
from prrt.data.manifest import ManifestError
from prrt.data.synthetic import SignalConfig, SyntheticConfig, generate
from prrt.evaluation import external
from prrt.evaluation import splits as splits_
from prrt.evaluation.splits import TRAINING_ONLY, iter_folds
from prrt.learn import base, loop, tabular
from prrt.study import ch02_labs, ch06_external


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Development site A (seed 1, 80 labelled), second site B (seed 2, 60 labelled) and the same patients of B
    scanned at a coarser PET resolution (14 mm FWHM instead of 7: partial volume lowers small lesions' SUV). Their
    risk lies in the laboratory values and the receptor expression (lesion SUV), which the feature models can learn
    from 80 patients; the default cohort puts most of it in what only the images show."""
    root = tmp_path_factory.mktemp("sites")
    signal = SignalConfig(w_lab=0.7, w_pet=0.8, w_ct=0.6, w_mismatch=0.0, label_noise_sd=0.8)
    for name, seed, n, fwhm in (("A", 1, 80, None), ("B", 2, 60, None), ("B_coarse", 2, 60, 14.0)):
        generate(root / name, seed=seed, workers=1, progress=False,
                 config=SyntheticConfig.for_size(n, geometry="small", pet_fwhm_mm=fwhm, name=f"site-{name}",
                                                 signal=signal))
    return root


def _cohorts(sites, b="B"):
    return (load_cohort(sites / "A" / "manifest.yaml", check_images="exists"),
            load_cohort(sites / b / "manifest.yaml", check_images="exists"))


def test_the_two_cohorts_become_one_with_the_external_patients_under_their_own_pseudonyms(sites):
    a, b = _cohorts(sites)
    merged, ext = data_external.merge_cohorts(a, b)
    assert len(ext) == b.n_patients and all(re.fullmatch(r"E\d{3}", p) for p in ext)
    assert merged.n_patients == a.n_patients + b.n_patients and merged.data.index.is_unique
    assert list(merged.data.columns) == list(a.data.columns) and merged.labs == a.labs
    # each external patient keeps their own label and images, and their ID stays private in the mapping
    ids = merged.pseudonym_of_id()
    for pid, own in b.pseudonym_of_id().items():
        new = ids[pid]
        assert new in ext
        assert merged.data.at[new, "label"] == b.data.at[own, "label"] or np.isnan(b.data.at[own, "label"])
        assert merged.data.at[new, "pet_path"] == b.data.at[own, "pet_path"]
    assert merged.data.loc[a.data.index, "label"].equals(a.data["label"])
    assert merged.name == "site-A + site-B"


def test_the_external_design_tests_the_second_cohort_once_and_trains_on_all_of_the_first(sites):
    merged, ext = data_external.merge_cohorts(*_cohorts(sites))
    splits = splits_.external_splits(merged, ext)
    folds = list(iter_folds(splits))
    assert len(folds) == 1
    labelled = set(merged.labelled.index)
    assert set(folds[0].test) == labelled & set(ext)
    assert set(folds[0].train) == labelled - set(ext) and len(folds[0].train) == 80
    assert set(splits.loc[splits["fold"] == TRAINING_ONLY, "patient"]) == set(folds[0].train)
    with pytest.raises(ValueError, match="both cohorts"):
        splits_.external_splits(merged, [])


@pytest.mark.parametrize("change, column, words", [
    (lambda d: d["units"].update(ggt="µkat/L"), "ggt", "unit 'µkat/L' differs from the development cohort's 'U/L'"),
    (lambda d: d["labs"].remove("ldh"), "ldh", "a laboratory value the development cohort's models use"),
    (lambda d: d["clinical"].remove("prrt_cycles"), "prrt_cycles", "a numeric clinical variable"),
    (lambda d: d["endpoint"].update(horizon_months=24), None, "PFS at 24 months, the development cohort's is PFS at 12"),
    (lambda d: d["images"].pop("pet"), "images.pet", "the development cohort's models use pet images"),
])
def test_a_second_cohort_that_does_not_fit_the_models_is_refused_naming_the_column(sites, tmp_path, change, column,
                                                                                    words):
    doc = yaml.safe_load((sites / "B" / "manifest.yaml").read_text())
    doc["table"], doc["image_root"] = str(sites / "B" / "cohort.csv"), str(sites / "B")
    change(doc)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc))
    a = load_cohort(sites / "A" / "manifest.yaml", check_images="none")
    b = load_cohort(tmp_path / "b.yaml", check_images="none")
    problems = check_compatible(a, b)
    assert any(words in p.message and p.column == column for p in problems), [str(p) for p in problems]
    with pytest.raises(ManifestError, match=re.escape(words)):
        data_external.merge_cohorts(a, b)


def test_a_second_cohort_that_shares_patients_or_has_one_class_is_refused(sites):
    a, b = _cohorts(sites)
    assert [p.column for p in check_compatible(a, a)] == ["id"]  # every patient in both
    one_class = replace(b, data=b.data.assign(label=b.data["label"].where(b.data["label"] != 1)))
    assert [p.column for p in check_compatible(a, one_class)] == ["endpoint"]
    assert check_compatible(a, b) == []


def _predictions(p, y, patients=None):
    patients = patients or [f"E{i:03d}" for i in range(len(y))]
    return pd.DataFrame({"patient": patients, "repeat": 0, "fold": 0, "probability": p, "label": y})


def test_external_metrics_measure_discrimination_and_calibration():
    rng = np.random.default_rng(0)
    n = 400
    risk = rng.normal(size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-risk))).astype(int)
    data = pd.DataFrame({"label": y, "pfs_months": np.nan, "event": np.nan},
                        index=[f"E{i:03d}" for i in range(n)])
    cohort = type("C", (), {"has_survival": False, "data": data})()
    ext = list(data.index)
    right = external.external_metrics(_predictions(1 / (1 + np.exp(-risk)), y), cohort, ext, n_boot=200)
    # a well-calibrated model: intercept near 0, slope near 1, each inside its CI
    assert abs(right["calibration_in_the_large"]) < 0.25 and abs(right["calibration_slope"] - 1) < 0.25
    assert right["calibration_slope_ci_low"] < 1 < right["calibration_slope_ci_high"]
    assert right["auroc_ci_low"] < right["auroc"] < right["auroc_ci_high"] and right["n_patients"] == n
    # the same ranking predicting too high a risk (logit + 1) and too extreme (logit x 2)
    high = external.external_metrics(_predictions(1 / (1 + np.exp(-risk - 1)), y), cohort, ext, n_boot=200)
    assert high["auroc"] == pytest.approx(right["auroc"]) and high["calibration_in_the_large"] < -0.7
    steep = external.external_metrics(_predictions(1 / (1 + np.exp(-2 * risk)), y), cohort, ext, n_boot=200)
    assert steep["calibration_slope"] == pytest.approx(right["calibration_slope"] / 2, rel=0.05)
    assert np.isnan(right["c_index"])  # no PFS times: no C-index
    # patients who are not of the external cohort are left out
    other = _predictions([0.9, 0.1], [0, 1], patients=["P001", "P002"])
    both = external.external_metrics(pd.concat([_predictions(1 / (1 + np.exp(-risk)), y), other]), cohort, ext,
                                     n_boot=200)
    assert both["auroc"] == right["auroc"] and both["n_patients"] == n


def test_the_c_index_interval_covers_the_estimate_and_narrows_with_more_patients():
    rng = np.random.default_rng(1)

    def width(n):
        risk = rng.normal(size=n)
        time = rng.exponential(np.exp(-risk))
        event = rng.uniform(size=n) < 0.7
        lo, hi = external.c_index_ci(time, event, risk, n_boot=300, seed=2)
        from prrt.evaluation.metrics import c_index

        assert lo < c_index(time, event, risk) < hi
        return hi - lo

    assert width(400) < width(40)


def _fit_and_predict(sites, b, run_dir, flip_external_labels=False):
    """Chapter 02's tabular models fitted on all of A, predicting B (the path of validate_externally)."""
    a, bc = _cohorts(sites, b)
    merged, ext = data_external.merge_cohorts(a, bc)
    if flip_external_labels:
        lab = merged.data["label"].copy()
        lab[ext] = 1 - lab[ext]
        merged = replace(merged, data=merged.data.assign(label=lab))
    profile = profiles.get_profile("smoke")
    pet = ch06_external.features_of(merged, list(merged.data.index), progress=False)
    specs = [replace(s, permutation_repeats=0) for s in ch02_labs.lab_chapter_specs(merged, pet, profile) if s.build]
    data = base.ModelData(merged.data["label"], table=tabular.feature_table(merged, pet))
    results, _ = loop.run_models(specs, data, merged, splits_.external_splits(merged, ext), profile, 3, run_dir,
                                   progress=False)
    return merged, ext, results


@pytest.fixture(scope="module")
def site_b(sites, tmp_path_factory):
    """The models fitted on all of A and their predictions of B, shared by the tests that read them unchanged."""
    return _fit_and_predict(sites, "B", tmp_path_factory.mktemp("site_b"))


def test_the_frozen_models_never_see_the_external_labels(sites, site_b, tmp_path):
    """Flipping every label of B changes none of B's predictions: nothing of B reaches a model before it predicts."""
    _, ext, before = site_b
    _, _, after = _fit_and_predict(sites, "B", tmp_path / "2", flip_external_labels=True)
    for name, res in before.items():
        p0 = res.predictions.set_index("patient").loc[ext, "probability"]
        p1 = after[name].predictions.set_index("patient").loc[ext, "probability"]
        assert np.array_equal(p0.to_numpy(), p1.to_numpy()), name


def test_a_coarser_pet_at_the_second_site_shows_as_miscalibration_of_the_pet_models_only(sites, site_b, tmp_path):
    """The same patients of site B with a 14 mm instead of a 7 mm PET: the laboratory models predict exactly as
    before; the SR-PET feature models, which learnt that a low lesion SUV (low receptor expression) means early
    progression, read the blurred lesions' lower SUVs as higher risk: their mean predicted risk rises and their
    calibration-in-the-large falls. (Site B's own numbers are what chapter 06 reports; this compares them.)"""
    merged, ext, sharp = site_b
    merged_c, ext_c, coarse = _fit_and_predict(sites, "B_coarse", tmp_path / "coarse")
    m = {name: external.external_metrics(r.predictions, merged, ext, n_boot=100) for name, r in sharp.items()}
    mc = {name: external.external_metrics(r.predictions, merged_c, ext_c, n_boot=100) for name, r in coarse.items()}

    def risk(res, cohort, patients):  # by patient ID: the two cohorts' pseudonyms differ (they hash the name)
        ids = {ps: pid for pid, ps in cohort.pseudonym_of_id().items()}
        p = res.predictions.set_index("patient").loc[patients, "probability"]
        return p.rename(index=ids).sort_index()

    for name in ("lab_rf", "lab_logreg"):
        assert risk(coarse[name], merged_c, ext_c).equals(risk(sharp[name], merged, ext))
        assert mc[name]["auroc"] == pytest.approx(m[name]["auroc"])
    for name in ("pet_features_rf", "pet_features_logreg"):
        assert risk(coarse[name], merged_c, ext_c).mean() > risk(sharp[name], merged, ext).mean() + 0.03, name
        assert mc[name]["calibration_in_the_large"] < m[name]["calibration_in_the_large"] - 0.2, name


def test_the_tables_for_the_book():
    metrics = pd.DataFrame([{"model": "lab_rf", "inputs": "labs", **{k: 0.5 for k in (
        "auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high", "c_index",
        "c_index_ci_low", "c_index_ci_high", "calibration_in_the_large", "calibration_in_the_large_ci_low",
        "calibration_in_the_large_ci_high", "calibration_slope", "calibration_slope_ci_low",
        "calibration_slope_ci_high")}}])
    metrics.loc[0, ["auroc", "auroc_ci_low", "auroc_ci_high"]] = [0.61, 0.52, 0.7]
    metrics.loc[0, "c_index"] = np.nan
    shown = ch06_external.format_external(metrics)
    assert shown.loc["lab_rf", "AUROC"] == "0.61 (0.52, 0.70)" and shown.loc["lab_rf", "C-index"] == "–"
    metrics.loc[0, "calibration_in_the_large"] = -0.001
    assert ch06_external.format_external(metrics).loc["lab_rf", "calibration-in-the-large"].startswith("0.00 (")
    dev = pd.DataFrame([{"model": "lab_rf", "inputs": "labs", "auroc_mean": 0.7, "auprc_mean": 0.6, "c_index": 0.65}])
    comp = external.comparison_table(dev, metrics)
    assert comp.loc[0, "auroc_change"] == pytest.approx(-0.09) and comp.loc[0, "auprc_change"] == pytest.approx(-0.1)
    assert ch06_external.format_comparison(comp).loc["lab_rf", "AUROC change"] == "-0.090"
    assert "reads as" not in ch06_external.format_comparison(comp)
    # the development AUROC 0.70 lies inside B's interval 0.52 to 0.70: within noise; above it: a drop
    assert ch06_external.format_comparison(comp, metrics).loc["lab_rf", "reads as"] == "within noise"
    assert ch06_external.change_word(0.71, 0.52, 0.70) == "drop" and ch06_external.change_word(0.5, 0.52, 0.7) == "gain"
    assert ch06_external.change_reading(0.75, 0.52, 0.70) == (
        "a drop: the development AUROC (0.75) lies above the external 95 % CI (0.52 to 0.70)")
    assert ch06_external.change_reading(0.6, 0.52, 0.70) == (
        "within noise: the development AUROC (0.60) lies inside the external 95 % CI (0.52 to 0.70), so this cohort "
        "cannot tell the two apart")


def test_the_external_design_fits_on_every_development_patient_unless_an_inner_part_chooses_the_epoch():
    from types import SimpleNamespace

    from prrt.learn import ModelSpec

    specs = [ModelSpec("cnn", "03", "PET", lambda seed: None, val_fraction=0.2),
             ModelSpec("rf", "02", "labs", lambda seed: None), ModelSpec("not_run", "04", "x", lambda seed: None),
             ModelSpec("skipped", "04", "x", None, reason="no")]
    smoke = profiles.get_profile("smoke")
    last = ch06_external.external_specs(specs, {"cnn", "rf", "skipped"}, smoke)
    assert [(s.name, s.val_fraction, s.permutation_repeats) for s in last] == [("cnn", 0.0, 0), ("rf", 0.0, 0)]
    stop = ch06_external.external_specs(specs, {"cnn"}, replace(smoke, selection="val_loss"))
    assert [(s.name, s.val_fraction) for s in stop] == [("cnn", 0.2)]
    # how many fitted: A's labelled patients with the model's inputs, less an inner validation part
    splits = pd.DataFrame({"patient": ["A1", "A2", "A3", "A4", "E1", "E2"], "repeat": 0,
                           "fold": [splits_.TRAINING_ONLY] * 4 + [0, 0]})
    data = base.ModelData(pd.Series(1.0, index=["A1", "A2", "A3", "A4", "E1", "E2"]))
    rf = ModelSpec("rf", "02", "labs", lambda seed: None)
    assert ch06_external.development_fit(rf, data, splits, SimpleNamespace(inner_validation={})) == 4
    assert ch06_external.development_fit(rf, data, splits, SimpleNamespace(inner_validation={(0, 0): ["A2"]})) == 3


def test_the_commands_check_the_second_cohort_before_anything_runs(sites, tmp_path, capsys):
    """`prrt validate B --development A` says whether B fits A's models; `prrt run --validate-on` with a B that does
    not fit exits 2 naming the column, and creates no run folder."""
    from prrt.cli import EXIT_INVALID, main

    a, b = str(sites / "A" / "manifest.yaml"), str(sites / "B" / "manifest.yaml")
    assert main(["validate", b, "--development", a, "--check-images", "none"]) == 0
    assert "fits the models of" in capsys.readouterr().out
    doc = yaml.safe_load((sites / "B" / "manifest.yaml").read_text())
    doc["table"], doc["image_root"] = str(sites / "B" / "cohort.csv"), str(sites / "B")
    doc["units"]["albumin"] = "g/L"
    doc.setdefault("ranges", {})["albumin"] = [0, 100]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(tmp_path / "b.yaml"), "--development", a, "--check-images", "none"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith(f"The external cohort {tmp_path / 'b.yaml'} does not fit the models of {sites / 'A'}")
    assert "column 'albumin', file" in err and "unit 'g/L' differs from the development cohort's 'g/dL'" in err
    run_dir = tmp_path / "run"
    assert main(["run", "--manifest", a, "--validate-on", str(tmp_path / "b.yaml"), "--profile", "smoke",
                 "--run-dir", str(run_dir)]) == EXIT_INVALID
    assert "differs from the development cohort's 'g/dL'" in capsys.readouterr().err and not run_dir.exists()


def test_every_number_of_an_external_row_is_the_one_its_method_gives():
    """Each field of external_metrics equals what its method computes on the external patients only (AUROC,
    AUPRC and Brier score of the one repeat, their stratified bootstrap CIs, calibration by logistic
    recalibration, the C-index over every external patient with a PFS time and its bootstrap CI, the counts);
    and the comparison table subtracts the development cohort's cross-validated means."""
    from prrt.evaluation.calibration import calibration_intercept_slope
    from prrt.evaluation.metrics import (
        bootstrap_ci,
        c_index,
        labelled,
        mean_probability,
        per_repeat_metrics,
    )

    rng = np.random.default_rng(4)
    n = 60
    ids = [f"E{i:03d}" for i in range(n)]
    risk = rng.normal(size=n)
    label = (rng.uniform(size=n) < 1 / (1 + np.exp(-risk))).astype(float)
    label[:6] = np.nan  # censored before the horizon: no label, but a PFS time
    time = np.round(rng.exponential(12, n) + 0.5, 1)
    event = (rng.uniform(size=n) < 0.7).astype(float)
    time[6], event[6] = np.nan, np.nan  # no follow-up recorded
    data = pd.DataFrame({"label": label, "pfs_months": time, "event": event}, index=ids)
    cohort = type("C", (), {"has_survival": True, "data": data})()
    prob = 1 / (1 + np.exp(-0.8 * risk - 0.3))
    pred = pd.DataFrame({"patient": ids, "repeat": 0, "fold": np.where(np.isnan(label), -1, 0), "probability": prob,
                         "label": label})
    other = pd.DataFrame({"patient": ["P001"], "repeat": 0, "fold": 0, "probability": [0.9], "label": [0.0]})
    got = external.external_metrics(pd.concat([pred, other]), cohort, ids, n_boot=150, seed=9)

    lab = labelled(pred)
    m = per_repeat_metrics(pred).iloc[0]
    ci = bootstrap_ci(pred, n_boot=150, seed=9)
    cal = calibration_intercept_slope(lab["label"], lab["probability"])
    r = mean_probability(pred)
    d = data.loc[r.index]
    ok = d["pfs_months"].notna() & d["event"].notna()
    c_lo, c_hi = external.c_index_ci(d.loc[ok, "pfs_months"], d.loc[ok, "event"], r[ok], n_boot=150, seed=9)
    want = {"auroc": m["auroc"], "auroc_ci_low": ci["auroc_ci"][0], "auroc_ci_high": ci["auroc_ci"][1],
            "auprc": m["auprc"], "auprc_ci_low": ci["auprc_ci"][0], "auprc_ci_high": ci["auprc_ci"][1],
            "brier": m["brier"], "n_patients": 54, "n_short": int(lab["label"].sum()),
            "c_index": c_index(d.loc[ok, "pfs_months"], d.loc[ok, "event"], r[ok]), "c_index_ci_low": c_lo,
            "c_index_ci_high": c_hi, "n_patients_survival": 59,
            "calibration_in_the_large": cal["calibration_in_the_large"],
            "calibration_in_the_large_ci_low": cal["calibration_in_the_large_ci"][0],
            "calibration_in_the_large_ci_high": cal["calibration_in_the_large_ci"][1],
            "calibration_slope": cal["calibration_slope"], "calibration_slope_ci_low": cal["calibration_slope_ci"][0],
            "calibration_slope_ci_high": cal["calibration_slope_ci"][1]}
    assert got == pytest.approx(want) and list(got) == list(want)
    assert got["auroc_ci_low"] < got["auroc"] < got["auroc_ci_high"] and got["c_index_ci_low"] < got["c_index_ci_high"]
    # one class among the external patients: refused
    with pytest.raises(ValueError, match="all of one class"):
        external.external_metrics(pred.assign(label=pred["label"].where(pred["label"].isna(), 1.0)), cohort, ids)

    metrics = pd.DataFrame([{"model": "b", **got}, {"model": "a", **{**got, "auroc": 0.5, "auprc": 0.4,
                                                                     "c_index": np.nan}}])
    dev = pd.DataFrame([{"model": "a", "inputs": "labs", "auroc_mean": 0.7, "auprc_mean": 0.6, "c_index": 0.66},
                        {"model": "b", "inputs": "pet", "auroc_mean": 0.55, "auprc_mean": 0.45}])
    comp = external.comparison_table(dev, metrics).set_index("model")
    assert list(comp.index) == ["b", "a"]
    assert comp.loc["a"].to_dict() == pytest.approx({
        "inputs": "labs", "auroc_development": 0.7, "auroc_external": 0.5, "auroc_change": -0.2,
        "auprc_development": 0.6, "auprc_external": 0.4, "auprc_change": -0.2, "c_index_development": 0.66,
        "c_index_external": np.nan}, nan_ok=True)
    assert comp.loc["b", "auroc_change"] == pytest.approx(got["auroc"] - 0.55)
    assert comp.loc["b", "auprc_change"] == pytest.approx(got["auprc"] - 0.45)
    assert np.isnan(comp.loc["b", "c_index_development"]) and comp.loc["b", "inputs"] == "pet"


def test_external_rows_at_the_edges_of_follow_up():
    """No event among the external patients: no C-index (NaN, not an error); one event: a C-index; a patient with an
    event flag but no time is not counted; no PFS at all: 0 patients with follow-up; the seed's default is 0; the
    one-class error says exactly what is wrong; a development summary without C-index gives NaN, not None."""
    rng = np.random.default_rng(2)
    n = 30
    ids = [f"E{i:03d}" for i in range(n)]
    label = np.array([1.0, 0.0] * (n // 2))
    prob = np.clip(label * 0.3 + rng.uniform(0.2, 0.6, n), 0.01, 0.99)
    pred = pd.DataFrame({"patient": ids, "repeat": 0, "fold": 0, "probability": prob, "label": label})

    def cohort(time, event):
        data = pd.DataFrame({"label": label, "pfs_months": time, "event": event}, index=ids)
        return type("C", (), {"has_survival": True, "data": data})()

    time = np.arange(1.0, n + 1)
    none = external.external_metrics(pred, cohort(time, np.zeros(n)), ids, n_boot=50)
    assert np.isnan(none["c_index"]) and none["n_patients_survival"] == 0
    one_event = np.zeros(n)
    one_event[0] = 1.0
    one = external.external_metrics(pred, cohort(time, one_event), ids, n_boot=50)
    assert not np.isnan(one["c_index"]) and one["n_patients_survival"] == n
    no_time = time.copy()
    no_time[1] = np.nan
    events = np.ones(n)
    assert external.external_metrics(pred, cohort(no_time, events), ids, n_boot=50)["n_patients_survival"] == n - 1
    plain = type("C", (), {"has_survival": False,
                           "data": pd.DataFrame({"label": label}, index=ids)})()
    default = external.external_metrics(pred, plain, ids, n_boot=50)
    assert default["n_patients_survival"] == 0 and np.isnan(default["c_index"])
    assert default == pytest.approx(external.external_metrics(pred, plain, ids, n_boot=50, seed=0), nan_ok=True)
    # 1000 bootstrap samples by default (300 patients: the interval moves with one sample more)
    big = pd.DataFrame({"patient": [f"E{i:03d}" for i in range(300)], "repeat": 0, "fold": 0,
                        "probability": rng.uniform(size=300), "label": np.array([1.0, 0.0] * 150)})
    big_cohort = type("C", (), {"has_survival": False, "data": big.set_index("patient")[["label"]]})()
    by_default = external.external_metrics(big, big_cohort, list(big["patient"]))
    assert by_default == pytest.approx(external.external_metrics(big, big_cohort, list(big["patient"]), n_boot=1000,
                                                                 seed=0), nan_ok=True)
    assert by_default != pytest.approx(external.external_metrics(big, big_cohort, list(big["patient"]), n_boot=1001,
                                                                 seed=0), nan_ok=True)
    assert default != pytest.approx(external.external_metrics(pred, plain, ids, n_boot=50, seed=1), nan_ok=True)
    with pytest.raises(ValueError, match="^the external cohort's labelled patients are all of one class$"):
        external.external_metrics(pred.assign(label=1.0), plain, ids)
    dev = pd.DataFrame([{"model": "m", "inputs": "labs", "auroc_mean": 0.7, "auprc_mean": 0.6}])
    comp = external.comparison_table(dev, pd.DataFrame([{"model": "m", **default}]))
    assert np.isnan(comp.loc[0, "c_index_development"])
