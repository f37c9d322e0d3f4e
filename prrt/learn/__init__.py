"""Models: the model protocol, :class:`ModelSpec` and the one cross-validation loop with its engines,
tabular models, networks, the training engine, CT pretraining and the fusion mechanisms.

What other subpackages may use is listed in ``__all__``; the rest is private to this one.
"""

from .base import FewerLabels, ModelData, ModelSpec
from .engines import ENV, engine_from
from .fusion import (
    SCORE_BRANCHES,
    SOURCE,
    FoldModelScores,
    FusionConfig,
    LateFusion,
    fusion_config,
    write_cross_fitted,
)
from .image_model import image_data, image_spec
from .loop import (
    checkpoint_path,
    cross_fitted_scores,
    cross_validate,
    fold_seed,
    folds_of,
    inner_split,
    restore_fold_models,
    run_models,
    training_score_of,
)
from .neural_fusion import NeuralFusion
from .pretrain import PretrainConfig, ct_encoder_state, pretrain_ct, read_card
from .tabular import (
    feature_table,
    importance_summary,
    make_model,
    one_blas_thread,
    table_spec,
)
from .training import config_from_profile, count_weights, select_device

__all__ = [
    "ENV",
    "FewerLabels",
    "FoldModelScores",
    "FusionConfig",
    "LateFusion",
    "ModelData",
    "ModelSpec",
    "NeuralFusion",
    "PretrainConfig",
    "SCORE_BRANCHES",
    "SOURCE",
    "checkpoint_path",
    "config_from_profile",
    "count_weights",
    "cross_fitted_scores",
    "cross_validate",
    "ct_encoder_state",
    "engine_from",
    "feature_table",
    "fold_seed",
    "folds_of",
    "fusion_config",
    "image_data",
    "image_spec",
    "importance_summary",
    "inner_split",
    "make_model",
    "one_blas_thread",
    "pretrain_ct",
    "read_card",
    "restore_fold_models",
    "run_models",
    "select_device",
    "table_spec",
    "training_score_of",
    "write_cross_fitted",
]
