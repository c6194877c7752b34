"""Pre-processing that travels with the model.

Declared once in the pipeline config as a list of blocks, fitted on the training split, stored in every artifact's
manifest and applied by this same code at training time, in evaluation and on the device (the edge agent); the
built-in blocks also exist as C99 for microcontrollers (:mod:`tinymlops.export.preprocess_c`). NumPy only.
"""

from tinymlops.preprocessing.base import Block, FitContext
from tinymlops.preprocessing.config import PreprocessingSection
from tinymlops.preprocessing.pipeline import FittedPreprocessing, check_deployable, fit, transform, validated
from tinymlops.preprocessing.registry import BLOCKS, parse_block

__all__ = ["BLOCKS", "Block", "FitContext", "FittedPreprocessing", "PreprocessingSection", "check_deployable",
           "fit", "parse_block", "transform", "validated"]
