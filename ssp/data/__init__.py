"""Data stage: the 11 CoOp benchmarks, a generic image folder, and the few-shot protocol.

>>> ds = get_dataset("dtd", "/data")                  # /data/dtd/{images, split_zhou_...json}
>>> fs = make_fewshot_splits(ds, shots=16, seed=1)    # support: 16 per class, class-major
>>> loader = torch.utils.data.DataLoader(ImageDataset(fs.support, preprocess), batch_size=64)

Download and checks: ``ssp-data download / verify / splits`` (:mod:`ssp.data.download`,
:mod:`ssp.data.verify`, :mod:`ssp.data.manifest`). Layouts and download notes: ``datasets/README.md`` and ``datasets/<name>.md`` in the repository.
"""
from ssp.data.base import (
    IMG_EXTENSIONS,
    DatasetNotFoundError,
    DatasetSplits,
    Sample,
    clean_classname,
    list_images,
    read_split_file,
)
from ssp.data.benchmarks import (
    EUROSAT_CLASSNAMES,
    IMAGENET_TEMPLATES,
    benchmark_templates,
    get_dataset,
    list_datasets,
    read_imagenet_classnames,
)
from ssp.data.fewshot import FewShotSplits, make_fewshot_splits

_IMAGES = ("ImageDataset", "ImageLoadError", "load_image")


def __getattr__(name: str):
    """The image loaders import torch: loaded on first use, so ``ssp-data`` starts without torch."""
    if name in _IMAGES:
        from ssp.data import images

        return getattr(images, name)
    raise AttributeError(f"module 'ssp.data' has no attribute {name!r}")


__all__ = [
    "IMG_EXTENSIONS",
    "DatasetNotFoundError",
    "DatasetSplits",
    "Sample",
    "clean_classname",
    "list_images",
    "read_split_file",
    "EUROSAT_CLASSNAMES",
    "IMAGENET_TEMPLATES",
    "benchmark_templates",
    "get_dataset",
    "list_datasets",
    "read_imagenet_classnames",
    "FewShotSplits",
    "make_fewshot_splits",
    "ImageDataset",
    "ImageLoadError",
    "load_image",
]
