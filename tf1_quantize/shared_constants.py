"""One Const op per value during a rewrite.

Every quantizer and fold reads the same few numbers: 0 and 1, the moving
average's decay, epsilon and the Bessel factor per channel, reduction axes.
Built where they are used, each is a Const op of its own, about 26 per layer
on a ResNet; every op costs graph memory, Grappler time and executor set-up
at the first `session.run`. Inside `sharing(graph)` (the rewrite opens it),
`constant` returns one Const per dtype, shape and value, built at the root
scope `quantize_constants/` without control dependencies. Values are
unchanged: only where a number lives changes, never the number.

Outside `sharing`, `constant` builds a constant where it is called, in the
caller's name scope, but still without control dependencies (see
`graph_edit.no_control_dependencies`: gradients are built inside the
training script's update-op block). Inside a TF1 conditional or while
loop, whose ops cannot read a tensor from outside without an extra Switch
or Enter, it builds an ordinary constant there.
"""

import contextlib
import contextvars
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf1_quantize import graph_edit
from tf1_quantize import names

# (graph, {(dtype, shape, bytes): Const output}) of the open `sharing` block.
_SHARED: contextvars.ContextVar[Optional[Tuple[tf.Graph, Dict]]] = (
    contextvars.ContextVar('tf1_quantize_shared_constants', default=None))


@contextlib.contextmanager
def sharing(graph: tf.Graph) -> Iterator[None]:
    """Makes `constant` share one Const per value in `graph` in the block.

    Args:
        graph: the graph being rewritten.

    Yields:
        Nothing.
    """
    token = _SHARED.set((graph, {}))
    try:
        yield
    finally:
        _SHARED.reset(token)


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
    shared = _SHARED.get()
    # pylint: disable-next=protected-access
    if (shared is None or shared[0] is not graph
            or graph._get_control_flow_context() is not None):
        with graph_edit.no_control_dependencies(graph):
            return tf.constant(array, dtype, name=name)
    key = (dtype, array.shape, array.tobytes())
    cache = shared[1]
    if key not in cache:
        with (graph_edit.no_control_dependencies(graph),
              graph_edit.absolute_name_scope(graph,
                                             names.SHARED_CONSTANTS_SCOPE)):
            cache[key] = tf.constant(array, dtype, name=name)
    return cache[key]
