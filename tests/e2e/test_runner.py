"""End to end: `prrt run` on the smoke profile, `prrt book`, what happens when a notebook fails, and chapters 02-04
run again on a Dask scheduler with two worker processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from prrt.cli import main
from prrt.runner import book as book_
from prrt.runner import execute, lock

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).with_name("dask")


#: Distinctive strings planted where a hospital's data could leak from (none may reach the book).
CANARY = "QZXCANARY"  # 9 characters: no base64-encoded image holds it by chance (3 letters did)


def _plant_canaries(source: Path, root: Path, tag: str) -> Path:
    """A copy of the cohort in ``source`` at ``root`` with canaries (``CANARY`` + ``tag``): in the IDs, in a
    declared clinical column (two rare values), in an undeclared column, in the image folders."""
    shutil.copytree(source, root)
    df = pd.read_csv(root / "cohort.csv", dtype=str, keep_default_na=False)
    new_ids = [f"{CANARY}{tag}ID{i:02d}-{pid}" for i, pid in enumerate(df["patient_id"])]
    for col in ("ct_path", "pet_path", "lesion_mask_path", "organ_mask_path"):
        df[col] = [p.replace(old, f"{CANARY}{tag}PATH-{new}") for p, old, new in zip(df[col], df["patient_id"], new_ids)]
    for old, new in zip(df["patient_id"], new_ids):
        (root / "images" / old).rename(root / "images" / f"{CANARY}{tag}PATH-{new}")
    df["patient_id"] = new_ids
    df["referral"] = ["internal" if i % 2 else "external" for i in range(len(df))]
    df.loc[0, "referral"], df.loc[1, "referral"] = f"{CANARY}{tag}RARE-Dr-Mueller", f"{CANARY}{tag}RARE-Ward-7"
    df["mrn"] = [f"{CANARY}{tag}UNDECLARED{i:05d}" for i in range(len(df))]
    df.to_csv(root / "cohort.csv", index=False)
    doc = yaml.safe_load((root / "manifest.yaml").read_text())
    doc["clinical"] = doc["clinical"] + ["referral"]
    (root / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def canary_cohort(small_cohort_dir, tmp_path_factory):
    """The small cohort with canaries, also in the name of the manifest's folder."""
    return _plant_canaries(small_cohort_dir, tmp_path_factory.mktemp("hospital") / f"{CANARY}MANIFEST-Mustermann", "")


@pytest.fixture(scope="module")
def external_canary_cohort(tmp_path_factory):
    """A second site: another seed, a coarser PET (12 mm FWHM), its own canaries (``CANARY`` + ``EXT``)."""
    from prrt.data.synthetic import SyntheticConfig, generate

    source = tmp_path_factory.mktemp("site_b_source") / "cohort"
    generate(source, seed=8, workers=1, progress=False,
             config=SyntheticConfig.for_size(24, n_censored_before_horizon=2, geometry="small", pet_fwhm_mm=12.0,
                                             name="synthetic-site-b"))
    return _plant_canaries(source, tmp_path_factory.mktemp("site_b") / f"{CANARY}EXTMANIFEST-Musterfrau", "EXT")


@pytest.fixture(scope="module")
def smoke_run(canary_cohort, external_canary_cohort, tmp_path_factory):
    """One smoke run of every notebook, with its book (`prrt run` builds it) and an external validation on a second
    site (chapter 06), shared by this module's tests."""
    from unittest import mock

    runs_root = tmp_path_factory.mktemp("runs")
    run_dir = runs_root / "smoke"
    # the book is checked in a browser when one is found; in CI a missing browser fails the run. One thread per
    # process, as in the Dask workers of the test that runs chapters 02-04 again on them
    mode = "required" if os.environ.get("CI") == "true" else "auto"
    with mock.patch.dict(os.environ, {"PRRT_BROWSER_CHECK": mode, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}):
        assert main(["run", "--manifest", str(canary_cohort / "manifest.yaml"), "--profile", "smoke",
                     "--run-dir", str(run_dir), "--seed", "11",
                     "--validate-on", str(external_canary_cohort / "manifest.yaml")]) == 0
    return run_dir


@pytest.mark.slow
def test_the_book_works_in_a_browser(smoke_run):
    """Every page opened in headless Chromium (prrt.runner.browser, during `prrt run`): no JavaScript error or failed
    request, every image loaded, every internal link resolves, the search finds 'chromogranin', each chapter shows
    the parameters table and the synthetic-data banner and has its screenshot. Skipped only outside CI when this
    machine has no Chromium; with CI=true a missing browser fails (the smoke run requires it)."""
    from prrt.runner.browser import browser_missing_reason

    reason = browser_missing_reason()
    if reason and os.environ.get("CI") != "true":
        pytest.skip(f"the book cannot be opened in a browser here: {reason}")
    record = json.loads((smoke_run / "browser-check.json").read_text())
    assert record["problems"] == []
    chapters = sorted(p.name for p in (REPO / "notebooks").glob("0*.ipynb"))
    assert {f"notebooks/{c.replace('.ipynb', '.html')}" for c in chapters} <= set(record["pages"])
    assert {"book/methods.html", "book/this_run.html", "data_manifest/README.html", "index.html"} <= set(record["pages"])
    assert record["search"] == {"query": "chromogranin", "pages_found": record["search"]["pages_found"]}
    assert record["search"]["pages_found"] >= 3
    shots = sorted((smoke_run / "screenshots").glob("*.png"))
    assert [s.stem for s in shots] == [c.replace(".ipynb", "") for c in chapters]
    assert all(s.stat().st_size > 50_000 for s in shots)


@pytest.mark.slow
def test_the_browser_check_finds_what_it_looks_for(smoke_run, tmp_path):
    """The check is not blind: a page with a script error, a missing image and a broken link, and a chapter
    without its parameters table, are reported."""
    from prrt.runner.browser import browser_missing_reason, check_book

    if browser_missing_reason() and os.environ.get("CI") != "true":
        pytest.skip(f"no browser here: {browser_missing_reason()}")
    book = tmp_path / "book"
    shutil.copytree(smoke_run / "book", book)
    page = book / "book" / "methods.html"
    page.write_text(page.read_text().replace("</article>", '<script>undefinedFunction();</script><img src="gone.png">'
                                             '<a href="nowhere.html">x</a></article>'))
    chapter = book / "notebooks" / "01_cohort.html"
    chapter.write_text(chapter.read_text().replace("voxel spacing (mm)", "voxel size"))
    # the chapter checks (and their screenshots) of the one chapter planted with a problem
    problems = check_book(book, tmp_path / "shots", synthetic=True, chapters_glob="notebooks/01_cohort.html").problems
    assert any(p.startswith("book/methods.html: JavaScript/network: uncaught") and "undefinedFunction" in p
               for p in problems), problems
    assert "book/methods.html: image not loaded: gone.png" in problems
    assert "book/methods.html: link to a missing file: nowhere.html" in problems
    assert "book/methods.html: image without alt text: gone.png" in problems
    assert "notebooks/01_cohort.html: not visible: the parameters table" in problems


@pytest.mark.slow
def test_no_file_of_the_book_holds_a_canary(smoke_run, canary_cohort, external_canary_cohort):
    """Not in any file of the book (pages, scripts, search index, _sources, notebooks, images' metadata), nor in
    run.json or the notebooks' parameters; the rare values are pooled in Table 1. The external cohort's
    canaries (its IDs, rare values, image folders, manifest folder) are as absent."""
    scanned = 0
    machine = [str(REPO).encode(), sys.prefix.encode()]  # folders that may name the user
    for f in (smoke_run / "book").rglob("*"):
        if f.is_file():
            scanned += 1
            content = f.read_bytes()
            assert CANARY.encode() not in content and not [m for m in machine if m in content], f
    assert scanned > 100 and any((smoke_run / "book").rglob("*.png"))
    for cohort in (canary_cohort, external_canary_cohort):  # no absolute path: a relative one
        assert str(cohort.parent) not in (smoke_run / "run.json").read_text()
    for nb in (smoke_run / "notebooks").glob("*.ipynb"):
        assert f"{CANARY}ID" not in nb.read_text() and f"{CANARY}PATH" not in nb.read_text()
        record = nbformat.read(nb, as_version=4).metadata["papermill"]
        assert not Path(record["input_path"]).is_absolute() and record["parameters"]["run_dir"] == "."
        assert not Path(record["parameters"]["manifest"]).is_absolute()
        assert not Path(record["parameters"].get("validate_on", "")).is_absolute()
    external = nbformat.read(smoke_run / "notebooks" / "06_external_validation.ipynb", as_version=4)
    assert external.metadata["papermill"]["parameters"]["validate_on"].endswith("manifest.yaml")
    published = (smoke_run / "book" / "_sources" / "notebooks" / "06_external_validation.ipynb").read_text()
    assert '"validate_on": "manifest.yaml"' in published  # the book's copy keeps the file's name only
    info = json.loads((smoke_run / "run.json").read_text())
    assert (smoke_run / info["inputs"]["manifest"]["path"]).resolve() == canary_cohort / "manifest.yaml"
    t1 = pd.read_csv(smoke_run / "cohort" / "table1.csv")
    assert "    other (n < 5)" in set(t1["variable"]) and "    internal" in set(t1["variable"])
    log = (smoke_run / "book-build.log").read_text()
    assert re.search(r"privacy guard: searched every file of the book for \d+ strings .* found 0", log)


@pytest.mark.slow
def test_run_directory_has_the_record(smoke_run, canary_cohort):
    info = json.loads((smoke_run / "run.json").read_text())
    assert info["status"] == "complete" and info["seed"] == 11 and info["profile"]["name"] == "smoke"
    assert info["engine"] == {"address": "sequential", "workers": None}
    assert [n["name"] for n in info["notebooks"]] == [p.name for p in execute.list_notebooks()]
    assert all(n["wall_time_s"] > 0 for n in info["notebooks"])
    assert info["packages"]["torch"].startswith("2.13.0") and info["packages"]["monai"]
    import re

    assert re.fullmatch(r"[0-9a-f]{40}", info["git"]["commit"] or ""), info["git"]  # tests run in a git checkout
    from prrt.provenance import file_sha256

    assert info["inputs"]["table"]["sha256"] == file_sha256(canary_cohort / "cohort.csv")
    assert len(info["inputs"]["images"]) == 26 and set(info["inputs"]["images"]["P001"]) == {"ct", "pet", "mask", "organs"}
    assert (smoke_run / "notebooks" / "01_cohort.ipynb").is_file()
    t1 = pd.read_csv(smoke_run / "cohort" / "table1.csv")
    assert t1["variable"].iloc[0].startswith("age")
    assert (smoke_run / "cohort" / "km_pfs.png").stat().st_size > 10_000
    assert (smoke_run / "cohort" / "montage.png").stat().st_size > 10_000
    # chapter 02: shared splits, predictions of every model that ran, the summary
    splits = pd.read_csv(smoke_run / "splits.csv")
    assert set(splits.columns) == {"patient", "repeat", "fold"} and splits["repeat"].nunique() == 2
    summary = pd.read_csv(smoke_run / "results" / "summary.csv").set_index("model")
    assert list(summary.index) == ["lab_rf", "lab_rf_with_cycles", "lab_logreg", "pet_features_rf",
                                   "pet_features_logreg", "lab_pet_features_rf",
                                   "pet_cnn", "ct_cnn",
                                   "ct_cnn_pretrained", "lab_pet_fusion", "lab_ct_fusion", "pet_ct_fusion",
                                   "lab_pet_ct_fusion", "lab_petfeatures_net", "lab_pet_ct_intermediate",
                                   "lab_pet_ct_late"]
    ran = summary[summary["status"] == "ran"]
    assert list(ran.index) == list(summary.index[:8]) + ["lab_pet_ct_fusion", "lab_petfeatures_net",
                                                         "lab_pet_ct_late"]
    # the smoke profile's fusions read cross-fitted CNN scores: written by chapter 04, one row per training patient
    # of each outer fold pair's left-out folds
    crossed = pd.read_csv(smoke_run / "predictions" / "cross_fitted" / "pet_cnn.csv")
    assert len(crossed) == 2 * len(splits) and set(crossed["fold_b"]) == {1, 2}  # 3 pairs, 2 thirds each
    assert ran["auroc_mean"].between(0, 1).all()
    # chapter 04: no CT collection in this manifest; the smoke profile trains one fusion of each kind
    assert summary.loc["ct_cnn_pretrained", "status"].startswith("skipped: no CT pretraining in the manifest")
    assert summary.loc["lab_pet_fusion", "status"] == ("skipped: not trained in the smoke profile "
                                                       "(fusion_models = headline)")
    for model in ran.index:
        pred = pd.read_csv(smoke_run / "predictions" / f"{model}.csv")
        lab = pred[pred["fold"] >= 0].merge(splits, on=["patient", "repeat"], suffixes=("", "_s"))
        assert (lab["fold"] == lab["fold_s"]).all() and len(lab) == len(splits)  # the saved splits were used
        assert pred.loc[pred["fold"] == -1, "label"].isna().all()
    assert (smoke_run / "features" / "pet_features.csv").is_file()
    # chapter 03: a checkpoint and a training curve per repeat and fold
    for model in ("pet_cnn", "ct_cnn"):
        assert len(list((smoke_run / "checkpoints" / model).glob("r*_f*.pt"))) == 6
        assert pd.read_csv(smoke_run / "checkpoints" / model / "curves.csv")["epoch"].max() == 2
    # the image cache lives beside the run and was filled
    assert any((smoke_run.parent / ".prrt-cache").rglob("*.npz"))


@pytest.mark.slow
def test_the_run_records_where_its_time_went(smoke_run):
    """run.json: CPU time per notebook, seconds per notebook, model and phase (prrt.timing), the book build; the
    "This run" page shows them."""
    from prrt.timing import chapter_table, model_table

    info = json.loads((smoke_run / "run.json").read_text())
    assert all(n["cpu_time_s"] > 0 for n in info["notebooks"]) and info["book_build_s"] > 0
    rows = pd.DataFrame(info["timings"])
    assert not list((smoke_run / "timings").glob("*.tmp"))
    by = rows.groupby(["chapter", "phase"])["wall_s"].sum()
    assert by[("03_unimodal_cnn.ipynb", "training")] > 0 and by[("03_unimodal_cnn.ipynb", "augmentation")] > 0
    assert by[("05_explainability.ipynb", "Grad-CAM")] > 0 and by[("02_lab_random_forest.ipynb", "statistics")] > 0
    assert ("01_cohort.ipynb", "loading inputs") in by.index or ("01_cohort.ipynb", "preprocessing") in by.index
    models = model_table(rows)
    assert models.loc[("03_unimodal_cnn.ipynb", "pet_cnn"), "fits"] == 6  # 2 repeats x 3 folds
    # chapter 04's fusions read scores cross-fitted by CNNs fitted there, on pairs of folds: 2 repeats x 3 pairs
    assert models.loc[("04_fusion.ipynb", "pet_cnn"), "fits"] == 6
    # nothing is trained twice: chapter 05 restores the fold models of chapters 03-04 and trains only the networks
    # of the permuted-label check; chapter 06 fits each model once on all of the development cohort, and each CNN
    # three times more, on the three inner folds that cross-fit the fusion's training scores
    trained = rows[rows["phase"] == "training"].groupby(["chapter", "model"])["calls"].sum()
    assert {m for (c, m) in trained.index if c.startswith("05")} == {"pet_cnn, permuted labels",
                                                                      "ct_cnn, permuted labels"}
    external = trained.loc["06_external_validation.ipynb"]
    assert external.to_dict() == {m: 4 if m.endswith("_cnn") else 1 for m in external.index}
    assert {m for (c, m), _ in rows[rows["phase"] == "restoring fold models"].groupby(["chapter", "model"])} >= {
        "pet_cnn", "ct_cnn", "lab_pet_ct_fusion"}
    table = chapter_table(rows, info["notebooks"])
    for nb in info["notebooks"]:  # the phases of a notebook's own process fit in its wall time
        own = rows[(rows["chapter"] == nb["name"]) & rows["in_notebook"]]["wall_s"].sum()
        assert own <= nb["wall_time_s"] + 1, nb["name"]
        assert table.loc[nb["name"], "other"] >= 0
    page = (smoke_run / "book" / "book" / "this_run.html").read_text()
    assert "Where the time goes" in page and "pet_cnn" in page and "cores busy" in page


@pytest.mark.slow
def test_book_has_the_cohort_page_without_patient_ids(smoke_run, canary_cohort):
    book = smoke_run / "book"
    page = book / "notebooks" / "01_cohort.html"
    assert "Permutation importance" in (book / "notebooks" / "02_lab_random_forest.html").read_text()
    ch3 = (book / "notebooks" / "03_unimodal_cnn.html").read_text()
    assert "Learning curves" in ch3
    # numbers in the prose come from the executed cells: 24 labelled patients, 3 folds -> 16 train
    import re

    assert re.search(r"about\s*(<[^>]+>\s*)*16(\s*<[^>]+>)*\s*training patients per fold", ch3), "glued number missing"
    assert "Does the input still carry the signal?" in ch3 and "AUROC, lesions input" in ch3
    # the study's numbers and the smoke profile's grid and windows, glued (never typed into the prose)
    text = re.sub(r"<[^>]+>", "", ch3)
    assert "an AUROC of 0.42 ± 0.03, on CT 0.54 ± 0.01" in text, "glued study numbers missing"
    assert "24 × 24 × 20 voxels of 8 mm (192 × 192 × 160 mm)" in text and "liver window (−50 to 250 HU)" in text
    assert "{glue" not in text and "dark liver voxels" in text
    ch1 = (book / "notebooks" / "01_cohort.html").read_text()
    assert re.search(r"horizon \(\s*(<[^>]+>\s*)*12 months", ch1), "glued horizon missing"
    assert "p (Holm)" in ch1
    assert (book / "index.html").is_file() and page.is_file()
    html = page.read_text()
    assert "Table 1" in html and "Synthetic data" in html and "Kaplan" in html
    assert html.count("<img") >= 2  # KM curve and montage
    assert "injected-parameters" not in html and "cache_dir =" not in html  # parameter cells hidden
    assert "voxel spacing (mm)" in html  # ... and shown as a table instead
    assert (book / "book" / "this_run.html").is_file()
    log = (smoke_run / "book-build.log").read_text()
    assert "WARNING:" not in log and "ERROR:" not in log, log[-3000:]
    assert "Baur" in (book / "book" / "references.html").read_text()  # the bibliography was built
    ids = pd.read_csv(canary_cohort / "cohort.csv")["patient_id"]
    text = "".join(f.read_text(errors="ignore") for f in book.rglob("*") if f.suffix in {".html", ".js", ".txt"})
    assert not [i for i in ids if i in text]
    assert "P0" in html  # pseudonyms are what the montage shows


@pytest.mark.slow
def test_chapter_05_checks_its_explanations_with_numbers_from_the_run(smoke_run):
    """Grad-CAM of every test patient of the first repeat (smoke: gradcam_repeats = 1), cached per fold
    model; the checks, the importance and the ablation written; the page's prose says the numbers of
    those files."""
    import re

    splits = pd.read_csv(smoke_run / "splits.csv")
    sal = pd.read_csv(smoke_run / "results" / "05_saliency.csv")
    assert set(sal["model"]) == {"pet_cnn", "ct_cnn"} and set(sal["repeat"]) == {0}  # no CT pretraining here
    assert sorted(sal.loc[sal["model"] == "pet_cnn", "patient"]) == sorted(splits.loc[splits["repeat"] == 0, "patient"])
    assert len(list((smoke_run / "explain" / "gradcam" / "pet_cnn").glob("r0_f*.npz"))) == 3
    ablation = pd.read_csv(smoke_run / "results" / "05_modality_ablation.csv", index_col=0)
    assert list(ablation.index) == ["all modalities", "without laboratory values", "without SR-PET", "without CT"]
    summary = pd.read_csv(smoke_run / "results" / "summary.csv").set_index("model")
    assert ablation.loc["all modalities", "auroc_mean"] == pytest.approx(summary.loc["lab_pet_ct_fusion", "auroc_mean"],
                                                                          abs=1e-4)  # the restored fold models
    imp = pd.read_csv(smoke_run / "results" / "05_fusion_permutation.csv")
    assert imp.groupby(["repeat", "fold"]).size().eq(imp["feature"].nunique()).all() and len(imp) == 6 * imp["feature"].nunique()
    assert len(pd.read_csv(smoke_run / "results" / "05_model_randomisation.csv")) == 2 * 5 * 8  # models x steps x patients
    for fig in ("saliency", "gradcam_examples", "randomisation", "lab_importance", "modality_ablation", "km_risk_tertiles"):
        assert (smoke_run / "figures" / f"05_{fig}.png").stat().st_size > 10_000, fig
    page = (smoke_run / "book" / "notebooks" / "05_explainability.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)
    hits = sal[sal["model"] == "pet_cnn"].dropna(subset=["mass_in_mask"])["pointing_hit"].mean()
    assert re.search(rf"pet_cnn: \d+\.\d % of the map.s mass in the lesion mask against \d+\.\d % by chance .{{0,80}}and "
                     rf"its maximum inside the mask in {100 * hits:.1f} %", text), "glued saliency numbers missing"
    # the nulls: both for every patient the trained maps scored, a verdict against each on the page
    nulls = pd.read_csv(smoke_run / "results" / "05_saliency_nulls.csv")
    assert set(nulls["null"]) == {"randomised weights", "data-free blob"}
    for null, g in nulls.groupby("null"):
        assert sorted(g["patient"]) == sorted(sal["patient"]), null
    verdicts = r"(beats the null|does not beat the null|beats it on the mass only|beats it on the pointing game only)"
    assert re.search(rf"against the nulls, the randomised weights map \(\d+\.\d %\): {verdicts}, "
                     rf"the data-free blob map \(\d+\.\d %\): {verdicts}", text)
    assert "mass in mask, %" in page and "p (Holm): mass, hits" in page
    full = ablation.loc["all modalities"]
    assert f"test-fold AUROC of {full['auroc_mean']:.2f} (95 % CI {full['ci_low']:.2f}–{full['ci_high']:.2f})" in text
    assert "p (Holm)" in ablation.columns and "Holm-adjusted p" in text
    assert "Inside the fusion, " in text and ("stand apart" in text or "stands apart" in text)
    assert "in the Random Forest of chapter 2" in text  # chapter 02 wrote its importance
    # the sanity checks: similarity without its sign, and SSIM
    assert "median absolute rank correlation" in text and "SSIM" in text
    cascade = pd.read_csv(smoke_run / "results" / "05_model_randomisation.csv")
    assert (cascade["abs_rank_correlation"] == cascade["rank_correlation"].abs()).all() and cascade["ssim"].notna().all()
    assert "log-rank test over the three groups" in text


@pytest.mark.slow
def test_no_file_of_the_run_holds_a_patient_id(smoke_run, canary_cohort):
    """Every text file of the run folder (notebooks, tables, predictions, boxes, run.json, book pages)."""
    ids = list(pd.read_csv(canary_cohort / "cohort.csv")["patient_id"])
    scanned = 0
    for path in smoke_run.rglob("*"):
        if path.suffix not in {".ipynb", ".csv", ".json", ".html", ".md", ".txt", ".log"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        scanned += 1
        assert not [i for i in ids if i in text], path
    assert scanned > 20 and (smoke_run / "inputs" / "boxes_lesions.csv").is_file()


def _failing_notebooks(tmp_path) -> Path:
    """A notebook that runs, then one that fails."""
    d = tmp_path / "nbs"
    d.mkdir()
    for name, last in [("01_fine.ipynb", "x = 2"), ("02_broken.ipynb", "raise ValueError('deliberate failure for the test')")]:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("manifest = run_dir = profile = seed = cache_dir = None",
                                              metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell("x = 1"),
                    nbformat.v4.new_code_cell(last)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, d / name)
    return d


@pytest.mark.slow
def test_failed_run_leaves_previous_run_and_book_untouched(smoke_run, canary_cohort, tmp_path, capsys):
    before = {p: p.read_bytes() for p in [smoke_run / "run.json", smoke_run / "book" / "index.html",
                                           smoke_run / "notebooks" / "01_cohort.ipynb"]}
    rc = main(["run", "--manifest", str(canary_cohort / "manifest.yaml"), "--profile", "smoke",
               "--run-dir", str(smoke_run), "--notebooks-dir", str(_failing_notebooks(tmp_path))])
    err = capsys.readouterr().err
    assert rc == 1
    assert "02_broken.ipynb failed" in err and "ValueError: deliberate failure for the test" in err
    assert "untouched" in err
    for p, content in before.items():
        assert p.read_bytes() == content
    failed = smoke_run.with_name(f".{smoke_run.name}.failed")
    assert (failed / "notebooks" / "01_fine.ipynb").is_file() and (failed / "notebooks" / "02_broken.ipynb").is_file()


@pytest.mark.slow
def test_book_with_a_planted_patient_id_is_refused_and_the_previous_book_kept(smoke_run, canary_cohort, tmp_path):
    run = smoke_run.with_name("planted")  # beside the run: run.json finds the manifest by a relative path
    shutil.copytree(smoke_run, run)
    before = (run / "book" / "index.html").read_bytes()
    pid = pd.read_csv(canary_cohort / "cohort.csv")["patient_id"].iloc[5]
    nb = nbformat.read(run / "notebooks" / "03_unimodal_cnn.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(f"Note on {pid}"))
    nbformat.write(nb, run / "notebooks" / "03_unimodal_cnn.ipynb")
    with pytest.raises(lock.RunError, match=r"would publish patient IDs .*03_unimodal_cnn.html.*nothing was published"):
        book_.build_book(run, log=lambda *a: None)
    assert (run / "book" / "index.html").read_bytes() == before


@pytest.mark.slow
def test_failed_book_build_leaves_the_previous_book(smoke_run, tmp_path, monkeypatch):
    import subprocess

    run = tmp_path / "copy"
    shutil.copytree(smoke_run, run)
    before = {p.relative_to(run): p.read_bytes() for p in (run / "book").rglob("*.html")}
    monkeypatch.setattr(book_.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "boom"))
    with pytest.raises(lock.RunError, match="the book build failed .*previous book is untouched"):
        book_.build_book(run, log=lambda *a: None)
    assert {p.relative_to(run): p.read_bytes() for p in (run / "book").rglob("*.html")} == before


def _start(*args, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([str(DASK), *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=log.parent, start_new_session=True)


@pytest.fixture
def cluster(tmp_path):
    """A Dask scheduler and two single-thread workers, each its own process on this machine (``dask scheduler``,
    ``dask worker tcp://…``); yields the address."""
    info = tmp_path / "scheduler.json"
    procs = [_start("scheduler", "--scheduler-file", str(info), "--port", "0", "--no-dashboard",
                    log=tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 120
        while not info.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info.is_file(), (tmp_path / "scheduler.log").read_text()
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://")
        for i in range(2):
            procs.append(_start("worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                "--name", f"w{i}", log=tmp_path / f"worker{i}.log"))
        from dask.distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()  # two processes, not this one
        yield address
    finally:  # each command's process group (a worker's nanny and its worker process) killed at once
        for p in procs[::-1]:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)


@pytest.mark.slow
def test_the_same_seed_on_a_scheduler_and_two_worker_processes_gives_the_files_of_the_run_another_seed_does_not(
        smoke_run, canary_cohort, cluster, tmp_path):
    """Chapters 03-04 again with the smoke run's seed, their (model, repeat, fold) jobs sent to a Dask scheduler and
    two worker processes (``prrt run --engine tcp://…``): the splits, every prediction file of their models (the
    CNNs, their cross-fitted scores, the fusions), their rows of the summary and the learning curves are the smoke
    run's byte for byte (both with one thread per process, CPU), so a run repeats itself and the engine changes
    nothing. (Chapter 02's scikit-learn jobs on a Dask cluster: tests/learn/test_parallel.py.) A run with another
    seed does not give the same files."""
    def run(name, seed, notebooks, *extra):
        d = tmp_path / name
        # the preprocessed inputs and the pretrained CT encoder come from the first run's cache, as for
        # any run beside it (both are keyed by content and tested for determinism on their own)
        assert main(["run", "--manifest", str(canary_cohort / "manifest.yaml"), "--profile", "smoke",
                     "--run-dir", str(d), "--seed", str(seed), "--cache-dir", str(smoke_run.parent / ".prrt-cache"),
                     "--no-book", "--notebooks-dir", str(notebooks), *extra]) == 0
        return d

    def chapters(name, pattern):
        folder = tmp_path / name
        folder.mkdir()
        for nb in sorted((REPO / "notebooks").glob(pattern)):
            shutil.copy(nb, folder / nb.name)
        return folder

    # chapter 04 reads chapter 03's fold models (and the lesion features, which it computes itself without
    # chapter 02): the second run is those two chapters
    again = run("on_the_cluster", 11, chapters("image_chapters", "0[34]_*.ipynb"), "--engine", cluster)
    summary = pd.read_csv(smoke_run / "results" / "summary.csv", dtype=str, keep_default_na=False)
    image_models = summary.loc[summary["chapter"].isin(["03", "04"]) & summary["status"].eq("ran"), "model"]
    predicted = sorted(p.relative_to(again) for p in (again / "predictions").rglob("*.csv"))
    assert [p.stem for p in predicted if p.parent.name == "predictions"] == sorted(image_models)
    assert any(p.parent.name == "cross_fitted" for p in predicted) and len(predicted) >= 6
    for f in ["splits.csv", "checkpoints/pet_cnn/curves.csv", *predicted]:
        assert (again / f).read_bytes() == (smoke_run / f).read_bytes(), f
    rows = pd.read_csv(again / "results" / "summary.csv", dtype=str, keep_default_na=False)
    assert rows.equals(summary[summary["chapter"].isin(["03", "04"])].reset_index(drop=True))
    info = json.loads((again / "run.json").read_text())
    assert info["engine"] == {"address": cluster, "workers": None}
    trained = [t for t in info["timings"] if t["phase"] == "training"]
    assert {t["chapter"] for t in trained} == {"03_unimodal_cnn.ipynb", "04_fusion.ipynb"}
    assert len({t["pid"] for t in trained}) == 2 and not any(t["in_notebook"] for t in trained)  # both workers fitted
    # another seed: chapter 02 (splits and the tabular models) is enough to show it
    other = run("other", 12, chapters("chapter_02", "02_*.ipynb"))
    assert (other / "splits.csv").read_bytes() != (smoke_run / "splits.csv").read_bytes()
    for model in ("lab_rf", "lab_pet_features_rf"):
        assert (other / "predictions" / f"{model}.csv").read_bytes() != (smoke_run / "predictions" / f"{model}.csv").read_bytes()


@pytest.mark.slow
def test_external_validation_predicts_the_second_site_with_the_frozen_models(smoke_run, external_canary_cohort):
    """`prrt run --validate-on`: the second cohort is hashed into run.json; every model that ran in chapters 02-04
    was fitted once on all 24 labelled development patients and predicted the external patients (fold 0 of the
    external design, A's patients only train); chapter 06's page shows B's numbers and says them in its prose."""
    import re

    from prrt.provenance import file_sha256

    info = json.loads((smoke_run / "run.json").read_text())
    ext = info["external"]
    assert ext["cohort"] == {"name": "synthetic-site-b", "synthetic": True, "patients": 26, "labelled": 24}
    assert ext["inputs"]["table"]["sha256"] == file_sha256(external_canary_cohort / "cohort.csv")
    assert (smoke_run / ext["inputs"]["manifest"]["path"]).resolve() == external_canary_cohort / "manifest.yaml"
    assert len(ext["inputs"]["images"]) == 26
    summary = pd.read_csv(smoke_run / "results" / "summary.csv")
    ran = list(summary.loc[summary["status"] == "ran", "model"])
    metrics = pd.read_csv(smoke_run / "results" / "06_external_validation.csv")
    assert sorted(metrics["model"]) == sorted(ran)
    assert (metrics["n_patients"] == 24).all() and (metrics["n_patients_survival"] == 26).all()
    for key in ("auroc", "auprc", "c_index"):
        assert (metrics[f"{key}_ci_low"] <= metrics[key]).all() and (metrics[key] <= metrics[f"{key}_ci_high"]).all()
    splits = pd.read_csv(smoke_run / "external" / "splits.csv")
    test = set(splits.loc[splits["fold"] == 0, "patient"])
    assert len(test) == 24 and all(re.fullmatch(r"E\d{3}", p) for p in test)
    assert set(splits.loc[splits["fold"] == -1, "patient"]) == set(pd.read_csv(smoke_run / "splits.csv")["patient"])
    for model in ran:
        pred = pd.read_csv(smoke_run / "external" / "predictions" / f"{model}.csv")
        assert set(pred.loc[pred["fold"] == 0, "patient"]) == test
    assert len(list((smoke_run / "external" / "checkpoints" / "pet_cnn").glob("*.pt"))) == 1
    # the fusions' image branches are cross-fitted (smoke profile): every development patient has a score from a
    # PET CNN fitted on the other two thirds of them, and no external patient has one
    crossed = pd.read_csv(smoke_run / "external" / "predictions" / "cross_fitted" / "pet_cnn.csv", dtype={"patient": str})
    assert sorted(crossed["patient"]) == sorted(splits.loc[splits["fold"] == -1, "patient"])
    assert sorted(set(crossed["fold_b"])) == [1, 2, 3] and set(crossed["fold_a"]) == {0}
    comparison = pd.read_csv(smoke_run / "results" / "06_external_vs_development.csv").set_index("model")
    dev = summary.set_index("model")
    for model in ran:
        assert comparison.loc[model, "auroc_development"] == pytest.approx(dev.loc[model, "auroc_mean"])
        assert comparison.loc[model, "auroc_change"] == pytest.approx(
            comparison.loc[model, "auroc_external"] - comparison.loc[model, "auroc_development"])
    page = (smoke_run / "book" / "notebooks" / "06_external_validation.html").read_text()
    head = metrics.set_index("model").loc["lab_pet_ct_fusion"]
    text = re.sub(r"<[^>]+>", "", page)
    # the page's two decimals of the file's numbers (a value at a rounding edge, 0.185, may read either way once the
    # file has stored it)
    shown = re.search(r"reached an AUROC of (\d\.\d\d) \(95 % CI (-?\d\.\d\d)", text)
    assert shown, "the headline sentence is missing"
    assert abs(float(shown[1]) - head["auroc"]) <= 0.005 + 1e-9
    assert abs(float(shown[2]) - head["auroc_ci_low"]) <= 0.005 + 1e-9
    # every labelled patient of A fitted the development models: the smoke profile's inner validation part (20 %)
    # chooses nothing with the last epoch kept, so the external design draws none
    n_a = int((splits["fold"] == -1).sum())
    fitted = metrics.set_index("model")["n_development_fit"]
    assert fitted["lab_rf"] == n_a and fitted["pet_cnn"] == n_a and fitted["lab_pet_ct_fusion"] == n_a
    assert f"lab_pet_ct_fusion, fitted on {n_a} development patients, reached" in text
    assert re.search(r"change [+-]\d\.\d\d: (a drop|a gain|within noise)", text)
    assert "calibration slope" in page and "model (95 % CI)" in page and "synthetic-site-b" in page
    for fig in ("roc_pr", "calibration", "km"):
        assert (smoke_run / "figures" / f"06_external_{fig}.png").stat().st_size > 10_000, fig


@pytest.mark.slow
def test_the_reporting_checklist_page_answers_every_item_from_the_run(smoke_run):
    """Chapter 07: the 52 TRIPOD+AI items and parts on one page, with this run's numbers (and, since the smoke run
    has an external cohort, the evaluation items point to chapter 6); rare subgroup levels are pooled."""
    table = pd.read_csv(smoke_run / "results" / "07_tripod_ai.csv", dtype=str).set_index("item")
    assert len(table) == 52 and not table["this run"].str.contains("nan").any()
    summary = pd.read_csv(smoke_run / "results" / "summary.csv").set_index("model")
    fusion = summary.loc["lab_pet_ct_fusion"]
    assert table.loc["23a", "this run"].startswith(
        f"lab_pet_ct_fusion: AUROC {fusion['auroc_mean']:.2f} ± {fusion['auroc_sd']:.2f} over 2 repeats")
    assert "24 labelled patients, 9 with short PFS" in table.loc["10", "this run"]
    assert "external: 24 labelled patients" in table.loc["21", "this run"]
    subgroups = pd.read_csv(smoke_run / "results" / "07_subgroups.csv")
    assert set(subgroups["column"]) == {"sex", "primary_site", "grade", "referral"}
    assert (subgroups.groupby("column")["patients"].sum() == 24).all()
    page = (smoke_run / "book" / "notebooks" / "07_reporting_checklist.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)
    assert "52 items and parts" in text and "Collins" in (smoke_run / "book" / "book" / "references.html").read_text()
    assert '<a href="06_external_validation.html">Chapter 6</a>' in page
