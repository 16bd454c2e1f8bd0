"""Training and validation data for evaluation and recovery (`--data`)."""
from edgeprune.pipeline.data.arrays import BatchLoader, ImageArrays, Normalization
from edgeprune.pipeline.data.sources import DataBundle, check_fits, load_data

__all__ = ["BatchLoader", "DataBundle", "ImageArrays", "Normalization", "check_fits", "load_data"]
