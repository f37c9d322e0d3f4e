"""Tuning experiment (separate cohort, never the demo): fusion heads on the frozen embeddings of each
fold's unimodal CNNs, against the end-to-end fusion (benchmarks/tune_fusion.py).

    prrt demo-data --out /tmp/tune7 --seed 7 --pretrain-ct 60
    python benchmarks/tune_frozen_fusion.py /tmp/tune7 /tmp/tune7_run

Demo profile, 5 x 3-fold. Trains the PET CNN and the pretrained CT CNN once per fold (keeping the fold
models), then fits each head on the fold's training patients only and predicts its test patients.
Prints each variant's AUROC per repeat and the time the heads took.
"""
import sys
import time

import numpy as np
import pandas as pd
import torch
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prrt.data.load import load_cohort
from prrt.evaluation import splits as sp
from prrt.evaluation.metrics import per_repeat_metrics
from prrt.imaging import inputs as pin
from prrt.imaging.lesions import FEATURES
from prrt.learn import fusion, image_model, pretrain, training
from prrt.learn import loop as models
from prrt.profiles import get_profile
from prrt.study import ch04_fusion

d, run = sys.argv[1], sys.argv[2]
SEED = 20251105
c = load_cohort(f"{d}/manifest.yaml")
prof = get_profile("demo")
cache = f"{run}/.cache"
s = sp.ensure_splits(c, prof, SEED, run)
arrays = pin.prepare_inputs(c, prof, cache, run, progress=False)
X = ch04_fusion.chapter_table(c, run, progress=False)
data = image_model.image_data(c, prof, cache, arrays=arrays.get(prof.roi), table=X, progress=False)
ct_state, card, how = pretrain.ct_encoder_state(c, prof, cache, SEED, "", [])
cfg = training.config_from_profile(prof)
t = time.time()
import pickle
from pathlib import Path

store = Path(run) / "frozen_fold_outputs.pkl"
if store.is_file():
    folds_out = pickle.loads(store.read_bytes())
else:
    uni = {}
    for name, mod, w in [("pet_cnn", "pet", None), ("ct_cnn_pretrained", "ct", ct_state)]:
        spec = image_model.image_spec(name, mod, cfg, "04", mod, True, encoder_weights=w)
        uni[mod] = models.cross_validate(spec, data, s, SEED, progress=False, keep_models=True)
        print(name, "AUROC %.3f" % per_repeat_metrics(uni[mod].predictions)["auroc"].mean(), flush=True)
    folds_out = {}
    for fold in sp.iter_folds(s):
        for mod, res in uni.items():
            m = res.models[(fold.repeat, fold.fold)]
            folds_out[(fold.repeat, fold.fold, mod)] = (m.features(data, fold.train)[mod], m.features(data, fold.test)[mod],
                                                        m.predict(data, fold.train), m.predict(data, fold.test))
    store.write_bytes(pickle.dumps(folds_out))
print("unimodal CNNs: %.0f s" % (time.time() - t), flush=True)

labs, pf = list(c.labs), list(FEATURES)
y = data.y


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def table(cols, tr, te):
    imp = SimpleImputer(strategy="median", keep_empty_features=True).fit(X.loc[tr, cols])
    sc = StandardScaler().fit(imp.transform(X.loc[tr, cols]))
    f = lambda ids: np.nan_to_num(sc.transform(imp.transform(X.loc[ids, cols])))
    return f(tr), f(te)


def torch_head(blocks_tr, blocks_te, ytr, mechanism, seed, epochs=150, wd=1e-2, lr=3e-3):
    torch.manual_seed(seed)
    encs = {}
    for k, b in blocks_tr.items():
        e = torch.nn.Identity()
        e.feature_dim = b.shape[1]
        encs[k] = e
    net = fusion.FusionNet(encs, mechanism, dim=16, dropout=0.3)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    xt = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in blocks_tr.items()}
    xe = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in blocks_te.items()}
    yt = torch.as_tensor(ytr, dtype=torch.float32)
    pw = (len(yt) - yt.sum()) / yt.sum()
    pres = torch.ones(len(yt), len(encs))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        drop = (torch.rand(pres.shape, generator=g) < 0.2)
        drop[drop.all(1)] = False
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt, pres * ~drop), yt, pos_weight=pw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return torch.sigmoid(net(xe, torch.ones(len(next(iter(xe.values()))), len(encs)))).numpy()


rows = {}
t = time.time()
for fold in sp.iter_folds(s):
    tr, te = fold.train, fold.test
    ytr = y.loc[tr].to_numpy(int)
    lab_tr, lab_te = table(labs, tr, te)
    pf_tr, pf_te = table(pf, tr, te)
    emb, lg = {}, {}
    for mod in ("pet", "ct"):
        a, b, pa, pb = folds_out[(fold.repeat, fold.fold, mod)]
        emb[mod] = (a, b)
        lg[mod] = (logit(pa)[:, None], logit(pb)[:, None])
    sc = {k: StandardScaler().fit(v[0]) for k, v in emb.items()}
    emb = {k: (sc[k].transform(a), sc[k].transform(b)) for k, (a, b) in emb.items()}
    variants = {}
    lr = lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
    variants["lr labs+pf"] = lr().fit(np.hstack([lab_tr, pf_tr]), ytr).predict_proba(np.hstack([lab_te, pf_te]))[:, 1]
    variants["lr labs+pf+cnn logits"] = lr().fit(np.hstack([lab_tr, pf_tr, lg["pet"][0], lg["ct"][0]]), ytr).predict_proba(
        np.hstack([lab_te, pf_te, lg["pet"][1], lg["ct"][1]]))[:, 1]
    seed = SEED + 1000 * fold.repeat + fold.fold
    tr_l = {"labs": lab_tr, "pet_features": pf_tr, "pet": lg["pet"][0], "ct": lg["ct"][0]}
    te_l = {"labs": lab_te, "pet_features": pf_te, "pet": lg["pet"][1], "ct": lg["ct"][1]}
    two = lambda d: {k: d[k] for k in ("labs", "pet_features")}
    for mech in ("adaptive", "intermediate"):
        for epochs, lr_, wd in [(150, 3e-3, 1e-2), (300, 1e-2, 1e-1), (100, 1e-2, 1.0)]:
            tag = f"{mech} e{epochs} lr{lr_} wd{wd}"
            variants[tag + " +logits"] = torch_head(tr_l, te_l, ytr, mech, seed, epochs, wd, lr_)
            variants[tag + " labs+pf"] = torch_head(two(tr_l), two(te_l), ytr, mech, seed, epochs, wd, lr_)
    for k, p in variants.items():
        rows.setdefault(k, []).append(pd.DataFrame({"patient": te, "repeat": fold.repeat, "fold": fold.fold,
                                                    "label": y.loc[te].to_numpy(int), "probability": p}))
print("heads: %.0f s" % (time.time() - t))
for k, parts in rows.items():
    m = per_repeat_metrics(pd.concat(parts))
    print(f"{k:28s} AUROC {m['auroc'].mean():.3f} ± {m['auroc'].std():.3f}", [round(a, 3) for a in m["auroc"]], flush=True)
