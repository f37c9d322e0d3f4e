"""Figures of the book: Kaplan–Meier curves, PET/CT montages, ROC/PR, calibration, learning curves, Grad-CAM, and the
one helper that saves and shows a figure (:func:`save_and_show`).

Every figure shows pseudonymous patient IDs only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..evaluation import labelled
from ..timing import phase


def save_and_show(fig, path, dpi: int = 150) -> None:
    """Save ``fig`` as a PNG at ``path`` (``dpi`` dots per inch, cropped to its content) and show that PNG in the
    notebook at the size the notebook showed it before (the figure's own ``dpi``), then close the figure.

    The one way a chapter puts a figure on its page and into the run folder (``figures/`` or ``cohort/``). The
    figure is drawn once: showing it with ``plt.show()`` drew it a second time, at the notebook's resolution.
    """
    import io
    import struct

    from IPython.display import Image, display

    with phase("figures"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        png = buffer.getvalue()
        Path(path).write_bytes(png)
        width = struct.unpack(">I", png[16:20])[0]  # the PNG header's width in pixels
        display(Image(data=png, format="png", width=round(width * fig.dpi / dpi)))
        plt.close(fig)


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


# ---- evaluation figures ------------------------------------------------------------------------
def roc_pr_curves(predictions: dict, prevalence: float | None = None):
    """Mean ROC and precision–recall curves across repeats, with a ±1 SD band, for several models.

    ``predictions``: ``{model name: out-of-fold predictions}`` (see :mod:`prrt.evaluation`).
    """
    from sklearn.metrics import precision_recall_curve, roc_curve


    grid = np.linspace(0, 1, 101)
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, pred in predictions.items():
        tprs, precs = [], []
        for _, g in labelled(pred).groupby("repeat"):
            y, p = g["label"].to_numpy(int), g["probability"].to_numpy(float)
            fpr, tpr, _ = roc_curve(y, p)
            tprs.append(np.interp(grid, fpr, tpr))
            prec, rec, _ = precision_recall_curve(y, p)
            # interpolated precision: the best precision at this recall or more
            # (scikit-learn orders the points by decreasing recall)
            prec_i = np.maximum.accumulate(prec)
            precs.append(np.interp(grid, rec[::-1], prec_i[::-1]))
        for ax, curves in ((ax_roc, tprs), (ax_pr, precs)):
            c = np.asarray(curves)
            line, = ax.plot(grid, c.mean(axis=0), label=name)
            ax.fill_between(grid, c.mean(axis=0) - c.std(axis=0), c.mean(axis=0) + c.std(axis=0),
                            color=line.get_color(), alpha=0.15)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=1, label="chance")
    ax_roc.set(xlabel="1 − specificity", ylabel="sensitivity", title="ROC (mean ± SD across repeats)")
    if prevalence is not None:
        ax_pr.axhline(prevalence, color="k", ls=":", lw=1, label=f"chance (prevalence {prevalence:.2f})")
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision–recall (mean ± SD)")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "upper right")
    fig.tight_layout()
    return fig


def importance_plot(summary, title: str, xlabel: str, ax=None, color: str = "tab:blue"):
    """Horizontal bars of mean importance with error bars (``summary`` from importance_summary): the 95 % interval
    across repeats where it has one, else the SD."""
    s = summary.iloc[::-1]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 0.35 * len(s) + 1.2))
    if "ci_low" in s and s["ci_low"].notna().all():
        err = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]]).clip(min=0)
    else:
        err = s["sd"]
    ax.barh(s.index, s["mean"], xerr=err, color=color, alpha=0.8, capsize=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(title=title, xlabel=xlabel)
    ax.figure.tight_layout()
    return ax


def importance_pair(name: str, permutation, impurity, n_features: int):
    """A model's permutation importance (held-out folds, left) beside its impurity importance (training data,
    right), both from :func:`prrt.learn.importance_summary`; ``n_features``: the model's inputs (the height)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.32 * n_features + 1.5))
    importance_plot(permutation, f"{name}: permutation importance (held-out folds)", "drop in AUROC", ax=a)
    importance_plot(impurity, f"{name}: impurity importance (training data)", "mean decrease in impurity", ax=b)
    return fig


def _km_groups(ax, time, event, groups, p_value: float, horizon_months, title: str, ci: bool):
    """Kaplan–Meier curves of ``groups`` ``[(selection, label, colour), ...]`` with at-risk counts."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    fitters = []
    for sel, label, color in groups:
        km = KaplanMeierFitter(label=f"{label} (n={sel.sum()})").fit(time[sel], event[sel])
        km.plot_survival_function(ax=ax, ci_show=ci, color=color, show_censors=True,
                                  censor_styles={"ms": 5, "marker": "|"})
        fitters.append(km)
    if horizon_months is not None:
        ax.axvline(horizon_months, color="grey", ls="--", lw=1)
    ax.set(xlabel="months since start of PRRT", ylabel="progression-free survival", ylim=(0, 1.02),
           title=f"{title} log-rank p = {p_value:.3g}".strip())
    ax.set_xlim(left=0)
    add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    ax.figure.tight_layout()
    return ax


def km_risk_groups_plot(time, event, high, p_value: float, horizon_months: float | None = None, ax=None,
                        title: str = ""):
    """Kaplan–Meier curves of predicted high- and low-risk groups with the log-rank p-value."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    time, event, high = np.asarray(time, float), np.asarray(event, int), np.asarray(high, bool)
    groups = [(~high, "predicted low risk", "tab:green"), (high, "predicted high risk", "tab:red")]
    return _km_groups(ax, time, event, groups, p_value, horizon_months, title, ci=True)


def calibration_and_decision_plot(curves: dict, decision: dict):
    """Calibration curves (left) and decision curves (right) of several models.

    ``curves``: ``{model: DataFrame(predicted, observed)}``; ``decision``: ``{model: net-benefit DataFrame}``.
    """
    fig, (ax_c, ax_d) = plt.subplots(1, 2, figsize=(11, 4.4))
    ax_c.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for name, c in curves.items():
        ax_c.plot(c["predicted"], c["observed"], "o-", label=name)
    ax_c.set(xlabel="mean predicted probability of short PFS", ylabel="observed share with short PFS",
             title="Calibration (quantile bins)", xlim=(0, 1), ylim=(0, 1))
    ax_c.legend(fontsize=8)
    first = next(iter(decision.values()))
    ax_d.plot(first["threshold"], first["treat_all"], color="grey", label="treat all")
    ax_d.plot(first["threshold"], first["treat_none"], color="k", label="treat none")
    for name, d in decision.items():
        ax_d.plot(d["threshold"], d["model"], label=name)
    low = min(-0.05, float(np.nanmin([d["model"].min() for d in decision.values()])))
    ax_d.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve",
             ylim=(max(low, -0.3), float(first["treat_all"].max()) + 0.05))
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(curves: dict):
    """Mean training and validation loss, and validation AUROC, per epoch across repeats and folds.

    ``curves``: ``{model: curves DataFrame}`` from :func:`prrt.learn.loop.cross_validate` (``CVResult.curves``). The band
    is ± one SD across folds; the dots mark the epochs whose weights were kept (lowest validation loss). Without
    an inner validation part (the profile's ``val_fraction`` 0), one panel: the training loss.
    """
    if not any(c["val_loss"].notna().any() for c in curves.values()):  # no inner validation part (val_fraction 0)
        fig, ax_l = plt.subplots(figsize=(6.5, 4.2))
        for name, c in curves.items():
            g = c.groupby("epoch")["train_loss"]
            m, s = g.mean(), g.std().fillna(0)
            line, = ax_l.plot(m.index, m, label=f"{name}: train loss")
            ax_l.fill_between(m.index, m - s, m + s, color=line.get_color(), alpha=0.1)
        ax_l.set(xlabel="epoch", ylabel="weighted binary cross-entropy",
                 title="Training loss (mean ± SD over folds; no inner validation part)")
        ax_l.legend(fontsize=8)
        fig.tight_layout()
        return fig
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in curves.items():
        g = c.groupby("epoch")
        for col, ls in (("train_loss", "-"), ("val_loss", "--")):
            m, s = g[col].mean(), g[col].std().fillna(0)
            line, = ax_l.plot(m.index, m, ls, label=f"{name}: {col.replace('_', ' ')}")
            ax_l.fill_between(m.index, m - s, m + s, color=line.get_color(), alpha=0.1)
        m = g["val_auroc"].mean()
        line, = ax_a.plot(m.index, m, label=name)
        best = c[c["best"]]
        ax_a.plot(best["epoch"], best["val_auroc"], "o", color=line.get_color(), alpha=0.4, ms=4)
    ax_l.set(xlabel="epoch", ylabel="weighted binary cross-entropy", title="Loss (mean ± SD over folds)")
    ax_a.axhline(0.5, color="k", ls=":", lw=1)
    ax_a.set(xlabel="epoch", ylabel="AUROC on the inner validation part",
             title="Inner validation AUROC (dots: kept epochs)", ylim=(0, 1))
    ax_l.legend(fontsize=8)
    ax_a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pretraining_curve(curve: dict):
    """Loss of the self-supervised CT pretraining per epoch (training, and the held-out CTs)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["epoch"], curve["train_loss"], label="training CTs")
    if any(np.isfinite(v) for v in curve.get("val_loss", [])):
        ax.plot(curve["epoch"], curve["val_loss"], label="held-out CTs")
    ax.set_xlabel("epoch")
    ax.set_ylabel("restoration + contrast loss")
    ax.set_title("CT encoder pretraining (no outcome labels)")
    ax.legend()
    fig.tight_layout()
    return fig


def modality_weights_plot(weights, title: str = ""):
    """Box plot of each modality's weight per patient (columns of ``weights``), with the points."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    cols = list(weights.columns)
    ax.boxplot([weights[c].to_numpy() for c in cols], showfliers=False)
    names = {"labs": "laboratory", "pet_features": "SR-PET\nlesion features", "pet": "SR-PET CNN", "ct": "CT"}
    ax.set_xticks(range(1, len(cols) + 1), labels=[names.get(c, c) for c in cols])
    rng = np.random.default_rng(0)
    for i, c in enumerate(cols, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(weights)), weights[c], s=8, alpha=0.5, color="0.3")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("weight in the fused embedding")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def forest_plot(rows, title: str = ""):
    """Every model's mean AUROC with its 95 % interval (``rows``: :func:`prrt.study.ch04_comparison.forest_rows`), the
    achievable AUROC of its inputs as a mark on its row where the cohort is synthetic, and chance as a line."""
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(rows) + 1.8))
    y = np.arange(len(rows))
    colours = ["tab:red" if h else "tab:blue" for h in rows["headline"]]
    for i, (m, lo, hi, c) in enumerate(zip(rows["auroc"], rows["low"], rows["high"], colours)):
        ax.plot([lo, hi], [i, i], color=c, lw=1.2)
    ax.scatter(rows["auroc"], y, c=colours, s=22, zorder=3, label="mean AUROC, 95 % interval")
    if np.isfinite(rows["bound"].to_numpy(float)).any():
        ax.scatter(rows["bound"], y, marker="|", s=140, color="0.35", zorder=2,
                   label="achievable AUROC of the model's inputs (synthetic cohort)")
    ax.axvline(0.5, color="0.6", lw=0.8, ls=":", label="chance")
    ax.set_yticks(y, labels=rows["label"], fontsize=8)
    ax.set_xlabel("AUROC (short PFS)")
    ax.set_xlim(min(0.45, float(np.nanmin(rows["low"])) - 0.02), 1.0)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.0 / max(len(rows), 1)), ncol=3, fontsize=7,
              frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def label_fraction_plot(table):
    """The CT CNN from scratch and pretrained by the share of labels (``table``:
    :func:`prrt.study.ch04_fusion.label_fractions`): each model's mean AUROC, and the paired difference with its
    95 % interval."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    x = 100 * table["fraction"].to_numpy(float)
    a.plot(x, table["auroc_scratch"], "o-", label="from scratch")
    a.plot(x, table["auroc_pretrained"], "s-", label="encoder pretrained")
    a.set_xlabel("share of each training part's labels (%)")
    a.set_ylabel("AUROC")
    a.legend(fontsize=8, frameon=False)
    d = table["difference"].to_numpy(float)
    b.errorbar(x, d, yerr=[d - table["ci_low"], table["ci_high"] - d], fmt="o", capsize=3, color="tab:purple")
    b.axhline(0, color="0.5", lw=0.8, ls=":")
    b.set_xlabel("share of each training part's labels (%)")
    b.set_ylabel("pretrained − scratch (AUROC)")
    for ax in (a, b):
        ax.set_xticks(x)
    fig.tight_layout()
    return fig


# ---- chapter 05: explanations ------------------------------------------------------------------------
def gradcam_overlays(panels: list[dict], hu_window=(-160.0, 240.0), suv_max: float = 15.0):
    """Grad-CAM maps over the images they explain: one row per panel, axial, coronal and sagittal
    planes through the map's maximum (radiological convention, as :func:`montage`).

    Each panel: ``title``, ``image`` (CT in HU or SR-PET in SUV, display grid, (x, y, z) in LPS order),
    ``kind`` (``"ct"`` or ``"pet"``), ``map`` (0-1, same grid) and ``mask`` (the lesion mask, or None).
    The map is drawn where it exceeds 0.2; the mask's outline in cyan; a cross marks the maximum.
    """
    fig, axes = plt.subplots(len(panels), 3, figsize=(9.5, 3.1 * len(panels)), squeeze=False)
    for row, panel in enumerate(panels):
        img, cam, mask = panel["image"], panel["map"], panel.get("mask")
        peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
        if panel["kind"] == "ct":
            style = dict(cmap="gray", vmin=hu_window[0], vmax=hu_window[1])
        else:
            style = dict(cmap="gray_r", vmin=0, vmax=suv_max)
        planes = [("axial", lambda a: a[:, :, peak[2]].T, "upper", (peak[0], peak[1])),
                  ("coronal", lambda a: a[:, peak[1], :].T, "lower", (peak[0], peak[2])),
                  ("sagittal", lambda a: a[peak[0], :, :].T, "lower", (peak[1], peak[2]))]
        for ax, (name, cut, origin, (px, py)) in zip(axes[row], planes):
            ax.imshow(cut(img), origin=origin, aspect="equal", **style)
            ax.imshow(np.ma.masked_less(cut(cam), 0.2), cmap="jet", alpha=0.45, vmin=0, vmax=1, origin=origin,
                      aspect="equal")
            if mask is not None and cut(mask).any():
                ax.contour(cut(mask), levels=[0.5], colors="cyan", linewidths=0.9, origin=origin)
            ax.plot(px, py, "w+", ms=9, mew=1.5)
            ax.set_title(f"{panel['title']}\n{name}" if name == "axial" else name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def saliency_against_nulls(metrics, nulls, order: list[str] | None = None):
    """Per model: each patient's share of the map's mass in the dilated lesion mask (mean over the repeats) for the
    trained network and its two nulls side by side, with the chance share (left); the pointing game's hit rate of
    each, with chance (right)."""
    models = order or list(dict.fromkeys(metrics["model"]))
    kinds = ["trained", *list(dict.fromkeys(nulls["null"]))] if len(nulls) else ["trained"]
    colours = dict(zip(kinds, ["tab:blue", "tab:orange", "tab:green", "tab:purple"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    width = 0.8 / len(kinds)
    rng = np.random.default_rng(0)
    for i, model in enumerate(models):
        for j, kind in enumerate(kinds):
            rows = (metrics[metrics["model"] == model] if kind == "trained" else
                    nulls[(nulls["model"] == model) & (nulls["null"] == kind)]).dropna(subset=["mass_in_mask"])
            per_patient = rows.groupby("patient")[["mass_in_mask", "pointing_hit", "chance"]].mean()
            x = i + (j - (len(kinds) - 1) / 2) * width
            if len(per_patient):
                box = a.boxplot([per_patient["mass_in_mask"]], positions=[x], widths=width * 0.8, showfliers=False,
                                patch_artist=True)
                box["boxes"][0].set(facecolor=colours[kind], alpha=0.35)
                a.scatter(x + rng.uniform(-width / 4, width / 4, len(per_patient)), per_patient["mass_in_mask"], s=4,
                          alpha=0.3, color=colours[kind])
            b.bar(x, per_patient["pointing_hit"].mean() if len(per_patient) else np.nan, width * 0.9,
                  color=colours[kind], label=kind if i == 0 else None)
        chance = metrics.loc[metrics["model"] == model, "chance"].mean()
        for ax in (a, b):
            ax.hlines(chance, i - 0.45, i + 0.45, color="crimson", lw=1.5,
                      label="chance (mask's share of the input)" if i == 0 and ax is a else None)
    for ax in (a, b):
        ax.set_xticks(range(len(models)), labels=models)
    a.set(ylabel="share of the map's mass in the lesion mask", ylim=(0, 1), title="saliency mass (one point a patient)")
    a.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[k], alpha=0.5) for k in kinds]
             + [plt.Line2D([0], [0], color="crimson")], labels=[*kinds, "chance"], fontsize=8, loc="upper right")
    b.set(ylim=(0, 1), ylabel="share of patients' maps peaking in the mask", title="pointing game")
    b.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def randomisation_curves(cascade, labels=None):
    """Median absolute rank correlation (with IQR) between the trained network's maps and those after
    re-initialising its layers from the top, cumulatively; the permuted-label network as a point."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, (model, g) in enumerate(cascade.groupby("model", sort=False)):
        q = g.groupby("step")["abs_rank_correlation"].quantile([0.25, 0.5, 0.75]).unstack()
        line = ax.plot(q.index, q[0.5], marker="o", label=model)[0]
        ax.fill_between(q.index, q[0.25], q[0.75], color=line.get_color(), alpha=0.15)
        if labels is not None and (labels["model"] == model).any():
            ax.scatter([q.index.max() + 0.6 + 0.1 * i],
                       [labels.loc[labels["model"] == model, "abs_rank_correlation"].median()],
                       marker="D", color=line.get_color(), zorder=3)
    ax.axhline(0.5, color="crimson", ls="--", lw=1, label="flag: maps barely change (0.5)")
    ax.set(xlabel="layers re-initialised, from the top (diamonds: trained on permuted labels)",
           ylabel="|rank correlation| with the trained maps", ylim=(0, 1.05))
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def importance_side_by_side(table):
    """The laboratory values' permutation importance in the fusion and in the Random Forest (chapter 02),
    both in the fusion's order (``table`` from :func:`prrt.explain.importance_comparison`)."""
    panels = [("fusion", "inside the laboratory + SR-PET + CT fusion", "tab:purple"),
              ("Random Forest", "laboratory Random Forest (chapter 2)", "tab:blue")]
    panels = [p for p in panels if f"{p[0]}: mean drop in AUROC" in table.columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(11 if len(panels) > 1 else 6, 0.35 * len(table) + 1.4),
                             squeeze=False, sharey=True)
    for ax, (who, title, color) in zip(axes[0], panels):
        summary = table[[f"{who}: mean drop in AUROC", f"{who}: SD", f"{who}: CI low", f"{who}: CI high"]].set_axis(
            ["mean", "sd", "ci_low", "ci_high"], axis=1)
        importance_plot(summary, title, "drop in AUROC (held-out folds; 95 % interval)", ax=ax, color=color)
    return fig


def ablation_bars(table):
    """Test-fold AUROC of the fusion with every modality and with each one masked, with 95 % CIs."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(table))
    err = np.vstack([table["auroc_mean"] - table["ci_low"], table["ci_high"] - table["auroc_mean"]]).clip(min=0)
    colors = ["tab:purple"] + ["0.6"] * (len(table) - 1)
    ax.bar(x, table["auroc_mean"], yerr=err, color=colors, capsize=4)
    for i, v in enumerate(table["auroc_mean"]):
        ax.text(i, 0.02, f"{v:.2f}", ha="center", color="white", fontsize=9)
    ax.axhline(0.5, color="crimson", ls="--", lw=1, label="chance")
    ax.set_xticks(x, labels=list(table.index))
    ax.set(ylim=(0, 1), ylabel="AUROC (test folds)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def km_groups_plot(time, event, group, order: list[str], p_value: float, horizon_months: float | None = None,
                   title: str = ""):
    """Kaplan–Meier curves of several predicted risk groups (``group``: each patient's, in ``order``)
    with the log-rank p-value."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    time, event, group = np.asarray(time, float), np.asarray(event, int), np.asarray(group)
    colors = {"low": "tab:green", "middle": "tab:orange", "high": "tab:red"}
    _km_groups(ax, time, event, [(group == g, f"{g} predicted risk", colors.get(g)) for g in order], p_value,
               horizon_months, title, ci=False)
    return fig
