"""`prrt run` and `prrt book` without the smoke run: bad manifests, incomplete runs, a manifest with nothing
to model. (The tests that read the smoke run are in test_runner.py, which `make test` keeps on one worker.)"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from prrt import runs
from prrt.cli import main


def test_find_identifiers_catches_a_leak(tmp_path):
    (tmp_path / "page.html").write_text("<p>patient SYN-ABC123 had a lesion</p><p>SYN-ABC1234</p>")
    assert runs.find_identifiers(tmp_path, {"SYN-ABC123": "P001", "SYN-000001": "P002", "12": "P003"}) == [
        ("page.html", "P001")]


def test_invalid_manifest_stops_the_run_before_anything_runs(tmp_path, small_cohort_dir, capsys):
    shutil.copytree(small_cohort_dir, tmp_path / "c")
    df = pd.read_csv(tmp_path / "c" / "cohort.csv", dtype=str)
    df.loc[0, "ggt"] = "lots"
    df.to_csv(tmp_path / "c" / "cohort.csv", index=False)
    rc = main(["run", "--manifest", str(tmp_path / "c" / "manifest.yaml"), "--profile", "smoke",
               "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "'lots' is not a number" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_book_refuses_an_incomplete_run(tmp_path):
    with pytest.raises(runs.RunError, match="not a run directory"):
        runs.build_book(tmp_path)


@pytest.mark.slow
def test_a_manifest_without_labs_or_images_runs_and_skips_with_reasons(small_cohort_dir, tmp_path):
    (tmp_path / "m.yaml").write_text(
        f"name: bare\ntable: {small_cohort_dir / 'cohort.csv'}\nid: patient_id\n"
        "endpoint: {time: pfs_months, event: progressed, horizon_months: 12}\nlabs: []\nclinical: [age, sex, grade]\n")
    assert main(["run", "--manifest", str(tmp_path / "m.yaml"), "--profile", "smoke",
                 "--run-dir", str(tmp_path / "run")]) == 0
    summary = pd.read_csv(tmp_path / "run" / "results" / "summary.csv").set_index("model")
    assert summary.loc["lab_rf", "status"] == "skipped: the manifest lists no laboratory values"
    assert summary.loc["pet_features_rf", "status"] == "skipped: the manifest names no PET images"
    assert summary.loc["pet_cnn", "status"] == "skipped: the manifest names no PET images"
    assert summary.loc["ct_cnn", "status"] == "skipped: the manifest names no CT images"
    assert summary.loc["ct_cnn_pretrained", "status"] == "skipped: the manifest names no CT images"
    for fusion in ("lab_pet_ct_fusion", "lab_pet_ct_late"):
        assert summary.loc[fusion, "status"] == "skipped: fewer than two of its modalities are in the manifest"
    nb = (tmp_path / "run" / "notebooks" / "01_cohort.ipynb").read_text()
    assert "The manifest names no images." in nb and "Synthetic data" not in nb
    ch5 = (tmp_path / "run" / "notebooks" / "05_explainability.ipynb").read_text()
    assert "No image CNN ran in this run" in ch5 and "so there is nothing to ablate" in ch5
    assert "fusion did not run, so there is no laboratory importance inside it to measure" in ch5
