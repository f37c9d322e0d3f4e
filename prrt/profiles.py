"""Run profiles: the one place where sizes, repeats and epochs of a run are defined.

=========  ==========================  ====================================================
profile    used by                     what it must achieve
=========  ==========================  ====================================================
smoke      tests and CI                every notebook runs end to end on tiny volumes in minutes
demo       ``make book``               meaningful results on the synthetic cohort on a laptop CPU
paper      a GPU                       the study's protocol: repeated 3-fold CV, full resolution
=========  ==========================  ====================================================

Notebooks take the profile's *name* as a papermill parameter and call :func:`get_profile`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: The seed of a run and of the synthetic cohort when none is given (the study's arXiv date, 2025-11-05).
DEFAULT_SEED = 20251105


@dataclass(frozen=True)
class Profile:
    """Settings of one run profile.

    Attributes
    ----------
    name:
        Profile name (``smoke``, ``demo`` or ``paper``).
    input_size_voxels:
        Shape (x, y, z) of the preprocessed image tensors fed to the networks.
    roi:
        Region of interest of the networks' input (see :func:`prrt.imaging.boxes.input_box`): ``liver``
        (a grid of ``input_size_voxels`` cubic voxels of ``roi_spacing_mm`` centred on the liver of the
        organ map, so that it holds the liver's lesions whether or not they take up the tracer; centred
        on the lesions without a liver label), ``lesions`` (the same grid centred on the lesions of the
        mask) or ``body`` (``field_of_view_mm`` centred on the body).
    roi_spacing_mm:
        The one voxel spacing of every ``liver`` or ``lesions`` input, whatever the patient: lesions
        beyond the grid are cut, never squeezed onto coarser voxels.
    mask_channel:
        Whether the networks see the lesion mask as a second input channel.
    liver_in_mask_channel:
        With ``mask_channel``: whether that channel also shows the liver of the organ map (at 0.5 beside
        the lesions' 1; :func:`prrt.imaging.mask_channel_array`), so that the network is told where the liver is.
        Patients without an organ map get the lesions alone.
    field_of_view_mm:
        Physical extent (x, y, z) in millimetres of the ``body`` grid, centred on the body. Its voxel
        spacing is ``field_of_view_mm / input_size_voxels``.
    hu_window:
        CT window (lower, upper) in Hounsfield units, mapped linearly to [0, 1].
    suv_range:
        SR-PET standardised uptake values (lower, upper) mapped to [0, 1].
    suv_scale:
        How: ``log`` maps ``log(1 + SUV)`` (equal SUV ratios are equal steps, so a metastasis a few SUV below
        the liver stands out as clearly as the difference between lesions of SUV 10 and 20), ``linear`` the SUV.
        ``log`` in every profile: chosen on the two tuning cohorts (``benchmarks/DESIGN.md``).
    n_folds, n_repeats:
        Repeated stratified k-fold cross-validation (the study used 3 folds).
    val_fraction:
        Share of each fold's training patients held back (stratified) as an inner validation part whose
        loss and AUROC per epoch join the learning curves; they do not fit the network. With the kept
        weights those of the last epoch, nothing is chosen on them, so 0 (the ``demo`` profile) lets every
        training patient fit the network and leaves the curves with the training loss alone.
    selection:
        Which weights a network keeps: ``last`` (those after the last epoch; no early stopping) or
        ``val_loss`` (the epoch with the lowest loss on the inner validation part, which needs
        ``val_fraction`` > 0). ``last`` in every profile (:mod:`prrt.learn.training` says why).
    epochs, batch_size:
        CNN training budget.
    montage_patients:
        How many pseudonymous patients the cohort chapter shows as PET/CT montages.
    rf_trees:
        Trees of each Random Forest.
    permutation_repeats:
        Shuffles per feature and fold for permutation importance.
    n_bootstrap:
        Bootstrap resamples for confidence intervals.
    encoder:
        Image encoder of the CNNs (see :mod:`prrt.learn.networks`).
    pretrain_epochs:
        Epochs of the self-supervised CT-encoder pretraining (chapter 04, :mod:`prrt.learn.pretrain`).
    fusion_mechanism:
        ``adaptive`` or ``intermediate``: how the four fusions of chapter 04 combine the modalities.
    late_inner_folds:
        Inner folds of the late fusion's stacking (nested inside each training part).
    fusion_pet_features:
        Whether the neural fusions' SR-PET part reads, besides the PET CNN's embedding, the lesion
        features of chapter 02 (SUVmax, SUVmean, SUVpeak, MTV, ...) through a small network of its own.
    fusion_image_branches:
        ``end_to_end``: each neural fusion trains CNN encoders for SR-PET and CT of its own, with the
        rest of the network; ``fold_models``: its SR-PET and CT branches are given the score of the
        fold's unimodal CNN (the PET CNN of chapter 03, the pretrained CT CNN of chapter 04), which
        was trained on the same training patients, and only the small networks of the fusion learn
        (minutes instead of hours on a CPU; see :class:`prrt.learn.FoldModelScores`); ``cross_fitted``: the
        same, but the fusion's training patients get their scores from CNNs that never saw them nor the test
        fold (cross-fitting over pairs of outer folds, :func:`prrt.learn.cross_fitted_scores`), so that it does
        not learn its trust in an image from scores a CNN gave its own training patients (chapter 06's external
        design, with one outer fold, cross-fits over three inner folds of the development cohort). ``cross_fitted``
        in the smoke and demo profiles: ``fold_models`` is kept for comparison, and it leaks (a CNN's score of its
        own training patients is better than of new ones, so the fusion over-trusts the images).
    fusion_score_epochs:
        Epochs of a fusion whose image branches are the fold models' scores (the other training settings
        are :data:`prrt.learn.fusion.SCORE_FUSION_TRAINING`).
    label_fractions, label_fraction_repeats:
        Chapter 04's pretraining figure: the CT CNN from scratch and with the pretrained encoder, each fitted on
        these shares of every training part's labels (besides all of them, which the chapter's models are), on
        the first ``label_fraction_repeats`` repeats of the splits (0: all). An empty tuple leaves the figure out.
    fusion_models:
        Which models chapter 04 trains: ``all`` (the seven models and the three mechanisms),
        ``neural`` (all but the late fusion, whose nested cross-validation trains each CNN four times
        per fold, for a slower machine), ``headline`` (one model of each kind: the
        pretrained CT CNN, the laboratory + SR-PET + CT fusion and its late fusion) or ``fusion``
        (the pretrained CT CNN and that fusion). The others are listed as skipped, with this reason.
    display_size_voxels:
        Grid of the images the book shows (finer than the networks' input where CPU time is short).
    gradcam_repeats:
        How many repeats of the cross-validation chapter 05 computes Grad-CAM maps for (every test
        patient of every fold of those repeats, with the fold model that predicted them); 0: all.
    sanity_patients:
        Test patients (of the first fold) whose maps the sanity checks of chapter 05 recompute.
    mask_dilation_voxels:
        How far (voxels of the network's input) the lesion mask is grown before the saliency check.
    engine:
        Where the (model, repeat, fold) jobs run when ``prrt run --engine`` names nothing
        (:mod:`prrt.learn.engines`): ``sequential`` (one after another in the notebook's process) or ``split`` (the
        one-core jobs on two worker processes, the CNNs in the notebook's process; the ``demo`` profile, whose
        scikit-learn models and fusions left a core of the 2-core machine idle).
    """

    name: str
    input_size_voxels: tuple[int, int, int]
    roi: str = "liver"
    roi_spacing_mm: float = 6.0
    mask_channel: bool = True
    liver_in_mask_channel: bool = True
    field_of_view_mm: tuple[float, float, float] = (384.0, 384.0, 320.0)
    hu_window: tuple[float, float] = (-50.0, 250.0)
    suv_range: tuple[float, float] = (0.0, 30.0)
    suv_scale: str = "log"
    n_folds: int = 3
    n_repeats: int = 5
    val_fraction: float = 0.2
    selection: str = "last"
    epochs: int = 30
    batch_size: int = 8
    montage_patients: int = 4
    rf_trees: int = 500
    permutation_repeats: int = 10
    n_bootstrap: int = 1000
    encoder: str = "compact"
    pretrain_epochs: int = 40
    fusion_mechanism: str = "adaptive"
    late_inner_folds: int = 3
    fusion_pet_features: bool = True
    fusion_image_branches: str = "end_to_end"
    fusion_score_epochs: int = 150
    fusion_models: str = "all"
    label_fractions: tuple[float, ...] = (0.25, 0.5)
    label_fraction_repeats: int = 0
    display_size_voxels: tuple[int, int, int] = (96, 96, 80)
    gradcam_repeats: int = 0
    sanity_patients: int = 30
    mask_dilation_voxels: int = 1
    engine: str = "sequential"
    description: str = ""

    @property
    def voxel_spacing_mm(self) -> tuple[float, float, float]:
        """Spacing (x, y, z) in mm of every input of this profile."""
        if self.roi != "body":
            return (float(self.roi_spacing_mm),) * 3
        return tuple(f / s for f, s in zip(self.field_of_view_mm, self.input_size_voxels))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["voxel_spacing_mm"] = list(self.voxel_spacing_mm)
        return d


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        input_size_voxels=(24, 24, 20),
        roi="liver",
        roi_spacing_mm=8.0,
        mask_channel=True,
        display_size_voxels=(48, 48, 40),
        n_repeats=2,
        epochs=2,
        batch_size=8,
        montage_patients=2,
        rf_trees=30,
        permutation_repeats=1,
        n_bootstrap=200,
        pretrain_epochs=2,
        late_inner_folds=2,
        fusion_image_branches="cross_fitted",
        fusion_score_epochs=10,
        fusion_models="headline",
        label_fractions=(0.5,),
        label_fraction_repeats=1,
        gradcam_repeats=1,
        sanity_patients=8,
        description="Tiny volumes and few repeats: proves that every notebook runs end to end.",
    ),
    "demo": Profile(
        name="demo",
        # the 192 mm box of 32³ voxels of 6 mm as 24³ of 8 mm: as good on the tuning cohorts, half the CNNs' time
        # (benchmarks/DESIGN.md, "Smaller inputs for the demo")
        input_size_voxels=(24, 24, 24),
        roi="liver",
        roi_spacing_mm=8.0,
        mask_channel=True,
        val_fraction=0.0,
        # three repeats, not five: the CNNs' fits were two thirds of `make book` (benchmarks/DESIGN.md)
        n_repeats=3,
        epochs=12,
        batch_size=8,
        montage_patients=4,
        rf_trees=300,
        permutation_repeats=3,
        fusion_image_branches="cross_fitted",
        label_fraction_repeats=1,
        engine="split",
        description="Sized for the synthetic cohort on a 2-core laptop CPU.",
    ),
    "paper": Profile(
        name="paper",
        input_size_voxels=(96, 96, 96),
        roi="liver",
        roi_spacing_mm=2.0,
        mask_channel=True,
        n_repeats=10,
        epochs=100,
        batch_size=8,
        montage_patients=6,
        n_bootstrap=2000,
        description="The study's protocol (repeated 3-fold CV, full resolution); needs a GPU.",
    ),
}


def get_profile(name: str) -> Profile:
    """Return the profile called ``name``; a clear error lists the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"Unknown profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
        ) from None
