"""Makes tf-slim 1.1.0 build its networks on TensorFlow >= 2.14.

tf-slim's last release needs two client-side fixes there: its batch norm
imports `tf_keras.legacy_tf_layers`, which tf-keras now ships as
`tf_keras.src.legacy_tf_layers`, and its `layers/utils.py` reads
`tensorflow.python.framework.ops.Tensor`, which TF 2.14 removed. Call
`patch_tf_slim()` once before building a slim network (nothing here imports
tf-slim itself).
"""

import importlib
import sys

import tensorflow as tf
from tensorflow.python.framework import ops

_LEGACY_LAYERS = ('base', 'core', 'convolutional', 'normalization', 'pooling',
                  'variable_scope_shim')


def patch_tf_slim() -> None:
    """Registers the two names tf-slim 1.1.0 looks for; idempotent.

    Raises:
        ImportError: if neither tf-keras nor TF's own Keras 2 provides the
            legacy layers (install the tf-keras matching TensorFlow).
    """
    try:
        legacy = importlib.import_module('tf_keras.src.legacy_tf_layers')
    except ImportError:  # TF 2.15 without tf-keras: its own Keras 2.
        legacy = importlib.import_module('keras.src.legacy_tf_layers')
    sys.modules.setdefault('tf_keras.legacy_tf_layers', legacy)
    for name in _LEGACY_LAYERS:
        sys.modules.setdefault(
            'tf_keras.legacy_tf_layers.' + name,
            importlib.import_module('%s.%s' % (legacy.__name__, name)))
    if not hasattr(ops, 'Tensor'):
        ops.Tensor = tf.Tensor
