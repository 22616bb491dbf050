"""Data: dataset readers, the synthetic data set, PK sampling, transforms and loaders (Sections 4.1, 4.5).

* :func:`load_dataset` -- Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17, the synthetic set, any Market-layout folder
* :func:`make_synthetic` / :func:`sample_grid` -- the embedded synthetic data set (:mod:`canlib.data.synthetic`)
* :class:`PKSampler`, :func:`build_transforms`, :func:`build_train_loader`, :func:`build_test_loaders`
* :func:`convert_cuhk03_np` -- the original ``cuhk-03.mat`` to the CUHK03-NP layout
"""

from canlib.data.base import (
    DatasetLayoutError,
    ImageReadError,
    Record,
    ReIDDataset,
    StatisticsMismatchWarning,
    read_image,
)
from canlib.data.cuhk03 import convert_cuhk03_np
from canlib.data.datasets import (
    CUHK03NP,
    DATASETS,
    MSMT17,
    DukeMTMCReID,
    Market1501,
    MarketLayoutDataset,
    SyntheticReID,
    load_dataset,
    parse_market_name,
)
from canlib.data.loaders import ImageDataset, build_test_loaders, build_train_loader
from canlib.data.sampler import PKSampler
from canlib.data.synthetic import make_synthetic, sample_grid
from canlib.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "CUHK03NP",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MSMT17",
    "DatasetLayoutError",
    "DukeMTMCReID",
    "ImageDataset",
    "ImageReadError",
    "Market1501",
    "MarketLayoutDataset",
    "PKSampler",
    "ReIDDataset",
    "Record",
    "StatisticsMismatchWarning",
    "SyntheticReID",
    "build_test_loaders",
    "build_train_loader",
    "build_transforms",
    "convert_cuhk03_np",
    "load_dataset",
    "make_synthetic",
    "parse_market_name",
    "read_image",
    "sample_grid",
]
