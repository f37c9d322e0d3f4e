"""Explanations that can be checked: 3D Grad-CAM with numbers that can fail, sanity checks,
laboratory importance inside the fusion, modality ablation and risk groups (chapter 05).

Grad-CAM (Selvaraju et al. 2017) through MONAI's :class:`monai.visualize.GradCAM`: the gradient of the
short-PFS logit with respect to a convolutional layer's activations, averaged over space, weighs the
layer's channels; their weighted sum, passed through a ReLU, is the map. MONAI's default
post-processing maps (min, max) to (1, 0), which inverts the map; here every map is scaled to 0-1 by
its own minimum and maximum instead (a map that is zero everywhere stays zero).

The layer (:func:`target_layer`): the deepest layer of the encoder whose output still has at least
``min_voxels`` voxels along every axis (the last block of a CNN pools a 32-voxel input down to 4 or 2
voxels, too coarse to say where inside a lesion box the network looked).

Each map comes with numbers (:func:`saliency_metrics`): the share of the map's mass inside the
(dilated) lesion mask against the share expected by chance (the mask's volume fraction of the input),
and whether the map's maximum falls inside it (the pointing game). The sanity checks of Adebayo et al.
(NeurIPS 2018) compare the maps with those of the same network with its weights re-initialised, layer
by layer from the top (:func:`cascading_randomisation`), and with those of a network trained on
permuted labels (:func:`label_randomisation`): a map that barely changes says nothing about what the
network learnt.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

#: The two sanity checks, as the book names them.
REINITIALISED, PERMUTED = "weights re-initialised", "trained on permuted labels"
#: A map whose median rank correlation with a randomised network's map reaches this is flagged as
#: uninformative (it does not depend on what the network learnt).
SIMILAR = 0.5


# ---- Grad-CAM --------------------------------------------------------------------------------------
class _Logit2D(nn.Module):
    """A one-logit classifier as MONAI's CAM classes expect it: output (N, 1), class index 0."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).reshape(len(x), -1)


def candidate_layers(net: nn.Module) -> list[str]:
    """The layers Grad-CAM may use, in forward order: the output of each block of the encoder.

    The compact CNN: each block's activation (before its pooling); a MONAI ResNet: its ``layer1`` ...
    ``layer4``; a DenseNet: its dense blocks. Names are those of ``net.named_modules()``.
    """
    names = []
    for name, mod in net.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, (nn.LeakyReLU, nn.ReLU)) and ".body." in f".{name}":
            names.append(name)
        elif leaf in ("layer1", "layer2", "layer3", "layer4") or leaf.startswith("denseblock"):
            names.append(name)
    return names


def layer_shapes(net: nn.Module, input_shape, layers: list[str]) -> dict[str, tuple]:
    """The spatial shape of each layer's output for one input of ``input_shape`` (C, X, Y, Z)."""
    shapes, hooks = {}, []
    mods = dict(net.named_modules())
    for name in layers:
        hooks.append(mods[name].register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[2:]))))
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros((1, *input_shape), device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    return shapes


def target_layer(net: nn.Module, input_shape, min_voxels: int = 8) -> str:
    """The deepest candidate layer (:func:`candidate_layers`) whose output has at least ``min_voxels``
    voxels along every axis (the first one when none has)."""
    layers = candidate_layers(net)
    if not layers:
        raise ValueError("no convolutional block found for Grad-CAM in this network")
    shapes = layer_shapes(net, input_shape, layers)
    fine = [name for name in layers if min(shapes[name]) >= min_voxels]
    return fine[-1] if fine else layers[0]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (N, 1, ...) to 0-1 by its own minimum and maximum; a flat map becomes zero."""
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def gradcam_maps(net: nn.Module, x: torch.Tensor, layer: str, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps of the short-PFS logit of ``net`` for the images ``x`` (N, C, X, Y, Z): where the
    evidence for a short PFS lies, in every patient (also in a patient predicted to do well).

    Returns (N, X, Y, Z) float32 in [0, 1], upsampled (trilinear) to the input grid and min-max scaled
    per map. ``net`` is not changed (a copy carries MONAI's hooks); it runs on the device it is on.
    """
    from monai.visualize import GradCAM

    model = _Logit2D(copy.deepcopy(net)).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    device = next(model.parameters()).device
    cam = GradCAM(model, target_layers=f"net.{layer}", postprocessing=minmax)
    out = []
    for i in range(0, len(x), batch_size):
        with torch.enable_grad():
            out.append(cam(x[i:i + batch_size].float().to(device), class_idx=0).detach()[:, 0].cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, *x.shape[2:]), np.float32)


def upsample(maps: np.ndarray, size_voxels) -> np.ndarray:
    """Maps (N, X, Y, Z) on the input grid, trilinearly resampled to a finer grid over the same extent
    (voxel edges aligned: ``align_corners=False``), as :func:`prrt.imaging.display_arrays` makes it."""
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(maps, np.float32))[:, None]
    return F.interpolate(t, size=tuple(int(s) for s in size_voxels), mode="trilinear", align_corners=False)[:, 0].numpy()


def display_size(profile) -> tuple:
    """The display grid of the overlays: the input grid refined by a whole factor (about the profile's
    display size)."""
    factor = max(1, round(max(profile.display_size_voxels) / max(profile.input_size_voxels)))
    return tuple(int(s) * factor for s in profile.input_size_voxels)


# ---- numbers that can fail --------------------------------------------------------------------------
def dilate(mask: np.ndarray, voxels: int = 1) -> np.ndarray:
    """The binary mask grown by ``voxels`` voxels (a 3×3×3 cube per step)."""
    from scipy.ndimage import binary_dilation

    mask = np.asarray(mask) > 0
    return binary_dilation(mask, np.ones((3, 3, 3), bool), iterations=voxels) if voxels > 0 and mask.any() else mask


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


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps over their voxels; 0 when either map is flat (a map
    that vanished shares no ranking with the other)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation_steps(net: nn.Module) -> list[list[str]]:
    """The network's layers with weights, grouped from the top (output) to the bottom (input):
    a convolution or linear layer together with the normalisation that follows it."""
    leaves = [(n, m) for n, m in net.named_modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    groups: list[list[str]] = []
    for name, mod in leaves:
        is_norm = isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                                   nn.GroupNorm, nn.LayerNorm))
        if is_norm and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups[::-1]


def _reinitialise(net: nn.Module, names: list[str], seed: int) -> None:
    mods = dict(net.named_modules())
    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(seed)
        for name in names:
            mod = mods[name]
            if hasattr(mod, "reset_running_stats"):
                mod.reset_running_stats()
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()


def cascading_randomisation(net: nn.Module, x: torch.Tensor, layer: str, patients: list[str], seed: int,
                            reference: np.ndarray | None = None) -> pd.DataFrame:
    """Adebayo's model-randomisation test: re-initialise the weights layer by layer from the top
    (cumulatively) and compare each step's maps with the trained network's (``reference``, computed
    if not given). Returns one row per step and patient: ``step`` (1 = the top layer re-initialised),
    ``layers`` (the layers re-initialised at that step), ``rank_correlation``."""
    reference = gradcam_maps(net, x, layer) if reference is None else reference
    work = copy.deepcopy(net)
    rows = []
    for step, names in enumerate(randomisation_steps(work), start=1):
        _reinitialise(work, names, seed + step)
        maps = gradcam_maps(work, x, layer)
        for p, a, b in zip(patients, reference, maps):
            rows.append({"step": step, "layers": " + ".join(names), "patient": p,
                         "rank_correlation": rank_correlation(a, b)})
    return pd.DataFrame(rows)


def label_randomisation(spec, data, fold, seed: int, reference: np.ndarray, patients: list[str], layer: str):
    """Adebayo's data-randomisation test on one fold: the same image model trained on the same
    patients with their labels permuted, its maps of ``patients`` compared with ``reference`` (the
    real fold model's maps). Returns the per-patient rank correlations and the permuted model's AUROC
    on the fold's test patients (it should be near 0.5)."""
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    from .models import fold_seed, inner_split

    s = fold_seed(seed, fold.repeat, fold.fold)
    part = inner_split(fold.train, data.y, spec.val_fraction, s)
    rng = np.random.default_rng(s)
    y = data.y.copy()
    for ids in (part.fit, part.val):  # permuted within each part: the same class balance in both
        y.loc[ids] = rng.permutation(y.loc[ids].to_numpy())
    model = spec.build(seed)
    model.fit(replace(data, y=y), part, s, progress=False)
    maps = gradcam_maps(model.model, data.images[model.modality].take(patients), layer)
    test_y = data.y.loc[fold.test].astype(int)
    auroc = float(roc_auc_score(test_y, model.predict(data, fold.test))) if 0 < test_y.sum() < len(test_y) else np.nan
    corr = pd.DataFrame({"patient": patients, "rank_correlation": [rank_correlation(a, b) for a, b in zip(reference, maps)]})
    return corr, auroc


def sanity_summary(cascade: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The two sanity checks per model, with a verdict: the median rank correlation (and its IQR) of
    the trained network's maps with those of the fully re-initialised network and of the network
    trained on permuted labels; at :data:`SIMILAR` or above the maps are flagged as uninformative."""
    rows = []
    for model, g in cascade.groupby("model", sort=False):
        rows.append((model, REINITIALISED, g[g["step"] == g["step"].max()]["rank_correlation"]))
        h = labels[labels["model"] == model] if "model" in labels else labels.iloc[:0]
        if len(h):
            rows.append((model, PERMUTED, h["rank_correlation"]))
    out = []
    for model, check, r in rows:
        med = float(r.median())
        out.append({"model": model, "check": check, "maps": len(r), "median rank correlation": med,
                    "IQR": f"{r.quantile(0.25):.2f} to {r.quantile(0.75):.2f}",
                    "verdict": "flagged: uninformative" if med >= SIMILAR else "passes"})
    return pd.DataFrame(out)


# ---- the run's image models: maps per fold model, cached in the run ----------------------------------------
def fold_maps(run_dir, name: str, repeat: int, fold: int, net: nn.Module, x: torch.Tensor, patients: list[str],
              layer: str) -> np.ndarray:
    """The Grad-CAM maps of one fold model (``name``, ``repeat``, ``fold``) for ``patients``, computed
    once and kept in ``explain/gradcam/<name>/r{repeat}_f{fold}.npz`` (float16, with the checkpoint's
    SHA-256 and the layer, so that a changed model is never served stale maps)."""
    from pathlib import Path

    from .imaging import file_sha256
    from .models import checkpoint_path

    sha = file_sha256(checkpoint_path(run_dir, name, repeat, fold))
    file = Path(run_dir) / "explain" / "gradcam" / name / f"r{repeat}_f{fold}.npz"
    if file.is_file():
        with np.load(file) as z:
            if str(z["checkpoint_sha256"]) == sha and str(z["layer"]) == layer and list(z["patients"]) == list(patients):
                return z["maps"].astype(np.float32)
    maps = gradcam_maps(net, x, layer)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".partial.npz")
    np.savez_compressed(tmp, maps=maps.astype(np.float16), patients=np.array(patients), layer=np.array(layer),
                        checkpoint_sha256=np.array(sha))
    tmp.replace(file)
    return maps


def image_model_specs(cohort, profile, ran: set[str]) -> list:
    """The image CNNs of chapters 03 and 04 that ran (the fusions' image branches under the
    ``fold_models`` setting), as specs from which their fold models are restored."""
    from .train import IMAGE_MODELS, config_from_profile, image_spec

    cfg = config_from_profile(profile)
    models = {**{k: v[0] for k, v in IMAGE_MODELS.items()}, "ct_cnn_pretrained": "ct"}
    return [image_spec(name, modality, cfg, "", "", True) for name, modality in models.items()
            if name in ran and modality in cohort.modalities]


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

    from .models import restore_fold_models
    from .splits import iter_folds

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
            masks = x[:, 1].numpy() > 0.5 if has_mask else np.zeros((len(x), *x.shape[2:]), bool)
            metrics.append(saliency_metrics(m, masks, patients, dilation_voxels).assign(
                model=spec.name, repeat=fold.repeat, fold=fold.fold,
                label=data.y.loc[patients].to_numpy()))
            if fold.repeat == first:
                maps[spec.name].update(zip(patients, m))
    cols = ["model", "repeat", "fold", "patient", "label"]
    df = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=cols)
    return Saliency(df[cols + [c for c in df.columns if c not in cols]], maps, layers, kept)


def sanity_checks(saliency: Saliency, specs: list, data, splits: pd.DataFrame, seed: int, n_patients: int = 30,
                  progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Both sanity checks for every image model of ``saliency`` on the first fold of the first repeat
    (up to ``n_patients`` of its test patients): the cascading model randomisation and the network
    trained on permuted labels. Returns the cascade rows, the label-randomisation rows (both with a
    ``model`` column) and each permuted-label model's test AUROC."""
    from tqdm.auto import tqdm

    from .splits import iter_folds

    fold = next(iter_folds(splits))
    cascade, labels, aurocs = [], [], {}
    by_name = {s.name: s for s in specs}
    for name in tqdm(list(saliency.layers), desc="sanity checks", unit="model", disable=not progress):
        model = saliency.models[name][(fold.repeat, fold.fold)]
        images = data.images[model.modality]
        patients = [p for p in fold.test if images.has(p)][:n_patients]
        x, layer = images.take(patients), saliency.layers[name]
        ref = np.stack([saliency.maps[name][p] for p in patients])
        cascade.append(cascading_randomisation(model.model, x, layer, patients, seed, reference=ref).assign(model=name))
        corr, aurocs[name] = label_randomisation(by_name[name], data, fold, seed, ref, patients, layer)
        labels.append(corr.assign(model=name))
    return (pd.concat(cascade, ignore_index=True) if cascade else pd.DataFrame(),
            pd.concat(labels, ignore_index=True) if labels else pd.DataFrame(), aurocs)


# ---- the fusion: laboratory importance, modality ablation ---------------------------------------------------
def _fold_tests(splits: pd.DataFrame) -> dict:
    from .splits import iter_folds

    return {(f.repeat, f.fold): f.test for f in iter_folds(splits)}


def permutation_importance(models: dict, data, splits: pd.DataFrame, columns: list[str], repeats: int,
                           seed: int) -> pd.DataFrame:
    """Drop in AUROC on each held-out fold when one table column is shuffled among that fold's test
    patients (``repeats`` shuffles, mean kept), for fold models ``{(repeat, fold): model}``: the same
    definition as the Random Forest's importance of chapter 02 (scikit-learn's)."""
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    from .models import fold_seed

    tests, rows = _fold_tests(splits), []
    for (r, f), model in models.items():
        test = tests[(r, f)]
        y = data.y.loc[test].astype(int).to_numpy()
        if hasattr(model, "remember_scores"):
            model.remember_scores(data, test)
        base = roc_auc_score(y, model.predict(data, test))
        rng = np.random.default_rng(fold_seed(seed, r, f))
        for col in columns:
            drops = []
            for _ in range(repeats):
                table = data.table.copy()
                table.loc[test, col] = rng.permutation(table.loc[test, col].to_numpy())
                drops.append(base - roc_auc_score(y, model.predict(replace(data, table=table), test)))
            rows.append({"repeat": r, "fold": f, "feature": col, "importance": float(np.mean(drops))})
    return pd.DataFrame(rows, columns=["repeat", "fold", "feature", "importance"])


def importance_comparison(fusion: pd.DataFrame, forest: pd.DataFrame | None) -> pd.DataFrame:
    """The laboratory values' importance in the fusion beside the Random Forest's (mean ± SD over
    repeats and folds, and the rank in each), ordered by the fusion's importance."""
    from .tabular import importance_summary

    out = importance_summary(fusion).rename(columns={"mean": "fusion: mean drop in AUROC", "sd": "fusion: SD"})
    out["fusion: rank"] = np.arange(1, len(out) + 1)
    if forest is not None and not forest.empty:
        rf = importance_summary(forest[forest["feature"].isin(out.index)])
        out["Random Forest: mean drop in AUROC"] = rf["mean"]
        out["Random Forest: SD"] = rf["sd"]
        out["Random Forest: rank"] = rf["mean"].rank(ascending=False, method="min").reindex(out.index)
    out.index.name = "laboratory value"
    return out


def format_importance(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`importance_comparison` for the page: drops in AUROC as mean ± SD, and the ranks."""
    out = pd.DataFrame(index=table.index)
    out["fusion: drop in AUROC"] = [f"{m:.3f} ± {s:.3f}" for m, s in
                                    zip(table["fusion: mean drop in AUROC"], table["fusion: SD"])]
    out["fusion: rank"] = table["fusion: rank"].astype(int)
    if "Random Forest: rank" in table.columns:
        out["Random Forest: drop in AUROC"] = [f"{m:.3f} ± {s:.3f}" for m, s in
                                               zip(table["Random Forest: mean drop in AUROC"], table["Random Forest: SD"])]
        out["Random Forest: rank"] = table["Random Forest: rank"].astype("Int64")
    return out


#: The sources a fusion can be ablated by, as the book names them.
SOURCE_NAMES = {"labs": "laboratory values", "pet": "SR-PET", "ct": "CT"}


def modality_ablation(models: dict, data, splits: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Out-of-fold predictions of the fusion fold models with every modality, and with each source
    (laboratory values, SR-PET with its lesion features, CT) masked at inference as if the patients
    lacked it: ``{setting: predictions}`` in the format of :mod:`prrt.evaluate`."""
    from .evaluate import fold_test_rows
    from .fusion import SOURCE
    from .splits import Fold

    tests = _fold_tests(splits)
    first = next(iter(models.values()))
    settings = {"all modalities": ()}
    for source, name in SOURCE_NAMES.items():
        branches = tuple(m for m in first.modalities if SOURCE[m] == source)
        if branches:
            settings[f"without {name}"] = branches
    out = {}
    for setting, without in settings.items():
        parts = []
        for (r, f), model in models.items():
            test = tests[(r, f)]
            parts.append(fold_test_rows(Fold(r, f, [], test), model.predict(data, test, without=without), data.y))
        out[setting] = pd.concat(parts, ignore_index=True)
    return out


def ablation_table(predictions: dict[str, pd.DataFrame], n_boot: int = 1000, seed: int = 0,
                   splits: pd.DataFrame | None = None) -> pd.DataFrame:
    """AUROC (mean ± SD over repeats, percentile-bootstrap 95 % CI) of each ablation setting, and its
    difference from the fusion with every modality; with ``splits``, the p-value of that difference
    (corrected resampled t-test over the same repeats and folds, :func:`prrt.evaluate.compare_models`)."""
    from .evaluate import bootstrap_ci, compare_models, per_repeat_metrics

    rows = []
    full = predictions["all modalities"]
    for setting, pred in predictions.items():
        m = per_repeat_metrics(pred)
        lo, hi = bootstrap_ci(pred, n_boot, seed)["auroc_ci"]
        row = {"setting": setting, "auroc_mean": m["auroc"].mean(), "auroc_sd": m["auroc"].std(ddof=1),
               "ci_low": lo, "ci_high": hi}
        if splits is not None:
            row["p, corrected t-test"] = compare_models(pred, full, splits)["p_corrected_t"] \
                if setting != "all modalities" else np.nan
        rows.append(row)
    out = pd.DataFrame(rows).set_index("setting")
    out.insert(4, "difference from all modalities", out["auroc_mean"] - out.loc["all modalities", "auroc_mean"])
    return out


# ---- risk groups ------------------------------------------------------------------------------------
def risk_tertiles(time, event, risk) -> dict:
    """Patients in thirds of the predicted risk (``low``, ``middle``, ``high``), compared with the
    log-rank test over the three groups (lifelines)."""
    from lifelines.statistics import multivariate_logrank_test

    risk = pd.Series(np.asarray(risk, float))
    group = pd.qcut(risk.rank(method="first"), 3, labels=["low", "middle", "high"]).astype(str).to_numpy()
    res = multivariate_logrank_test(np.asarray(time, float), group, np.asarray(event, int))
    return {"group": group, "p": float(res.p_value), "statistic": float(res.test_statistic)}


# ---- what chapter 05 shows ---------------------------------------------------------------------------
def fusion_spec_of_run(cohort, profile, run_dir, name: str | None = None):
    """The spec of a neural fusion of chapter 04 (default: the laboratory + SR-PET + CT fusion) as the
    run trained it (mechanism and image branches read from its checkpoints), for restoring its fold
    models; ``None`` when the run holds none."""
    from pathlib import Path

    from .fusion import FUSIONS, HEADLINE, FoldModelScores, fusion_config, fusion_modalities, neural_fusion_spec

    name = name or HEADLINE
    found = sorted((Path(run_dir) / "checkpoints" / name).glob("r*_f*.pt"))
    if not found:
        return None
    ck = torch.load(found[0], map_location="cpu", weights_only=True)
    scores = {m: FoldModelScores(run_dir, model, m) for m, model in ck.get("fold_models", {}).items()}
    mods, text = FUSIONS[name]
    spec = neural_fusion_spec(name, "04", text, fusion_modalities(mods, profile), cohort,
                              fusion_config(profile, ck["mechanism"]), fold_models=scores)
    return spec if spec.build is not None else None


def forest_importance(run_dir, name: str = "lab_rf") -> pd.DataFrame | None:
    """The permutation importance chapter 02 wrote for ``name`` (``results/02_permutation_<name>.csv``)."""
    from pathlib import Path

    path = Path(run_dir) / "results" / f"02_permutation_{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def example_patients(risk: pd.Series, labels: pd.Series, threshold: float = 0.5) -> dict[str, str]:
    """A few patients to show, by their mean out-of-fold risk: the highest-risk true positive, the
    most confident true negative and the highest-risk false positive (absent roles are left out)."""
    d = pd.DataFrame({"risk": risk, "label": labels.reindex(risk.index)}).dropna()
    out = {}
    tp = d[(d["label"] == 1) & (d["risk"] >= threshold)]
    tn = d[(d["label"] == 0) & (d["risk"] < threshold)]
    fp = d[(d["label"] == 0) & (d["risk"] >= threshold)]
    if len(tp):
        out["highest-risk true positive"] = tp["risk"].idxmax()
    if len(tn):
        out["true negative"] = tn["risk"].idxmin()
    if len(fp):
        out["false positive"] = fp["risk"].idxmax()
    return out


def format_saliency(summary: pd.DataFrame, index) -> pd.DataFrame:
    """The saliency summary for the page: shares in per cent, p-values as text."""
    from .evaluate import _fmt_p

    out = summary.set_index(index).copy()
    for c in ("mass in mask", "chance", "pointing hits"):
        out[c] = out[c].map(lambda v: f"{100 * v:.1f} %")
    if "p (mass > chance)" in out:
        out["p (mass > chance)"] = out["p (mass > chance)"].map(lambda p: _fmt_p(p) if np.isfinite(p) else "–")
    return out


def example_panels(saliency: Saliency, cohort, profile, cache_dir, risk: pd.Series) -> list[dict]:
    """The panels of :func:`prrt.plots.gradcam_overlays` for the patients of :func:`example_patients`:
    for each, the maps of the fusions' image branches (the PET CNN and the pretrained CT CNN, else the
    CT CNN), upsampled to :func:`display_size` over the input box, on the images resampled there."""
    from .imaging import box_of, display_arrays, preprocess_cohort

    names = [n for n in saliency.maps if n != "ct_cnn" or "ct_cnn_pretrained" not in saliency.maps]
    size = display_size(profile)
    panels = []
    for role, pid in example_patients(risk, cohort.data["label"]).items():
        paths = {m: cohort.image_path(pid, m) for m in cohort.modalities}
        box = box_of(preprocess_cohort(cohort, profile, cache_dir, [pid], progress=False)[pid])
        images = display_arrays(paths, box, size, pid)
        for name in names:
            if pid not in saliency.maps[name]:
                continue
            kind = "pet" if name.startswith("pet") else "ct"
            panels.append({"title": f"{pid}, {role} (risk {risk[pid]:.2f}): {name}", "kind": kind,
                           "image": images["suv" if kind == "pet" else "ct"], "mask": images.get("mask"),
                           "map": upsample(saliency.maps[name][pid][None], size)[0]})
    return panels


def branches_text(profile) -> str:
    """Whether the CNNs whose maps chapter 05 shows are also the fusions' image branches in this run."""
    if getattr(profile, "fusion_image_branches", "end_to_end") == "fold_models":
        return ("In this run these CNNs are also the fusions' SR-PET and CT branches (chapter 4 gives the fusions "
                "their scores), so their maps are the image side of the fusions too.")
    return ("In this run the fusions train SR-PET and CT encoders of their own (end to end); the maps here are of the "
            "unimodal CNNs, which share the fusions' inputs but not their weights.")


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def saliency_text(summary: pd.DataFrame) -> str:
    """The saliency check in words (Markdown), one clause per model, from :func:`summarise_saliency`."""
    if summary.empty:
        return "No image model ran in this run, so there are no maps to check."
    parts = []
    for _, r in summary.iterrows():
        if not r["maps checked"]:
            parts.append(f"`{r['model']}`: no map could be checked (no patient has a lesion in the mask, or the "
                         "network's input has no mask channel)")
            continue
        p = r["p (mass > chance)"]
        verdict = ("more than chance" if p < 0.05 else "not more than chance") if np.isfinite(p) else "untested"
        parts.append(f"`{r['model']}`: {_pct(r['mass in mask'])} of the map's mass in the lesion mask against "
                     f"{_pct(r['chance'])} by chance ({verdict}; Wilcoxon p = {p:.2g}), and its maximum inside the mask "
                     f"in {_pct(r['pointing hits'])} of {int(r['maps checked'])} maps")
    return "In this run: " + "; ".join(parts) + "."


def sanity_text(table: pd.DataFrame, aurocs: dict) -> str:
    """The sanity checks' verdicts in words (Markdown)."""
    if table.empty:
        return "No image model ran in this run, so there are no maps to check."
    parts = []
    for model, g in table.groupby("model", sort=False):
        bits = [f"{r['median rank correlation']:.2f} with the "
                f"{'re-initialised network' if r['check'] == REINITIALISED else 'permuted-label network'}"
                for _, r in g.iterrows()]
        flagged = (g["median rank correlation"] >= SIMILAR).any()
        a = aurocs.get(model, np.nan)
        parts.append(f"`{model}`: median rank correlation {' and '.join(bits)} (the permuted-label network's test AUROC "
                     f"{a:.2f}): " + ("**flagged as uninformative**" if flagged else "the maps depend on what the network learnt"))
    return "; ".join(parts) + "."


def importance_text(table: pd.DataFrame) -> str:
    """Which laboratory values lead inside the fusion and in the Random Forest (Markdown)."""
    if table.empty:
        return "No laboratory value reached the fusion in this run."
    top = list(table.index[:2])
    out = f"Inside the fusion the laboratory values with the largest drop in AUROC were {' and '.join(f'`{t}`' for t in top)}"
    if "Random Forest: rank" in table.columns:
        rf_top = list(table["Random Forest: rank"].sort_values().index[:2])
        same = set(top) == set(rf_top)
        out += (f"; in the Random Forest of chapter 2, {' and '.join(f'`{t}`' for t in rf_top)}"
                + (" (the same two)" if same else ""))
    return out + "."


def ablation_text(table: pd.DataFrame) -> str:
    """The modality ablation in words (Markdown)."""
    full = table.loc["all modalities"]
    parts = [f"with every modality the fusion reached a test-fold AUROC of {full['auroc_mean']:.2f} "
             f"(95 % CI {full['ci_low']:.2f}–{full['ci_high']:.2f})"]
    from .evaluate import p_phrase

    for setting, r in table.drop(index="all modalities").iterrows():
        p = f", p {p_phrase(r['p, corrected t-test'])}" if "p, corrected t-test" in table.columns else ""
        parts.append(f"{setting} {r['auroc_mean']:.2f} ({r['difference from all modalities']:+.2f}{p})")
    worst = table.drop(index="all modalities")["difference from all modalities"].idxmin()
    return "; ".join(parts) + f". Hiding the {worst.removeprefix('without ')} cost the most."
