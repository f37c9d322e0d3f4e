"""prrt: the tested package behind the PRRT paper companion.

Predicting progression-free survival (PFS) after 177Lu-DOTATOC peptide receptor radionuclide
therapy from laboratory biomarkers, SR-PET and CT. Every notebook of the book imports this package;
all logic that is worth testing lives here.
"""

__version__ = "0.1.0"
