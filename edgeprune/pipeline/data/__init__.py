"""Training and validation data for evaluation and recovery (`--data`)."""

from edgeprune.pipeline.data.arrays import BatchLoader, ImageArrays, Normalization, TensorLoader
from edgeprune.pipeline.data.sources import DataBundle, ModelInputs, check_fits, load_data

__all__ = [
    "BatchLoader",
    "DataBundle",
    "ImageArrays",
    "ModelInputs",
    "Normalization",
    "TensorLoader",
    "check_fits",
    "load_data",
]
