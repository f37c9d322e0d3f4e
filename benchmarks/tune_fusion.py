"""Tuning experiment: the chapter-04 fusions on a separate cohort (never the demo's test folds).

    prrt demo-data --out /tmp/tune7 --seed 7 --pretrain-ct 60
    python benchmarks/tune_fusion.py /tmp/tune7 /tmp/tune7_run fold_models
    python benchmarks/tune_fusion.py /tmp/tune7 /tmp/tune7_run features,cnn_only   # end to end (slow)

Demo profile, 5 x 3-fold; prints the AUROC of each repeat and the time of each model.

``fold_models``: the demo profile's chapter 04 (image branches from the fold models): the PET CNN of
chapter 03 first, then every model of chapter 04. ``features`` / ``cnn_only``: the headline fusion
trained end to end, with and without the SR-PET lesion features.
"""
import sys
import time
from dataclasses import replace

from prrt.data.load import load_cohort
from prrt.evaluation import splits as sp
from prrt.evaluation.metrics import per_repeat_metrics
from prrt.imaging import inputs as pin
from prrt.learn import image_model, pretrain
from prrt.learn import loop as models
from prrt.profiles import get_profile
from prrt.study import ch03_images
from prrt.study import ch04_fusion as fusion

d, run = sys.argv[1], sys.argv[2]
variants = sys.argv[3].split(",")
c = load_cohort(f"{d}/manifest.yaml")
prof = get_profile("demo")
cache = f"{run}/.cache"
import os; os.makedirs(run, exist_ok=True)
s = sp.ensure_splits(c, prof, 20251105, run)
arrays = pin.prepare_inputs(c, prof, cache, run, progress=False)
X = fusion.chapter_table(c, run, progress=False)
data = image_model.image_data(c, prof, cache, arrays=arrays.get(prof.roi), table=X, progress=False)
ct_state, card, how = pretrain.ct_encoder_state(c, prof, cache, 20251105, "", [])
print("pretraining:", how, flush=True)


def report(name, inputs, res, seconds):
    m = per_repeat_metrics(res.predictions)
    print(name, "|", inputs, "| AUROC per repeat", [round(a, 3) for a in m["auroc"]], "mean %.3f" % m["auroc"].mean(),
          "AUPRC %.3f" % m["auprc"].mean(), "%.0f s" % seconds, flush=True)


for v in variants:
    if v in ("fold_models", "fold_fusions"):  # fold_fusions: only the fusions (the CNNs' checkpoints are there)
        specs = [*ch03_images.image_specs(c, prof)[:1], *fusion.chapter_specs(c, prof, ct_state, run_dir=run)]
        if v == "fold_fusions":
            specs = [x for x in specs if "fusion" in x.name or "intermediate" in x.name]
        for spec in [x for x in specs if x.build is not None]:
            t = time.time()
            res, _ = models.run_models([spec], data, c, s, replace(prof, n_bootstrap=10), 20251105, run, progress=False)
            report(spec.name, spec.inputs, res[spec.name], time.time() - t)
        continue
    p = replace(prof, fusion_pet_features=(v == "features"), fusion_image_branches="end_to_end")
    spec = [x for x in fusion.chapter_specs(c, p, ct_state, run_dir=run) if x.name == fusion.HEADLINE][0]
    t = time.time()
    report(v, spec.inputs, models.cross_validate(spec, data, s, 20251105, progress=False), time.time() - t)
