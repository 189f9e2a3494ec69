"""Where the rewrite's variables live: with the weights of their layer.

A distributed TF1 job places variables with a device function (typically
`tf.compat.v1.train.replica_device_setter`: variables on the parameter
servers, compute on the worker). The rewrite may run outside that block, so
its variables take their device from the layer's weights instead of the
device scope active at the call: every worker then shares one set of ranges
and one step counter, which the chief initializes and checkpoints. Only the
variables move; the ops that compute and update the ranges keep the
caller's placement (the worker), as the layers' ops do.
"""

import contextlib
from typing import Iterator

import tensorflow as tf

from tf1_quantize import names


def variable_device(tensor: tf.Tensor) -> str:
    """Returns the device of the variable `tensor` reads.

    Args:
        tensor: a layer's weights: a variable read, the concatenation of a
            partitioned variable's reads (its first part counts), or a Mul
            of such weights.

    Returns:
        The variable op's device; '' if `tensor` reads no variable or the
        variable has no device.
    """
    op = tensor.op
    while op.type in names.WEIGHT_READ_TYPES and op.inputs:
        op = op.inputs[0].op
    return op.device if op.type in names.VARIABLE_TYPES else ''


def global_step_device(graph: tf.Graph) -> str:
    """The device of `graph`'s global step, '' if it has none."""
    global_step = tf.compat.v1.train.get_global_step(graph)
    return '' if global_step is None else global_step.device


@contextlib.contextmanager
def variables_on(device: str) -> Iterator[None]:
    """Creates the variables `get_variable` makes in the block on `device`.

    The device replaces whatever device scope or function (e.g. a
    `replica_device_setter`) is active for the variables only; every other
    op of the block is placed as before. With `device` '' nothing changes.

    Args:
        device: a device string, e.g. '/job:ps/task:0'.

    Yields:
        Nothing.
    """
    if not device:
        yield
        return

    def place(getter, *args, **kwargs):  # A variable scope's custom getter.
        graph = tf.compat.v1.get_default_graph()
        with graph.device(None), graph.device(device):
            return getter(*args, **kwargs)

    with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(),
                                     custom_getter=place,
                                     auxiliary_name_scope=False):
        yield
