"""Null experiment: chapters 02-04 on a cohort whose images carry no label signal.

    python benchmarks/shuffled_images.py data/demo runs/shuffled [--seed 27] [--profile demo]

Copies the cohort's table with each patient's whole image set (PET, CT, lesion mask, organ map) moved to another
patient (a permutation drawn from ``--seed``), writes a manifest beside it (not marked synthetic: the generator's
achievable bounds do not hold for moved images), runs the notebooks of chapters 02, 03 and 04 on it with papermill
(one after another, as `prrt run` would) and prints every model's AUROC. Issue 27 asks that the laboratory +
SR-PET + CT fusion then does no worse than the laboratory model (AUROC at least the labs' minus 0.02). Images that
carry nothing cannot help; a fusion that falls further below the labs has learnt to trust noise.

The image cache of the demo run (``runs/.prrt-cache``) is reused: the moved paths are the same files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGE_COLUMNS = ["ct_path", "pet_path", "lesion_mask_path", "organ_mask_path"]


def shuffled_cohort(source: Path, out: Path, seed: int) -> Path:
    """The cohort of ``source`` (a folder with cohort.csv and manifest.yaml) with its image sets permuted."""
    out.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(source / "cohort.csv", dtype=str, keep_default_na=False)
    perm = np.random.default_rng(seed).permutation(len(table))
    cols = [c for c in IMAGE_COLUMNS if c in table.columns]
    table[cols] = table[cols].to_numpy()[perm]
    table.to_csv(out / "cohort.csv", index=False)
    doc = yaml.safe_load((source / "manifest.yaml").read_text())
    root = (source / doc.get("image_root", ".")).resolve()
    doc.update(name=f"{doc['name']}-shuffled-images", table="cohort.csv", image_root=str(root), synthetic=False,
               description="Each patient's images moved to another patient: they carry no label signal.")
    if "ct_pretraining" in doc:
        doc["ct_pretraining"] = {k: str((source / v).resolve()) if k != "key_prefixes" else v
                                 for k, v in doc["ct_pretraining"].items()}
    manifest = out / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"{int((perm == np.arange(len(table))).sum())} of {len(table)} patients kept their own images")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohort", type=Path, help="folder of a cohort written by `prrt demo-data`")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--seed", type=int, default=27, help="seed of the permutation of the image sets")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--run-seed", type=int, default=20251105)
    args = ap.parse_args(argv)
    run_dir = args.run_dir.resolve()
    manifest = shuffled_cohort(args.cohort.resolve(), run_dir / "cohort", args.seed)
    for nb in ("02_lab_random_forest", "03_unimodal_cnn", "04_fusion"):
        subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / f"{nb}.ipynb"),
                        str(run_dir / f"{nb}.ipynb"), "--cwd", str(REPO / "notebooks"), "-p", "manifest", str(manifest),
                        "-p", "run_dir", str(run_dir), "-p", "profile", args.profile,
                        "-p", "seed", str(args.run_seed), "-p", "cache_dir", str(REPO / "runs" / ".prrt-cache")],
                       check=True)
    summary = pd.read_csv(run_dir / "results" / "summary.csv")
    print(summary[["model", "status", "auroc_mean", "auroc_sd"]].round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
