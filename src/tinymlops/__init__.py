"""tinymlops: MLOps for tiny devices."""

__version__ = "0.1.0"
