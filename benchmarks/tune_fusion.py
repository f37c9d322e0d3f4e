"""Tuning experiment: the headline fusion with and without the SR-PET lesion features (on a separate cohort).

    prrt demo-data --out /tmp/tune7 --seed 7 --pretrain-ct 60
    python benchmarks/tune_fusion.py /tmp/tune7 /tmp/tune7_run features,cnn_only

Demo profile, 5 x 3-fold; prints the AUROC of each repeat. Slow on a CPU (CT pretraining, then the fusion).
"""
import sys, time
from dataclasses import replace
from prrt.manifest import load_manifest
from prrt.profiles import get_profile
from prrt import fusion, models, splits as sp, train, pretrain, inputs as pin
from prrt.evaluate import per_repeat_metrics
d, run = sys.argv[1], sys.argv[2]
variants = sys.argv[3].split(",")
c = load_manifest(f"{d}/manifest.yaml")
prof = get_profile("demo")
cache = f"{run}/.cache"
import os; os.makedirs(run, exist_ok=True)
s = sp.ensure_splits(c, prof, 20251105, run)
arrays = pin.prepare_inputs(c, prof, cache, run, progress=False)
X = fusion.chapter_table(c, run, progress=False)
data = train.image_data(c, prof, cache, arrays=arrays.get(prof.roi), table=X, progress=False)
ct_state, card, how = pretrain.ct_encoder_state(c, prof, cache, 20251105, "", [])
print("pretraining:", how, flush=True)
for v in variants:
    p = replace(prof, fusion_pet_features=(v == "features"))
    spec = [x for x in fusion.chapter_specs(c, p, ct_state) if x.name == fusion.HEADLINE][0]
    t = time.time()
    res = models.cross_validate(spec, data, s, 20251105, progress=False)
    m = per_repeat_metrics(res.predictions)
    print(v, spec.inputs, "AUROC per repeat", [round(a, 3) for a in m["auroc"]], "mean %.3f" % m["auroc"].mean(),
          "AUPRC %.3f" % m["auprc"].mean(), "%.0f s" % (time.time() - t), flush=True)
