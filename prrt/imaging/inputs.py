"""Can the networks' input carry the signal? The inputs of every region of interest, simple statistics of
them, and their AUROC.

A CNN can only find what its input still holds. For each modality and region of interest, this
module measures a few statistics of the very arrays the network is given (after resampling,
cropping and intensity scaling; :func:`input_statistics`) and reports how well each alone separates
short from long PFS (:func:`input_signal_table`, :func:`signal_table_for`):

==================================  ===============================================================
``lesion voxels``                   voxels of the lesion mask in the input (what a network sees of
                                    the tumour burden; with ``lesions`` inputs its voxels are finer)
``highest value in the lesions``    the maximum of the scaled image inside the mask
``mean value in the lesions``       the mean of the scaled image inside the mask
``99th percentile of the input``    needs no mask: the brightest 1 % of the whole input
``dark liver voxels``               outside the lesion mask: voxels of the liver (its label with
                                    what it leaves out put back, :func:`liver_region`) darker than
                                    half the liver's median value; hypodense CT or cold SR-PET spots
                                    that the lesion mask leaves out (NaN without an organ map or a
                                    liver in the input)
==================================  ===============================================================

AUROC is computed on every labelled patient with short PFS as the positive class. A statistic
whose *low* values go with short PFS (lower SSTR expression, say) has an AUROC below 0.5; the table
gives the direction and the AUROC read in that direction. Choosing the direction with the labels
makes that number slightly optimistic: it is a check of the input, not a model.

:func:`prepare_inputs` preprocesses every patient with a CT or a PET for each region of interest (the
profile's first) and writes each patient's input grid to ``inputs/boxes_<roi>.csv`` in the run
directory; :func:`box_summary` says how the boxes were made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import (
    binary_closing,
    binary_erosion,
    binary_fill_holes,
    generate_binary_structure,
)
from sklearn.metrics import roc_auc_score

from .lesions import LIVER as LIVER_LABEL
from .preprocess import input_boxes, preprocess_cohort

#: The region of interest whose inputs are shown beside the profile's own: a liver view beside a lesion box (which
#: leaves out what lies away from the lesions of the mask), and a lesion box beside the others.
COMPARED_WITH = {"liver": "lesions", "lesions": "liver", "body": "lesions"}

STATISTICS = ("lesion voxels", "highest value in the lesions", "mean value in the lesions",
              "99th percentile of the input", "dark liver voxels")

def liver_region(label: np.ndarray, close_voxels: int = 4) -> np.ndarray:
    """The liver with what its label leaves out put back: the label closed (``close_voxels`` steps of a
    6-connected structuring element; an organ map that leaves lesions out of the liver leaves holes and, for
    lesions at its edge, notches), its holes filled, then eroded by one voxel so that the partial-volume rim
    at the liver's edge does not count."""
    k = close_voxels
    if k < 1:
        return binary_erosion(binary_fill_holes(label))
    closed = binary_closing(np.pad(label, k), generate_binary_structure(3, 1), iterations=k)
    return binary_erosion(binary_fill_holes(closed)[k:-k, k:-k, k:-k])


#: Value of the liver in the mask channel (:func:`mask_channel_array`); the lesions are 1.
LIVER_IN_MASK_CHANNEL = 0.5


def lesions_in_mask_channel(channel: np.ndarray) -> np.ndarray:
    """The lesion voxels of a mask channel (:func:`mask_channel_array`): above the midpoint between the
    liver's value and the lesions' 1 (so also of a channel resampled or interpolated a little)."""
    return np.asarray(channel) > (1.0 + LIVER_IN_MASK_CHANNEL) / 2


def liver_label(organs: np.ndarray | None) -> np.ndarray | None:
    """The liver voxels of an organ map (label :data:`LIVER_LABEL`), or None without a map or a liver."""
    if organs is None:
        return None
    label = np.asarray(organs) == LIVER_LABEL
    return label if label.any() else None


def mask_channel_array(arrays: dict, like: np.ndarray, liver: bool = True) -> np.ndarray:
    """The second input channel of a network: the lesion mask (1) and, with ``liver`` and an organ map, the
    liver (:func:`liver_region`) at :data:`LIVER_IN_MASK_CHANNEL` where there is no lesion; zeros shaped like
    ``like`` without a mask. It tells the network where the lesions are and where the liver is, so that a dark
    spot inside the liver (a metastasis the lesion mask leaves out) can be told from the dark tissue around
    it."""
    out = (np.asarray(arrays["mask"]) > 0).astype(np.float32) if "mask" in arrays else np.zeros(like.shape,
                                                                                                np.float32)
    label = liver_label(arrays.get("organs")) if liver else None
    if label is not None:
        out[(out == 0) & liver_region(label)] = LIVER_IN_MASK_CHANNEL
    return out


def dark_liver_voxels(image: np.ndarray, organs: np.ndarray | None, mask: np.ndarray) -> float:
    """Voxels of the liver (:func:`liver_region`) outside the lesion mask darker than half the median of the
    liver label. NaN when there is no organ map or no liver voxel."""
    label = liver_label(organs)
    if label is None:
        return np.nan
    liver = liver_region(label) & ~mask
    return float((image[liver] < 0.5 * np.median(image[label])).sum())


def input_statistics(arrays: dict, modality: str) -> pd.DataFrame:
    """Per-patient statistics (rows: pseudonyms) of ``modality`` in ``{pseudonym: arrays}``.

    Patients without that image are left out; lesion statistics are NaN when the input holds no
    lesion voxel (or no mask exists).
    """
    rows = {}
    for pid, a in arrays.items():
        if modality not in a:
            continue
        image = np.asarray(a[modality], np.float32)
        mask = np.asarray(a["mask"]) > 0 if "mask" in a else np.zeros(image.shape, bool)
        n = int(mask.sum())
        rows[pid] = {
            "lesion voxels": float(n) if "mask" in a else np.nan,
            "highest value in the lesions": float(image[mask].max()) if n else np.nan,
            "mean value in the lesions": float(image[mask].mean()) if n else np.nan,
            "99th percentile of the input": float(np.percentile(image, 99)),
            "dark liver voxels": dark_liver_voxels(image, a.get("organs"), mask),
        }
    df = pd.DataFrame.from_dict(rows, orient="index", columns=list(STATISTICS))
    df.index.name = "patient"
    return df


def signal_auroc(values: pd.Series, labels: pd.Series) -> dict:
    """AUROC of one statistic against the labels, its direction, and the AUROC read in that direction."""
    y = labels.dropna()
    v = values.reindex(y.index)
    ok = v.notna()
    n = int(ok.sum())
    if n < 4 or y[ok].nunique() < 2 or v[ok].nunique() < 2:
        return {"auroc": np.nan, "direction": "–", "auroc_either_direction": np.nan, "n_patients": n}
    auc = float(roc_auc_score(y[ok].astype(int), v[ok]))
    return {"auroc": auc, "direction": "higher → short PFS" if auc >= 0.5 else "lower → short PFS",
            "auroc_either_direction": max(auc, 1 - auc), "n_patients": n}


def input_signal_table(stats: dict, labels: pd.Series) -> pd.DataFrame:
    """One row per (modality, region of interest, statistic).

    ``stats``: ``{(modality, roi): input_statistics(...)}``; ``labels``: the cohort's label column.
    """
    rows = []
    for (modality, roi), df in stats.items():
        for name in df.columns:
            rows.append({"modality": modality, "input": roi, "statistic": name, **signal_auroc(df[name], labels)})
    return pd.DataFrame(rows, columns=["modality", "input", "statistic", "auroc", "direction",
                                       "auroc_either_direction", "n_patients"])


def format_signal_table(table: pd.DataFrame) -> pd.DataFrame:
    """The input-signal table as the book shows it: statistics as rows, one AUROC column per input."""
    t = table.assign(shown=[("–" if pd.isna(a) else f"{e:.2f}\u00a0({'↑' if a >= 0.5 else '↓'})")
                            for a, e in zip(table["auroc"], table["auroc_either_direction"])])
    wide = t.pivot_table(index=["modality", "statistic"], columns="input", values="shown", aggfunc="first",
                         sort=False)
    wide.columns = [f"AUROC, {roi} input" for roi in wide.columns]
    return wide


def save_boxes(run_dir, boxes: pd.DataFrame, roi: str) -> Path:
    """Write the input grid of every patient to ``inputs/boxes_<roi>.csv`` in the run directory."""
    path = Path(run_dir) / "inputs" / f"boxes_{roi}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    boxes.to_csv(path)
    return path


def image_patients(cohort) -> list[str]:
    """Pseudonyms of the patients with a CT or a PET."""
    cols = [f"{m}_path" for m in ("ct", "pet") if f"{m}_path" in cohort.data.columns]
    if not cols:
        return []
    return list(cohort.data.index[cohort.data[cols].notna().any(axis=1)])


def prepare_inputs(cohort, profile, cache_dir, run_dir=None, rois=None, progress: bool = True) -> dict:
    """Preprocessed inputs of every patient with a CT or PET, for each region of interest.

    ``rois`` defaults to the profile's own first, then the one it is compared with (:data:`COMPARED_WITH`). Returns
    ``{roi: {pseudonym: arrays}}``, ``{}`` when the manifest names no CT or PET. With ``run_dir``,
    each patient's input grid is written to ``inputs/boxes_<roi>.csv``.
    """
    patients = image_patients(cohort)
    if not patients:
        return {}
    rois = list(rois or [profile.roi, COMPARED_WITH[profile.roi]])
    out = {}
    for roi in rois:
        out[roi] = preprocess_cohort(cohort, profile, cache_dir, patients=patients, progress=progress, roi=roi)
        if run_dir is not None:
            save_boxes(run_dir, input_boxes(out[roi]), roi)
    return out


def box_summary(boxes: pd.DataFrame) -> pd.DataFrame:
    """How the inputs were made: patients per source, and the extent and spacing of the grids."""
    rows = []
    for source, g in boxes.groupby("source", sort=False):
        extent = g[["extent_x_mm", "extent_y_mm", "extent_z_mm"]].max(axis=1)
        spacing = g[["spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]].max(axis=1)
        rows.append({"box made from": source, "patients": len(g),
                     "largest side of the box, mm: median (range)":
                         f"{extent.median():.0f} ({extent.min():.0f}–{extent.max():.0f})",
                     "voxel spacing, mm: median (range)":
                         f"{spacing.median():.1f} ({spacing.min():.1f}–{spacing.max():.1f})"})
    return pd.DataFrame(rows).set_index("box made from")


def signal_table_for(inputs: dict, cohort, modalities=("pet", "ct")) -> pd.DataFrame:
    """:func:`input_signal_table` of every modality the inputs hold, for every region of interest."""
    stats = {}
    for modality in modalities:
        for roi, arrays in inputs.items():
            df = input_statistics(arrays, modality)
            if len(df):
                stats[(modality, roi)] = df
    return input_signal_table(stats, cohort.data["label"])
