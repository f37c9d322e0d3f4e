"""Does Grad-CAM find the lesion that carries the signal? A check over several seeds.

Each run generates images whose only signal is the uptake of one planted lesion (with a brighter,
larger cube that carries none; :func:`prrt.data.phantoms.planted_lesion_images`), trains the compact CNN
and reports, over the test images with the outcome (label 1, the class the maps explain) and over all
test images: the pointing-game hit rate and the mean share of the map's mass in the (one-voxel dilated)
lesion, for the trained network and for the same network with every layer re-initialised, and the
median rank correlation between the two networks' maps. tests/explain/test_explain.py checks one seed.

    python benchmarks/planted_lesion_gradcam.py --seeds 6
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import pandas as pd


def one(seed: int, data_seed: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from prrt.data.phantoms import planted_lesion_images
    from prrt.explain import gradcam, saliency, sanity
    from prrt.learn import training as train

    x, y, masks = planted_lesion_images(140, size=24, seed=data_seed)
    tr, va, te = slice(0, 80), slice(80, 100), slice(100, 140)
    t = time.perf_counter()
    out = train.train_model(x[tr], y[tr], x[va], y[va], train.TrainConfig(epochs=15, augment=False, lr=3e-3),
                            seed=seed, progress=False)
    net = out.model.eval()
    layer = gradcam.target_layer(net, x.shape[1:])
    patients = [f"T{i}" for i in range(40)]
    maps = gradcam.gradcam_maps(net, x[te], layer)
    rand = copy.deepcopy(net)
    for names in gradcam.randomisation_steps(rand):
        gradcam.reinitialise(rand, names, seed)
    rmaps = gradcam.gradcam_maps(rand, x[te], layer)
    row = {"seed": seed, "test AUROC": roc_auc_score(y[te], train.predict(net, x[te])), "layer": layer}
    for name, m in (("trained", maps), ("randomised", rmaps)):
        s = saliency.saliency_metrics(m, masks[te], patients, 1).assign(y=y[te])
        pos = s[s["y"] == 1]
        row.update({f"{name}: hits (label 1)": pos["pointing_hit"].mean(), f"{name}: hits (all)": s["pointing_hit"].mean(),
                    f"{name}: mass (label 1)": pos["mass_in_mask"].mean(), f"{name}: mass (all)": s["mass_in_mask"].mean()})
    row["chance"] = s["chance"].mean()
    row["median rank correlation"] = float(np.median([sanity.rank_correlation(a, b) for a, b in zip(maps, rmaps)]))
    row["seconds"] = time.perf_counter() - t
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    rows = [one(seed, 10 + seed) for seed in range(args.seeds)]
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
