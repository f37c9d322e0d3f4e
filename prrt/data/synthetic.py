"""A synthetic PRRT cohort that mirrors the study's, so that the book runs with no private data.

What is generated
-----------------
* **Cohort**: by default 116 patients, 42 with short PFS (progression at or before 12 months) and 74
  with long PFS, as in the study. Optionally, extra patients censored before the horizon (lost to
  follow-up) exercise the exclusion path; the default has none, as in the study.
* **Table**: age, sex, primary site, grade, Ki-67, number of PRRT cycles, a laboratory panel of 12
  values with units and a few missing values, PFS time and event, image paths.
* **Images** per patient (drawn by :mod:`prrt.data.phantoms`), NIfTI: a contrast-enhanced CT in
  Hounsfield units and an SR-PET in SUV on different grids (different voxel spacings, fields of view and
  axis orientations, each with a proper affine), with body outline, subcutaneous fat, lungs, liver,
  spleen, kidneys, aorta, spine, liver metastases (receptor-positive and, in some, receptor-negative),
  lymph-node metastases and (in some) a primary tumour; physiological
  SSTR uptake in spleen, kidneys and liver; a lesion mask on the PET grid (or the CT grid), and a label
  map of the reference organs (1 liver, 2 spleen, 3 kidneys) on the PET grid for uptake ratios.

Where the signal is
-------------------
Each patient has four independent latent factors, each standard normal:

``z_lab``       biochemical activity: raises chromogranin A (strongly), gamma-GT, alkaline phosphatase
                and LDH, and lowers albumin a little;
``z_pet``       loss of somatostatin-receptor expression: *lowers* lesion SUV (low SSTR expression is a
                known marker of poor response to PRRT); visible on PET only;
``z_ct``        tumour burden: more and larger receptor-positive liver and nodal metastases; visible on
                CT *and* PET;
``z_mismatch``  SSTR-negative ("mismatch") liver metastases: more and larger lesions that are clearly
                hypodense on CT and cold on SR-PET (uptake below the liver background), as in patients
                whose FDG PET shows more disease than their somatostatin-receptor PET (Nilica et al.,
                EJNMMI 2016;43:1585). They lie outside the lesion mask, which holds the receptor-positive
                lesions as a mask drawn on the SR-PET would, so the lesion features cannot see them; the
                images can, CT and PET alike.

The latent risk is ``w_lab * z_lab + w_pet * z_pet + w_ct * z_ct + w_mismatch * z_mismatch``
(weights in :class:`SignalConfig`). Labels come from the risk plus Gaussian noise (``label_noise_sd``):
the ``n_short`` patients with the highest noisy risk have short PFS. Other variables (age, sex, site,
grade, Ki-67 and the other labs) carry no signal, as the study found them similar between groups; the
number of PRRT cycles is lower in short PFS because progression ends treatment early (a consequence, not
a cause).

Achievable bounds
-----------------
No model can rank patients better than the expected risk given what its inputs show. For each input
set (:data:`INPUT_SETS`) the generator reports the **achievable AUROC**: the AUROC, against the
cohort's labels, of ``E[risk | what that set can see]`` (:func:`achievable_aurocs`). An image seen by
a perfect reader shows its latent factors exactly (PET: ``z_pet``, ``z_ct``, ``z_mismatch``; CT:
``z_ct``, ``z_mismatch``; the lesion features: ``z_pet``, ``z_ct``); the laboratory values show
``z_lab`` only through their noise, so the laboratory part is the posterior mean of ``z_lab`` given
the observed values (:func:`lab_posterior`). Because the labels carry noise, even the full set stays
well below 1. The bound holds in expectation: on one cohort of 116 patients a model may land a little
above it by chance, and a real model, which reads voxels instead of latent factors, lands below.
:func:`achievable_intervals` gives each bound a 95 % bootstrap interval over the labelled patients
(how much it would move on another 116 patients like these).
:func:`exact_parameters` gives each patient's lesion parameters without drawing images, for checking
the bounds with models fitted on them.

Everything is deterministic for a seed: each patient draws from its own random stream
(``numpy.random.SeedSequence(seed).spawn``), so results do not depend on the number of workers.

:func:`generate` writes the cohort into a folder (``cohort.csv``, ``manifest.yaml``, ``images/``, ``truth.csv``
with the latent factors and lesion parameters, never a model input, and ``synthetic_report.json`` with the
achievable AUROCs);
:func:`manifest_dict` and :func:`write_manifest` make its manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..profiles import DEFAULT_SEED
from .phantoms import (
    GEOMETRIES,
    draw_phantom,
    lesion_parameters,
    map_jobs,
    patient_images,
)


@dataclass(frozen=True)
class SignalConfig:
    """How much of the latent risk each factor carries (see the module docstring).

    Chosen so that, over 300 seeds of the default cohort (medians), the laboratory values reach an
    achievable AUROC of 0.65 (the study's laboratory Random Forest reached 0.59), the lesion features 0.69,
    CT 0.89 and labs + SR-PET + CT 0.93, 0.19 above labs + lesion features; and so that on the demo
    seed the laboratory Random Forest stays near the study's while the images hold signal of their own
    (benchmarks/DESIGN.md says how they were chosen).
    """

    w_lab: float = 0.6
    w_pet: float = 0.3
    w_ct: float = 0.6
    w_mismatch: float = 1.2
    label_noise_sd: float = 0.7


#: The latent factors, in the order of :class:`SignalConfig`'s weights.
LATENTS = ("lab", "pet", "ct", "mismatch")

#: Input set -> the latent factors it shows (``lab``: through the noisy laboratory values).
INPUT_SETS = {
    "lab": ("lab",),
    "pet_features": ("pet", "ct"),
    "lab_pet_features": ("lab", "pet", "ct"),
    "pet": ("pet", "ct", "mismatch"),
    "ct": ("ct", "mismatch"),
    "pet_ct": ("pet", "ct", "mismatch"),
    "lab_pet": ("lab", "pet", "ct", "mismatch"),
    "lab_ct": ("lab", "ct", "mismatch"),
    "lab_pet_ct": ("lab", "pet", "ct", "mismatch"),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    ``n_short`` / ``n_long``: patients with short / long PFS at ``horizon_months``;
    ``n_censored_before_horizon``: extra patients lost to follow-up before the horizon (no label);
    ``missing_fraction``: share of laboratory values left empty; ``geometry``: ``"standard"`` or
    ``"small"``; ``mask_grid``: ``"pet"`` or ``"ct"``; ``pet_scale``: a site's SUV calibration factor,
    every PET voxel is multiplied by it (1: calibrated; a second site with 0.7 reads 30 % low, as a
    scanner with a miscalibrated dose calibrator or a wrong patient weight would), for external
    validation under a shift; ``pet_fwhm_mm``: the PET's resolution (full width at half maximum; None:
    the geometry's), a coarser one lowers the SUVs of small lesions (partial volume), as an older
    scanner or another reconstruction does; ``name``: the cohort's name in its manifest.
    """

    n_short: int = 42
    n_long: int = 74
    n_censored_before_horizon: int = 0
    horizon_months: float = 12.0
    missing_fraction: float = 0.03
    geometry: str = "standard"
    mask_grid: str = "pet"
    pet_scale: float = 1.0
    pet_fwhm_mm: float | None = None
    name: str = "synthetic-demo"
    signal: SignalConfig = field(default_factory=SignalConfig)

    @classmethod
    def for_size(cls, n_patients: int, **kw) -> SyntheticConfig:
        """A cohort of ``n_patients`` labelled patients with the study's 42/116 short-PFS share."""
        n_short = int(round(n_patients * 42 / 116))
        return cls(n_short=n_short, n_long=n_patients - n_short, **kw)


# laboratory panel: name -> (unit, median, log-sd or sd, loading on z_lab, distribution)
LAB_PANEL = {
    "chromogranin_a": ("ng/mL", 180.0, 1.1, 0.85, "lognormal"),
    "ggt": ("U/L", 42.0, 0.75, 0.65, "lognormal"),
    "alkaline_phosphatase": ("U/L", 95.0, 0.40, 0.35, "lognormal"),
    "ast": ("U/L", 27.0, 0.35, 0.15, "lognormal"),
    "alt": ("U/L", 24.0, 0.40, 0.0, "lognormal"),
    "bilirubin": ("mg/dL", 0.6, 0.40, 0.0, "lognormal"),
    "albumin": ("g/dL", 4.1, 0.40, -0.2, "normal"),
    "creatinine": ("mg/dL", 0.9, 0.25, 0.0, "lognormal"),
    "haemoglobin": ("g/dL", 12.9, 1.4, 0.0, "normal"),
    "leukocytes": ("10^9/L", 6.4, 0.30, 0.0, "lognormal"),
    "platelets": ("10^9/L", 240.0, 0.30, 0.0, "lognormal"),
    "ldh": ("U/L", 210.0, 0.30, 0.30, "lognormal"),
}
CLINICAL = ["age", "sex", "primary_site", "grade", "ki67_percent", "prrt_cycles"]
UNITS = {**{k: v[0] for k, v in LAB_PANEL.items()}, "age": "years", "ki67_percent": "%",
         "prrt_cycles": "cycles"}
PRIMARY_SITES = (["small intestine", "pancreas", "lung", "unknown primary", "other"],
                 [0.38, 0.34, 0.08, 0.12, 0.08])


# ---- cohort-level draws ---------------------------------------------------------------------
def _auroc(score, label) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(label, score))


def _cohort_table(cfg: SyntheticConfig, rng: np.random.Generator, mismatch_rng: np.random.Generator):
    n_lab = cfg.n_short + cfg.n_long
    n = n_lab + cfg.n_censored_before_horizon
    s = cfg.signal
    # z_lab, z_pet, z_ct; z_mismatch from a stream of its own, so that adding it left every other draw
    # (and so the laboratory table) as it was before it existed
    z = np.column_stack([rng.standard_normal((n, 3)), mismatch_rng.standard_normal(n)])
    risk = z @ _weights(s)
    noisy = risk + s.label_noise_sd * rng.standard_normal(n)
    label = np.full(n, np.nan)
    order = np.argsort(-noisy[:n_lab])
    label[:n_lab] = 0.0
    label[order[: cfg.n_short]] = 1.0
    # PFS times consistent with the labels
    h = cfg.horizon_months
    time = np.empty(n)
    event = np.empty(n, dtype=int)
    short = label == 1
    long_ = label == 0
    time[short] = rng.uniform(1.5, h, short.sum())
    event[short] = 1
    time[long_] = h + rng.exponential(16.0, long_.sum()) + 0.1
    event[long_] = (rng.uniform(size=long_.sum()) < 0.65).astype(int)
    cens = np.isnan(label)
    time[cens] = rng.uniform(2.0, h - 0.5, cens.sum())
    event[cens] = 0
    time = np.round(time, 1)
    time[short] = np.minimum(time[short], h)
    time[long_] = np.maximum(time[long_], h + 0.1)

    # identifiers that look like a hospital's, so that pseudonymisation is exercised
    ids = [f"SYN-{v:06X}" for v in rng.choice(16**6, size=n, replace=False)]
    sex = rng.choice(["F", "M"], size=n, p=[0.45, 0.55])
    age = np.clip(np.round(rng.normal(62, 11, n)), 25, 88).astype(int)
    site = rng.choice(PRIMARY_SITES[0], size=n, p=PRIMARY_SITES[1])
    grade = rng.choice(["G1", "G2", "G3"], size=n, p=[0.30, 0.60, 0.10])
    ki67 = np.where(grade == "G1", rng.uniform(0.5, 2.9, n),
                    np.where(grade == "G2", rng.uniform(3, 20, n), rng.uniform(21, 35, n)))
    ki67 = np.round(ki67, 1)
    # PRRT cycles: progression ends treatment early (a consequence of short PFS)
    cycles = np.where(short, rng.choice([1, 2, 3, 4], size=n, p=[0.10, 0.30, 0.30, 0.30]),
                      rng.choice([2, 3, 4, 5], size=n, p=[0.04, 0.10, 0.76, 0.10]))
    table = pd.DataFrame({
        "patient_id": ids, "age": age, "sex": sex, "primary_site": site, "grade": grade,
        "ki67_percent": ki67, "prrt_cycles": cycles,
    })
    for name, (unit, median, spread, loading, dist) in LAB_PANEL.items():
        e = np.sqrt(1 - loading**2) * rng.standard_normal(n)
        u = loading * z[:, 0] + e
        if dist == "lognormal":
            v = median * np.exp(spread * u)
        else:
            v = median + spread * u
            if name == "haemoglobin":
                v = v + np.where(sex == "M", 0.8, -0.8)
        digits = 2 if median < 10 else 1 if median < 100 else 0
        v = np.round(v, digits)
        v[rng.uniform(size=n) < cfg.missing_fraction] = np.nan
        table[name] = v
    table["pfs_months"] = time
    table["progressed"] = event
    truth = pd.DataFrame({"patient_id": ids, **{f"z_{k}": z[:, i] for i, k in enumerate(LATENTS)},
                          "latent_risk": risk, "short_pfs": label})
    return table, truth


def _weights(s: SignalConfig) -> np.ndarray:
    return np.array([s.w_lab, s.w_pet, s.w_ct, s.w_mismatch])


def lab_posterior(table: pd.DataFrame) -> np.ndarray:
    """``E[z_lab | the observed laboratory values]`` of every row of a synthetic cohort table.

    Each value is ``loading * z_lab + sqrt(1 - loading**2) * e`` on its own scale (log for the
    lognormal ones, see :data:`LAB_PANEL`), so the posterior mean of the standard-normal ``z_lab`` is
    ``sum(l_i u_i / (1 - l_i**2)) / (1 + sum(l_i**2 / (1 - l_i**2)))`` over the observed values with a
    loading (missing values leave their terms out; rounding to the table's digits is ignored).
    """
    num = np.zeros(len(table))
    den = np.ones(len(table))
    for name, (_, median, spread, loading, dist) in LAB_PANEL.items():
        if loading == 0:
            continue
        v = table[name].to_numpy(float)
        u = np.log(v / median) / spread if dist == "lognormal" else (v - median) / spread
        seen = np.isfinite(u)
        num[seen] += loading * u[seen] / (1 - loading**2)
        den[seen] += loading**2 / (1 - loading**2)
    return num / den


def latent_views(table: pd.DataFrame, truth: pd.DataFrame) -> dict[str, np.ndarray]:
    """What each latent factor shows a perfect reader, per patient: ``z_pet``, ``z_ct``, ``z_mismatch`` as they
    are, ``lab`` through :func:`lab_posterior` (what the laboratory values reveal of ``z_lab``)."""
    return {k: lab_posterior(table) if k == "lab" else truth[f"z_{k}"].to_numpy(float) for k in LATENTS}


def expected_risk(views: dict[str, np.ndarray], signal: SignalConfig, sees) -> np.ndarray:
    """``E[latent risk | the latent factors in sees]`` from :func:`latent_views`: unseen factors contribute
    their mean (0)."""
    w = dict(zip(LATENTS, _weights(signal)))
    return sum((w[k] * views[k] for k in sees), np.zeros(len(views[LATENTS[0]])))


def achievable_aurocs(table: pd.DataFrame, truth: pd.DataFrame, signal: SignalConfig) -> dict:
    """The achievable AUROC of every input set (:data:`INPUT_SETS`) on the labelled patients."""
    lab = truth["short_pfs"].notna().to_numpy()
    y = truth.loc[lab, "short_pfs"].to_numpy()
    views = latent_views(table, truth)
    return {name: _auroc(expected_risk(views, signal, sees)[lab], y) for name, sees in INPUT_SETS.items()}


def achievable_intervals(table: pd.DataFrame, truth: pd.DataFrame, signal: SignalConfig, n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95) -> dict:
    """``{input set: [low, high]}``: a percentile bootstrap interval (resampling the labelled patients,
    ``n_boot`` times, from ``seed``) of each achievable AUROC of :func:`achievable_aurocs`."""
    from scipy.stats import rankdata

    lab = truth["short_pfs"].notna().to_numpy()
    y = truth.loc[lab, "short_pfs"].to_numpy().astype(bool)
    views = latent_views(table, truth)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    yb = y[idx]
    n_pos, n_neg = yb.sum(1), (~yb).sum(1)
    ok = (n_pos > 0) & (n_neg > 0)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out = {}
    for name, sees in INPUT_SETS.items():
        ranks = rankdata(expected_risk(views, signal, sees)[lab][idx], axis=1)
        auc = ((ranks * yb).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg).clip(1)
        out[name] = [round(float(v), 4) for v in np.percentile(auc[ok], q)]
    return out


def exact_parameters(seed: int = DEFAULT_SEED, config: SyntheticConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table and the truth (latent factors and :func:`prrt.data.phantoms.lesion_parameters`) that
    :func:`generate` would write for ``seed`` and ``config``, without drawing a single image (fast)."""
    cfg = config or SyntheticConfig()
    table_seq, image_seq, mismatch_seq = np.random.SeedSequence(seed).spawn(3)
    table, truth = _cohort_table(cfg, np.random.default_rng(table_seq), np.random.default_rng(mismatch_seq))
    rows = [lesion_parameters(draw_phantom(np.random.default_rng(sq), zp, zc, zm))
            for sq, zp, zc, zm in zip(image_seq.spawn(len(table)), truth["z_pet"], truth["z_ct"], truth["z_mismatch"])]
    return table, pd.concat([truth, pd.DataFrame(rows)], axis=1)


def generate(out_dir, seed: int = DEFAULT_SEED, config: SyntheticConfig | None = None,
             workers: int | None = None, progress: bool = True) -> dict:
    """Write a synthetic cohort into ``out_dir`` and return its report.

    Files written: ``cohort.csv`` (the table), ``manifest.yaml`` (ready to use),
    ``images/<patient_id>/{ct,pet,lesion_mask,organs}.nii.gz``, ``truth.csv`` (latent factors; never a
    model input) and ``synthetic_report.json`` (configuration, counts and achievable AUROCs).
    """
    cfg = config or SyntheticConfig()
    if cfg.geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)}, not {cfg.geometry!r}")
    if cfg.mask_grid not in ("pet", "ct"):
        raise ValueError(f"mask_grid must be 'pet' or 'ct', not {cfg.mask_grid!r}")
    if min(cfg.n_short, cfg.n_long) < 1:
        raise ValueError("need at least one short-PFS and one long-PFS patient")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    table_seq, image_seq, mismatch_seq = root.spawn(3)
    table, truth = _cohort_table(cfg, np.random.default_rng(table_seq), np.random.default_rng(mismatch_seq))
    geom = GEOMETRIES[cfg.geometry]
    if cfg.pet_fwhm_mm is not None:
        if not cfg.pet_fwhm_mm > 0:
            raise ValueError(f"pet_fwhm_mm must be positive, not {cfg.pet_fwhm_mm!r}")
        geom = replace(geom, pet_fwhm_mm=float(cfg.pet_fwhm_mm))
    seqs = image_seq.spawn(len(table))
    if not cfg.pet_scale > 0:
        raise ValueError(f"pet_scale must be positive, not {cfg.pet_scale!r}")
    jobs = [(out_dir, pid, geom, cfg.mask_grid, sq, zp, zc, zm, cfg.pet_scale)
            for pid, sq, zp, zc, zm in zip(table["patient_id"], seqs, truth["z_pet"], truth["z_ct"], truth["z_mismatch"])]
    results = map_jobs(patient_images, jobs, workers, {"desc": "synthetic patients", "unit": "patient",
                                                       "disable": not progress})
    img = pd.DataFrame(results)
    for col in ["ct_path", "pet_path", "lesion_mask_path", "organ_mask_path"]:
        table[col] = img[col]
    for col in img.columns:
        if not col.endswith("_path"):
            truth[col] = img[col]
    table.to_csv(out_dir / "cohort.csv", index=False)
    truth.to_csv(out_dir / "truth.csv", index=False)

    report = {
        "seed": seed,
        "config": asdict(cfg),
        "n_patients": len(table),
        "n_short_pfs": int((truth["short_pfs"] == 1).sum()),
        "n_long_pfs": int((truth["short_pfs"] == 0).sum()),
        "n_censored_before_horizon": int(truth["short_pfs"].isna().sum()),
        "censoring_note": ("patients lost to follow-up before the horizon (no label); excluded from the "
                           "binary task, kept for survival analyses") if cfg.n_censored_before_horizon else
                          "none: as in the study, every patient has a label",
        "achievable_auroc": achievable_aurocs(table, truth, cfg.signal),
        "achievable_auroc_interval": achievable_intervals(table, truth, cfg.signal),
        "input_sets": {name: list(sees) for name, sees in INPUT_SETS.items()},
        "geometry": asdict(geom),
    }
    (out_dir / "synthetic_report.json").write_text(json.dumps(report, indent=2))
    write_manifest(out_dir / "manifest.yaml", table_rel="cohort.csv", image_root=".", cfg=cfg)
    return report


def manifest_dict(table_rel: str, image_root: str, cfg: SyntheticConfig | None = None,
                  ct_pretraining: str | None = None) -> dict:
    """The manifest of a synthetic cohort; ``ct_pretraining``: the folder of its unlabelled CT collection."""
    cfg = cfg or SyntheticConfig()
    doc = {
        "name": cfg.name,
        "description": "Synthetic PRRT cohort made by prrt.synthetic (no real patient data)."
                       + (f" Its SR-PET reads {cfg.pet_scale:g} times the true SUV (a site shift)."
                          if cfg.pet_scale != 1 else ""),
        "synthetic": True,
        "table": table_rel,
        "image_root": image_root,
        "id": "patient_id",
        "endpoint": {"time": "pfs_months", "event": "progressed", "horizon_months": cfg.horizon_months},
        "images": {"ct": "ct_path", "pet": "pet_path", "mask": "lesion_mask_path", "organs": "organ_mask_path"},
        "labs": list(LAB_PANEL),
        "clinical": list(CLINICAL),
        "units": dict(UNITS),
    }
    if ct_pretraining:
        doc["ct_pretraining"] = {"data": ct_pretraining}
    return doc


def write_manifest(path, table_rel: str, image_root: str, cfg: SyntheticConfig | None = None,
                   ct_pretraining: str | None = None) -> Path:
    import yaml

    path = Path(path)
    text = "# Synthetic PRRT cohort written by `prrt demo-data`; see data_manifest/README.md\n"
    text += yaml.safe_dump(manifest_dict(table_rel, image_root, cfg, ct_pretraining), sort_keys=False)
    path.write_text(text)
    return path


# ---- checking the bounds with models fitted on the exact parameters -----------------------------------
_PET_FEATURE_PARAMETERS = ["lesion_suv", "n_lesions", "tumour_volume_ml"]
_MISMATCH_PARAMETERS = ["n_mismatch_lesions", "mismatch_volume_ml"]
#: Input set -> the exact per-patient parameters (columns of ``truth.csv``, or the laboratory values) that
#: show its latent factors: what a perfect reader of those inputs would measure.
EXACT_PARAMETERS = {
    "lab": list(LAB_PANEL),
    "pet_features": _PET_FEATURE_PARAMETERS,
    "lab_pet_features": list(LAB_PANEL) + _PET_FEATURE_PARAMETERS,
    "pet": _PET_FEATURE_PARAMETERS + _MISMATCH_PARAMETERS,
    "ct": ["n_lesions", "tumour_volume_ml"] + _MISMATCH_PARAMETERS,
    "pet_ct": _PET_FEATURE_PARAMETERS + _MISMATCH_PARAMETERS,
    "lab_pet": list(LAB_PANEL) + _PET_FEATURE_PARAMETERS + _MISMATCH_PARAMETERS,
    "lab_ct": list(LAB_PANEL) + ["n_lesions", "tumour_volume_ml"] + _MISMATCH_PARAMETERS,
    "lab_pet_ct": list(LAB_PANEL) + _PET_FEATURE_PARAMETERS + _MISMATCH_PARAMETERS,
}


def exact_parameter_table(table: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Every exact parameter of :data:`EXACT_PARAMETERS` per patient (index: ``patient_id``), on the scale
    on which it acts: the lognormal laboratory values, volumes and counts as logarithms (``log1p``)."""
    t = table.set_index("patient_id")
    out = pd.DataFrame(index=t.index)
    for name, (_, _, _, _, dist) in LAB_PANEL.items():
        out[name] = np.log(t[name]) if dist == "lognormal" else t[name]
    tr = truth.set_index("patient_id")
    for col in dict.fromkeys(_PET_FEATURE_PARAMETERS + _MISMATCH_PARAMETERS):
        out[col] = tr[col] if col == "lesion_suv" else np.log1p(tr[col])
    return out


def exact_parameter_aurocs(table: pd.DataFrame, truth: pd.DataFrame, folds) -> dict:
    """Cross-validated AUROC of a logistic regression fitted on each input set's exact parameters.

    ``folds``: ``(repeat, training patient IDs, test patient IDs)`` of a repeated cross-validation (the
    book's own splits). Missing laboratory values are imputed with the training patients' medians and
    every parameter is standardised on them. Returns ``{input set: mean over repeats of the AUROC of the
    pooled out-of-fold predictions}`` (as the book summarises a model), to set beside
    :func:`achievable_aurocs`.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = exact_parameter_table(table, truth)
    y = truth.set_index("patient_id")["short_pfs"]
    folds = list(folds)
    out = {}
    for name, cols in EXACT_PARAMETERS.items():
        predictions: dict[int, pd.Series] = {}
        for repeat, train, test in folds:
            model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=1000))
            model.fit(x.loc[list(train), cols], y[list(train)].astype(int))
            p = pd.Series(model.predict_proba(x.loc[list(test), cols])[:, 1], index=list(test))
            predictions[repeat] = pd.concat([predictions.get(repeat, pd.Series(dtype=float)), p])
        out[name] = float(np.mean([_auroc(p.to_numpy(), y[p.index].to_numpy()) for p in predictions.values()]))
    return out
