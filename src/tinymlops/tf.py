"""The TensorFlow boundary: import TensorFlow and Keras 2 (tf_keras) with the right environment.

Import this module only inside functions that need TensorFlow; it costs seconds.
"""

from __future__ import annotations

from tinymlops.settings import prepare_environment

prepare_environment()

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "tf"]
