"""The validated cohort (:class:`Cohort`) and the binary endpoint (:func:`pfs_label`).

A :class:`Cohort` holds one row per patient, indexed by pseudonym, with the endpoint, the laboratory and
clinical values and the image paths, and what the manifest says about them (units, horizon, modalities).
Patient IDs from the table never leave it in outputs: it keeps the pseudonym → ID mapping privately
(:meth:`Cohort.private_id_table` is for the data manager, never for output). Cohorts are made by
:func:`prrt.data.load_cohort`.

The label: 1 = short PFS (progression or death at or before the horizon), 0 = long PFS (follow-up beyond
the horizon, or censoring exactly at it), NaN = censored before the horizon: excluded from the binary
task, kept for survival analyses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


def pfs_label(time, event, horizon_months: float) -> np.ndarray:
    """The binary endpoint: 1 = short PFS, 0 = long PFS, NaN = censored before the horizon (no label).

    Short PFS is progression (or death) at or before the horizon; long PFS is follow-up beyond the
    horizon, or censoring exactly at it (progression-free through the horizon).
    """
    time, event = np.asarray(time, float), np.asarray(event, float)
    short = (event == 1) & (time <= horizon_months)
    long_ = (time > horizon_months) | ((event == 0) & (time >= horizon_months))
    return np.where(short, 1.0, np.where(long_, 0.0, np.nan))


@dataclass
class Cohort:
    """A validated cohort.

    Attributes
    ----------
    name, synthetic, description:
        From the manifest.
    manifest_path:
        The manifest file (absolute).
    data:
        One row per patient, indexed by pseudonym (``patient``). Columns: ``pfs_months`` and
        ``event`` (NaN when the manifest gives a label only), ``label`` (1 = short PFS,
        0 = long PFS, NaN = not labelled, i.e. censored before the horizon), one column per lab and
        clinical variable under its manifest name, and ``ct_path``, ``pet_path``, ``mask_path``
        (absolute paths) for the modalities the manifest names.
    labs, clinical, categorical:
        Column names, as in the manifest.
    units:
        Unit per column.
    horizon_months:
        The PFS horizon that defines short PFS (None for a ready label).
    ct_pretraining:
        ``data`` (a CT collection from outside the cohort) and/or ``weights`` (a state-dict file),
        absolute, and ``key_prefixes``: how chapter 04 pretrains its CT encoder (empty: it does not).
    input_files:
        Every input file (manifest, table, images), absolute; hashed into ``run.json``.
    """

    name: str
    synthetic: bool
    description: str
    manifest_path: Path
    data: pd.DataFrame
    labs: list[str]
    clinical: list[str]
    categorical: list[str]
    units: dict[str, str]
    horizon_months: float | None
    modalities: list[str]
    input_files: list[Path]
    ct_pretraining: dict = field(default_factory=dict)
    #: Names of the classes 1 and 0: short/long PFS, or ``<label column> = 1`` / ``= 0`` for a ready label.
    group_names: tuple[str, str] = ("short PFS", "long PFS")
    #: What validation warned about (:class:`prrt.data.manifest.Problem` with severity "warning"); the run went on.
    warnings: list = field(default_factory=list)
    _id_of_pseudonym: dict[str, str] = field(repr=False, default_factory=dict)

    # ---- views -------------------------------------------------------------------------------
    @property
    def n_patients(self) -> int:
        return len(self.data)

    @property
    def labelled(self) -> pd.DataFrame:
        """Patients with a binary label (those censored before the horizon are excluded)."""
        return self.data[self.data["label"].notna()]

    @property
    def n_excluded_censored(self) -> int:
        """Patients censored before the horizon: excluded from the binary task only."""
        return int(self.data["label"].isna().sum())

    @property
    def has_survival(self) -> bool:
        return bool(self.data["pfs_months"].notna().any())

    def image_path(self, patient: str, modality: str) -> Path | None:
        col = f"{modality}_path"
        if col not in self.data.columns:
            return None
        value = self.data.at[patient, col]
        return None if pd.isna(value) else Path(value)

    def pseudonym_of_id(self) -> dict[str, str]:
        """Patient ID → pseudonym. Private: for checks and for the data manager, never for output."""
        return {pid: ps for ps, pid in self._id_of_pseudonym.items()}

    def private_id_table(self) -> pd.DataFrame:
        """The pseudonym → patient ID key. Keep it private: never publish it."""
        return pd.DataFrame(
            {"patient": list(self._id_of_pseudonym), "patient_id": list(self._id_of_pseudonym.values())}
        )

    def summary(self) -> dict:
        """A summary fit for printing (no patient IDs)."""
        lab = self.data["label"]
        missing = {
            c: int(self.data[c].isna().sum())
            for c in self.labs + self.clinical
            if int(self.data[c].isna().sum()) > 0
        }
        return {
            "name": self.name,
            "synthetic": self.synthetic,
            "patients": self.n_patients,
            "labelled": int(lab.notna().sum()),
            "short_pfs": int((lab == 1).sum()),
            "long_pfs": int((lab == 0).sum()),
            "group_names": list(self.group_names),
            "excluded_censored_before_horizon": self.n_excluded_censored,
            "horizon_months": self.horizon_months,
            "modalities": {m: int(self.data[f"{m}_path"].notna().sum()) for m in self.modalities},
            "labs": len(self.labs),
            "clinical": len(self.clinical),
            "missing_values": missing,
        }


