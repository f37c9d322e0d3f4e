"""Chapter 03: the unimodal image CNNs (SR-PET, CT), what their inputs hold, and how they compare with the
laboratory model. Their training engine, shared by every image model (:mod:`prrt.learn`):

* **Data in memory.** Preprocessed tensors come from the imaging cache once
  (:func:`image_tensors`) and stay in memory as one tensor, so an epoch re-reads no file.
* **Device.** CUDA when present, else CPU (:func:`select_device`). On a GPU: bf16 autocast and cuDNN
  autotuning; on the CPU: float32 and deterministic algorithms, so that the same seed gives the same
  predictions. Images and convolution weights are channels-last (``channels_last_3d``) on both (3D
  convolutions and pooling run faster so); a network without convolutions trains on one CPU thread
  (:func:`prrt.learn.training.threads_for`).
* **Class imbalance.** Binary cross-entropy with ``pos_weight = n_long / n_short`` of the training
  patients; the test predictions are then prior-corrected with the fitting part's share of short
  PFS (:func:`prrt.evaluation.prior_correction`), so that they read as risks.
* **Schedule and the kept weights.** AdamW with a cosine-annealed learning rate over the profile's
  epochs; by default (``selection = "last"``) the weights after the last epoch are kept.
  ``selection = "val_loss"`` keeps the epoch with the lowest inner-validation loss instead: on the
  tuning cohort (generator seed 7) that choice, made on ~15 validation patients, kept one of the
  first five epochs in 19 of 42 folds (see benchmarks/DESIGN.md).
* **Inner validation.** With the profile's ``val_fraction`` > 0, each training fold is split once more,
  stratified, into a part that fits the network and a validation part whose loss and AUROC per epoch join
  the learning curves (and that selects the epoch with ``selection = "val_loss"``); the ``demo`` profile
  holds none back. The test fold is never seen before its single prediction.
* **Augmentation** on training batches only: a random affine (rotation up to ±0.1 rad, scaling
  ±5 %, translation ±5 % of the field of view) applied to the whole batch at once with MONAI's
  ``AffineTransform`` layer, and a random intensity scaling of ±10 %.
* **Records.** A tqdm progress bar per fold; the best checkpoint (``checkpoints/<model>/r{repeat}_f{fold}.pt``)
  and the training curve (loss and validation AUROC per epoch) per repeat and fold.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from ..evaluation import (
    format_summary,
    mean_training_patients,
    pairwise_table,
    read_predictions,
)
from ..imaging import (
    box_summary,
    format_signal_table,
    input_boxes,
    prepare_inputs,
    signal_table_for,
)
from ..learn import (
    config_from_profile,
    count_weights,
    image_data,
    image_spec,
    select_device,
)
from .ch01_cohort import pick_example_patients
from .names import IMAGE_MODELS
from .notebook import fit_models, models_that_ran, synthetic_report, table_from_dict
from .reported import STUDY_REPORTED, auprc_reading, comparison_tables

#: The laboratory model of chapter 02 that the networks are compared with.
LAB_MODEL = "lab_rf"
#: Chapter 02's models on the SR-PET lesion features, and what the reading calls them.
FEATURE_MODELS = {"pet_features_rf": "Random Forest", "pet_features_logreg": "logistic regression"}


def input_description(profile, base: str) -> str:
    """``base`` (e.g. "SR-PET, 3D CNN") with the input the profile gives it: mask channel and region."""
    modality, _, net = base.partition(", ")
    mask = (" + lesion mask and liver" if profile.liver_in_mask_channel else " + lesion mask") if profile.mask_channel \
        else ""
    where = {"liver": "liver-centred", "lesions": "lesion-centred"}.get(profile.roi, "whole body")
    return f"{modality}{mask} ({where}), {net}"


def image_specs(cohort, profile, chapter: str = "03") -> list:
    """The PET CNN and the CT CNN of chapter 03."""
    cfg = config_from_profile(profile)
    return [image_spec(name, modality, cfg, chapter, input_description(profile, description),
                       modality in cohort.modalities, bound)
            for name, (modality, description, bound) in IMAGE_MODELS.items()]


# ---- what chapter 03 shows ---------------------------------------------------------------------------
def training_patients_per_fold(ctx) -> int:
    """Training patients per fold of the run's shared splits, averaged over every repeat and fold (rounded)."""
    return mean_training_patients(ctx.splits)


def network_inputs(ctx) -> dict:
    """The networks' inputs of every patient, ``{roi: {pseudonym: arrays}}``: the profile's region of interest
    and the other one for comparison (each patient's box written to ``inputs/boxes_<roi>.csv``); empty when the
    manifest names no CT or PET."""
    return prepare_inputs(ctx.cohort, ctx.profile, ctx.cache_dir, ctx.run_dir)


def input_grid_tables(inputs: dict, profile) -> dict[str, pd.DataFrame]:
    """For each region of interest of ``inputs``, a heading (is it this profile's?) and the summary of its
    boxes: how many patients got each kind of box, and its extent and voxel spacing."""
    return {f"Input grids, roi = {roi!r}" + (" (this profile's)" if roi == profile.roi else " (for comparison)"):
            box_summary(input_boxes(arrays)) for roi, arrays in inputs.items()}


def example_inputs(ctx, inputs: dict) -> tuple[dict, dict]:
    """Two patients (one of each PFS group, chosen by the seed) as the networks receive them, on the profile's
    region of interest: ``({pseudonym: arrays}, {pseudonym: title})``."""
    arrays = inputs[ctx.profile.roi]
    shown = [p for p in pick_example_patients(ctx.cohort, 2, ctx.seed) if p in arrays]
    group = {1.0: "short PFS", 0.0: "long PFS"}
    titles = {p: f"{p} · {group.get(ctx.cohort.data.at[p, 'label'], 'no label')}" for p in shown}
    return {p: arrays[p] for p in shown}, titles


def input_signal_table(ctx, inputs: dict) -> pd.DataFrame:
    """The AUROC of a few plain statistics of the networks' inputs, per modality and region of interest, as the
    page shows them; the numbers are written to ``results/03_input_signal.csv``."""
    signal = signal_table_for(inputs, ctx.cohort)
    signal.to_csv(ctx.path("results", "03_input_signal.csv"), index=False)
    return format_signal_table(signal)


class TrainingSetup(NamedTuple):
    """How the profile trains the image networks."""

    device: object  # the torch device the networks train on
    settings: pd.DataFrame  # every training setting, one row each
    weights: int  # trainable weights of each network


def training_setup(profile) -> TrainingSetup:
    """The device, the training settings and the size of each network for ``profile`` (with the lesion mask as
    a second input channel when the profile says so)."""
    cfg = config_from_profile(profile)
    return TrainingSetup(select_device(cfg.device), table_from_dict(cfg.to_dict(), "training setting"),
                         count_weights(cfg, in_channels=2 if profile.mask_channel else 1))


def fit_chapter_models(ctx, inputs: dict) -> tuple[dict, pd.DataFrame]:
    """Cross-validate the PET CNN and the CT CNN (:func:`image_specs`) on the inputs of the profile's region of
    interest; returns their results and the run's summary (with the chapter's rows)."""
    data = image_data(ctx.cohort, ctx.profile, ctx.cache_dir, arrays=inputs.get(ctx.profile.roi))
    return fit_models(ctx, image_specs(ctx.cohort, ctx.profile), data)


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows of the networks and of the laboratory model, as the book shows them."""
    return format_summary(summary[summary["model"].isin([LAB_MODEL, *IMAGE_MODELS])])


def learning_curves(results: dict) -> dict[str, pd.DataFrame]:
    """Each network's training curves (loss and validation AUROC per repeat, fold and epoch)."""
    return {n: r.curves for n, r in results.items()}


def with_lab_model(ctx, results: dict, summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The networks' out-of-fold predictions and, when it ran in chapter 02, the laboratory model's."""
    compare = {n: r.predictions for n, r in results.items()}
    if LAB_MODEL in models_that_ran(summary):
        compare[LAB_MODEL] = read_predictions(ctx.run_dir, LAB_MODEL)
    return compare


def paired_comparison(compare: dict[str, pd.DataFrame], splits: pd.DataFrame) -> pd.DataFrame | None:
    """Each network against the laboratory model (paired tests on the shared splits); ``None`` when either side
    is missing."""
    if LAB_MODEL not in compare or len(compare) < 2:
        return None
    return pairwise_table(compare, splits, reference=LAB_MODEL)


def comparison_with_study(ctx, summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The networks and the laboratory model beside the study's numbers, with the achievable AUROC of each modality
    on a synthetic cohort (:func:`prrt.study.reported.comparison_tables`)."""
    keys = {name: bound for name, (_, _, bound) in IMAGE_MODELS.items()} | {LAB_MODEL: "lab"}
    return comparison_tables(ctx.cohort, summary[summary["model"].isin(keys)], keys)


def reading_of_the_networks(ctx, summary: pd.DataFrame) -> str:
    """What the networks' AUROCs say beside what their images could show and beside the lesion features.

    One sentence per network that ran: its mean AUROC with its 95 % interval and, on a synthetic cohort, the
    achievable AUROC of its images (with the generator's bootstrap interval when the report has one) and
    whether the two intervals overlap, and (when the page wrote its input-signal table) how it stands beside the
    best single statistic of its input. Then one on the best of chapter 02's models on the SR-PET lesion features
    (:data:`FEATURE_MODELS`; with their achievable AUROC). Empty when no network ran.
    """
    ran = summary[summary["status"] == "ran"].set_index("model")
    nets = [m for m in IMAGE_MODELS if m in ran.index]
    if not nets:
        return ""
    report = synthetic_report(ctx.cohort) or {}
    bound, interval = report.get("achievable_auroc", {}), report.get("achievable_auroc_interval", {})

    def ci(m):
        lo, hi = ran.at[m, "auroc_ci_low"], ran.at[m, "auroc_ci_high"]
        return (float(lo), float(hi)) if pd.notna(lo) and pd.notna(hi) else None

    statistics = _best_input_statistics(ctx)
    parts = []
    for m in nets:
        desc, key = IMAGE_MODELS[m][1], IMAGE_MODELS[m][2]
        # every difference is of the two-decimal numbers the sentence shows, so that the words add up
        auc, own = round(float(ran.at[m, "auroc_mean"]), 2), ci(m)
        text = f"The {desc} reached a mean AUROC of {auc:.2f}" + (f" ({own[0]:.2f}–{own[1]:.2f})" if own else "")
        if key in bound:
            gap = round(bound[key], 2) - auc
            text += (f", {gap:.2f} below the {bound[key]:.2f} that a perfect reader of its images would reach"
                     if gap > 0 else f", at or above the {bound[key]:.2f} that its images allow (by chance: no model "
                     "exceeds it in expectation)")
            if key in interval and own:
                lo, hi = interval[key]
                text += (f"; its interval lies below the bound's ({lo:.2f}–{hi:.2f})" if own[1] < lo else
                         f"; the two intervals overlap (the bound's: {lo:.2f}–{hi:.2f}), so this cohort cannot tell "
                         "how far below it the network really is")
        if IMAGE_MODELS[m][0] in statistics:
            name, value = statistics[IMAGE_MODELS[m][0]]
            value = round(value, 2)
            d = auc - value
            text += (f"; it is {abs(d):.2f} {'above' if d > 0 else 'below'} the best single statistic of its input "
                     f"({name}, {value:.2f}, read on all patients in its better direction)" if abs(d) >= 0.005 else
                     f"; it is level with the best single statistic of its input ({name}, {value:.2f})")
        parts.append(text + ".")
    features = [m for m in FEATURE_MODELS if m in ran.index]
    if features:
        best = max(features, key=lambda m: float(ran.at[m, "auroc_mean"]))
        f, fci = round(float(ran.at[best, "auroc_mean"]), 2), ci(best)
        others = [m for m in features if m != best]
        inside = ([f"{fci[0]:.2f}–{fci[1]:.2f}"] if fci else []) + [
            f"the {FEATURE_MODELS[m]} {float(ran.at[m, 'auroc_mean']):.2f}" for m in others]
        text = (f"The best model of chapter 2 on the SR-PET lesion features, the {FEATURE_MODELS[best]}, reached {f:.2f}"
                + (f" ({'; '.join(inside)})" if inside else ""))
        if "pet_features" in bound:
            text += f", with an achievable AUROC of {bound['pet_features']:.2f} for those features"
        rel = []
        for m in nets:
            d = round(float(ran.at[m, "auroc_mean"]), 2) - f
            rel.append(f"the {IMAGE_MODELS[m][1]} is {abs(d):.2f} {'above' if d > 0 else 'below'} it" if abs(d) >= 0.005
                       else f"the {IMAGE_MODELS[m][1]} is level with it")
        text += "; " + " and ".join(rel) + " (a difference of means; this page makes no paired test against it)"
        parts.append(text + ".")
    return " ".join(parts)


def _best_input_statistics(ctx) -> dict[str, tuple[str, float]]:
    """For each modality of the input-signal table (``results/03_input_signal.csv``), on the profile's input: the
    statistic with the highest AUROC and that AUROC; empty without the table."""
    path = ctx.run_dir / "results" / "03_input_signal.csv"
    if not path.is_file():
        return {}
    t = pd.read_csv(path)
    t = t[t["input"] == ctx.profile.roi].dropna(subset=["auroc_either_direction"])
    best = t.loc[t.groupby("modality")["auroc_either_direction"].idxmax()]
    return {str(r["modality"]): (str(r["statistic"]), float(r["auroc_either_direction"])) for _, r in best.iterrows()}


def page_numbers(profile) -> dict[str, str]:
    """The numbers chapter 03's prose quotes, as text to glue: the study's AUROC of each network, the profile's
    input grid and intensity ranges, and the reading of the study's AUPRC (:func:`auprc_reading`)."""
    study = STUDY_REPORTED.set_index("study model")["AUROC"]
    size = " × ".join(str(int(n)) for n in profile.input_size_voxels)
    spacing = " × ".join(f"{s:g}" for s in dict.fromkeys(profile.voxel_spacing_mm))
    extent = " × ".join(f"{n * s:g}" for n, s in zip(profile.input_size_voxels, profile.voxel_spacing_mm))
    lo, hi = profile.hu_window
    return {"study_pet_cnn_auroc": study["3D CNN, SR-PET"], "study_ct_cnn_auroc": study["3D CNN, CT"],
            "input_grid": f"{size} voxels of {spacing} mm ({extent} mm)",
            "suv_range": f"SUV {profile.suv_range[0]:g}–{profile.suv_range[1]:g}"
                         + (" as log(1 + SUV)" if profile.suv_scale == "log" else ""),
            "hu_window": f"{lo:g} to {hi:g}".replace("-", "−"), **auprc_reading()}
