"""Datasets: the catalog of benchmarks in their native layouts, splits, score normalisation."""

from dsmix_cli.data.catalog import (
    ALIASES,
    DATASETS,
    Dataset,
    DatasetInfo,
    Item,
    canonical_name,
    load_dataset,
    resolve_root,
)
from dsmix_cli.data.check import check_images, describe
from dsmix_cli.data.splits import ScoreNormaliser, Split, column_splits, make_splits, official_split

__all__ = [
    "ALIASES", "DATASETS", "Dataset", "DatasetInfo", "Item", "canonical_name", "check_images",
    "describe", "load_dataset", "resolve_root", "ScoreNormaliser", "Split", "column_splits",
    "make_splits", "official_split",
]
