"""Chapter 04's comparisons: the fusion against its rivals, read at a glance.

The rivals (:func:`fusion_rivals`): the control (the fusion network without its CNN branches; what the CNN
branches add is the fusion minus it), the best model without a CNN, and every single-source model. Their paired
tests (:func:`headline_comparisons`: corrected resampled t-test with the 95 % interval of the mean difference) are
Holm-adjusted within one family, the chapter's paired tests. :func:`compact_table` and :func:`forest_rows` give the
chapter's opening table and forest plot; :func:`headline_text`, :func:`lowering_text` and :func:`gate_text` its
sentences; :func:`source_removal` each fusion without one source at test time beside the model that never had it.
"""

from __future__ import annotations

import pandas as pd

from ..evaluation import (
    compare_models,
    format_p,
    holm,
    num,
    p_phrase,
    per_repeat_calibration,
    per_repeat_metrics,
    read_predictions,
)
from ..explain import modality_ablation
from .ch02_labs import calibration_curves
from .ch04_fusion import MECHANISMS
from .names import (
    CONTROL,
    CT_PRETRAINED,
    FUSIONS,
    HEADLINE,
    INPUT_SET_OF,
    MODEL_SOURCES,
    SHORT_INPUTS,
    SOURCE_NAMES,
    WITHOUT_CNN,
    mechanism_variant,
)
from .notebook import synthetic_report

#: The paired tests of the chapter, one family for Holm's adjustment: the fusion against each rival, and the
#: pretrained CT CNN against the CT CNN from scratch.
COMPARISON_COLUMNS = ["model", "versus", "auroc_model", "auroc_versus", "difference", "ci_low", "ci_high", "p", "p_holm"]


def fusion_rivals(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """The models the fusion is compared with, each with why: the control (what the CNN branches add), the best
    model without a CNN (the classical models on baseline values and the control) and every single-source model
    (lesion-feature models included), in that order, each once."""
    ran = set(summary.loc[summary["status"] == "ran", "model"])
    auroc = summary.set_index("model")["auroc_mean"]
    out = {}
    no_cnn = [m for m in WITHOUT_CNN if m in ran]
    best = max(no_cnn, key=lambda m: auroc[m]) if no_cnn else None
    if CONTROL in ran:
        out[CONTROL] = "control: the same network without CNN branches" + (
            " (also the best model without a CNN)" if best == CONTROL else "")
    if best is not None and best not in out:
        out[best] = "the best model without a CNN"
    for m, sources in MODEL_SOURCES.items():
        if len(sources) == 1 and m in ran and m not in out:
            out[m] = f"single source: {SOURCE_NAMES[next(iter(sources))]}"
    return list(out.items())


def headline_comparisons(run_dir, summary: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Paired tests on the shared splits (corrected resampled t-test of the per-fold AUROC differences, with the
    95 % interval of the mean difference) of the fusion against each of :func:`fusion_rivals`, and of the
    pretrained CT CNN against the CT CNN from scratch; ``p_holm``: Holm-adjusted over these rows (one family).
    Numbers, one row per comparison (index: what is compared); empty when none of them ran."""
    ran = set(summary.loc[summary["status"] == "ran", "model"])
    auroc = summary.set_index("model")["auroc_mean"]
    pairs = [(HEADLINE, b, why) for b, why in fusion_rivals(summary)] if HEADLINE in ran else []
    if {CT_PRETRAINED, "ct_cnn"} <= ran:
        pairs.append((CT_PRETRAINED, "ct_cnn", "pretraining: the CT CNN pretrained vs from scratch"))
    rows = []
    for a, b, what in pairs:
        c = compare_models(read_predictions(run_dir, a), read_predictions(run_dir, b), splits)
        rows.append({"comparison": what, "model": a, "versus": b, "auroc_model": auroc[a], "auroc_versus": auroc[b],
                     "difference": c["auroc_difference"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                     "p": c["p_corrected_t"]})
    if not rows:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    out = pd.DataFrame(rows).set_index("comparison")
    out["p_holm"] = holm(out["p"])
    return out[COMPARISON_COLUMNS]


def comparisons_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """:func:`headline_comparisons` as the book shows it, narrow enough for the text column: the fusion's rival (or
    ``model vs rival`` for a comparison of other models; why each is compared is in ``results/04_paired_tests.csv``),
    the two AUROCs, the difference with its interval and the Holm-adjusted p the text quotes (the unadjusted p is in
    the file)."""
    return pd.DataFrame({
        "AUROC": [f"{a:.2f} vs {b:.2f}" for a, b in zip(comparisons["auroc_model"], comparisons["auroc_versus"])],
        "difference [95 % CI]": [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
                                 zip(comparisons["difference"], comparisons["ci_low"], comparisons["ci_high"])],
        "p (Holm)": [format_p(p) for p in comparisons["p_holm"]],
    }, index=pd.Index([v if m == HEADLINE else f"{m} vs {v}" for m, v in zip(comparisons["model"],
                                                                            comparisons["versus"])],
                      name="the fusion versus"))


def _difference_phrase(c) -> str:
    return (f"{c['difference']:+.3f} (95 % CI {c['ci_low']:+.3f} to {c['ci_high']:+.3f}; "
            f"Holm-adjusted p {p_phrase(c['p_holm'])})")


def headline_text(summary: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    """The chapter's result in a few sentences (Markdown), from the summary rows and the paired tests: the
    fusion's AUROC, what the CNN branches add (against the control), and the fusion against the best model
    without a CNN and the best single-source model."""
    rows = summary.set_index("model")
    if HEADLINE not in rows.index or rows.loc[HEADLINE, "status"] != "ran":
        why = rows.loc[HEADLINE, "status"] if HEADLINE in rows.index else "not in the summary"
        return f"The laboratory + SR-PET + CT fusion did not run ({why}), so there is no fusion result to report."

    def score(m):
        r = rows.loc[m]
        return f"{r['auroc_mean']:.2f} ± {r['auroc_sd']:.2f}"

    r = rows.loc[HEADLINE]
    out = [f"In this run the laboratory + SR-PET + CT fusion reached an AUROC of {score(HEADLINE)} "
           f"(AUPRC with short PFS as the positive class {r['auprc_mean']:.2f} ± {r['auprc_sd']:.2f}; mean ± SD over "
           f"{int(r['n_repeats'])} repeats)."]
    if comparisons.empty:
        return out[0]
    ours = comparisons[comparisons["model"] == HEADLINE]
    if CONTROL in set(ours["versus"]):
        c = ours[ours["versus"] == CONTROL].iloc[0]
        out.append(f"Against the same network without CNN branches (`{CONTROL}`, {score(CONTROL)}), which measures "
                   f"what the CNN branches add: a mean per-fold AUROC difference of {_difference_phrase(c)}.")
    best = ours[ours.index.str.contains("best model without a CNN")]
    if len(best) and best.iloc[0]["versus"] != CONTROL:
        c = best.iloc[0]
        out.append(f"Against the best model without a CNN, `{c['versus']}` ({score(c['versus'])}): {_difference_phrase(c)}.")
    single = ours[[len(MODEL_SOURCES.get(v, ())) == 1 for v in ours["versus"]]]
    if len(single):
        c = single.iloc[int(single["auroc_versus"].to_numpy(float).argmax())]
        if len(best) and c["versus"] == best.iloc[0]["versus"]:
            out.append(f"`{c['versus']}` is also the best single-source model.")
        else:
            out.append(f"Against the best single-source model, `{c['versus']}` ({score(c['versus'])}): "
                       f"{_difference_phrase(c)}.")
    significant = ours[ours["p_holm"] < 0.05]
    if significant.empty:
        out.append("No difference between the fusion and any of its rivals can be told apart from zero after the "
                   "adjustment for multiple tests.")
    else:
        out.append("After the adjustment for multiple tests the fusion differs from "
                   + ", ".join(f"`{v}`" for v in significant["versus"]) + " only.")
    return " ".join(out)


def lowering_text(summary: pd.DataFrame) -> str:
    """Where adding a source did not raise the AUROC (as the tables show it, to two decimals): every fusion and the
    control that falls below or only equals the best model of its sources less one, named with the source it adds; a
    sentence saying none did otherwise; empty when no such pair ran."""
    ran = summary[summary["status"] == "ran"].set_index("model")["auroc_mean"].round(2)
    ran = ran[[m for m in ran.index if m in MODEL_SOURCES]]
    lower, pairs = [], 0
    for model in [*FUSIONS, CONTROL]:
        if model not in ran.index:
            continue
        for source in sorted(MODEL_SOURCES[model]):
            fewer = [m for m in ran.index if MODEL_SOURCES[m] == MODEL_SOURCES[model] - {source}]
            if not fewer:
                continue
            pairs += 1
            best = max(fewer, key=lambda m: ran[m])
            if ran[model] <= ran[best]:
                verb = "falls below" if ran[model] < ran[best] else "only equals"
                lower.append(f"`{model}` ({ran[model]:.2f}) {verb} `{best}` ({ran[best]:.2f}), which lacks its "
                             f"{SOURCE_NAMES[source]}")
    if not pairs:
        return ""
    if not lower:
        return ("In this run every fusion rose above the best model of its sources less one: adding a source always "
                "raised the AUROC.")
    return (f"Adding a source did not help in {len(lower)} of {pairs} cases: " + "; ".join(lower)
            + " (differences between models of different kinds, not tested).")


def _compared(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows of the models of chapters 02-04 that ran and that the compact table names (whatever the type
    of the chapter column)."""
    chapter = summary["chapter"].astype(str).str.zfill(2)
    return summary[(summary["status"] == "ran") & summary["model"].isin(SHORT_INPUTS)
                   & chapter.isin(["02", "03", "04"])]


def compact_table(summary: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """The chapter's table read at a glance: every model of chapters 02-04 that ran, best first, with its sources
    in a few words, AUROC ± SD, AUPRC, Brier score and the Holm-adjusted p of its paired test against the fusion
    (``–`` where there is none). :func:`prrt.study.notebook.compact_view` shows it. (The calibration slope is in the
    summary tables and the calibration section: one more column would not fit the book's text column.)"""
    rows = _compared(summary).sort_values("auroc_mean", ascending=False)
    p = {} if comparisons.empty else comparisons[comparisons["model"] == HEADLINE].set_index("versus")["p_holm"]
    return pd.DataFrame({
        "sources": [SHORT_INPUTS[m] + (" (fusion)" if m == HEADLINE else "") for m in rows["model"]],
        "AUROC": [f"{m:.2f} ± {s:.2f}" for m, s in zip(rows["auroc_mean"], rows["auroc_sd"])],
        "AUPRC": [f"{m:.2f}" for m in rows["auprc_mean"]],
        "Brier": [f"{m:.3f}" for m in rows["brier_mean"]],
        "p (Holm)": [format_p(p[m]) if m in p else "–" for m in rows["model"]],
    }, index=pd.Index(rows["model"], name="model"))


def achievable(cohort) -> dict | None:
    """The achievable AUROC of each input set on a synthetic cohort (its report), ``None`` for real data."""
    report = synthetic_report(cohort)
    return report.get("achievable_auroc") if report else None


def forest_rows(summary: pd.DataFrame, bounds: dict | None) -> pd.DataFrame:
    """What the forest plot draws: every model of :func:`compact_table`, its mean AUROC with the 95 % interval, and
    the achievable AUROC of its inputs on a synthetic cohort (NaN otherwise)."""
    rows = _compared(summary).sort_values("auroc_mean")
    return pd.DataFrame({"label": [f"{m} ({SHORT_INPUTS[m]})" for m in rows["model"]],
                         "auroc": rows["auroc_mean"].to_numpy(), "low": rows["auroc_ci_low"].to_numpy(),
                         "high": rows["auroc_ci_high"].to_numpy(),
                         "bound": [(bounds or {}).get(INPUT_SET_OF.get(m), float("nan")) for m in rows["model"]],
                         "headline": (rows["model"] == HEADLINE).to_numpy()}, index=rows["model"].to_numpy())


def stand_in(fusion: str, removed: str, summary: pd.DataFrame) -> str | None:
    """The model that never had ``removed`` (a source) beside ``fusion`` without it: the fusion of the remaining
    sources where the chapter has one, else the best single-source model of the one source left (of those that
    ran); ``None`` if none ran."""
    ran = summary[summary["status"] == "ran"].set_index("model")["auroc_mean"]
    left = MODEL_SOURCES[fusion] - {removed}
    fused = [m for m in FUSIONS if MODEL_SOURCES[m] == left and m in ran.index]
    if fused:
        return fused[0]
    single = [m for m, s in MODEL_SOURCES.items() if s == left and m in ran.index]
    return max(single, key=lambda m: ran[m]) if single else None


def source_removal(results: dict, data, splits: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Each neural fusion of the chapter with each of its sources removed at test time (its fold models, the source's
    branches masked as if the patients lacked it; nothing refitted; :func:`prrt.explain.modality_ablation`), beside
    the model that never had that source (:func:`stand_in`): one row per fusion and source, mean AUROC over repeats."""
    auroc = summary.set_index("model")["auroc_mean"]
    rows = []
    for name in dict.fromkeys([*FUSIONS, *MECHANISMS]):
        result = results.get(name)
        if result is None or not result.models or not hasattr(next(iter(result.models.values())), "modalities"):
            continue
        ablation = modality_ablation(result.models, data, splits, SOURCE_NAMES)
        for source, source_name in SOURCE_NAMES.items():
            pred = ablation.get(f"without {source_name}")  # the setting's name, as modality_ablation gives it
            if pred is None:  # a source the fusion does not have
                continue
            other = stand_in(name, source, summary)
            rows.append({"fusion": name, "removed at test time": source_name,
                         "AUROC, all sources": auroc[name],
                         "AUROC, source removed": per_repeat_metrics(pred)["auroc"].mean(),
                         "model that never had it": other or "–",
                         "its AUROC": auroc[other] if other else float("nan")})
    return pd.DataFrame(rows)


def source_removal_table(removal: pd.DataFrame) -> pd.DataFrame:
    """:func:`source_removal` as the book shows it, narrow enough for the text column: the fusion and the source
    removed as the index, the AUROCs to two decimals, the model that never had the source with its AUROC in one
    column."""
    if removal.empty:
        return removal
    return pd.DataFrame({
        "AUROC: all, removed": [f"{a:.2f}, {b:.2f}" for a, b in zip(removal["AUROC, all sources"],
                                                                     removal["AUROC, source removed"])],
        "never had it (AUROC)": ["–" if m == "–" else f"{m} ({a:.2f})" for m, a in zip(removal["model that never had it"],
                                                                                     removal["its AUROC"])],
    }, index=pd.MultiIndex.from_frame(removal[["fusion", "removed at test time"]].rename(
        columns={"removed at test time": "removed"})))


def paired_tests(ctx, summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`headline_comparisons` on the run's shared splits, written to ``results/04_paired_tests.csv``; empty
    (and no file) when the fusion or the models it is compared with did not run."""
    comparisons = headline_comparisons(ctx.run_dir, summary, ctx.splits)
    if not comparisons.empty:
        comparisons.to_csv(ctx.path("results", "04_paired_tests.csv"))
    return comparisons


#: What the gate weighs, as the gate sentence names the branches.
GATE_BRANCHES = {"labs": "the laboratory values", "pet_features": "the SR-PET lesion features", "pet": "the PET CNN",
                 "ct": "the CT CNN"}


def gate_text(summary: pd.DataFrame, mechanism: str, weights: tuple[str, pd.DataFrame] | None = None) -> str:
    """Whether the cross-modal gate (``adaptive``) beat concatenation (``intermediate``) for laboratory values +
    SR-PET + CT, as the tables show the AUROCs (two decimals), and, where it did not, the likely reason; empty
    when one of the two did not run. ``mechanism``: the profile's (the headline's). ``weights``: the adaptive fusion's
    weights per patient (:func:`prrt.study.ch04_fusion.fusion_weights`), whose means the text then gives."""
    name = {m: HEADLINE if mechanism == m else mechanism_variant(m) for m in ("adaptive", "intermediate")}
    rows = summary[summary["status"] == "ran"].set_index("model")
    if not all(n in rows.index for n in name.values()):
        return ""
    a, i = (round(float(rows.loc[name[m], "auroc_mean"]), 2) for m in ("adaptive", "intermediate"))
    mean_weights = ""
    if weights is not None and weights[0] == name["adaptive"]:
        w = weights[1].mean()
        parts = [f"{GATE_BRANCHES.get(m, m)} {w[m]:.2f}" for m in w.sort_values(ascending=False, kind="stable").index]
        mean_weights = (f" On average over the patients the gate gave {parts[0]}"
                        + "".join(f", {p}" for p in parts[1:-1]) + (f" and {parts[-1]}" if len(parts) > 1 else "")
                        + " (each patient's weights sum to one).")
    if a > i:
        return f"In this run the cross-modal gate beat concatenation: AUROC {a:.2f} against {i:.2f}." + mean_weights
    return (f"In this run the cross-modal gate did not beat concatenation: AUROC {a:.2f} against {i:.2f} "
            f"(concatenation, `{name['intermediate']}`). A likely reason, not tested here: the gate is learnt from the "
            "same few training patients of each fold as the rest of the network, and it can only re-weight the "
            "sources' embeddings, while concatenation lets the final layer weigh each source's evidence directly; "
            "with a cohort of this size the extra freedom of a weighting per patient may cost more than it brings."
            + mean_weights)


def calibration_models(summary: pd.DataFrame) -> list[str]:
    """The models of the chapter's reliability plot: the fusion, the control and the best model without a CNN (each
    once, those that ran)."""
    rivals = dict(fusion_rivals(summary))
    ran = set(summary.loc[summary["status"] == "ran", "model"])
    best = [m for m, why in rivals.items() if "best model without a CNN" in why]
    return list(dict.fromkeys(m for m in [HEADLINE, CONTROL, *best] if m in ran))


def reliability(cohort, run_dir, summary: pd.DataFrame) -> tuple[dict, dict] | None:
    """Calibration (quantile bins of the out-of-fold probabilities of every repeat, pooled) and decision curves of
    :func:`calibration_models` (:func:`prrt.study.ch02_labs.calibration_curves`); None when none of them ran."""
    models = calibration_models(summary)
    if not models:
        return None
    return calibration_curves(cohort, {m: read_predictions(run_dir, m) for m in models})


def repeat_calibration(run_dir, summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each repeat's calibration slope with its 95 % interval (:func:`prrt.evaluation.per_repeat_calibration`) for
    :func:`calibration_models`."""
    return {m: per_repeat_calibration(read_predictions(run_dir, m)) for m in calibration_models(summary)}


def slope_reading(per_repeat: pd.DataFrame) -> str:
    """What the repeats' calibration slopes say, without a verdict that one interval could flip: in how many repeats
    the slope lies below (or above) 1, and in how many its 95 % interval lies wholly below (or above) 1."""
    ok = per_repeat.dropna(subset=["calibration_slope"])
    n = len(ok)
    if not n:
        return "no slope (its predictions do not vary, or separate the classes)"
    flat = int((ok["calibration_slope"] <= 0).sum())
    if flat > n / 2:
        return f"its probabilities do not rise with the outcome in {flat} of {n} repeats"
    below, above = int((ok["calibration_slope"] < 1).sum()), int((ok["calibration_slope"] > 1).sum())
    sure_below = int((ok["calibration_slope_ci_high"] < 1).sum())
    sure_above = int((ok["calibration_slope_ci_low"] > 1).sum())
    if below >= above:
        return (f"below 1, too extreme, in {below} of {n} repeats; the 95 % interval lies wholly below 1 in "
                f"{sure_below} of {n}")
    return (f"above 1, too timid, in {above} of {n} repeats; the 95 % interval lies wholly above 1 in {sure_above} "
            f"of {n}")


def calibration_text(summary: pd.DataFrame, per_repeat: dict[str, pd.DataFrame] | None = None) -> str:
    """A sentence on the calibration of :func:`calibration_models`: each one's calibration slope (mean over the
    repeats; 1 when the predictions spread as the outcomes do, below 1 when they are too extreme, above 1 when too
    timid) with how many repeats lie on each side of 1 and how many 95 % intervals exclude it (:func:`slope_reading`,
    with ``per_repeat`` from :func:`repeat_calibration`), calibration-in-the-large (0 when the mean risk is right,
    below 0 when it is too high) and Brier score."""
    models = calibration_models(summary)
    if not models:
        return "None of the models of the reliability plot ran for this manifest."
    rows = summary.set_index("model")
    per_repeat = per_repeat or {}

    def part(m):
        r = rows.loc[m]
        reading = f" ({slope_reading(per_repeat[m])})" if m in per_repeat else ""
        return (f"`{m}`: slope {num(r.get('calibration_slope'), 2)}{reading}, calibration-in-the-large "
                f"{num(r.get('calibration_in_the_large'), 2)}, Brier {num(r['brier_mean'], 3)}")

    return ("Calibration of each repeat's out-of-fold probabilities, averaged over the repeats (a slope of 1 and an "
            "intercept of 0 are perfect): " + "; ".join(part(m) for m in models) + ".")
