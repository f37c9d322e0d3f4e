"""Tuning experiment: chapter 04's neural fusions refitted with other settings on a finished run.

    prrt run --manifest data/tune/manifest.yaml --profile demo --run-dir runs/tune7 --no-book
    python benchmarks/shuffled_images.py data/tune runs/tune7_shuffled
    python benchmarks/fusion_variants.py data/tune/manifest.yaml runs/tune7 \\
        --models lab_pet_ct_fusion,lab_pet_ct_intermediate,lab_petfeatures_net \\
        --variant table_scores=pet_features --variant table_scores= --variant mechanism=intermediate

Reads the run's splits, its fold CNNs' checkpoints and cross-fitted scores (chapters 03 and 04 with the profile's
``fusion_image_branches: cross_fitted``), and cross-validates each named fusion once per ``--variant``: a
comma-separated list of ``field=value`` settings of :class:`prrt.learn.fusion.FusionConfig` (``mechanism``, ``dim``,
``modality_dropout``, ``lab_width``, ``table_scores`` as ``a+b`` or empty) or of its training
(:class:`prrt.learn.training.TrainConfig`: ``epochs``, ``lr``, ``weight_decay``, ...). Prints each variant's AUROC per
repeat and its mean. Only the fusions are refitted, so a variant costs seconds to a minute on a laptop CPU.

Use it on the tuning cohorts (generator seeds 7 and 8) and on their shuffled twins (``benchmarks/shuffled_images.py``),
never to choose settings on the demo cohort, whose test folds the book reports.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace

from prrt.data.load import load_cohort
from prrt.evaluation import splits as sp
from prrt.evaluation.metrics import per_repeat_metrics
from prrt.imaging import inputs as pin
from prrt.learn import image_model, loop, pretrain
from prrt.learn.fusion import FusionConfig
from prrt.learn.neural_fusion import NeuralFusion
from prrt.profiles import get_profile
from prrt.study import ch04_fusion


def parse_variant(text: str, cfg: FusionConfig) -> FusionConfig:
    """``cfg`` with the ``field=value`` settings of ``text`` (values converted to the field's type)."""
    top, train = {}, {}
    for item in [x for x in text.split(",") if x]:
        key, _, value = item.partition("=")
        if key == "table_scores":
            top[key] = tuple(v for v in value.split("+") if v)
        elif key in {f.name for f in fields(FusionConfig)}:
            top[key] = type(getattr(cfg, key))(value)
        elif key in {f.name for f in fields(type(cfg.train))}:
            train[key] = type(getattr(cfg.train, key))(value)
        else:
            raise SystemExit(f"unknown setting {key!r}")
    return replace(cfg, train=replace(cfg.train, **train), **top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("run_dir")
    ap.add_argument("--models", default=ch04_fusion.HEADLINE)
    ap.add_argument("--variant", action="append", default=[], help="field=value[,field=value]; '' = as the profile")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--seed", type=int, default=20251105)
    ap.add_argument("--cache-dir", default="runs/.prrt-cache")
    args = ap.parse_args(argv)
    cohort, prof = load_cohort(args.manifest), get_profile(args.profile)
    splits = sp.ensure_splits(cohort, prof, args.seed, args.run_dir)
    arrays = pin.prepare_inputs(cohort, prof, args.cache_dir, args.run_dir, progress=False)
    table = ch04_fusion.chapter_table(cohort, args.run_dir, progress=False)
    data = image_model.image_data(cohort, prof, args.cache_dir, arrays=arrays.get(prof.roi), table=table,
                                  progress=False)
    ct_state, _, _ = pretrain.ct_encoder_state(cohort, prof, args.cache_dir, args.seed, "", [])
    specs = {s.name: s for s in ch04_fusion.chapter_specs(cohort, prof, ct_state, run_dir=args.run_dir)}
    for name in args.models.split(","):
        made = specs[name].build(0)
        if not isinstance(made, NeuralFusion):
            raise SystemExit(f"{name} is not a neural fusion")
        for text in args.variant or [""]:
            cfg = parse_variant(text, made.cfg)
            spec = replace(specs[name], build=lambda seed, m=made, c=cfg: NeuralFusion(
                m.modalities, m.columns["labs"], c, m.ct_weights, m.columns["pet_features"], m.fold_models))
            start = time.time()
            res = loop.cross_validate(spec, data, splits, args.seed, progress=False)
            auroc = per_repeat_metrics(res.predictions)["auroc"]
            print(f"{name} [{text or 'as the profile'}]: AUROC per repeat {[round(a, 3) for a in auroc]}, "
                  f"mean {auroc.mean():.3f} ({time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
