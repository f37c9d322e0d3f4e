"""A synthetic PRRT cohort that mirrors the study's, so that the book runs with no private data.

What is generated
-----------------
* **Cohort**: by default 116 patients, 42 with short PFS (progression at or before 12 months) and 74
  with long PFS, as in the study. Optionally, extra patients censored before the horizon (lost to
  follow-up) exercise the exclusion path; the default has none, as in the study.
* **Table**: age, sex, primary site, grade, Ki-67, number of PRRT cycles, a laboratory panel of 12
  values with units and a few missing values, PFS time and event, image paths.
* **Images** per patient (drawn by :mod:`prrt.data.phantoms`), NIfTI: a CT in Hounsfield units and an
  SR-PET in SUV on different grids (different voxel spacings, fields of view and axis orientations,
  each with a proper affine), with body outline, subcutaneous fat, lungs, liver, spleen, kidneys,
  aorta, spine, liver metastases, lymph-node metastases and (in some) a primary tumour; physiological
  SSTR uptake in spleen, kidneys and liver; a lesion mask on the PET grid (or the CT grid), and a label
  map of the reference organs (1 liver, 2 spleen, 3 kidneys) on the PET grid for uptake ratios.

Where the signal is
-------------------
Each patient has three independent latent factors, each standard normal:

``z_lab``  biochemical activity: raises chromogranin A (strongly), gamma-GT, alkaline phosphatase
           and LDH, and lowers albumin a little;
``z_pet``  loss of somatostatin-receptor expression: *lowers* lesion SUV (low SSTR expression is a
           known marker of poor response to PRRT); visible on PET only;
``z_ct``   tumour burden: more and larger liver and nodal metastases; visible on CT *and* PET.

The latent risk is ``w_lab * z_lab + w_pet * z_pet + w_ct * z_ct`` (weights in
:class:`SignalConfig`). Labels come from the risk plus Gaussian noise (``label_noise_sd``): the
``n_short`` patients with the highest noisy risk have short PFS. The **oracle AUROC** is the AUROC
of the noiseless latent risk against those labels: no model can be expected to beat it. The
generator also reports the oracle of the part each modality can see (labs: ``z_lab``; PET:
``z_pet`` and ``z_ct``; CT: ``z_ct``). Other variables (age, sex, site, grade, Ki-67 and the other
labs) carry no signal, as the study found them similar between groups; the number of PRRT cycles is
lower in short PFS because progression ends treatment early (a consequence, not a cause).

Everything is deterministic for a seed: each patient draws from its own random stream
(``numpy.random.SeedSequence(seed).spawn``), so results do not depend on the number of workers.

:func:`generate` writes the cohort into a folder (``cohort.csv``, ``manifest.yaml``, ``images/``, ``truth.csv``
with the latent factors, never a model input, and ``synthetic_report.json`` with the oracle AUROCs);
:func:`manifest_dict` and :func:`write_manifest` make its manifest.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..profiles import DEFAULT_SEED
from .phantoms import GEOMETRIES, patient_images


@dataclass(frozen=True)
class SignalConfig:
    """How much of the latent risk each modality carries (see the module docstring)."""

    w_lab: float = 0.7
    w_pet: float = 0.6
    w_ct: float = 0.6
    label_noise_sd: float = 0.9


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
    def for_size(cls, n_patients: int, **kw) -> "SyntheticConfig":
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


def _cohort_table(cfg: SyntheticConfig, rng: np.random.Generator):
    n_lab = cfg.n_short + cfg.n_long
    n = n_lab + cfg.n_censored_before_horizon
    s = cfg.signal
    z = rng.standard_normal((n, 3))  # z_lab, z_pet, z_ct
    risk = s.w_lab * z[:, 0] + s.w_pet * z[:, 1] + s.w_ct * z[:, 2]
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
    truth = pd.DataFrame({"patient_id": ids, "z_lab": z[:, 0], "z_pet": z[:, 1], "z_ct": z[:, 2],
                          "latent_risk": risk, "short_pfs": label})
    return table, truth


def _patient_worker(args):
    return patient_images(*args)


def generate(out_dir, seed: int = DEFAULT_SEED, config: SyntheticConfig | None = None,
             workers: int | None = None, progress: bool = True) -> dict:
    """Write a synthetic cohort into ``out_dir`` and return its report.

    Files written: ``cohort.csv`` (the table), ``manifest.yaml`` (ready to use),
    ``images/<patient_id>/{ct,pet,lesion_mask,organs}.nii.gz``, ``truth.csv`` (latent factors; never a
    model input) and ``synthetic_report.json`` (configuration, counts and oracle AUROCs).
    """
    from tqdm.auto import tqdm

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
    table_seq, image_seq = root.spawn(2)
    table, truth = _cohort_table(cfg, np.random.default_rng(table_seq))
    geom = GEOMETRIES[cfg.geometry]
    if cfg.pet_fwhm_mm is not None:
        if not cfg.pet_fwhm_mm > 0:
            raise ValueError(f"pet_fwhm_mm must be positive, not {cfg.pet_fwhm_mm!r}")
        geom = replace(geom, pet_fwhm_mm=float(cfg.pet_fwhm_mm))
    seqs = image_seq.spawn(len(table))
    if not cfg.pet_scale > 0:
        raise ValueError(f"pet_scale must be positive, not {cfg.pet_scale!r}")
    jobs = [(out_dir, pid, geom, cfg.mask_grid, sq, zp, zc, cfg.pet_scale)
            for pid, sq, zp, zc in zip(table["patient_id"], seqs, truth["z_pet"], truth["z_ct"])]
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = dict(total=len(jobs), desc="synthetic patients", unit="patient", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_patient_worker, jobs, chunksize=4), **bar))
    else:
        results = [patient_images(*j) for j in tqdm(jobs, **bar)]
    img = pd.DataFrame(results)
    for col in ["ct_path", "pet_path", "lesion_mask_path", "organ_mask_path"]:
        table[col] = img[col]
    for col in ["n_lesions", "tumour_volume_ml", "lesion_suv"]:
        truth[col] = img[col]
    table.to_csv(out_dir / "cohort.csv", index=False)
    truth.to_csv(out_dir / "truth.csv", index=False)

    lab = truth["short_pfs"].notna()
    y = truth.loc[lab, "short_pfs"].to_numpy()
    s = cfg.signal
    zl, zp, zc = (truth.loc[lab, k].to_numpy() for k in ("z_lab", "z_pet", "z_ct"))
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
        "oracle_auroc": {
            "all": _auroc(truth.loc[lab, "latent_risk"], y),
            "lab": _auroc(s.w_lab * zl, y),
            "pet": _auroc(s.w_pet * zp + s.w_ct * zc, y),
            "ct": _auroc(s.w_ct * zc, y),
        },
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
