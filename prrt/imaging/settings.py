"""The settings that determine the preprocessed arrays (and the image cache's key)."""

from __future__ import annotations

from dataclasses import dataclass

#: Bumped whenever preprocessing changes, so that cached arrays of older code are not reused.
PREPROCESS_VERSION = 4


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines the preprocessed arrays (part of the cache key).

    ``input_size_voxels`` (x, y, z); ``field_of_view_mm`` of the ``body`` grid; ``hu_window`` (HU) and
    ``suv_range`` (SUV) mapped to [0, 1]; ``roi`` (``liver``, ``lesions`` or ``body``); for ``liver`` and
    ``lesions``, ``roi_spacing_mm``, the one voxel spacing of every patient's input; ``suv_scale``:
    ``linear`` or ``log`` (how the SUV range is mapped, :func:`prrt.imaging.resample.scale_intensity`).
    """

    input_size_voxels: tuple
    field_of_view_mm: tuple
    hu_window: tuple
    suv_range: tuple
    roi: str = "body"
    roi_spacing_mm: float = 4.0
    suv_scale: str = "linear"

    @classmethod
    def from_profile(cls, profile, size=None, roi: str | None = None) -> "PreprocessSettings":
        """The profile's settings; ``size`` replaces its input size, ``roi`` its region of interest."""
        return cls(tuple(size or profile.input_size_voxels), tuple(profile.field_of_view_mm),
                   tuple(profile.hu_window), tuple(profile.suv_range), roi or profile.roi,
                   float(profile.roi_spacing_mm), str(profile.suv_scale))

    def key(self) -> dict:
        d = {"version": PREPROCESS_VERSION}
        for k, v in self.__dict__.items():
            d[k] = list(v) if isinstance(v, tuple) else v
        if self.roi == "body":  # the region's spacing does not change a body grid
            d.pop("roi_spacing_mm")
        if self.suv_scale == "linear":  # the key of arrays cached before the log scale existed
            d.pop("suv_scale")
        return d
