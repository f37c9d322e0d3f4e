"""prrt: the tested package behind the PRRT paper companion.

Predicting progression-free survival (PFS) after 177Lu-DOTATOC peptide receptor radionuclide
therapy from laboratory biomarkers, SR-PET and CT. Every notebook of the book imports this package;
all logic that is worth testing lives here.
"""

import sys as _sys

__version__ = "0.1.0"

# jsonschema (which the manifest check, nbformat and MONAI import) imports the optional package rfc3987-syntax,
# pulled in by JupyterLab's jupyter-events, only to check the "iri" formats, and that package builds a Lark
# grammar when it is imported: 2 to 3 s of CPU in every process that imports jsonschema, each notebook's kernel
# and each test worker included (benchmarks/DESIGN.md). No schema of ours uses those formats; without the
# package, jsonschema leaves them unchecked. Processes that import prrt first skip it.
_sys.modules.setdefault("rfc3987_syntax", None)
