"""How the image inputs and training settings of the demo profile were chosen: on another cohort.

No setting of the book's image models may be chosen by looking at the test folds of the cohort the
book reports on. This script trains one image model with the engine of ``prrt.learn.training`` on a
*tuning* cohort, a synthetic cohort made with another seed of the generator (default 7; the book's
demo cohort uses 20251105), on its own 2 × 3-fold splits, and prints the AUROC of each repeat.
The runs recorded in ``benchmarks/DESIGN.md`` ("How the demo settings of the image models were chosen") were made with it.

    prrt demo-data --out data/tune --seed 7
    python benchmarks/choose_image_inputs.py --data data/tune --modality pet --roi lesions --mask-channel
    python benchmarks/choose_image_inputs.py --data data/tune --modality ct --roi body --size 32 32 28
    # the demo profile's settings now (benchmarks/DESIGN.md: "What was run on the demo cohort with those settings")
    python benchmarks/choose_image_inputs.py --data data/tune8 --modality ct --hu-window -50 250 \
        --mask-channel --liver-in-mask-channel --val-fraction 0

The last table of benchmarks/DESIGN.md was measured with the chapter's own code path (``prrt.study.ch03_images``
fitting both networks on one cohort with the demo profile and one setting changed); this script runs one
network the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np


def main(argv=None):
    from prrt.data.load import load_cohort
    from prrt.evaluation import metrics as evaluate
    from prrt.evaluation import splits as sp
    from prrt.imaging import boxes as imaging
    from prrt.learn import base, image_model, loop, training
    from prrt.profiles import get_profile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/tune", help="folder of a synthetic cohort (with manifest.yaml)")
    ap.add_argument("--cache", default="runs/.prrt-cache", help="preprocessed-image cache")
    ap.add_argument("--modality", choices=["pet", "ct"], default="pet")
    ap.add_argument("--roi", choices=list(imaging.ROI_MODES), default="liver")
    ap.add_argument("--size", type=int, nargs=3, default=[32, 32, 32], help="input size in voxels")
    ap.add_argument("--spacing", type=float, default=6.0, help="the one voxel spacing of a liver or lesions box, mm")
    ap.add_argument("--hu-window", type=float, nargs=2, default=[-160.0, 240.0])
    ap.add_argument("--mask-channel", action="store_true")
    ap.add_argument("--liver-in-mask-channel", action="store_true",
                    help="with --mask-channel: the liver of the organ map at 0.5 in that channel")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="share of each fold's training patients held back as an inner validation part")
    ap.add_argument("--encoder", default="compact")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--selection", choices=["last", "val_loss"], default="last")
    ap.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20251105, help="seed of the splits and of training")
    a = ap.parse_args(argv)

    cohort = load_cohort(f"{a.data}/manifest.yaml", check_images="exists")
    profile = replace(get_profile("demo"), input_size_voxels=tuple(a.size), roi=a.roi, roi_spacing_mm=a.spacing,
                      hu_window=tuple(a.hu_window), mask_channel=a.mask_channel,
                      liver_in_mask_channel=a.liver_in_mask_channel)
    x, patients = image_model.image_tensors(cohort, profile, a.cache, a.modality, progress=False)
    splits = sp.make_splits(cohort.data["label"], 3, a.repeats, a.seed)
    cfg = training.TrainConfig(encoder=a.encoder, epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay,
                            selection=a.selection, lr_schedule=a.lr_schedule, val_fraction=a.val_fraction)
    t0 = time.perf_counter()
    data = base.ModelData(cohort.data["label"], images={a.modality: base.ImageSet(x, patients)})
    spec = image_model.image_spec(a.modality, a.modality, cfg, "03", a.modality, available=True)
    res = loop.cross_validate(spec, data, splits, a.seed, progress=False)
    m = evaluate.per_repeat_metrics(res.predictions)
    best = res.curves[res.curves["best"]]["epoch"].tolist()
    print(json.dumps({**vars(a), "auroc_per_repeat": np.round(m["auroc"].to_numpy(), 3).tolist(),
                      "auroc_mean": round(float(m["auroc"].mean()), 3), "kept_epochs": best,
                      "train_seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
