"""The synthetic cohort: study-like counts and group differences, geometry, signal, determinism."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prrt.data import phantoms, synthetic
from prrt.data.synthetic import SyntheticConfig, generate


@pytest.fixture(scope="module")
def default_table():
    """The default 116-patient table and truth of the demo seed (no image is drawn)."""
    return synthetic.exact_parameters(synthetic.DEFAULT_SEED)


def test_default_cohort_mirrors_the_study(default_table):
    table, truth = default_table
    assert len(table) == 116
    short = (table["progressed"] == 1) & (table["pfs_months"] <= 12)
    long_ = table["pfs_months"] > 12
    assert short.sum() == 42 and long_.sum() == 74
    assert (truth["short_pfs"] == short.astype(float)).all()
    # higher chromogranin A and gamma-GT, fewer PRRT cycles in short PFS (as in the study)
    for col, alt in [("chromogranin_a", "greater"), ("ggt", "greater"), ("prrt_cycles", "less")]:
        p = stats.mannwhitneyu(table.loc[short, col].dropna(), table.loc[long_, col].dropna(), alternative=alt).pvalue
        assert p < 0.05, (col, p)
    # a few missing laboratory values, none elsewhere
    labs = table[list(synthetic.LAB_PANEL)]
    assert 0 < labs.isna().sum().sum() < 0.1 * labs.size
    assert table[synthetic.CLINICAL + ["pfs_months", "progressed"]].notna().all().all()
    # plausible values
    assert table["age"].between(18, 95).all()
    assert set(table["grade"]) <= {"G1", "G2", "G3"} and set(table["sex"]) == {"F", "M"}
    assert (table.loc[table["grade"] == "G1", "ki67_percent"] < 3).all()
    assert table["albumin"].dropna().between(2, 6).all()


def test_censoring_before_horizon(small_cohort_dir):
    table = pd.read_csv(small_cohort_dir / "cohort.csv")
    report = json.loads((small_cohort_dir / "synthetic_report.json").read_text())
    early = (table["progressed"] == 0) & (table["pfs_months"] <= 12)
    assert early.sum() == report["n_censored_before_horizon"] == 2
    assert "lost to follow-up" in report["censoring_note"]


def test_report_has_the_achievable_auroc_of_every_input_set(small_cohort_dir):
    report = json.loads((small_cohort_dir / "synthetic_report.json").read_text())
    bounds = report["achievable_auroc"]
    assert list(bounds) == list(synthetic.INPUT_SETS) == ["lab", "pet_features", "lab_pet_features", "pet", "ct",
                                                          "pet_ct", "lab_pet", "lab_ct", "lab_pet_ct"]
    # each is the AUROC of the expected risk given what the set shows, against the labels
    from sklearn.metrics import roc_auc_score

    table = pd.read_csv(small_cohort_dir / "cohort.csv")
    truth = pd.read_csv(small_cohort_dir / "truth.csv")
    lab = truth["short_pfs"].notna()
    s = SyntheticConfig().signal
    ct_risk = s.w_ct * truth["z_ct"] + s.w_mismatch * truth["z_mismatch"]
    assert bounds["ct"] == pytest.approx(roc_auc_score(truth.loc[lab, "short_pfs"], ct_risk[lab]))
    lab_risk = s.w_lab * synthetic.lab_posterior(table)
    assert bounds["lab"] == pytest.approx(roc_auc_score(truth.loc[lab, "short_pfs"], lab_risk[lab]))
    assert report["input_sets"]["pet_features"] == ["pet", "ct"]


def test_the_lab_posterior_is_the_conditional_mean_of_z_lab():
    """Regressing z_lab on E[z_lab | labs] gives slope 1 (calibrated) and the correlation the loadings imply."""
    table, truth = synthetic.exact_parameters(3, SyntheticConfig.for_size(3000, missing_fraction=0.0))
    post = synthetic.lab_posterior(table)
    slope = np.polyfit(post, truth["z_lab"], 1)[0]
    assert slope == pytest.approx(1.0, abs=0.06)
    loadings = np.array([v[3] for v in synthetic.LAB_PANEL.values() if v[3] != 0])
    info = (loadings**2 / (1 - loadings**2)).sum()
    assert np.corrcoef(post, truth["z_lab"])[0, 1] == pytest.approx(np.sqrt(info / (1 + info)), abs=0.03)
    # a missing value leaves its term out instead of turning the estimate into NaN
    gappy = table.head(5).copy()
    gappy.loc[gappy.index[0], "chromogranin_a"] = np.nan
    assert np.isfinite(synthetic.lab_posterior(gappy)).all()


def test_the_bounds_are_reproducible_ordered_and_give_the_images_signal_of_their_own(default_table):
    table, truth = default_table
    signal = SyntheticConfig().signal
    bounds = synthetic.achievable_aurocs(table, truth, signal)
    assert bounds == synthetic.achievable_aurocs(*synthetic.exact_parameters(synthetic.DEFAULT_SEED), signal)
    # a set that shows more latent factors than another is bounded at least as high (on the demo cohort)
    sets = synthetic.INPUT_SETS
    for a in sets:
        for b in sets:
            if set(sets[a]) < set(sets[b]):
                assert bounds[b] >= bounds[a], (a, b)
    # the design targets: images see what the lesion features miss; CT alone is informative
    assert bounds["lab_pet_ct"] - bounds["lab_pet_features"] >= 0.05
    assert bounds["ct"] >= 0.70
    assert 0.5 < bounds["lab"] < bounds["lab_pet_features"] < bounds["lab_pet_ct"] < 1


def test_each_bound_has_a_bootstrap_interval_around_it(default_table, small_cohort_dir):
    from sklearn.metrics import roc_auc_score

    table, truth = default_table
    signal = SyntheticConfig().signal
    bounds = synthetic.achievable_aurocs(table, truth, signal)
    intervals = synthetic.achievable_intervals(table, truth, signal)
    assert intervals == synthetic.achievable_intervals(table, truth, signal)  # seeded
    assert list(intervals) == list(bounds)
    for name, (lo, hi) in intervals.items():
        # 116 patients: a standard error of about 0.03-0.045, so an interval of roughly 0.1-0.2
        assert lo < bounds[name] < hi and 0.08 < hi - lo < 0.22, name
    # it is the percentile interval of the AUROC of resampled patients (checked against scikit-learn)
    lab = truth["short_pfs"].notna().to_numpy()
    y = truth.loc[lab, "short_pfs"].to_numpy()
    risk = synthetic.expected_risk(synthetic.latent_views(table, truth), signal, synthetic.INPUT_SETS["ct"])[lab]
    idx = np.random.default_rng(0).integers(0, len(y), size=(300, len(y)))
    ref = np.percentile([roc_auc_score(y[i], risk[i]) for i in idx], [2.5, 97.5])
    assert synthetic.achievable_intervals(table, truth, signal, n_boot=300)["ct"] == pytest.approx(ref, abs=1e-4)
    report = json.loads((small_cohort_dir / "synthetic_report.json").read_text())
    assert list(report["achievable_auroc_interval"]) == list(report["achievable_auroc"])


def test_models_on_the_exact_parameters_land_at_or_below_the_bounds(default_table):
    from prrt.evaluation import iter_folds
    from prrt.evaluation.splits import make_splits

    table, truth = default_table
    labels = truth.set_index("patient_id")["short_pfs"]
    folds = [(f.repeat, f.train, f.test) for f in iter_folds(make_splits(labels, 3, 5, synthetic.DEFAULT_SEED))]
    checked = synthetic.exact_parameter_aurocs(table, truth, folds)
    bounds = synthetic.achievable_aurocs(table, truth, SyntheticConfig().signal)
    assert set(checked) == set(bounds)
    for name, auc in checked.items():
        assert 0.5 < auc <= bounds[name], name


def test_images_have_realistic_distinct_geometry(small_cohort_dir):
    row = pd.read_csv(small_cohort_dir / "cohort.csv").iloc[0]
    ct = nib.load(small_cohort_dir / row["ct_path"])
    pet = nib.load(small_cohort_dir / row["pet_path"])
    mask = nib.load(small_cohort_dir / row["lesion_mask_path"])
    assert not np.allclose(ct.header.get_zooms(), pet.header.get_zooms())
    assert not np.allclose(ct.affine, pet.affine)
    assert np.allclose(mask.affine, pet.affine)  # default: mask on the PET grid
    hu = ct.get_fdata()
    assert hu.min() < -900 and 400 < hu.max() < 3072  # air and bone
    assert ct.get_data_dtype() == np.int16
    suv = pet.get_fdata()
    assert suv.min() >= 0 and 10 < suv.max() < 200


def test_physiological_uptake_order():
    """Spleen > kidneys > liver > soft tissue in SUV; lungs are dark; HU of tissues as expected."""
    rng = np.random.default_rng(0)
    ph = phantoms.draw_phantom(rng, 0.0, 0.0)
    coords, _ = phantoms._axes((80, 80, 64), (4.8, 4.8, 5.0), (0, 0, 0), flip_xy=False)
    suv, _, _ = phantoms._render(coords, ph, 1, "suv")
    hu, _, _ = phantoms._render(coords, ph, 0, "hu")

    def at(name, max_z=1e9):
        c = list(ph["shapes"][name]["c"])
        c[2] = min(c[2], max_z)
        i = [int(np.argmin(np.abs(ax - v))) for ax, v in zip(coords, c)]
        return suv[tuple(i)], hu[tuple(i)]

    spleen, kidney, liver = at("spleen"), at("kidney_r"), at("liver")
    assert spleen[0] > kidney[0] > liver[0] > 1.0
    lung = at("lung_r", max_z=150.0)  # the lung centre may lie above the field of view
    assert lung[1] == -850 and lung[0] < 0.5
    assert 90 <= liver[1] <= 130 and spleen[1] > 0  # a contrast-enhanced CT, portal-venous phase


def test_mismatch_lesions_are_outside_the_mask_hypodense_on_ct_and_cold_on_pet():
    """A receptor-negative liver metastasis: no lesion-mask voxel, no liver label, darker than the liver on both."""
    ph = phantoms.draw_phantom(np.random.default_rng(4), 0.0, 0.0, z_mismatch=2.5)
    assert ph["mismatch"], "a high z_mismatch draws mismatch lesions"
    coords, _ = phantoms._axes((96, 96, 80), (4.0, 4.0, 4.0), ph["shapes"]["liver"]["c"], flip_xy=False)
    suv, mask, any_lesion = phantoms._render(coords, ph, 1, "suv")
    hu, _, _ = phantoms._render(coords, ph, 0, "hu")
    organs = phantoms._organ_labels(coords, ph, any_lesion)
    liver = organs == 1
    liver_suv, liver_hu = np.median(suv[liver]), np.median(hu[liver])
    avid = [les["c"] for les in ph["lesions"]]
    for les in ph["mismatch"]:
        if any(np.linalg.norm(np.subtract(les["c"], c)) < 40 for c in avid):
            continue  # a receptor-positive lesion may cover it
        i = tuple(int(np.argmin(np.abs(ax - v))) for ax, v in zip(coords, les["c"]))
        assert mask[i] == 0 and organs[i] == 0 and any_lesion[i]
        assert suv[i] < 0.5 * liver_suv  # cold: below the liver background
        assert hu[i] < liver_hu - 50  # clearly hypodense


def test_the_new_factor_raises_the_risk_and_draws_more_mismatch_disease(default_table):
    _, truth = default_table
    short = truth["short_pfs"] == 1
    assert truth.loc[short, "z_mismatch"].mean() > truth.loc[~short, "z_mismatch"].mean() + 0.5
    assert stats.spearmanr(truth["z_mismatch"], truth["mismatch_volume_ml"]).statistic > 0.6
    assert stats.spearmanr(truth["z_mismatch"], truth["n_mismatch_lesions"]).statistic > 0.5
    # and nothing of it reaches the receptor-positive lesions that the mask and its features describe
    assert abs(stats.spearmanr(truth["z_mismatch"], truth["tumour_volume_ml"]).statistic) < 0.2


def test_signal_is_where_the_docs_say(tmp_path):
    cfg = SyntheticConfig.for_size(40, geometry="small")
    generate(tmp_path, seed=11, config=cfg, workers=2, progress=False)
    truth = pd.read_csv(tmp_path / "truth.csv")
    # PET: lesion SUV falls with z_pet; burden (CT and PET) grows with z_ct
    assert stats.spearmanr(truth["z_pet"], truth["lesion_suv"]).statistic < -0.5
    assert stats.spearmanr(truth["z_ct"], truth["tumour_volume_ml"]).statistic > 0.3
    table = pd.read_csv(tmp_path / "cohort.csv")
    assert stats.spearmanr(truth["z_lab"], table["chromogranin_a"], nan_policy="omit").statistic > 0.5
    # the lesion mask matches the lesions: more voxels for more burden
    vox = [nib.load(tmp_path / p).get_fdata().sum() for p in table["lesion_mask_path"]]
    assert stats.spearmanr(truth["tumour_volume_ml"], vox).statistic > 0.7


def test_signal_weights_are_configurable():
    strong = SyntheticConfig(signal=synthetic.SignalConfig(w_lab=2.0, w_pet=0.0, w_ct=0.0, w_mismatch=0.0,
                                                           label_noise_sd=0.2))
    table, truth = synthetic.exact_parameters(1, strong)
    from sklearn.metrics import roc_auc_score

    lab = truth["short_pfs"]
    assert roc_auc_score(lab, truth["z_lab"]) > 0.95
    assert abs(roc_auc_score(lab, truth["z_pet"]) - 0.5) < 0.15


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix != ".json":
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(nib.load(f).get_fdata().tobytes() if f.name.endswith(".nii.gz") else f.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    cfg = SyntheticConfig.for_size(6, geometry="small")
    generate(tmp_path / "a", seed=5, config=cfg, workers=1, progress=False)
    generate(tmp_path / "b", seed=5, config=cfg, workers=2, progress=False)
    generate(tmp_path / "c", seed=6, config=cfg, workers=1, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_demo_data_cli_writes_a_valid_manifest(tmp_path, capsys):
    from prrt.cli import main
    from prrt.data.load import load_cohort

    assert main(["demo-data", "--out", str(tmp_path), "--seed", "3", "--n-patients", "8", "--geometry", "small",
                 "--mask-grid", "ct", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "Achievable AUROC" in out and "lab_pet_ct" in out and "3 short PFS, 5 long PFS" in out
    c = load_cohort(tmp_path / "manifest.yaml", check_images="full")
    assert c.synthetic and c.n_patients == 8
    row = pd.read_csv(tmp_path / "cohort.csv").iloc[0]
    assert np.allclose(nib.load(tmp_path / row["lesion_mask_path"]).affine, nib.load(tmp_path / row["ct_path"]).affine)
