"""Numbers that can fail for each Grad-CAM map: how much of it lies in the lesions, against chance and
against nulls.

Each map comes with numbers (:func:`saliency_metrics`): the share of the map's mass inside the
(dilated) lesion mask against the share expected by chance (the mask's volume fraction of the input),
and whether the map's maximum falls inside it (the pointing game). :func:`summarise_saliency` averages
them per model and tests the mass in the mask against chance (one-sided Wilcoxon signed-rank test, one
pair per patient).

Chance is a weak bar: lesions sit near the centre of the crop, so a map that knows nothing about the
patient but favours the centre lands in them more often than a uniform one. So every map also has two
nulls (:data:`NULLS`), scored the same way on the same patients: the same network with every layer
re-initialised (:func:`prrt.explain.gradcam.randomised`: the architecture, not what it learnt), and a
data-free map, the same for every test patient of a fold: a Gaussian blob with the mean and covariance of
the lesion voxels' positions in the fold's training patients (:func:`lesion_blob`).
:func:`compare_with_nulls` tests each model against each null, one pair per patient (one-sided Wilcoxon
signed-rank tests of the mass in the mask and of the pointing hits, Holm-adjusted over the table); the
verdict (:func:`verdict`) is "beats the null" only when both adjusted tests say so, and names the one that does
otherwise.

:func:`image_saliency` makes the maps of every test-fold patient with the fold model that predicted them
(restored from the run's checkpoints, :func:`prrt.learn.restore_fold_models`), their nulls and their
numbers; :class:`Saliency` holds the result. The lesion mask is the input's mask channel: without one,
the maps are made but none can be checked. The sanity checks of the maps are in :mod:`prrt.explain.sanity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..evaluation import holm, iter_folds
from ..imaging import lesions_in_mask_channel
from ..learn import fold_seed, restore_fold_models
from ..timing import phase
from .gradcam import dilate, fold_maps, gradcam_maps, randomised, target_layer

#: The two nulls of every saliency number: the network that learnt nothing, and a map that reads no image.
RANDOMISED, BLOB = "randomised weights", "data-free blob"
NULLS = (RANDOMISED, BLOB)


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


def greater(diff: pd.Series) -> float:
    """One-sided Wilcoxon signed-rank p-value that the paired differences ``diff`` (one per patient) are above 0;
    NaN with fewer than 5 pairs or no difference at all."""
    from scipy.stats import wilcoxon

    diff = diff.dropna()
    return float(wilcoxon(diff, alternative="greater").pvalue) if len(diff) >= 5 and (diff != 0).any() else np.nan


def summarise_saliency(metrics: pd.DataFrame, by: list[str] | str = "model") -> pd.DataFrame:
    """Mean mass in the mask against chance, and the pointing game's hit rate against chance, per group.

    ``maps checked``: the maps with a lesion in the mask and a map that is not zero everywhere.
    ``p (mass > chance)``: Wilcoxon signed-rank test (one-sided; scipy) of the mass in the mask
    against its chance share, one pair per patient (the mean over the repeats, which map the same
    patients again and are not independent; :func:`greater`).
    """
    rows = []
    for key, g in metrics.groupby(by, sort=False):
        v = g.dropna(subset=["mass_in_mask"])
        per_patient = v.groupby("patient")[["mass_in_mask", "chance"]].mean() if "patient" in v else v
        diff = per_patient["mass_in_mask"] - per_patient["chance"]
        p = greater(diff)
        rows.append({**dict(zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,))),
                     "maps": len(g), "maps checked": len(v),
                     "mass in mask": v["mass_in_mask"].mean(), "chance": v["chance"].mean(),
                     "pointing hits": v["pointing_hit"].mean(), "p (mass > chance)": p})
    return pd.DataFrame(rows)


def lesion_blob(masks: np.ndarray) -> np.ndarray:
    """A data-free saliency map fitted to where lesions sit in the crop: a Gaussian with the mean and covariance
    of the positions of the lesion voxels of ``masks`` (N, X, Y, Z; each patient weighted equally), scaled to
    [0, 1]; zero everywhere when no mask has a lesion."""
    masks = np.asarray(masks) > 0
    shape = masks.shape[1:]
    have = [m for m in masks if m.any()]
    if not have:
        return np.zeros(shape, np.float32)
    points = [np.argwhere(m).astype(float) for m in have]
    weights = np.concatenate([np.full(len(q), 1.0 / len(q)) for q in points])
    points = np.concatenate(points)
    mean = np.average(points, axis=0, weights=weights)
    cov = np.cov(points.T, aweights=weights) + 0.25 * np.eye(len(shape))  # at least half a voxel wide
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, len(shape))
    d = grid - mean
    blob = np.exp(-0.5 * np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)).reshape(shape)
    return ((blob - blob.min()) / (np.ptp(blob) or 1.0)).astype(np.float32)


def compare_with_nulls(metrics: pd.DataFrame, nulls: pd.DataFrame) -> pd.DataFrame:
    """Each model's saliency numbers against each null (:data:`NULLS`), on the patients both could be checked on.

    Per patient the mean over the repeats (which map the same patients again); the model's mass in the mask and its
    pointing hits against the null's, by one-sided Wilcoxon signed-rank tests of the per-patient differences
    (``p (mass > null)``, ``p (hits > null)``; none with fewer than 5 patients or no difference), Holm-adjusted over
    every test of the table (``..., Holm``), and the :func:`verdict` of the two."""
    cols = ["mass_in_mask", "pointing_hit"]
    rows = []
    for (model, null), g in nulls.groupby(["model", "null"], sort=False):
        ours = metrics[metrics["model"] == model].dropna(subset=["mass_in_mask"]).groupby("patient")[cols].mean()
        theirs = g.dropna(subset=["mass_in_mask"]).groupby("patient")[cols].mean()
        both = ours.join(theirs, rsuffix="_null", how="inner")
        rows.append({"model": model, "null": null, "patients": len(both),
                     "mass in mask": both["mass_in_mask"].mean(), "null: mass in mask": both["mass_in_mask_null"].mean(),
                     "pointing hits": both["pointing_hit"].mean(), "null: pointing hits": both["pointing_hit_null"].mean(),
                     "p (mass > null)": greater(both["mass_in_mask"] - both["mass_in_mask_null"]),
                     "p (hits > null)": greater(both["pointing_hit"] - both["pointing_hit_null"])})
    out = pd.DataFrame(rows, columns=["model", "null", "patients", "mass in mask", "null: mass in mask", "pointing hits",
                                      "null: pointing hits", "p (mass > null)", "p (hits > null)"])
    adjusted = holm(pd.concat([out["p (mass > null)"], out["p (hits > null)"]], ignore_index=True).astype(float))
    out["p (mass > null), Holm"] = adjusted.iloc[:len(out)].to_numpy()
    out["p (hits > null), Holm"] = adjusted.iloc[len(out):].to_numpy()
    out["verdict"] = [verdict(m, h) for m, h in zip(out["p (mass > null), Holm"], out["p (hits > null), Holm"])]
    return out


def verdict(p_mass: float, p_hits: float, level: float = 0.05) -> str:
    """A model against a null from the two adjusted p-values: "beats the null" when both the mass in the mask and the
    pointing hits beat it, "beats it on the pointing game only" / "on the mass only" when one does, "does not beat the
    null" when neither does, "untested" when neither could be tested."""
    if np.isnan(p_mass) and np.isnan(p_hits):
        return "untested"
    mass, hits = (not np.isnan(p) and p < level for p in (p_mass, p_hits))
    return ("beats the null" if mass and hits else "beats it on the mass only" if mass else
            "beats it on the pointing game only" if hits else "does not beat the null")


@dataclass
class Saliency:
    """What :func:`image_saliency` gives: per-map numbers, the maps of the first repeat, the layers, and the
    numbers of the nulls' maps of the same patients."""

    metrics: pd.DataFrame  # model, repeat, fold, patient, label, mass_in_mask, chance, pointing_hit, ...
    maps: dict  # model -> {patient: map (X, Y, Z)} of the first repeat
    layers: dict  # model -> layer name
    models: dict  # model -> {(repeat, fold): fold model} of the first repeat
    nulls: pd.DataFrame = field(default_factory=pd.DataFrame)  # the same columns and ``null`` (:data:`NULLS`)


def image_saliency(specs: list, data, splits: pd.DataFrame, seed: int, run_dir, repeats: int | None = None,
                   dilation_voxels: int = 1, progress: bool = True) -> Saliency:
    """Grad-CAM maps of every test-fold patient with the fold model that predicted them, for each image
    model of ``specs`` and the first ``repeats`` repeats (all by default), with their numbers
    (:func:`saliency_metrics`; the mask is the input's mask channel: without one, the maps are made
    but none can be checked), and the numbers of the two nulls' maps of the same patients (:data:`NULLS`: the
    fold model with every layer re-initialised, seeded by ``seed``, and :func:`lesion_blob` of the fold's
    training patients)."""
    from tqdm.auto import tqdm

    keep = sorted(splits["repeat"].unique())[:repeats] if repeats else None
    first = int(splits["repeat"].min())
    metrics, nulls, maps, layers, kept = [], [], {}, {}, {}
    blobs = {}  # (modality, repeat, fold) -> the data-free blob (the CT CNNs share one)
    folds = [f for f in iter_folds(splits) if keep is None or f.repeat in keep]
    for spec in specs:
        with phase("restoring fold models", model=spec.name):
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
            where = {"model": spec.name, "repeat": fold.repeat, "fold": fold.fold, "label": data.y.loc[patients].to_numpy()}
            metrics.append(saliency_metrics(m, masks, patients, dilation_voxels).assign(**where))
            if has_mask:
                net = models[(fold.repeat, fold.fold)].model
                random_maps = gradcam_maps(randomised(net, fold_seed(seed, fold.repeat, fold.fold)), x, layer)
                key = (models[(fold.repeat, fold.fold)].modality, fold.repeat, fold.fold)
                if key not in blobs:
                    train = [p for p in fold.train if images.has(p)]
                    blobs[key] = lesion_blob(lesions_in_mask_channel(images.take(train)[:, 1].numpy()))
                blob = blobs[key]
                for null, null_maps in ((RANDOMISED, random_maps), (BLOB, np.broadcast_to(blob, m.shape))):
                    nulls.append(saliency_metrics(null_maps, masks, patients, dilation_voxels).assign(null=null, **where))
            if fold.repeat == first:
                maps[spec.name].update(zip(patients, m))
    cols = ["model", "repeat", "fold", "patient", "label"]
    df = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=cols)
    nf = pd.concat(nulls, ignore_index=True) if nulls else pd.DataFrame(columns=["null", *cols])
    return Saliency(df[cols + [c for c in df.columns if c not in cols]], maps, layers, kept,
                    nf[["null", *cols] + [c for c in nf.columns if c not in ["null", *cols]]])
