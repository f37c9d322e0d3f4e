"""Chapter 04: which fusions of laboratory values, SR-PET and CT the book fits, and what it shows of them.

The mechanisms (late, intermediate, adaptive with a cross-modal gate), their handling of missing sources
and of the SR-PET lesion features are described in :mod:`prrt.learn.fusion`. This module decides the
models of the chapter (:func:`chapter_specs`): the pretrained CT CNN, the four fusions of the study, the
headline fusion by the other mechanisms, and the control ``lab_petfeatures_net`` (the fusion network with
the laboratory and lesion-feature branches only, trained exactly like the fusions), so that what the CNN
branches add is the fusion minus the control; how they are fitted (with the cross-fitted image scores) and
the pretraining figure (:func:`label_fractions`). The chapter's comparisons, its compact table and its forest
plot are in :mod:`prrt.study.ch04_comparison`.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from ..evaluation import (
    compare_models,
    format_summary,
    per_repeat_metrics,
    read_predictions,
)
from ..imaging import FEATURES, cohort_features
from ..learn import (
    SCORE_BRANCHES,
    SOURCE,
    FewerLabels,
    FoldModelScores,
    FusionConfig,
    LateFusion,
    ModelSpec,
    NeuralFusion,
    config_from_profile,
    cross_fitted_scores,
    cross_validate,
    ct_encoder_state,
    feature_table,
    fusion_config,
    image_data,
    image_spec,
    make_model,
    table_spec,
    write_cross_fitted,
)
from .ch02_labs import saved_pet_features
from .ch03_images import image_specs, input_description
from .names import (
    CONTROL,
    CT_PRETRAINED,
    FUSIONS,
    HEADLINE,
    INPUT_SET_OF,
    LATE_FUSION,
    MODEL_CHAPTERS,
    SEVEN,
    inputs_without,
    mechanism_variant,
)
from .notebook import RiskGroups, fit_models, median_risk_groups
from .reported import comparison_tables


def late_fusion_spec(name: str, chapter: str, inputs: str, bases: list[ModelSpec], inner_folds: int = 3,
                     bound: str | None = None, fold_models: dict[str, FoldModelScores] | None = None) -> ModelSpec:
    """Late fusion (stacking) of the runnable ``bases``; ``fold_models``: cross-fitted sources that stand in for the
    image bases of their modality (:class:`prrt.learn.LateFusion`; the spec then ``requires`` those models)."""
    runnable = [b for b in bases if b.build is not None]
    if len(runnable) < 2:
        return ModelSpec(name, chapter, inputs, None, reason="fewer than two of its modalities are in the manifest")
    # the image bases need their modality; the tabular base (laboratory values) declares none
    missing = [b.needs[0] if b.needs else "labs" for b in bases if b.build is None]
    used = {m: f for m, f in (fold_models or {}).items() if any(b.needs == (m,) for b in runnable)}
    return ModelSpec(name, chapter, inputs_without(inputs, missing),
                     lambda seed: LateFusion(runnable, inner_folds, fold_models=used), bound=bound,
                     requires=tuple(f.model for f in used.values()),
                     one_core=all(b.one_core or set(b.needs) <= set(used) for b in runnable))


def neural_fusion_spec(name: str, chapter: str, inputs: str, modalities: list[str], cohort, cfg: FusionConfig,
                       ct_weights: dict | None = None, bound: str | None = None,
                       fold_models: dict[str, FoldModelScores] | None = None) -> ModelSpec:
    """A neural fusion over the ``modalities`` the manifest has (skipped if they come from fewer than
    two sources: laboratory values, SR-PET, CT). ``pet_features`` reads the columns of
    :data:`prrt.imaging.FEATURES` from the data's table (see :func:`chapter_table`).
    ``fold_models`` (``{"pet": FoldModelScores, ...}``): those image branches read the fold's unimodal
    CNN instead of training their own (the spec then ``requires`` that model)."""
    sources = {"labs": bool(cohort.labs), "pet": "pet" in cohort.modalities, "ct": "ct" in cohort.modalities}
    have = [m for m in modalities if sources[SOURCE[m]]]
    if len({SOURCE[m] for m in have}) < 2:
        return ModelSpec(name, chapter, inputs, None, reason="fewer than two of its modalities are in the manifest")
    labs = list(cohort.labs) if "labs" in have else None
    pet = list(FEATURES) if "pet_features" in have else None
    missing = list(dict.fromkeys(SOURCE[m] for m in modalities if m not in have))
    fold_models = {m: f for m, f in (fold_models or {}).items() if m in have}
    return ModelSpec(name, chapter, inputs_without(inputs, missing),
                     lambda seed: NeuralFusion(have, labs, cfg, ct_weights, pet_feature_columns=pet,
                                               fold_models=fold_models),
                     bound=bound, val_fraction=cfg.train.val_fraction,
                     requires=tuple(f.model for f in fold_models.values()),
                     one_core=all(m in fold_models for m in have if m in ("pet", "ct")))


def chapter_table(cohort, run_dir, progress: bool = True) -> pd.DataFrame:
    """The table chapter 04 reads: laboratory values, numeric clinical variables and, where the manifest
    names PET images, the SR-PET lesion features that chapter 02 wrote (computed here if it did not)."""
    if "pet" not in cohort.modalities:
        return feature_table(cohort)
    pet = saved_pet_features(run_dir)
    if pet is None:
        pet = cohort_features(cohort, progress=progress)
    return feature_table(cohort, pet)


def fusion_modalities(mods: list[str], profile) -> list[str]:
    """The branches of a fusion of ``mods``: SR-PET is the CNN and, with ``profile.fusion_pet_features``,
    also the lesion features of chapter 02."""
    if not profile.fusion_pet_features or "pet" not in mods:
        return list(mods)
    i = mods.index("pet")
    return [*mods[:i], "pet_features", *mods[i:]]


def pretrained_ct_spec(cohort, profile, ct_state: dict | None, chapter: str = "04") -> ModelSpec:
    """The CT CNN of chapter 03 with its encoder starting from the pretrained weights ``ct_state`` (skipped, with the
    reason, without CT images or pretraining)."""
    reason = ("the manifest names no CT images" if "ct" not in cohort.modalities else
              "no CT pretraining in the manifest (ct_pretraining) or the run (--ct-weights)" if ct_state is None
              else None)
    return image_spec(CT_PRETRAINED, "ct", config_from_profile(profile), chapter,
                      input_description(profile, "CT, 3D CNN") + ", encoder pretrained", reason is None, bound="ct",
                      encoder_weights=ct_state, reason=reason)


def chapter_specs(cohort, profile, ct_state: dict | None, chapter: str = "04", run_dir=None) -> list[ModelSpec]:
    """The models chapter 04 trains: the pretrained CT CNN, the four fusions (the profile's mechanism,
    pretrained CT branch), the control (:data:`prrt.study.names.CONTROL`) and, for laboratory values +
    SR-PET + CT, the other two mechanisms.

    With ``profile.fusion_image_branches == "fold_models"`` the neural fusions' image branches are the
    scores of the fold models that ``run_dir`` holds: the PET CNN of chapter 03 and the pretrained CT
    CNN of this chapter (the CT CNN of chapter 03 when there is no pretraining); with ``"cross_fitted"``
    the training patients' scores come from cross-fitted models instead (:func:`write_cross_fitted_scores`)."""
    cfg = config_from_profile(profile)
    specs = [pretrained_ct_spec(cohort, profile, ct_state, chapter)]
    mech = profile.fusion_mechanism
    pretrained = " (CT branch pretrained)" if ct_state is not None else ""

    branches = getattr(profile, "fusion_image_branches", "end_to_end")
    if branches not in ("end_to_end", *SCORE_BRANCHES):
        raise ValueError(f"fusion_image_branches must be 'end_to_end', 'fold_models' or 'cross_fitted', "
                         f"not {branches!r}")
    fold_models = None
    if branches in SCORE_BRANCHES:
        if run_dir is None:
            raise ValueError("fusions with image branches from the fold models need the run folder (run_dir)")
        ct_source = "ct_cnn_pretrained" if ct_state is not None else "ct_cnn"
        crossed = branches == "cross_fitted"
        fold_models = {"pet": FoldModelScores(run_dir, "pet_cnn", "pet", MODEL_CHAPTERS["pet_cnn"], crossed),
                       "ct": FoldModelScores(run_dir, ct_source, "ct", MODEL_CHAPTERS[ct_source], crossed)}
        pretrained = " (CT CNN pretrained)" if ct_state is not None else ""

    features = "lesion-feature score" if fold_models else "lesion features"

    def text_of(mods, text, mechanism):
        cnn = "CNN score" if fold_models else "CNN"
        lesions = f" ({cnn} and {features})" if "pet_features" in fusion_modalities(mods, profile) else ""
        images = (", image branches: the fold's unimodal CNN scores"
                  + (" (training patients: cross-fitted)" if branches == "cross_fitted" else "")
                  if fold_models and {"pet", "ct"} & set(mods) else "")
        return (text.replace("SR-PET", f"SR-PET{lesions}") + f", {mechanism} fusion"
                + (pretrained if "ct" in mods else "") + images)

    for name, (mods, text) in FUSIONS.items():
        specs.append(neural_fusion_spec(name, chapter, text_of(mods, text, mech), fusion_modalities(mods, profile),
                                        cohort, fusion_config(profile, mech), ct_weights=ct_state,
                                        bound=BOUND_OF_FUSION[name], fold_models=fold_models))
    # the control: the same network and training without a CNN branch (laboratory values + SR-PET lesion features)
    specs.append(neural_fusion_spec(CONTROL, chapter, f"laboratory values + SR-PET {features}, the fusion network "
                                    f"without CNN branches ({mech}; control)", ["labs", "pet_features"], cohort,
                                    fusion_config(profile, mech), bound=INPUT_SET_OF[CONTROL]))
    mods, text = FUSIONS[HEADLINE]
    for other in [m for m in ("intermediate", "adaptive") if m != mech]:
        specs.append(neural_fusion_spec(mechanism_variant(other), chapter, text_of(mods, text, other),
                                        fusion_modalities(mods, profile), cohort, fusion_config(profile, other),
                                        ct_weights=ct_state, bound="lab_pet_ct", fold_models=fold_models))
    labs = list(cohort.labs)
    # with cross-fitted sources the image bases are the fold models (no CNN refitted inside a training part)
    crossed = fold_models if branches == "cross_fitted" else None
    bases = [table_spec("lab_rf", chapter, "labs", labs or None, lambda s: make_model("rf", s, profile)),
             image_spec("pet_cnn", "pet", cfg, chapter, "PET", "pet" in cohort.modalities),
             image_spec(crossed["ct"].model if crossed else "ct_cnn", "ct", cfg, chapter, "CT",
                        "ct" in cohort.modalities, encoder_weights=ct_state)]
    how = ("the unimodal models' scores: the laboratory Random Forest's from an inner cross-validation, the CNNs' "
           "cross-fitted" if crossed else "the unimodal models, refitted inside each training part")
    specs.append(late_fusion_spec(LATE_FUSION, chapter, f"laboratory values + SR-PET + CT, late fusion (stacking of "
                                  f"{how})", bases, profile.late_inner_folds, bound="lab_pet_ct", fold_models=crossed))
    subsets = {"headline": {CT_PRETRAINED, HEADLINE, CONTROL, LATE_FUSION},  # one model of each kind
               "fusion": {CT_PRETRAINED, HEADLINE, CONTROL},  # without the nested CNN training of late fusion
               "neural": {s.name for s in specs} - {LATE_FUSION}}
    if profile.fusion_models in subsets:
        keep = subsets[profile.fusion_models]
        specs = [s if s.name in keep or s.build is None else
                 replace(s, build=None, reason=f"not trained in the {profile.name} profile "
                                               f"(fusion_models = {profile.fusion_models})")
                 for s in specs]
    elif profile.fusion_models != "all":
        raise ValueError(f"fusion_models must be 'all', 'neural', 'headline' or 'fusion', not {profile.fusion_models!r}")
    return specs


# ---- what chapter 04 shows ---------------------------------------------------------------------------
#: How the lesion features enter a fusion whose image branches are scores (:data:`prrt.learn.SCORE_FUSION_NETWORK`).
LESION_SCORE_TEXT = (
    "The SR-PET lesion features also enter as one number: the score of a logistic regression of the features, for a "
    "training patient from a regression fitted without them (an inner three-fold split of the training part, not "
    "the pairs of folds of the CNNs), for a test patient from the regression of all training patients. Given the "
    "feature values themselves, the fusion learnt to trust lesion features that carried nothing (the null "
    "experiment in the methods, with every patient's images moved to another patient).")


def image_branches_text(profile, ct_pretrained: bool) -> str:
    """How this run's neural fusions get their SR-PET and CT branches, in a sentence or two (Markdown)."""
    branches = getattr(profile, "fusion_image_branches", "end_to_end")
    ct = "the pretrained CT CNN above" if ct_pretrained else "the CT CNN of chapter 3"
    if branches == "cross_fitted":
        return ("In this run (profile setting `fusion_image_branches: cross_fitted`) the fusions train no CNN of their "
                "own: their SR-PET and CT branches are given a CNN's score. For a fold's test patients it is the "
                f"fold's unimodal CNN (the PET CNN of chapter 3 and {ct}); for its training patients, whose labels "
                "that CNN has seen, it comes from a CNN of the same kind that saw neither them nor the test fold "
                "(cross-fitting: for every pair of folds, one CNN fitted on the remaining fold, a third of the "
                "patients, scores the patients of the pair). So the fusion learns how far to trust an image from "
                "scores of patients the scoring network never saw, as at test time, though from networks trained "
                "on half as many patients as the fold's own; each kind of score is standardised on its own scale. "
                + LESION_SCORE_TEXT)
    if branches == "fold_models":
        return ("In this run (profile setting `fusion_image_branches: fold_models`) the fusions train no CNN of their "
                "own: their SR-PET and CT branches are given the score of the fold's unimodal CNN (the PET CNN of "
                f"chapter 3 and {ct}), standardised on the fitting patients. That CNN was trained on exactly the "
                "same training patients: a fingerprint of the two patient lists is saved with every checkpoint and "
                "checked, so no test patient of the fold reached it. Only the fusion's small networks learn, which "
                "keeps the chapter within minutes on a laptop CPU; the paper profile trains the encoders end to end. "
                + LESION_SCORE_TEXT)
    start = " (the CT encoder from the pretrained weights)" if ct_pretrained else ""
    return f"In this run the fusions train their SR-PET and CT encoders end to end{start}, with the rest of the network."


def modality_weights(result, data) -> pd.DataFrame:
    """Each patient's modality weights in a neural fusion, from the fold models that tested them (mean over repeats)."""
    parts = []
    for (repeat, fold), model in result.models.items():
        test = result.predictions.query("repeat == @repeat and fold == @fold")["patient"].tolist()
        if test and hasattr(model, "modality_weights"):
            parts.append(model.modality_weights(data, test))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts).groupby(level=0).mean()


def stacking_weights(result) -> pd.DataFrame:
    """The late fusion's logistic-regression coefficients per fold (on each unimodal model's logit)."""
    rows = [m.stacking_weights().rename((r, f)) for (r, f), m in result.models.items() if hasattr(m, "stacking_weights")]
    return pd.DataFrame(rows) if rows else pd.DataFrame()


# ---- the chapter's steps -----------------------------------------------------------------------------
#: The input set of each fusion: the key of its achievable AUROC in a synthetic cohort's report.
BOUND_OF_FUSION = {name: INPUT_SET_OF[name] for name in FUSIONS}
#: The input set of each model of the comparison with the study: the key of its achievable AUROC in the
#: generator's report (what the expected risk given those inputs reaches).
BOUND_KEYS = {m: INPUT_SET_OF[m] for m in (*SEVEN, CT_PRETRAINED)}
#: The laboratory + SR-PET + CT fusion by each mechanism: the profile's (the headline) and the others.
MECHANISMS = [HEADLINE, mechanism_variant("intermediate"), mechanism_variant("adaptive"), LATE_FUSION]


def ct_encoder(ctx, ct_weights: str = "", ct_weights_prefix: str = "") -> tuple[dict | None, dict, str]:
    """The CT encoder's starting weights for this run (:func:`prrt.learn.ct_encoder_state`): from ``ct_weights``
    (a state-dict file; ``ct_weights_prefix``: key renames ``OLD=NEW``, comma-separated) or pretrained on the
    manifest's CT collection. Returns ``(state dict or None, its card, how it was made in words)``."""
    prefixes = [p for p in ct_weights_prefix.split(",") if p]
    return ct_encoder_state(ctx.cohort, ctx.profile, ctx.cache_dir, ctx.seed, ct_weights, prefixes)


def pretraining_text(how: str) -> str:
    """The CT encoder's starting point in words, for the page's prose (Markdown)."""
    return how or "no pretraining (none is configured)"


def pretraining_line(how: str, card: dict) -> str:
    """One line on the pretraining this run made: epochs, time, input size and channels."""
    return (f"{how}: {card['epochs']} epochs, {card['seconds']} s; inputs {card['input_size_voxels']} voxels, "
            f"{card['in_channels']} channels")


def fit_chapter_models(ctx, ct_state: dict | None) -> tuple[object, dict, pd.DataFrame]:
    """Cross-validate the models of :func:`chapter_specs` (keeping each fold's model, whose weights the chapter
    shows) on the chapter's table and the image inputs. Returns the data (:class:`prrt.learn.ModelData`), the
    results and the run's summary (with the chapter's rows)."""
    data = image_data(ctx.cohort, ctx.profile, ctx.cache_dir, table=chapter_table(ctx.cohort, ctx.run_dir))
    specs = chapter_specs(ctx.cohort, ctx.profile, ct_state, run_dir=ctx.run_dir)
    write_cross_fitted_scores(ctx, specs, data)
    results, summary = fit_models(ctx, specs, data, keep_models=True)
    return data, results, summary


def write_cross_fitted_scores(ctx, specs: list[ModelSpec], data, splits: pd.DataFrame | None = None,
                              run_dir=None) -> list[str]:
    """With the profile's ``fusion_image_branches: cross_fitted``: the cross-fitted scores
    (:func:`prrt.learn.cross_fitted_scores`) of every image model a fusion of ``specs`` reads (chapter 03's PET
    CNN, the CT source), written where the fusions read them. ``splits`` and ``run_dir``: another design than
    the run's (chapter 06's external one, whose single outer fold is cross-fitted by inner folds over the
    development cohort). Returns the models scored (none otherwise)."""
    if getattr(ctx.profile, "fusion_image_branches", "end_to_end") != "cross_fitted":
        return []
    splits = ctx.splits if splits is None else splits
    known = {s.name: s for s in [*image_specs(ctx.cohort, ctx.profile), *specs]}
    needed = list(dict.fromkeys(m for s in specs if s.build is not None for m in s.requires))
    done = []
    for name in needed:
        spec = known.get(name)
        if spec is None or spec.build is None:
            continue
        write_cross_fitted(run_dir or ctx.run_dir, name,
                           cross_fitted_scores(spec, data, splits, ctx.seed, engine=ctx.engine))
        done.append(name)
    return done


def label_fractions(ctx, data, ct_state: dict | None) -> pd.DataFrame | None:
    """Pretraining where it may pay: the CT CNN from scratch and with the pretrained encoder (the specs of chapter
    03 and of this chapter), each fitted on a stratified share of every training part's labels
    (:class:`prrt.learn.FewerLabels`; the profile's ``label_fractions``, and all of them from the chapter's own
    predictions) on the first ``label_fraction_repeats`` repeats of the shared splits. One row per share: each
    model's mean AUROC over those repeats and the paired difference (pretrained − scratch, corrected resampled
    t-test, 95 % interval); written to ``results/04_label_fractions.csv``. ``None`` when there is no pretrained
    encoder, no CT or no share to fit."""
    fractions = sorted({float(f) for f in ctx.profile.label_fractions if 0 < f < 1})
    if ct_state is None or "ct" not in ctx.cohort.modalities or not fractions:
        return None
    repeats = ctx.profile.label_fraction_repeats or int(ctx.splits["repeat"].max()) + 1
    splits = ctx.splits[ctx.splits["repeat"] < repeats]
    specs = {"scratch": next(s for s in image_specs(ctx.cohort, ctx.profile) if s.name == "ct_cnn"),
             "pretrained": pretrained_ct_spec(ctx.cohort, ctx.profile, ct_state)}
    rows = []
    for fraction in [*fractions, 1.0]:
        pred = {}
        for kind, spec in specs.items():
            if fraction == 1.0:
                full = read_predictions(ctx.run_dir, spec.name)
                pred[kind] = full[full["repeat"] < repeats]
            else:
                fewer = replace(spec, name=f"{spec.name}, {100 * fraction:.0f} % of the labels",
                                build=lambda seed, b=spec.build, f=fraction: FewerLabels(b(seed), f))
                pred[kind] = cross_validate(fewer, data, splits, ctx.seed, engine=ctx.engine).predictions
        c = compare_models(pred["pretrained"], pred["scratch"], splits)
        rows.append({"fraction": fraction, "auroc_scratch": per_repeat_metrics(pred["scratch"])["auroc"].mean(),
                     "auroc_pretrained": per_repeat_metrics(pred["pretrained"])["auroc"].mean(),
                     "difference": c["auroc_difference"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                     "p": c["p_corrected_t"], "repeats": repeats})
    out = pd.DataFrame(rows)
    out.to_csv(ctx.path("results", "04_label_fractions.csv"), index=False)
    return out


def label_fraction_text(table: pd.DataFrame | None) -> str:
    """The pretraining figure in a sentence or two (Markdown), from :func:`label_fractions`."""
    if table is None:
        return ("No pretraining figure in this run: it needs the pretrained CT encoder, CT images and a share of the "
                "labels below one in the profile (`label_fractions`).")
    parts = [f"{100 * r.fraction:.0f} % of the labels: {r.difference:+.3f} (95 % CI {r.ci_low:+.3f} to {r.ci_high:+.3f})"
             for r in table.itertuples()]
    def shares(rows):
        return ", ".join(f"{100 * r.fraction:.0f} %" for r in rows) + " of the labels"

    above = [r for r in table.itertuples() if r.ci_low > 0]
    below = [r for r in table.itertuples() if r.ci_high < 0]
    verdict = [f"The interval lies above zero (pretraining helped) at {shares(above)}." if above else "",
               f"The interval lies below zero (pretraining hurt) at {shares(below)}." if below else ""]
    if not above and not below:
        verdict = ["Every interval includes zero: on this cohort no difference between the pretrained and the "
                   "untrained CT CNN could be detected, with few labels or with all of them."]
    n = int(table["repeats"].iloc[0])
    repeats = "the first repeat" if n == 1 else f"the first {n} repeats"
    return (f"Pretrained minus from scratch, mean per-fold AUROC difference over {repeats} of the splits: "
            + "; ".join(parts) + ". " + " ".join(v for v in verdict if v))


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The chapter's rows of the run's summary, as the book shows them."""
    return format_summary(summary[summary["chapter"] == "04"])


def seven_models(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows of the study's seven models and of the pretrained CT CNN, in the study's order."""
    order = SEVEN + [CT_PRETRAINED]
    rows = summary[summary["model"].isin(order)]
    return rows.set_index("model").reindex([m for m in order if m in set(rows["model"])]).reset_index()


def seven_models_table(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`seven_models` as the book shows them."""
    return format_summary(seven_models(summary))


def comparison_with_study(ctx, summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seven models beside the study's numbers, with the achievable AUROC of their inputs on a synthetic cohort
    (:func:`prrt.study.reported.comparison_tables`)."""
    return comparison_tables(ctx.cohort, seven_models(summary), BOUND_KEYS)


def mechanisms_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows of the laboratory + SR-PET + CT fusion by each mechanism, as the book shows them."""
    return format_summary(summary[summary["model"].isin(MECHANISMS)])


def fusion_weights(ctx, results: dict, data) -> tuple[str, pd.DataFrame] | None:
    """The modality weights of each patient (:func:`modality_weights`) in the laboratory + SR-PET + CT neural
    fusion (the headline's, else the adaptive one), written to ``results/04_modality_weights.csv``: ``(model,
    weights)``; ``None`` when no such fusion ran or it gives no weights."""
    fused = [n for n in [HEADLINE, mechanism_variant("adaptive")] if n in results]
    if not fused:
        return None
    weights = modality_weights(results[fused[0]], data)
    if weights.empty:
        return None
    weights.to_csv(ctx.path("results", "04_modality_weights.csv"))
    return fused[0], weights


def stacking_summary(results: dict) -> pd.DataFrame | None:
    """Mean and SD over the folds of the late fusion's stacking coefficients (two decimals); ``None`` when the
    late fusion did not run."""
    if LATE_FUSION not in results:
        return None
    return stacking_weights(results[LATE_FUSION]).describe().loc[["mean", "std"]].round(2)


def risk_groups(cohort, results: dict) -> RiskGroups | None:
    """The median risk groups of the laboratory + SR-PET + CT fusion; ``None`` without PFS times or fusion."""
    if not cohort.has_survival or HEADLINE not in results:
        return None
    return median_risk_groups(cohort, HEADLINE, results[HEADLINE].predictions)
