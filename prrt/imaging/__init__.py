"""Images, file by file and patient by patient: reading and checking NIfTI files, resampling (TorchIO),
the region of interest, the preprocessing chain to the network inputs, lesion (SR-PET) features, the
image cache.

What other subpackages may use is listed in ``__all__``; the rest is private to this one.
"""

from .boxes import field_of_view_bounds_mm, lesion_bounds_mm, voxels_inside
from .inputs import (
    LIVER_IN_MASK_CHANNEL,
    box_summary,
    format_signal_table,
    lesions_in_mask_channel,
    mask_channel_array,
    prepare_inputs,
    signal_table_for,
)
from .io import ImageError, read_header, read_image
from .lesions import FEATURES, cohort_features
from .preprocess import (
    ImageCache,
    box_of,
    display_arrays,
    input_boxes,
    preprocess_cohort,
)
from .settings import PreprocessSettings
from .threads import default_workers, each_patient

__all__ = [
    "FEATURES",
    "LIVER_IN_MASK_CHANNEL",
    "ImageCache",
    "ImageError",
    "PreprocessSettings",
    "box_of",
    "box_summary",
    "cohort_features",
    "default_workers",
    "display_arrays",
    "each_patient",
    "field_of_view_bounds_mm",
    "format_signal_table",
    "input_boxes",
    "lesion_bounds_mm",
    "lesions_in_mask_channel",
    "mask_channel_array",
    "prepare_inputs",
    "preprocess_cohort",
    "read_header",
    "read_image",
    "signal_table_for",
    "voxels_inside",
]
