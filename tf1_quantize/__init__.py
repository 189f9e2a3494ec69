"""Quantization-aware training for TensorFlow graph-mode code.

A drop-in replacement for `tf.contrib.quantize` on TensorFlow 2.x::

    import tf1_quantize as contrib_quantize
    contrib_quantize.create_training_graph(quant_delay=2000)
"""

from tf1_quantize.api import create_eval_graph
from tf1_quantize.api import create_training_graph
from tf1_quantize.api import experimental_create_eval_graph
from tf1_quantize.api import experimental_create_training_graph
from tf1_quantize.api import fold_batch_norms
from tf1_quantize.api import last_report
from tf1_quantize.conditionals import switch_merge_conds
from tf1_quantize.contrib_alias import install_as_contrib
from tf1_quantize.errors import QuantizeError
from tf1_quantize.errors import RewriteAbortedError
from tf1_quantize.errors import UnsupportedGraphError
from tf1_quantize import warm_start

__all__ = [
    'create_eval_graph',
    'create_training_graph',
    'experimental_create_eval_graph',
    'experimental_create_training_graph',
    'fold_batch_norms',
    'install_as_contrib',
    'last_report',
    'switch_merge_conds',
    'QuantizeError',
    'RewriteAbortedError',
    'UnsupportedGraphError',
    'warm_start',
]
