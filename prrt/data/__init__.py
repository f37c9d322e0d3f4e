"""The data of a run: the manifest and its one door (:func:`load_cohort`), the checks, the
:class:`Cohort`, privacy (pseudonyms, the publication guard), the synthetic generator and DICOM import.

What other subpackages may use is listed in ``__all__``; the rest is private to this one.
"""

from .checks import group_names
from .cohort import Cohort
from .dicom_import import import_dicom
from .dicom_scan import DicomImportError
from .external import check_compatible, incompatible, merge_cohorts
from .load import load_cohort
from .manifest import ManifestError
from .phantoms import generate_ct_collection
from .privacy import checkable_tokens, find_identifiers, fixed_text, identifier_tokens
from .synthetic import (
    INPUT_SETS,
    SyntheticConfig,
    exact_parameter_aurocs,
    generate,
    write_manifest,
)

__all__ = [
    "INPUT_SETS",
    "Cohort",
    "DicomImportError",
    "ManifestError",
    "SyntheticConfig",
    "check_compatible",
    "checkable_tokens",
    "exact_parameter_aurocs",
    "find_identifiers",
    "fixed_text",
    "generate",
    "generate_ct_collection",
    "group_names",
    "identifier_tokens",
    "import_dicom",
    "incompatible",
    "load_cohort",
    "merge_cohorts",
    "write_manifest",
]
