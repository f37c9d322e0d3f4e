"""Tuning experiment behind `fusion_pet_features` (run on a separate synthetic cohort, never the demo one).

    prrt demo-data --out /tmp/tune7 --seed 7 --pretrain-ct 60
    python benchmarks/tune_pet_features.py /tmp/tune7

Cross-validates (5 x 3-fold) a logistic regression, a perceptron and a Random Forest on the laboratory
values alone and with the SR-PET lesion features of chapter 02, and prints the AUROC (mean ± SD over repeats).
"""
import sys

from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prrt.data.load import load_cohort
from prrt.evaluation import splits as sp
from prrt.evaluation.metrics import per_repeat_metrics
from prrt.imaging import lesions as pet_features
from prrt.learn import base, loop, tabular

d = sys.argv[1]
c = load_cohort(f"{d}/manifest.yaml", check_images="none")
pet = pet_features.cohort_features(c, progress=False)
X = tabular.feature_table(c, pet)
y = c.data["label"]
s = sp.make_splits(y, 3, 5, 7)
data = base.ModelData(y, table=X)
def run(name, cols, make):
    spec = tabular.table_spec(name, "x", "x", cols, lambda seed: make(seed))
    r = loop.cross_validate(spec, data, s, 7, progress=False)
    m = per_repeat_metrics(r.predictions)["auroc"]
    print(f"{name:30s} {m.mean():.3f} ± {m.std():.3f}", flush=True)
labs = list(c.labs); feats = labs + pet_features.FEATURES
for cols, tag in [(labs, "labs"), (feats, "labs+pet")]:
    run(f"lr {tag}", cols, lambda seed: make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=2000)))
    run(f"mlp {tag}", cols, lambda seed: make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), MLPClassifier((32,), alpha=1e-2, max_iter=500, random_state=seed)))
    run(f"rf {tag}", cols, lambda seed: tabular.random_forest(seed, 300))
