"""One Const op per value, per graph and device scope.

Every quantizer and fold reads the same few numbers: 0 and 1, the moving
average's decay, epsilon and the Bessel factor per channel, reduction axes;
so do the gradients of the ops the rewrite builds (shapes, axes). Built
where they are used, each is a Const op of its own, about 40 per layer on a
ResNet; every op costs graph memory, Grappler time and executor set-up at
the first `session.run`. `constant` returns one Const per graph, active
device scope, dtype, shape and value, built at the root scope
`quantize_constants/` without control dependencies (gradients are built
inside the training script's update-op block, see
`graph_edit.no_control_dependencies`). Values are unchanged: only where a
number lives changes, never the number.

`constant` builds an ordinary constant, in the caller's name scope, inside
a TF1 conditional or while loop, whose ops cannot read a tensor from
outside without an extra Switch or Enter, and under a colocation
(`colocate_gradients_with_ops=True`), which places the constant with the
op its gradient is for.
"""

import weakref
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from tf1_quantize import graph_edit
from tf1_quantize import names

# graph -> {(device scopes, dtype, shape, bytes): Const output}.
_CACHES: 'weakref.WeakKeyDictionary[tf.Graph, Dict[Tuple, tf.Tensor]]' = (
    weakref.WeakKeyDictionary())


def constant(value, dtype: tf.DType = tf.float32,
             name: str = 'Const') -> tf.Tensor:
    """A constant tensor of `value` in the default graph, shared if possible.

    Args:
        value: a number or array; converted to `dtype` with NumPy.
        dtype: the tensor's dtype.
        name: the op's name where it is built (a shared one is named the
            first time).

    Returns:
        A tensor holding `value` as `dtype`.
    """
    array = np.asarray(value, dtype=dtype.as_numpy_dtype)
    graph = tf.compat.v1.get_default_graph()
    # pylint: disable=protected-access
    if (graph._get_control_flow_context() is not None
            or len(graph._colocation_stack)):
        with graph_edit.no_control_dependencies(graph):
            return tf.constant(array, dtype, name=name)
    key = (_device_scopes(graph), dtype, array.shape, array.tobytes())
    cache = _CACHES.setdefault(graph, {})
    if key not in cache:
        with (graph_edit.no_control_dependencies(graph),
              graph_edit.absolute_name_scope(graph,
                                             names.SHARED_CONSTANTS_SCOPE)):
            cache[key] = tf.constant(array, dtype, name=name)
    return cache[key]


def _device_scopes(graph: tf.Graph) -> Tuple[str, ...]:
    """The device scopes in effect (a device function by its name and code
    location): a new op's device follows from them, so a constant is shared
    only by ops built under the same ones (a tower's gradients read its
    own)."""
    # pylint: disable-next=protected-access
    return tuple(spec.display_name
                 for spec in graph._device_function_stack.peek_objs())
