"""The names of the book's models and inputs, in one place: every chapter, table and figure reads them here.

A model's name is the key of its row in ``results/summary.csv``, of ``predictions/<model>.csv`` and of
``checkpoints/<model>/``; the mechanisms of :mod:`prrt.learn` and :mod:`prrt.explain` never name a model (a
test checks that no module outside :mod:`prrt.study` holds one of :data:`MODELS`).
"""

from __future__ import annotations

# ---- models, chapter by chapter ----------------------------------------------------------------------
#: The models of chapter 02 (laboratory values and SR-PET lesion features).
LAB_MODELS = ("lab_rf", "lab_rf_with_cycles", "lab_logreg", "pet_features_rf", "pet_features_logreg",
              "lab_pet_features_rf")
#: The unimodal image models of chapter 03: name -> (modality, description, input set of
#: its achievable AUROC in a synthetic cohort's report).
IMAGE_MODELS = {"pet_cnn": ("pet", "SR-PET, 3D CNN", "pet"), "ct_cnn": ("ct", "CT, 3D CNN", "ct")}
#: Chapter 04's CT CNN whose encoder starts from the pretrained weights.
CT_PRETRAINED = "ct_cnn_pretrained"
#: The models of chapter 04 besides the unimodal ones of chapters 02-03: name -> (modalities, description).
FUSIONS = {
    "lab_pet_fusion": (["labs", "pet"], "laboratory values + SR-PET"),
    "lab_ct_fusion": (["labs", "ct"], "laboratory values + CT"),
    "pet_ct_fusion": (["pet", "ct"], "SR-PET + CT"),
    "lab_pet_ct_fusion": (["labs", "pet", "ct"], "laboratory values + SR-PET + CT"),
}
HEADLINE = "lab_pet_ct_fusion"
#: The control of chapter 04: the fusion network with the laboratory and SR-PET lesion-feature branches only
#: (no CNN branch), trained exactly like the fusions; what the CNN branches add is the fusion minus it.
CONTROL = "lab_petfeatures_net"
#: The laboratory + SR-PET + CT fusion with another mechanism than the profile's: its name.
LATE_FUSION = "lab_pet_ct_late"


def mechanism_variant(mechanism: str) -> str:
    """The name of the laboratory + SR-PET + CT fusion with ``mechanism`` when it is not the headline's."""
    return f"lab_pet_ct_{mechanism}"


#: Every model the book can fit.
MODELS = (*LAB_MODELS, *IMAGE_MODELS, CT_PRETRAINED, *FUSIONS, mechanism_variant("intermediate"),
          mechanism_variant("adaptive"), LATE_FUSION, CONTROL)

#: Each model's sources in a few words (chapter 04's compact table): labs, PET (the CNN), PET features, CT.
SHORT_INPUTS = {
    "lab_rf": "labs · RF", "lab_rf_with_cycles": "labs + cycles · RF", "lab_logreg": "labs · LR",
    "pet_features_rf": "PET features · RF", "pet_features_logreg": "PET features · LR",
    "lab_pet_features_rf": "labs + PET features · RF", "pet_cnn": "PET · CNN", "ct_cnn": "CT · CNN",
    CT_PRETRAINED: "CT · CNN, pretrained", CONTROL: "labs + PET features · net",
    "lab_pet_fusion": "labs + PET", "lab_ct_fusion": "labs + CT", "pet_ct_fusion": "PET + CT",
    HEADLINE: "labs + PET + CT", mechanism_variant("intermediate"): "labs + PET + CT · concat.",
    mechanism_variant("adaptive"): "labs + PET + CT · gate", LATE_FUSION: "labs + PET + CT · stacking",
}
#: The sources of each model that may be a rival of the fusion (laboratory values, SR-PET, CT). The Random
#: Forest with the PRRT cycles is nobody's rival: the number of cycles is known only after treatment (a
#: sensitivity analysis of chapter 02).
MODEL_SOURCES = {
    "lab_rf": {"labs"}, "lab_logreg": {"labs"}, "pet_features_rf": {"pet"},
    "pet_features_logreg": {"pet"}, "lab_pet_features_rf": {"labs", "pet"}, "pet_cnn": {"pet"}, "ct_cnn": {"ct"},
    CT_PRETRAINED: {"ct"}, CONTROL: {"labs", "pet"}, "lab_pet_fusion": {"labs", "pet"},
    "lab_ct_fusion": {"labs", "ct"}, "pet_ct_fusion": {"pet", "ct"}, HEADLINE: {"labs", "pet", "ct"},
    mechanism_variant("intermediate"): {"labs", "pet", "ct"}, mechanism_variant("adaptive"): {"labs", "pet", "ct"},
    LATE_FUSION: {"labs", "pet", "ct"},
}
#: The models that read no image through a CNN (the classical models of chapter 02 on baseline values, and
#: the control).
WITHOUT_CNN = ("lab_rf", "lab_logreg", "pet_features_rf", "pet_features_logreg", "lab_pet_features_rf", CONTROL)
#: The input set of each model: the key of its achievable AUROC in a synthetic cohort's report.
INPUT_SET_OF = {
    "lab_rf": "lab", "lab_logreg": "lab", "pet_features_rf": "pet_features", "pet_features_logreg": "pet_features",
    "lab_pet_features_rf": "lab_pet_features", "pet_cnn": "pet", "ct_cnn": "ct", CT_PRETRAINED: "ct",
    CONTROL: "lab_pet_features", "lab_pet_fusion": "lab_pet", "lab_ct_fusion": "lab_ct", "pet_ct_fusion": "pet_ct",
    HEADLINE: "lab_pet_ct", mechanism_variant("intermediate"): "lab_pet_ct",
    mechanism_variant("adaptive"): "lab_pet_ct", LATE_FUSION: "lab_pet_ct",
}

#: The seven models of the study's comparison (its Table 3).
SEVEN = ["lab_rf", "pet_cnn", "ct_cnn", "lab_pet_fusion", "lab_ct_fusion", "pet_ct_fusion", HEADLINE]
#: Models for the survival view of chapter 02, in order of preference: baseline predictors only.
RISK_GROUP_MODELS = ("lab_pet_features_rf", "lab_rf", "pet_features_rf")
#: The model whose numbers the checklist quotes, in order of preference: chapter 04's headline fusion, else
#: the laboratory Random Forest, else the first model that ran.
HEADLINE_ORDER = (HEADLINE, "lab_rf")
#: The chapter that fits each model whose fold checkpoints another chapter reads.
MODEL_CHAPTERS = {"pet_cnn": "03", "ct_cnn": "03", CT_PRETRAINED: "04"}

# ---- inputs ------------------------------------------------------------------------------------------
#: How the inputs column names a modality (the fusion modalities).
MODALITY_NAMES = {"labs": "laboratory values", "pet_features": "SR-PET lesion features", "pet": "SR-PET", "ct": "CT"}
#: The sources a fusion can be ablated by, as the book names them.
SOURCE_NAMES = {"labs": "laboratory values", "pet": "SR-PET", "ct": "CT"}


#: A synthetic cohort's input sets (the keys of its achievable AUROCs, :data:`prrt.data.synthetic.INPUT_SETS`).
INPUT_SET_NAMES = {
    "lab": "laboratory values", "pet_features": "SR-PET lesion features",
    "lab_pet_features": "laboratory values + SR-PET lesion features", "pet": "SR-PET images", "ct": "CT images",
    "pet_ct": "SR-PET + CT images", "lab_pet": "laboratory values + SR-PET images",
    "lab_ct": "laboratory values + CT images", "lab_pet_ct": "laboratory values + SR-PET + CT images",
}
#: The synthetic generator's latent factors, as the book names them.
LATENT_NAMES = {
    "lab": "biochemical activity, through the noise of the laboratory values",
    "pet": "somatostatin-receptor expression of the lesions",
    "ct": "receptor-positive tumour burden",
    "mismatch": "receptor-negative (mismatch) liver metastases",
}


def inputs_without(inputs: str, missing: list[str]) -> str:
    """``inputs`` with the modalities it lacks in this manifest named, so that the summary tells the truth."""
    if not missing:
        return inputs
    return f"{inputs}; without {' or '.join(MODALITY_NAMES.get(m, m) for m in missing)} (not in the manifest)"
