"""Statistics of a run's predictions: splits made once per run, metrics with intervals, paired tests,
calibration, survival views, Table 1 statistics and the prediction/summary files.

What other subpackages may use is listed in ``__all__``; the rest is private to this one.
"""

# ``calibration`` and ``table1`` are also the names of their modules: the face gives these two functions names of
# their own, so that ``prrt.evaluation.calibration`` and ``prrt.evaluation.table1`` stay the modules
from .calibration import calibration as calibration_bins
from .calibration import net_benefit
from .comparison import compare_models, format_p, holm, p_phrase, pairwise_table
from .external import comparison_table, external_metrics
from .metrics import (
    assemble_predictions,
    binormal_auprc,
    bootstrap_ci,
    fold_test_rows,
    labelled,
    mean_probability,
    per_repeat_calibration,
    per_repeat_metrics,
    prior_correction,
    summarise,
)
from .results import (
    format_summary,
    mean_sd,
    num,
    read_predictions,
    skipped,
    update_summary,
    write_predictions,
)
from .splits import (
    Fold,
    cross_fit_folds,
    ensure_splits,
    external_splits,
    fold_tests,
    iter_folds,
    left_out_pair,
    load_splits,
    mean_training_patients,
    save_splits,
    splits_table,
)
from .survival import km_summary, risk_groups_logrank, risk_tertiles
from .table1 import (
    cohort_table1,
    display_table1,
    exclusion_summary,
    odds_ratio_table,
    pool_rare_levels,
)
from .table1 import table1 as table_by_group

__all__ = [
    "Fold",
    "assemble_predictions",
    "binormal_auprc",
    "bootstrap_ci",
    "calibration_bins",
    "cohort_table1",
    "compare_models",
    "comparison_table",
    "cross_fit_folds",
    "display_table1",
    "ensure_splits",
    "exclusion_summary",
    "external_metrics",
    "external_splits",
    "fold_test_rows",
    "fold_tests",
    "format_p",
    "format_summary",
    "holm",
    "iter_folds",
    "km_summary",
    "labelled",
    "left_out_pair",
    "load_splits",
    "mean_probability",
    "mean_sd",
    "mean_training_patients",
    "net_benefit",
    "num",
    "odds_ratio_table",
    "p_phrase",
    "pairwise_table",
    "per_repeat_calibration",
    "per_repeat_metrics",
    "pool_rare_levels",
    "prior_correction",
    "read_predictions",
    "risk_groups_logrank",
    "risk_tertiles",
    "save_splits",
    "skipped",
    "splits_table",
    "summarise",
    "table_by_group",
    "update_summary",
    "write_predictions",
]
