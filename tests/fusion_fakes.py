"""Small made-up multimodal data (a table and PET/CT tensors), shared by the tests of the fusion and of chapter 05."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from prrt.imaging.lesions import FEATURES
from prrt.learn import base as base_


def _multimodal(n=36, seed=0, size=(8, 8, 6), missing=True):
    """Labs carry signal; PET images a bright cube for short PFS; CT noise. Some modalities missing
    (with ``missing=False`` every patient has both images)."""
    rng = np.random.default_rng(seed)
    y = pd.Series(np.r_[np.ones(13), np.zeros(n - 13), [np.nan]], index=[f"P{i:03d}" for i in range(n + 1)])
    lab = y.fillna(0).to_numpy()
    X = pd.DataFrame({"cga": rng.normal(size=n + 1) + lab, "ggt": rng.normal(size=n + 1)}, index=y.index)
    ids = list(y.index)
    # a fifth lack PET, four others CT, two others every laboratory value; both classes in each group
    no_pet = [ids[i] for i in (0, 5, 10, 15, 20, 25, 30)]
    no_ct = [ids[i] for i in (1, 12, 23, 34)]
    no_labs = [ids[i] for i in (3, 28)]
    X.loc[no_labs] = np.nan
    # the SR-PET lesion features of chapter 02: measured where there is a PET (suv_max carries signal)
    for i, f in enumerate(FEATURES):
        X[f] = rng.normal(size=n + 1) + (lab if i == 0 else 0)
    X.loc[no_pet, FEATURES] = np.nan
    pet = torch.from_numpy(rng.random((n + 1, 2, *size)).astype(np.float32) * 0.3)
    pet[np.flatnonzero(lab == 1), 0, 2:5, 2:5, 2:4] += 0.8
    ct = torch.from_numpy(rng.random((n + 1, 2, *size)).astype(np.float32))
    keep_pet = [i for i, p in enumerate(ids) if p not in no_pet or not missing]
    keep_ct = [i for i, p in enumerate(ids) if p not in no_ct or not missing]
    data = base_.ModelData(y, table=X, images={
        "pet": base_.ImageSet(pet[keep_pet], [ids[i] for i in keep_pet]),
        "ct": base_.ImageSet(ct[keep_ct], [ids[i] for i in keep_ct])})
    return data, y, (no_pet, no_ct, no_labs)


class _Cohort:
    labs = ["cga", "ggt"]
    modalities = ["pet", "ct"]


class _Profile:
    n_bootstrap = 20
