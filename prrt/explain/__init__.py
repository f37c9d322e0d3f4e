"""Explanations that can be checked: Grad-CAM, saliency numbers and sanity checks, importance inside a
model, modality ablation.

What other subpackages may use is listed in ``__all__``; the rest is private to this one.
"""

from .ablation import ablation_table, modality_ablation
from .gradcam import display_size, upsample
from .importance import importance_comparison, leaders, permutation_importance
from .saliency import (
    NULLS,
    Saliency,
    compare_with_nulls,
    image_saliency,
    summarise_saliency,
)
from .sanity import REINITIALISED, SIMILAR, sanity_checks, sanity_summary

__all__ = [
    "NULLS",
    "REINITIALISED",
    "SIMILAR",
    "Saliency",
    "ablation_table",
    "compare_with_nulls",
    "display_size",
    "image_saliency",
    "importance_comparison",
    "leaders",
    "modality_ablation",
    "permutation_importance",
    "sanity_checks",
    "sanity_summary",
    "summarise_saliency",
    "upsample",
]
