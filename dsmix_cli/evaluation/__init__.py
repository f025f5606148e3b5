"""Evaluation: correlation metrics and their summaries over splits."""

from dsmix_cli.evaluation.metrics import (
    MetricWarning,
    correlations,
    krcc,
    plcc,
    plcc_logistic,
    rmse,
    srcc,
    summarize,
)

__all__ = ["MetricWarning", "correlations", "krcc", "plcc", "plcc_logistic", "rmse", "srcc", "summarize"]
