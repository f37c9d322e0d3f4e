"""Figures of the book: Kaplan–Meier curves and PET/CT montages.

Every figure shows pseudonymous patient IDs only.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def km_plot(time, event, horizon_months: float | None = None, ax=None, label: str = "all patients",
            at_risk: bool = True):
    """Kaplan–Meier curve of PFS (lifelines) with its 95 % band and the horizon marked."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    km = KaplanMeierFitter(label=label).fit(np.asarray(time, float), np.asarray(event, int))
    km.plot_survival_function(ax=ax, ci_show=True, show_censors=True, censor_styles={"ms": 5, "marker": "|"})
    if horizon_months is not None:
        rate = float(km.survival_function_at_times(horizon_months).iloc[0])
        ax.axvline(horizon_months, color="crimson", ls="--", lw=1)
        ax.annotate(f"{horizon_months:g} months: PFS {100 * rate:.0f} %", xy=(horizon_months, rate),
                    xytext=(8, 10), textcoords="offset points", color="crimson")
    ax.set_xlabel("months since start of PRRT")
    ax.set_ylabel("progression-free survival")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    if at_risk:
        add_at_risk_counts(km, ax=ax, rows_to_show=["At risk"])
    ax.figure.tight_layout()
    return ax


def _slice_through_lesions(mask: np.ndarray | None, axis: int, default: int) -> int:
    if mask is None or mask.sum() == 0:
        return default
    other = tuple(a for a in range(3) if a != axis)
    return int(np.argmax(mask.sum(axis=other)))


def montage(arrays: dict, titles: dict, suv_max: float = 15.0):
    """PET/CT montage: per patient, a coronal CT slice, a coronal PET maximum-intensity projection
    (the usual SR-PET overview) and an axial PET/CT fusion through the lesions.

    ``arrays``: ``{pseudonym: preprocessed arrays}`` (from :func:`prrt.imaging.preprocess_cohort`);
    ``titles``: ``{pseudonym: row title}``. Arrays are (x, y, z) in LPS order; images are shown in
    radiological convention (patient's right on the left of the image, head at the top).
    """
    patients = list(arrays)
    fig, axes = plt.subplots(len(patients), 3, figsize=(9.5, 3.2 * len(patients)), squeeze=False)
    for row, pid in enumerate(patients):
        a = arrays[pid]
        ct, suv, mask = a.get("ct"), a.get("suv"), a.get("mask")
        shape = (ct if ct is not None else suv).shape
        y = _slice_through_lesions(mask, 1, shape[1] // 2)
        z = _slice_through_lesions(mask, 2, shape[2] // 2)
        ax_cor, ax_mip, ax_ax = axes[row]
        if ct is not None:
            ax_cor.imshow(ct[:, y, :].T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect="auto")
        ax_cor.set_title(f"{titles.get(pid, pid)}\nCT, coronal", fontsize=9)
        if suv is not None:
            ax_mip.imshow(suv.max(axis=1).T, cmap="gray_r", origin="lower", vmin=0, vmax=suv_max, aspect="auto")
        ax_mip.set_title("SR-PET, coronal MIP (SUV 0–%g)" % suv_max, fontsize=9)
        if ct is not None:
            ax_ax.imshow(ct[:, :, z].T, cmap="gray", vmin=0, vmax=1, aspect="auto")
        if suv is not None:
            ax_ax.imshow(np.ma.masked_less(suv[:, :, z].T, 1.0), cmap="hot", alpha=0.6, vmin=0, vmax=suv_max,
                         aspect="auto")
        if mask is not None and mask[:, :, z].any():
            ax_ax.contour(mask[:, :, z].T, levels=[0.5], colors="cyan", linewidths=0.8)
        ax_ax.set_title("PET/CT fusion, axial (lesion mask in cyan)", fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig
