"""Numbers that can fail for each Grad-CAM map: how much of it lies in the lesions, against chance.

Each map comes with numbers (:func:`saliency_metrics`): the share of the map's mass inside the
(dilated) lesion mask against the share expected by chance (the mask's volume fraction of the input),
and whether the map's maximum falls inside it (the pointing game). :func:`summarise_saliency` averages
them per model and tests the mass in the mask against chance (one-sided Wilcoxon signed-rank test, one
pair per patient).

:func:`image_saliency` makes the maps of every test-fold patient with the fold model that predicted them
(restored from the run's checkpoints, :func:`prrt.learn.restore_fold_models`) and their numbers;
:class:`Saliency` holds the result. The lesion mask is the input's mask channel: without one, the maps
are made but none can be checked. The sanity checks of the maps are in :mod:`prrt.explain.sanity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..evaluation import iter_folds
from ..imaging import lesions_in_mask_channel
from ..learn import restore_fold_models
from .gradcam import dilate, fold_maps, target_layer


def saliency_metrics(maps: np.ndarray, masks: np.ndarray, patients: list[str], dilation_voxels: int = 1) -> pd.DataFrame:
    """Per patient: how much of the map lies in the dilated lesion mask, against chance.

    Columns: ``mass_in_mask`` (share of the map's sum inside the dilated mask), ``chance`` (the
    dilated mask's share of the input's voxels: what a map spread evenly, or a maximum placed at
    random, would get), ``pointing_hit`` (the map's maximum lies in the dilated mask; 1/0) and
    ``enrichment`` (``mass_in_mask / chance``). A patient with an empty mask, or a map that is zero
    everywhere, gets NaN (it says nothing either way); ``empty_map`` marks the latter.
    """
    rows = []
    for m, k, p in zip(maps, masks, patients):
        d = dilate(k, dilation_voxels)
        chance = float(d.mean())
        total = float(m.sum())
        if not d.any() or total <= 0:
            rows.append({"patient": p, "mass_in_mask": np.nan, "chance": chance if d.any() else np.nan,
                         "pointing_hit": np.nan, "enrichment": np.nan, "empty_map": total <= 0})
            continue
        mass = float(m[d].sum()) / total
        hit = float(d.flat[int(np.argmax(m))])
        rows.append({"patient": p, "mass_in_mask": mass, "chance": chance, "pointing_hit": hit,
                     "enrichment": mass / chance, "empty_map": False})
    return pd.DataFrame(rows)


def summarise_saliency(metrics: pd.DataFrame, by: list[str] | str = "model") -> pd.DataFrame:
    """Mean mass in the mask against chance, and the pointing game's hit rate against chance, per group.

    ``maps checked``: the maps with a lesion in the mask and a map that is not zero everywhere.
    ``p (mass > chance)``: Wilcoxon signed-rank test (one-sided; scipy) of the mass in the mask
    against its chance share, one pair per patient (the mean over the repeats, which map the same
    patients again and are not independent).
    """
    from scipy.stats import wilcoxon

    rows = []
    for key, g in metrics.groupby(by, sort=False):
        v = g.dropna(subset=["mass_in_mask"])
        per_patient = v.groupby("patient")[["mass_in_mask", "chance"]].mean() if "patient" in v else v
        diff = per_patient["mass_in_mask"] - per_patient["chance"]
        p = float(wilcoxon(diff, alternative="greater").pvalue) if len(diff) >= 5 and (diff != 0).any() else np.nan
        rows.append({**dict(zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,))),
                     "maps": len(g), "maps checked": len(v),
                     "mass in mask": v["mass_in_mask"].mean(), "chance": v["chance"].mean(),
                     "pointing hits": v["pointing_hit"].mean(), "p (mass > chance)": p})
    return pd.DataFrame(rows)


@dataclass
class Saliency:
    """What :func:`image_saliency` gives: per-map numbers, the maps of the first repeat, the layers."""

    metrics: pd.DataFrame  # model, repeat, fold, patient, label, mass_in_mask, chance, pointing_hit, ...
    maps: dict  # model -> {patient: map (X, Y, Z)} of the first repeat
    layers: dict  # model -> layer name
    models: dict  # model -> {(repeat, fold): fold model} of the first repeat


def image_saliency(specs: list, data, splits: pd.DataFrame, seed: int, run_dir, repeats: int | None = None,
                   dilation_voxels: int = 1, progress: bool = True) -> Saliency:
    """Grad-CAM maps of every test-fold patient with the fold model that predicted them, for each image
    model of ``specs`` and the first ``repeats`` repeats (all by default), with their numbers
    (:func:`saliency_metrics`; the mask is the input's mask channel: without one, the maps are made
    but none can be checked)."""
    from tqdm.auto import tqdm

    keep = sorted(splits["repeat"].unique())[:repeats] if repeats else None
    first = int(splits["repeat"].min())
    metrics, maps, layers, kept = [], {}, {}, {}
    folds = [f for f in iter_folds(splits) if keep is None or f.repeat in keep]
    for spec in specs:
        models = restore_fold_models(spec, data, splits, seed, run_dir, repeats=keep)
        images = data.images[models[(folds[0].repeat, folds[0].fold)].modality]
        has_mask = images.x.shape[1] >= 2  # the lesion mask is the input's second channel (profile: mask_channel)
        layer = target_layer(models[(folds[0].repeat, folds[0].fold)].model, tuple(images.x.shape[1:]))
        layers[spec.name], maps[spec.name] = layer, {}
        kept[spec.name] = {k: m for k, m in models.items() if k[0] == first}
        for fold in tqdm(folds, desc=f"Grad-CAM {spec.name}", unit="fold", disable=not progress):
            patients = [p for p in fold.test if images.has(p)]
            x = images.take(patients)
            m = fold_maps(run_dir, spec.name, fold.repeat, fold.fold, models[(fold.repeat, fold.fold)].model, x,
                          patients, layer)
            # the lesions are 1 in that channel, the liver (profile: liver_in_mask_channel) 0.5
            masks = lesions_in_mask_channel(x[:, 1].numpy()) if has_mask else np.zeros((len(x), *x.shape[2:]), bool)
            metrics.append(saliency_metrics(m, masks, patients, dilation_voxels).assign(
                model=spec.name, repeat=fold.repeat, fold=fold.fold,
                label=data.y.loc[patients].to_numpy()))
            if fold.repeat == first:
                maps[spec.name].update(zip(patients, m))
    cols = ["model", "repeat", "fold", "patient", "label"]
    df = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=cols)
    return Saliency(df[cols + [c for c in df.columns if c not in cols]], maps, layers, kept)
