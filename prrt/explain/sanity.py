"""The sanity checks of the Grad-CAM maps (Adebayo et al., NeurIPS 2018).

They compare the maps with those of the same network with its weights re-initialised, layer by layer
from the top (:func:`cascading_randomisation`), and with those of the same network trained on permuted
labels from the same starting weights (:func:`label_randomisation`; a pretrained encoder starts from its
pretrained weights in both). Two maps are compared as Adebayo et al. do, without their sign: by the
absolute Spearman rank correlation over the voxels (:func:`rank_correlation`; a map that turned into its
negative is as uninformative as one that stayed the same) and by the structural similarity index (SSIM,
MONAI's :class:`monai.metrics.SSIMMetric`, :func:`ssim`). :func:`sanity_checks` runs both checks for every
image model on the first fold of the first repeat; :func:`sanity_summary` gives the median of each
similarity and flags the maps as uninformative when either median reaches :data:`SIMILAR`.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..evaluation import iter_folds
from ..learn import fold_seed, folds_of, inner_split
from ..timing import phase
from .gradcam import gradcam_maps, randomisation_steps, reinitialise
from .saliency import Saliency

#: The two sanity checks, as the book names them.
REINITIALISED, PERMUTED = "weights re-initialised", "trained on permuted labels"

#: A map whose median absolute rank correlation, or median SSIM, with a randomised network's map reaches this is
#: flagged as uninformative (it does not depend on what the network learnt).
SIMILAR = 0.5

#: The SSIM window (voxels per axis; smaller for smaller maps).
SSIM_WINDOW = 7


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps over their voxels; 0 when either map is flat (a map
    that vanished shares no ranking with the other)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The structural similarity index of two maps scaled to [0, 1] (MONAI's SSIM with a Gaussian window of
    :data:`SSIM_WINDOW` voxels, or the largest odd size the maps allow; 2-D or 3-D)."""
    from monai.metrics import SSIMMetric

    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"the two maps differ in shape: {a.shape} and {b.shape}")
    window = min(SSIM_WINDOW, min(a.shape) - (1 - min(a.shape) % 2))
    metric = SSIMMetric(spatial_dims=a.ndim, data_range=1.0, win_size=window, kernel_sigma=window / 7 * 1.5)
    return float(metric(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).item())


def similarity(reference: np.ndarray, other: np.ndarray) -> dict:
    """How alike two maps are: the signed rank correlation (kept for the record), its absolute value and the SSIM."""
    r = rank_correlation(reference, other)
    return {"rank_correlation": r, "abs_rank_correlation": abs(r), "ssim": ssim(reference, other)}


def cascading_randomisation(net: nn.Module, x: torch.Tensor, layer: str, patients: list[str], seed: int,
                            reference: np.ndarray | None = None) -> pd.DataFrame:
    """Adebayo's model-randomisation test: re-initialise the weights layer by layer from the top
    (cumulatively) and compare each step's maps with the trained network's (``reference``, computed
    if not given). Returns one row per step and patient: ``step`` (1 = the top layer re-initialised),
    ``layers`` (the layers re-initialised at that step) and the maps' :func:`similarity`."""
    reference = gradcam_maps(net, x, layer) if reference is None else reference
    work = copy.deepcopy(net)
    rows = []
    for step, names in enumerate(randomisation_steps(work), start=1):
        reinitialise(work, names, seed + step)
        maps = gradcam_maps(work, x, layer)
        for p, a, b in zip(patients, reference, maps):
            rows.append({"step": step, "layers": " + ".join(names), "patient": p, **similarity(a, b)})
    return pd.DataFrame(rows)


def label_randomisation(spec, data, fold, seed: int, reference: np.ndarray, patients: list[str], layer: str):
    """Adebayo's data-randomisation test on one fold: the same image model (``spec``: the same starting weights,
    pretrained ones included, and settings) trained on the same patients with their labels permuted, its maps of
    ``patients`` compared with ``reference`` (the real fold model's maps). Returns the per-patient
    :func:`similarity` and the permuted model's AUROC on the fold's test patients (it should be near 0.5)."""
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score


    s = fold_seed(seed, fold.repeat, fold.fold)
    part = inner_split(fold.train, data.y, spec.val_fraction, s)
    rng = np.random.default_rng(s)
    y = data.y.copy()
    for ids in (part.fit, part.val):  # permuted within each part: the same class balance in both
        y.loc[ids] = rng.permutation(y.loc[ids].to_numpy())
    model = spec.build(seed)
    with phase("training", model=f"{spec.name}, permuted labels"):
        model.fit(replace(data, y=y), part, s, progress=False)
        maps = gradcam_maps(model.model, data.images[model.modality].take(patients), layer)
        test_y = data.y.loc[fold.test].astype(int)
        with phase("prediction"):
            p = model.predict(data, fold.test)
    auroc = float(roc_auc_score(test_y, p)) if 0 < test_y.sum() < len(test_y) else np.nan
    corr = pd.DataFrame([{"patient": p, **similarity(a, b)} for p, a, b in zip(patients, reference, maps)])
    return corr, auroc


def sanity_summary(cascade: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The two sanity checks per model, with a verdict: the median absolute rank correlation (and its IQR) and the
    median SSIM of the trained network's maps with those of the fully re-initialised network and of the network
    trained on permuted labels; when either median reaches :data:`SIMILAR` the maps are flagged as uninformative."""
    rows = []
    for model, g in cascade.groupby("model", sort=False):
        rows.append((model, REINITIALISED, g[g["step"] == g["step"].max()]))
        h = labels[labels["model"] == model] if "model" in labels else labels.iloc[:0]
        if len(h):
            rows.append((model, PERMUTED, h))
    out = []
    for model, check, g in rows:
        r, ss = g["abs_rank_correlation"], g["ssim"]
        flagged = r.median() >= SIMILAR or ss.median() >= SIMILAR
        out.append({"model": model, "check": check, "maps": len(g), "median |rank correlation|": float(r.median()),
                    "IQR": f"{r.quantile(0.25):.2f} to {r.quantile(0.75):.2f}", "median SSIM": float(ss.median()),
                    "verdict": "flagged: uninformative" if flagged else "passes"})
    return pd.DataFrame(out)


def sanity_checks(saliency: Saliency, specs: list, data, splits: pd.DataFrame, seed: int, n_patients: int = 30,
                  progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Both sanity checks for every image model of ``saliency`` on the first fold of the first repeat
    (up to ``n_patients`` of its test patients): the cascading model randomisation and the network
    trained on permuted labels. Returns the cascade rows, the label-randomisation rows (both with a
    ``model`` column) and each permuted-label model's test AUROC."""
    from tqdm.auto import tqdm


    first = next(iter_folds(splits))
    cascade, labels, aurocs = [], [], {}
    by_name = {s.name: s for s in specs}
    for name in tqdm(list(saliency.layers), desc="sanity checks", unit="model", disable=not progress):
        fold = folds_of(by_name[name], data, [first])[0]  # the fold's patients with the model's image
        model = saliency.models[name][(fold.repeat, fold.fold)]
        images = data.images[model.modality]
        patients = fold.test[:n_patients]  # folds_of kept the patients with the image
        x, layer = images.take(patients), saliency.layers[name]
        ref = np.stack([saliency.maps[name][p] for p in patients])
        cascade.append(cascading_randomisation(model.model, x, layer, patients, seed, reference=ref).assign(model=name))
        corr, aurocs[name] = label_randomisation(by_name[name], data, fold, seed, ref, patients, layer)
        labels.append(corr.assign(model=name))
    return (pd.concat(cascade, ignore_index=True) if cascade else pd.DataFrame(),
            pd.concat(labels, ignore_index=True) if labels else pd.DataFrame(), aurocs)
