"""The settings that determine the preprocessed arrays (and the image cache's key)."""

from __future__ import annotations

from dataclasses import dataclass

#: Bumped whenever preprocessing changes, so that cached arrays of older code are not reused.
PREPROCESS_VERSION = 3


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines the preprocessed arrays (part of the cache key).

    ``input_size_voxels`` (x, y, z); ``field_of_view_mm`` of the ``body`` grid; ``hu_window`` (HU) and
    ``suv_range`` (SUV) mapped to [0, 1]; ``roi`` (``body`` or ``lesions``); for ``lesions``,
    ``roi_margin_mm`` added around the lesions on each side and ``roi_min_spacing_mm``, the finest
    voxel spacing allowed (a small tumour burden is not magnified beyond it).
    """

    input_size_voxels: tuple
    field_of_view_mm: tuple
    hu_window: tuple
    suv_range: tuple
    roi: str = "body"
    roi_margin_mm: float = 20.0
    roi_min_spacing_mm: float = 4.0

    @classmethod
    def from_profile(cls, profile, size=None, roi: str | None = None) -> "PreprocessSettings":
        """The profile's settings; ``size`` replaces its input size, ``roi`` its region of interest."""
        return cls(tuple(size or profile.input_size_voxels), tuple(profile.field_of_view_mm),
                   tuple(profile.hu_window), tuple(profile.suv_range), roi or profile.roi,
                   float(profile.roi_margin_mm), float(profile.roi_min_spacing_mm))

    def key(self) -> dict:
        d = {"version": PREPROCESS_VERSION}
        for k, v in self.__dict__.items():
            d[k] = list(v) if isinstance(v, tuple) else v
        if self.roi == "body":  # the lesion settings do not change a body grid
            d.pop("roi_margin_mm"), d.pop("roi_min_spacing_mm")
        return d
