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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..evaluation import (
    mean_probability,
    read_predictions,
    risk_tertiles,
)
from ..explain import (
    Saliency,
    ablation_table,
    compare_with_nulls,
    display_size,
    image_saliency,
    importance_comparison,
    modality_ablation,
    permutation_importance,
    sanity_checks,
    sanity_summary,
    summarise_saliency,
    upsample,
)
from ..imaging import box_of, display_arrays, preprocess_cohort
from ..learn import (
    SCORE_BRANCHES,
    FoldModelScores,
    config_from_profile,
    fusion_config,
    image_data,
    image_spec,
    restore_fold_models,
)
from ..timing import phase
from .ch04_fusion import (
    chapter_table,
    ct_encoder,
    fusion_modalities,
    neural_fusion_spec,
)
from .ch05_words import format_saliency, sanity_text
from .names import (
    CT_PRETRAINED,
    FUSIONS,
    HEADLINE,
    IMAGE_MODELS,
    MODEL_CHAPTERS,
    SOURCE_NAMES,
)


def image_model_specs(cohort, profile, ran: set[str], ct_state: dict | None = None) -> list:
    """The image CNNs of chapters 03 and 04 that ran (the fusions' image branches under the
    ``fold_models`` setting), as specs from which their fold models are restored; the pretrained CT CNN's
    spec starts from the pretrained encoder ``ct_state`` (:func:`pretrained_ct_state`), as chapter 04's did, so
    that the permuted-label sanity check retrains it from the same starting point."""
    cfg = config_from_profile(profile)
    models = {**{k: v[0] for k, v in IMAGE_MODELS.items()}, CT_PRETRAINED: "ct"}
    return [image_spec(name, modality, cfg, "", "", True, encoder_weights=ct_state if name == CT_PRETRAINED else None)
            for name, modality in models.items() if name in ran and modality in cohort.modalities]


def pretrained_ct_state(ctx, ran: set[str], ct_weights: str = "", ct_weights_prefix: str = "") -> dict | None:
    """The weights chapter 04's pretrained CT CNN started from (:func:`prrt.study.ch04_fusion.ct_encoder`: the
    same file, or the same pretraining, which its cache keeps), when that model ran; None otherwise."""
    if CT_PRETRAINED not in ran:
        return None
    state, _, _ = ct_encoder(ctx, ct_weights, ct_weights_prefix)
    return state


# ---- what chapter 05 shows ---------------------------------------------------------------------------
def fusion_spec_of_run(cohort, profile, run_dir, name: str | None = None):
    """The spec of a neural fusion of chapter 04 (default: the laboratory + SR-PET + CT fusion) as the
    run trained it (mechanism and image branches read from its checkpoints), for restoring its fold
    models; ``None`` when the run holds none."""
    name = name or HEADLINE
    found = sorted((Path(run_dir) / "checkpoints" / name).glob("r*_f*.pt"))
    if not found:
        return None
    ck = torch.load(found[0], map_location="cpu", weights_only=True)
    crossed = set(ck.get("cross_fitted", []))
    scores = {m: FoldModelScores(run_dir, model, m, MODEL_CHAPTERS.get(model, ""), m in crossed)
              for m, model in ck.get("fold_models", {}).items()}
    mods, text = FUSIONS[name]
    spec = neural_fusion_spec(name, "04", text, fusion_modalities(mods, profile), cohort,
                              fusion_config(profile, ck["mechanism"]), fold_models=scores)
    return spec if spec.build is not None else None


def forest_importance(run_dir, name: str = "lab_rf") -> pd.DataFrame | None:
    """The permutation importance chapter 02 wrote for ``name`` (``results/02_permutation_<name>.csv``)."""
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


def example_panels(saliency: Saliency, cohort, profile, cache_dir, risk: pd.Series) -> list[dict]:
    """The panels of :func:`prrt.study.figures.gradcam_overlays` for the patients of :func:`example_patients`:
    for each, the maps of the fusions' image branches (the PET CNN and the pretrained CT CNN, else the
    CT CNN), upsampled to :func:`display_size` over the input box, on the images resampled there."""
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
    if getattr(profile, "fusion_image_branches", "end_to_end") in SCORE_BRANCHES:
        return ("In this run these CNNs are also the fusions' SR-PET and CT branches (chapter 4 gives the fusions "
                "their scores), so their maps are the image side of the fusions too.")
    return ("In this run the fusions train SR-PET and CT encoders of their own (end to end); the maps here are of the "
            "unimodal CNNs, which share the fusions' inputs but not their weights.")


# ---- the chapter's steps -----------------------------------------------------------------------------
#: How the page names a map's outcome group.
OUTCOMES = {1.0: "short PFS", 0.0: "long PFS"}


def model_data(ctx):
    """The data every model of chapters 03 and 04 was fitted on (the chapter table of chapter 04 and the image
    inputs), for restoring their fold models."""
    return image_data(ctx.cohort, ctx.profile, ctx.cache_dir, table=chapter_table(ctx.cohort, ctx.run_dir),
                      progress=False)


def saliency_of_run(ctx, specs: list, data) -> Saliency | None:
    """Grad-CAM maps of every test-fold patient for the image CNNs ``specs`` (:func:`image_model_specs`), from the
    fold models that predicted them (the profile's ``gradcam_repeats``, the mask grown by ``mask_dilation_voxels``),
    with their numbers written to ``results/05_saliency.csv`` and those of the nulls' maps to
    ``results/05_saliency_nulls.csv``; ``None`` when no image CNN ran."""
    if not specs:
        return None
    p = ctx.profile
    saliency = image_saliency(specs, data, ctx.splits, ctx.seed, ctx.run_dir, repeats=p.gradcam_repeats or None,
                              dilation_voxels=p.mask_dilation_voxels)
    saliency.metrics.to_csv(ctx.path("results", "05_saliency.csv"), index=False)
    saliency.nulls.to_csv(ctx.path("results", "05_saliency_nulls.csv"), index=False)
    return saliency


def gradcam_layers_text(saliency: Saliency | None) -> str:
    """The layer whose Grad-CAM each model's maps show (Markdown)."""
    if saliency is None:
        return "no image model ran"
    return ", ".join(f"`{m}`: `{layer}`" for m, layer in saliency.layers.items())


def saliency_summary(saliency: Saliency | None) -> pd.DataFrame:
    """The saliency numbers per model (:func:`prrt.explain.summarise_saliency`); empty without maps."""
    return summarise_saliency(saliency.metrics) if saliency is not None else pd.DataFrame()


def saliency_against_nulls(saliency: Saliency | None) -> pd.DataFrame:
    """Each model's saliency numbers against the nulls (:func:`prrt.explain.compare_with_nulls`); empty without maps
    or without a mask channel."""
    if saliency is None or saliency.nulls.empty:
        return pd.DataFrame()
    return compare_with_nulls(saliency.metrics, saliency.nulls)


def saliency_by_outcome(saliency: Saliency) -> pd.DataFrame:
    """The saliency numbers per model and outcome group (short or long PFS), as the page shows them."""
    metrics = saliency.metrics.assign(outcome=saliency.metrics["label"].map(OUTCOMES))
    table = format_saliency(summarise_saliency(metrics, by=["model", "outcome"]), ["model", "outcome"])
    return table[["maps checked", "mass in mask", "chance", "pointing hits"]]


def dilation_text(profile) -> str:
    """How far the lesion mask is grown before the maps are compared with it, in words."""
    n = profile.mask_dilation_voxels
    return f"{n} voxel{'s' if n != 1 else ''}"


def example_panels_of_run(ctx, saliency: Saliency, specs: list, ran: set[str]) -> list[dict]:
    """:func:`example_panels` for the patients chosen by the mean out-of-fold risk of the laboratory + SR-PET + CT
    fusion (of the first CNN of ``specs`` when the fusion did not run)."""
    reference = HEADLINE if HEADLINE in ran else specs[0].name
    risk = mean_probability(read_predictions(ctx.run_dir, reference))
    return example_panels(saliency, ctx.cohort, ctx.profile, ctx.cache_dir, risk)


@dataclass
class Sanity:
    """The sanity checks of the maps (:func:`prrt.explain.sanity_checks`)."""

    cascade: pd.DataFrame  # model randomisation: rank correlation with the real maps, layer by layer
    labels: pd.DataFrame  # data randomisation: the same for the network trained on permuted labels
    summary: pd.DataFrame  # median rank correlation per model and check
    aurocs: dict  # the permuted-label network's test AUROC, per model

    def table(self) -> pd.DataFrame:
        """The summary as the page shows it (one row per model and check, two decimals, short headers so that it fits
        the text column)."""
        return self.summary.set_index(["model", "check"]).round(2).rename(columns={
            "median |rank correlation|": "|ρ| median", "IQR": "|ρ| IQR", "median SSIM": "SSIM median"})


def sanity_of_run(ctx, saliency: Saliency | None, specs: list, data) -> Sanity | None:
    """Both sanity checks on the test patients of the first fold (at most the profile's ``sanity_patients``),
    written to ``results/05_model_randomisation.csv`` and ``results/05_label_randomisation.csv`` (the permuted-label
    networks' test AUROCs to ``results/05_label_randomisation_auroc.csv``); ``None`` without maps."""
    if saliency is None:
        return None
    cascade, labels, aurocs = sanity_checks(saliency, specs, data, ctx.splits, ctx.seed, ctx.profile.sanity_patients)
    cascade.to_csv(ctx.path("results", "05_model_randomisation.csv"), index=False)
    labels.to_csv(ctx.path("results", "05_label_randomisation.csv"), index=False)
    pd.DataFrame({"model": list(aurocs), "test_auroc": list(aurocs.values())}).to_csv(
        ctx.path("results", "05_label_randomisation_auroc.csv"), index=False)
    return Sanity(cascade, labels, sanity_summary(cascade, labels), aurocs)


def sanity_verdict(sanity: Sanity | None) -> str:
    """:func:`sanity_text` of the run's checks (Markdown), also without maps."""
    return sanity_text(sanity.summary, sanity.aurocs) if sanity is not None else sanity_text(pd.DataFrame(), {})


def restore_fusion(ctx, data, ran: set[str]) -> tuple[dict, list[str]]:
    """The fold models of the laboratory + SR-PET + CT fusion of chapter 04, restored from their checkpoints (and
    checked against the predictions that chapter reported), and the laboratory values of its laboratory branch:
    ``({(repeat, fold): model}, labs)``; no models when the fusion did not run, no labs without that branch."""
    spec = fusion_spec_of_run(ctx.cohort, ctx.profile, ctx.run_dir) if HEADLINE in ran else None
    with phase("restoring fold models", model=spec.name if spec else None):
        models = restore_fold_models(spec, data, ctx.splits, ctx.seed, ctx.run_dir) if spec else {}
    labs = list(ctx.cohort.labs) if models and "labs" in spec.build(0).modalities else []
    return models, labs


def no_importance_line(fusion_models: dict) -> str:
    """Why there is no laboratory importance inside the fusion in this run."""
    why = "did not run" if not fusion_models else "has no laboratory branch in this manifest"
    return f"The laboratory + SR-PET + CT fusion {why}, so there is no laboratory importance inside it to measure."


def lab_importance(ctx, fusion_models: dict, data, labs: list[str]) -> tuple[pd.DataFrame, bool]:
    """The permutation importance of each laboratory value inside the fusion on the held-out folds (written to
    ``results/05_fusion_permutation.csv``) beside that of chapter 02's Random Forest
    (:func:`prrt.explain.importance_comparison`); the flag says whether chapter 02 wrote the forest's."""
    imp = permutation_importance(fusion_models, data, ctx.splits, labs, ctx.profile.permutation_repeats, ctx.seed)
    imp.to_csv(ctx.path("results", "05_fusion_permutation.csv"), index=False)
    forest = forest_importance(ctx.run_dir)
    return importance_comparison(imp, forest), forest is not None


def ablation_of_run(ctx, fusion_models: dict, data) -> pd.DataFrame:
    """The fusion's test-fold AUROC with every modality and with each source hidden (:data:`SOURCE_NAMES`), with
    bootstrap CIs and the p-value of each difference on the shared splits; written to
    ``results/05_modality_ablation.csv``."""
    ablation = ablation_table(modality_ablation(fusion_models, data, ctx.splits, SOURCE_NAMES),
                              n_boot=ctx.profile.n_bootstrap, seed=ctx.seed, splits=ctx.splits)
    ablation.to_csv(ctx.path("results", "05_modality_ablation.csv"))
    return ablation


@dataclass
class RiskTertiles:
    """Patients in thirds of a model's mean out-of-fold risk, and their PFS."""

    model: str
    time: pd.Series  # PFS, months
    event: pd.Series  # 1 = progression or death
    group: np.ndarray  # each patient's third: low, middle or high
    p_value: float  # log-rank test over the three groups
    statistic: float  # its chi-square
    order = ("low", "middle", "high")

    def line(self) -> str:
        """The log-rank test in one line."""
        return f"log-rank test over the three groups: chi² = {self.statistic:.1f}, p = {self.p_value:.2g}"


def risk_tertiles_of_run(ctx, ran: set[str]) -> RiskTertiles | None:
    """:class:`RiskTertiles` of the laboratory + SR-PET + CT fusion; ``None`` without PFS times or fusion."""
    if not ctx.cohort.has_survival or HEADLINE not in ran:
        return None
    risk = mean_probability(read_predictions(ctx.run_dir, HEADLINE))
    d = ctx.cohort.data.loc[risk.index]
    thirds = risk_tertiles(d["pfs_months"], d["event"], risk)
    return RiskTertiles(HEADLINE, d["pfs_months"], d["event"], thirds["group"], thirds["p"], thirds["statistic"])
