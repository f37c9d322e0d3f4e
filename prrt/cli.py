"""The ``prrt`` command: validate a manifest, make demo data, pretrain the CT encoder, import a DICOM export,
run the notebooks, build the book.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import (
    DicomImportError,
    ManifestError,
    SyntheticConfig,
    check_compatible,
    generate,
    generate_ct_collection,
    import_dicom,
    incompatible,
    load_cohort,
    write_manifest,
)
from .learn import PretrainConfig, pretrain_ct, read_card
from .profiles import DEFAULT_SEED, get_profile
from .runner import RunError, RunInterrupted, RunLocked, build_book, run

EXIT_INVALID = 2
EXIT_FAILED = 1


def _validate(args) -> int:
    # an external cohort is predicted, not cross-validated: no profile's feasibility check for it
    profile = None if args.development else args.profile
    try:
        cohort = load_cohort(args.manifest, check_images=args.check_images, profile=profile, strict=args.strict)
        if args.development:
            development = load_cohort(args.development, check_images="none")
            problems = check_compatible(development, cohort)
            if problems:
                raise incompatible(development, cohort, problems)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    s = cohort.summary()
    short, long_ = s["group_names"]
    print(f"Manifest {cohort.manifest_path} is valid" + (f", with {len(cohort.warnings)} warning(s):"
                                                         if cohort.warnings else "."))
    for w in cohort.warnings:
        print(f"  - {w}")
    print(f"  cohort: {s['name']}{' (synthetic)' if s['synthetic'] else ''}")
    print(f"  patients: {s['patients']}")
    if s["horizon_months"] is not None:
        print(f"  labelled at {s['horizon_months']:g} months: {s['labelled']} "
              f"({short} {s['short_pfs']}, {long_} {s['long_pfs']})")
        print(f"  excluded from the binary task (censored before the horizon): "
              f"{s['excluded_censored_before_horizon']}")
    else:
        print(f"  labelled: {s['labelled']} ({short}: {s['short_pfs']}, {long_}: {s['long_pfs']}); "
              f"without a label: {s['excluded_censored_before_horizon']}")
    if profile:
        print(f"  cross-validation of the {args.profile} profile: feasible")
    if args.development:
        print(f"  fits the models of {args.development}: yes (prrt run --validate-on can predict it)")
    mods = ", ".join(f"{m} {n}/{s['patients']}" for m, n in s["modalities"].items()) or "none"
    print(f"  images: {mods}")
    print(f"  laboratory values: {s['labs']}; clinical variables: {s['clinical']}")
    if s["missing_values"]:
        print("  missing values per column:")
        for col, n in s["missing_values"].items():
            print(f"    {col}: {n}")
    else:
        print("  missing values: none")
    return 0


def _demo_data(args) -> int:
    cfg = SyntheticConfig.for_size(args.n_patients, n_censored_before_horizon=args.censored_before_horizon,
                                   geometry=args.geometry, mask_grid=args.mask_grid, pet_scale=args.pet_scale,
                                   pet_fwhm_mm=args.pet_fwhm, name=args.name)
    report = generate(args.out, seed=args.seed, config=cfg, workers=args.workers)
    b = report["achievable_auroc"]
    print(f"Wrote {report['n_patients']} synthetic patients to {args.out} "
          f"({report['n_short_pfs']} short PFS, {report['n_long_pfs']} long PFS, "
          f"{report['n_censored_before_horizon']} censored before the horizon).")
    print("Achievable AUROC (expected risk given what the inputs show, against the labels): "
          + "; ".join(f"{k} {v:.3f}" for k, v in b.items()))
    print(f"Manifest: {Path(args.out) / 'manifest.yaml'}")
    if args.pretrain_ct:
        folder = generate_ct_collection(Path(args.out) / "ct_pretraining", args.pretrain_ct, args.seed,
                                        geometry=args.geometry)
        write_manifest(Path(args.out) / "manifest.yaml", table_rel="cohort.csv", image_root=".", cfg=cfg,
                       ct_pretraining="ct_pretraining")
        print(f"Unlabelled CT collection for pretraining ({args.pretrain_ct} cases): {folder}")
    return 0


def _pretrain_ct(args) -> int:
    profile = get_profile(args.profile)
    cfg = PretrainConfig(encoder=profile.encoder, epochs=args.epochs or PretrainConfig.epochs)
    cache = Path(args.cache_dir) if args.cache_dir else Path("runs") / ".prrt-cache"
    weights = pretrain_ct(args.data, profile, cache, args.seed, cfg, force=args.force)
    card = read_card(weights)
    if args.out:
        import shutil

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, args.out)
        shutil.copyfile(weights.with_suffix(".json"), Path(args.out).with_suffix(".json"))
        weights = Path(args.out)
    curve = card["loss_curve"]
    print(f"CT encoder pretrained on {card['n_cases']} CTs ({card['epochs']} epochs, loss "
          f"{curve['train_loss'][0]:.3f} -> {curve['train_loss'][-1]:.3f}): {weights}")
    return 0


def _import_dicom(args) -> int:
    try:
        result = import_dicom(args.src, args.out, table=args.table, table_id=args.table_id, template=args.template,
                              id_map=args.id_map, key=args.key, study=args.study, pet_series=args.pet_series,
                              ct_series=args.ct_series, roi=args.roi, mask_from=args.mask_from,
                              log=lambda msg: print(msg, file=sys.stderr))
    except DicomImportError as exc:
        print(f"DICOM import failed: {exc}", file=sys.stderr)
        return EXIT_INVALID
    n = len(result.patients)
    masks = sum("mask" in e for e in result.patients.values())
    print(f"Imported {n} patient(s) into {result.out} ({masks} with a lesion mask); the header fields read are "
          f"listed in {result.out / 'import-report.json'}.")
    print(f"Manifest: {result.manifest}" + ("" if args.table and args.template else
          "  (add the endpoint and laboratory values: --table and --template, or edit it)"))
    print(f"Check it: prrt validate {result.manifest}")
    return 0


def _run(args) -> int:
    try:
        d = run(args.manifest, args.profile, args.run_dir, seed=args.seed, notebooks_dir=args.notebooks_dir,
                cache_dir=args.cache_dir, ct_weights=args.ct_weights, ct_weights_prefix=args.ct_weights_prefix,
                engine=args.engine, workers=args.workers, book=not args.no_book, validate_on=args.validate_on,
                log=lambda msg: print(msg, file=sys.stderr))
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except RunError as exc:
        return _report(exc, "Run refused", "Run interrupted", "Run failed")
    info = json.loads((d / "run.json").read_text())
    print(f"Run complete in {info['wall_time_s']} s: {d}")
    if (d / "book" / "index.html").is_file() and not args.no_book:
        _print_book(d)
    return 0


def _report(exc, refused: str, interrupted: str, failed: str) -> int:
    """Print a :class:`prrt.runner.RunError` with the word for its kind; the exit status: 2 when another process
    holds the run folder, 128 + the signal when interrupted, 1 when the run or book failed."""
    if isinstance(exc, RunLocked):
        print(f"{refused}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if isinstance(exc, RunInterrupted):
        print(f"{interrupted}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    print(f"{failed}: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _print_book(run_dir: Path) -> None:
    print(f"Book: {run_dir / 'book' / 'index.html'}")
    if (run_dir / "browser-check.json").is_file():
        print(f"Screenshots of the chapters (headless Chromium): {run_dir / 'screenshots'}")


def _book(args) -> int:
    try:
        index = build_book(args.run_dir, log=lambda msg: print(msg, file=sys.stderr))
    except RunError as exc:
        return _report(exc, "Book refused", "Book build interrupted", "Book build failed")
    _print_book(index.parent.parent)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prrt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a data manifest and print a summary (exit 2 on errors; warnings "
                                        "are printed and exit 0 unless --strict)")
    v.add_argument("manifest")
    v.add_argument("--profile", choices=["smoke", "demo", "paper"], default="demo",
                   help="check that this profile's cross-validation can be run on the cohort (default: demo)")
    v.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")
    v.add_argument("--development", default=None, metavar="MANIFEST",
                   help="check this cohort as an external cohort for the models of MANIFEST (prrt run --validate-on): "
                        "same endpoint, labs and units, image types, no shared patient; no profile check")
    v.add_argument("--check-images", choices=["none", "exists", "header", "full"], default="full",
                   help="how far to check image files (default: read every image and check its values)")
    v.set_defaults(func=_validate)

    d = sub.add_parser("demo-data", help="write a synthetic cohort (images, table, manifest)")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=DEFAULT_SEED)
    d.add_argument("--n-patients", type=int, default=116, help="labelled patients (default 116, as in the study)")
    d.add_argument("--censored-before-horizon", type=int, default=0,
                   help="extra patients lost to follow-up before 12 months (default 0)")
    d.add_argument("--geometry", choices=["standard", "small"], default="standard")
    d.add_argument("--mask-grid", choices=["pet", "ct"], default="pet")
    d.add_argument("--pet-scale", type=float, default=1.0, metavar="F",
                   help="multiply every PET voxel by F: a second site whose SUVs read off by this factor (default 1)")
    d.add_argument("--pet-fwhm", type=float, default=None, metavar="MM",
                   help="PET resolution in mm (default: the geometry's, 7 mm): a coarser one is another site's scanner")
    d.add_argument("--name", default="synthetic-demo", help="the cohort's name in its manifest")
    d.add_argument("--workers", type=int, default=None)
    d.add_argument("--pretrain-ct", type=int, default=0, metavar="N",
                   help="also write N unlabelled CTs (not cohort patients) to <out>/ct_pretraining for pretraining")
    d.set_defaults(func=_demo_data)

    t = sub.add_parser("pretrain-ct", help="pretrain the CT encoder without labels on CTs outside the cohort")
    t.add_argument("--data", required=True, help="a manifest, a folder of <case>/ct.nii.gz, or a folder of CT files")
    t.add_argument("--profile", required=True, choices=["smoke", "demo", "paper"])
    t.add_argument("--seed", type=int, default=DEFAULT_SEED)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--cache-dir", default=None, help="where results are cached (default runs/.prrt-cache)")
    t.add_argument("--out", default=None, help="also copy the weights (and their .json card) here")
    t.add_argument("--force", action="store_true", help="train again even if the cache has this result")
    t.set_defaults(func=_pretrain_ct)

    i = sub.add_parser(
        "import-dicom", help="turn a DICOM export (PET, CT, RTSTRUCT/SEG) into NIfTI in SUV and HU and a manifest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Walk a folder of DICOM files (any layout), choose each patient's PET and CT series, and write "
                    "pet.nii.gz (body-weight SUV), ct.nii.gz (HU) and mask.nii.gz (from an RTSTRUCT or DICOM-SEG) per "
                    "patient, a table and a manifest. Patients get pseudonyms D001, ... unless --id-map is given; no "
                    "other header field reaches the output.",
        epilog="examples:\n"
               "  prrt import-dicom /pacs/export --out data/hospital\n"
               "  prrt import-dicom /pacs/export --out data/hospital --table clinical.csv --table-id mrn \\\n"
               "      --template data_manifest/demo.yaml --key ~/private/hospital-key.csv --roi 'lesion|gtv'\n"
               "  prrt import-dicom /pacs/export --out data/hospital --pet-series 'AC|QCFX' --ct-series 'WB' "
               "--study DOTATOC\n"
               "then: prrt validate data/hospital/manifest.yaml")
    i.add_argument("src", help="a folder of DICOM files, in any layout")
    i.add_argument("--out", required=True, help="a new (or empty) folder for the images, table and manifest")
    i.add_argument("--table", default=None, help="a clinical table (CSV) with one row per patient, keyed by the DICOM "
                                                 "patient ID")
    i.add_argument("--table-id", default="patient_id", help="the column of --table with the DICOM patient IDs "
                                                            "(default: patient_id); it is not copied")
    i.add_argument("--template", default=None, help="a manifest whose endpoint, labs, clinical columns and units the "
                                                    "new manifest takes")
    i.add_argument("--id-map", default=None, help="CSV with dicom_patient_id,patient_id: the IDs to use instead of "
                                                  "pseudonyms")
    i.add_argument("--key", default=None, help="write the pseudonym key (DICOM ID -> pseudonym) here; never inside --out")
    i.add_argument("--study", default=None, metavar="REGEX", help="take the study whose description matches "
                                                                  "(default: the earliest with a PET)")
    i.add_argument("--pet-series", default=None, metavar="REGEX", help="only PET series whose description matches")
    i.add_argument("--ct-series", default=None, metavar="REGEX", help="only CT series whose description matches")
    i.add_argument("--roi", default=None, metavar="REGEX", help="unite the RTSTRUCT ROIs / SEG segments whose name "
                                                                "matches (default: all)")
    i.add_argument("--mask-from", choices=["RTSTRUCT", "SEG"], default=None, help="take masks of this kind only")
    i.set_defaults(func=_import_dicom)

    r = sub.add_parser("run", help="execute the notebooks into a run directory and build its book")
    r.add_argument("--manifest", required=True)
    r.add_argument("--profile", required=True, choices=["smoke", "demo", "paper"])
    r.add_argument("--run-dir", required=True)
    r.add_argument("--seed", type=int, default=DEFAULT_SEED)
    r.add_argument("--notebooks-dir", default=None, help=argparse.SUPPRESS)
    r.add_argument("--cache-dir", default=None, help="preprocessed-image cache (default: beside the run)")
    r.add_argument("--ct-weights", default=None, metavar="PATH",
                   help="start the CT encoder of chapter 04 from this state-dict file (instead of the manifest's "
                        "ct_pretraining)")
    r.add_argument("--ct-weights-prefix", action="append", default=[], metavar="OLD=NEW",
                   help="rename key prefixes of --ct-weights (repeatable), e.g. 'module.=' or '=net.'")
    r.add_argument("--engine", default=None, metavar="WHERE",
                   help="fit the (model, repeat, fold) jobs in parallel with Dask: 'local' (worker processes), "
                        "'local-cuda' (one worker per GPU), a scheduler address tcp://host:8786, 'split' (the "
                        "one-core models on two worker processes, the CNNs in the notebook) or 'sequential'; "
                        "default: the profile's (demo: split; smoke and paper: sequential)")
    r.add_argument("--workers", type=int, default=None, help="worker processes for --engine local (default 2)")
    r.add_argument("--validate-on", default=None, metavar="MANIFEST",
                   help="a second cohort: the models fitted on all of --manifest's patients predict it once "
                        "(chapter 6, external validation)")
    r.add_argument("--no-book", action="store_true",
                   help="do not build the book (the run directory then has none until `prrt book`)")
    r.set_defaults(func=_run)

    b = sub.add_parser("book", help="build the Jupyter Book of a run again (prrt run builds it)")
    b.add_argument("--run-dir", required=True)
    b.set_defaults(func=_book)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
