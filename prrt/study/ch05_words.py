"""Chapter 05's sentences and tables: every explanation's numbers in words and in tables narrow enough for the
book's text column, from the results of :mod:`prrt.study.ch05_explain` (saliency against chance and its nulls, the
sanity checks, the laboratory importance inside the fusion, the modality ablation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..evaluation import format_p, p_phrase
from ..explain import REINITIALISED, SIMILAR, leaders


def format_importance(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`importance_comparison` for the page: drops in AUROC as mean [95 % interval across repeats], and the
    ranks of the means."""
    def drop(model):
        return [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(
            table[f"{model}: mean drop in AUROC"], table[f"{model}: CI low"], table[f"{model}: CI high"])]

    out = pd.DataFrame(index=table.index)
    out["fusion: drop in AUROC [95 % CI]"] = drop("fusion")
    out["fusion: rank"] = table["fusion: rank"].astype(int)
    if "Random Forest: rank" in table.columns:
        out["Random Forest: drop in AUROC [95 % CI]"] = drop("Random Forest")
        out["Random Forest: rank"] = table["Random Forest: rank"].astype("Int64")
    return out


def format_saliency(summary: pd.DataFrame, index) -> pd.DataFrame:
    """The saliency summary for the page: shares in per cent, p-values as text."""
    out = summary.set_index(index).copy()
    for c in ("mass in mask", "chance", "pointing hits"):
        out[c] = out[c].map(lambda v: f"{100 * v:.1f} %")
    if "p (mass > chance)" in out:
        out["p (mass > chance)"] = out["p (mass > chance)"].map(format_p)  # "–" where there is no test
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def saliency_text(summary: pd.DataFrame, nulls: pd.DataFrame | None = None) -> str:
    """The saliency check in words (Markdown), one clause per model, from :func:`summarise_saliency` and, against
    the nulls, :func:`saliency_against_nulls` (the verdict that counts)."""
    if summary.empty:
        return "No image model ran in this run, so there are no maps to check."
    nulls = pd.DataFrame() if nulls is None else nulls
    parts = []
    for _, r in summary.iterrows():
        if not r["maps checked"]:
            parts.append(f"`{r['model']}`: no map could be checked (no patient has a lesion in the mask, or the "
                         "network's input has no mask channel)")
            continue
        p = r["p (mass > chance)"]
        verdict = ("more than chance" if p < 0.05 else "not more than chance") if np.isfinite(p) else "untested"
        clause = (f"`{r['model']}`: {_pct(r['mass in mask'])} of the map's mass in the lesion mask against "
                  f"{_pct(r['chance'])} by chance ({verdict}; Wilcoxon p = {p:.2g}), and its maximum inside the mask "
                  f"in {_pct(r['pointing hits'])} of {int(r['maps checked'])} maps")
        against = nulls[nulls["model"] == r["model"]] if len(nulls) else nulls
        if len(against):
            clause += "; against the nulls, " + ", ".join(
                f"the {n['null']} map ({_pct(n['null: mass in mask'])}): {n['verdict']}" for _, n in against.iterrows())
        parts.append(clause)
    out = "In this run: " + "; ".join(parts) + "."
    if len(nulls):
        models = list(dict.fromkeys(nulls["model"]))
        both = [m for m in models if (nulls.loc[nulls["model"] == m, "verdict"] == "beats the null").all()]
        rest = [m for m in models if m not in both]
        if both:
            out += " " + ", ".join(f"`{m}`" for m in both) + (" beats" if len(both) == 1 else " beat") + " both nulls."
        if rest:
            out += (" The maps of " + ", ".join(f"`{m}`" for m in rest) + " do not beat both nulls on both measures: "
                    "where a verdict names one measure, only that one shows more of the lesions than the null, and "
                    "where it names none, neither does (on a measure not named, the map was not shown to put more of "
                    "itself in the lesions than a map that only knows where lesions usually sit in the crop, or than "
                    "the same network untrained; the table gives both numbers).")
    return out


#: How near the flag line a sanity check's median must lie for the text to call the verdict borderline (two
#: decimals would show it as the line itself).
BORDERLINE = 0.005


def sanity_text(table: pd.DataFrame, aurocs: dict) -> str:
    """The sanity checks' verdicts in words (Markdown)."""
    if table.empty:
        return "No image model ran in this run, so there are no maps to check."
    parts = []
    for model, g in table.groupby("model", sort=False):
        bits = [f"{r['median |rank correlation|']:.2f} (SSIM {r['median SSIM']:.2f}) with the "
                f"{'re-initialised network' if r['check'] == REINITIALISED else 'permuted-label network'}"
                for _, r in g.iterrows()]
        flagged = (g["verdict"] != "passes").any()
        a = aurocs.get(model, np.nan)
        # a median that two decimals would show as the flag line itself: how close, so the verdict can be read
        close = [f"{what} {r[column]:.4f}" for _, r in g.iterrows()
                 for what, column in (("|rank correlation|", "median |rank correlation|"), ("SSIM", "median SSIM"))
                 if abs(r[column] - SIMILAR) < BORDERLINE]
        parts.append(f"`{model}`: median absolute rank correlation {' and '.join(bits)} (the permuted-label network's "
                     f"test AUROC {a:.2f}): " + ("**flagged as uninformative**" if flagged else
                                                 "the maps depend on what the network learnt")
                     + (f" (borderline: {', '.join(close)} against the flag line of {SIMILAR:.1f})" if close else ""))
    return (f"A check is failed when the median absolute rank correlation or the median SSIM reaches {SIMILAR:.1f}. "
            + "; ".join(parts) + ".")


def _named(names) -> str:
    names = [f"`{n}`" for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _lead(table: pd.DataFrame, model: str) -> str:
    """Which values the intervals of ``model`` (``fusion`` or ``Random Forest``) set apart at the top, in words."""
    top = leaders(table[f"{model}: mean drop in AUROC"], table[f"{model}: CI low"], table[f"{model}: CI high"])
    best = table[f"{model}: mean drop in AUROC"].idxmax()
    if not top:
        return (f"the largest mean drop in AUROC was that of `{best}`, but its 95 % interval overlaps the next value's, "
                "so no laboratory value stands apart")
    return (f"{_named(top)} {'stands' if len(top) == 1 else 'stand'} apart: {'its' if len(top) == 1 else 'their'} "
            "95 % interval lies above every other value's" + ("" if len(top) == 1 else
                                                             " (their order among themselves is not separated)"))


def importance_text(table: pd.DataFrame) -> str:
    """Which laboratory values the intervals set apart inside the fusion and in the Random Forest (Markdown):
    values are ordered only where their 95 % intervals across repeats do not overlap
    (:func:`prrt.explain.leaders`)."""
    if table.empty:
        return "No laboratory value reached the fusion in this run."
    out = f"Inside the fusion, {_lead(table, 'fusion')}"
    if "Random Forest: rank" in table.columns:
        out += f"; in the Random Forest of chapter 2, {_lead(table, 'Random Forest')}"
    return out + "."


def ablation_text(table: pd.DataFrame) -> str:
    """The modality ablation in words (Markdown): each setting's AUROC, its difference from the fusion with every
    modality (with its 95 % interval and Holm-adjusted p where the splits gave them), and which hidden source cost
    the most only where the differences' intervals set it apart."""
    full = table.loc["all modalities"]
    parts = [f"with every modality the fusion reached a test-fold AUROC of {full['auroc_mean']:.2f} "
             f"(95 % CI {full['ci_low']:.2f}–{full['ci_high']:.2f})"]
    rest = table.drop(index="all modalities")
    paired = "p (Holm)" in table.columns
    for setting, r in rest.iterrows():
        extra = (f", 95 % CI {r['difference CI low']:+.2f} to {r['difference CI high']:+.2f}, Holm-adjusted p "
                 f"{p_phrase(r['p (Holm)'])}" if paired else "")
        parts.append(f"{setting} {r['auroc_mean']:.2f} ({r['difference from all modalities']:+.2f}{extra})")
    out = "; ".join(parts) + "."
    if len(rest) < 2:
        return out
    if not paired:
        return out + " Without paired intervals the settings are not ordered."
    # the largest loss, named only where its interval lies below every other setting's
    top = leaders(-rest["difference from all modalities"], -rest["difference CI high"], -rest["difference CI low"])
    if len(top) == 1:
        return out + f" Hiding the {top[0].removeprefix('without ')} cost the most: its interval lies below the others'."
    return out + " The differences' intervals overlap, so no hidden source can be said to cost the most."


def format_ablation(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`prrt.explain.ablation_table` for the page, narrow enough for the text column: the AUROC and the
    difference from the full fusion with their 95 % intervals, and the Holm-adjusted p."""
    def diff(r):
        if r.name == "all modalities":
            return "–"
        interval = f" [{r['difference CI low']:+.2f}, {r['difference CI high']:+.2f}]" if "difference CI low" in table else ""
        return f"{r['difference from all modalities']:+.2f}{interval}"

    out = pd.DataFrame({
        "AUROC [95 % CI]": [f"{r['auroc_mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" for _, r in table.iterrows()],
        "difference [95 % CI]": [diff(r) for _, r in table.iterrows()],
    }, index=table.index)
    if "p (Holm)" in table:
        out["p (Holm)"] = [format_p(v) for v in table["p (Holm)"]]
    return out


def format_nulls(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`saliency_against_nulls` for the page, narrow enough for the text column: the model's share beside the
    null's (per cent), the Holm-adjusted p-values of the mass and of the pointing hits, and the verdict."""
    def pair(a, b):
        return f"{100 * a:.1f} vs {100 * b:.1f}"

    return pd.DataFrame({
        "mass in mask, %": [pair(a, b) for a, b in zip(table["mass in mask"], table["null: mass in mask"])],
        "pointing hits, %": [pair(a, b) for a, b in zip(table["pointing hits"], table["null: pointing hits"])],
        "p (Holm): mass, hits": [f"{format_p(a)}, {format_p(b)}" for a, b in zip(table["p (mass > null), Holm"],
                                                                                table["p (hits > null), Holm"])],
        "verdict": table["verdict"].to_numpy(),
    }, index=pd.MultiIndex.from_frame(table[["model", "null"]]))
