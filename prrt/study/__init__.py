"""The study, chapter by chapter: which models each chapter fits, its tables and the sentences it
writes into the book, and the names of models and inputs that every chapter reads.

What other subpackages may use is listed in ``__all__``; the rest is private to this one.
"""

from .ch01_cohort import montage_patients
from .notebook import prevalence, start

__all__ = [
    "montage_patients",
    "prevalence",
    "start",
]
