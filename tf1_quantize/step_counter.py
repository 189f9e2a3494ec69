"""The private step counter that drives delayed quantization.

`tf.contrib.quantize` counts its own steps in the variable
`fake_quantization_step` instead of using the global step. Every session run
that evaluates a tensor depending on the counter advances it exactly once.
"""

from typing import Optional

import tensorflow as tf

from tf1_quantize import graph_edit

STEP_VARIABLE_NAME = 'fake_quantization_step'
STEP_TENSOR_NAME = STEP_VARIABLE_NAME + '/Identity:0'


def get_or_create_quantization_step(
        graph: Optional[tf.Graph] = None) -> tf.Tensor:
    """Returns the graph's quantization step, creating it on first use.

    The counter is an int64 scalar variable `fake_quantization_step`
    (zero-initialized, non-trainable, only in `GLOBAL_VARIABLES`). The
    returned tensor `fake_quantization_step/Identity:0` increments it and
    yields the new value, so the first run sees 1.

    Unlike the original, the variable and its ops are always created at the
    root name scope and root variable scope, so calling this inside a
    `variable_scope` or `name_scope` neither renames the counter nor fails on
    the next call. Like the original, the variable is a resource variable
    if the caller's variable scope says `use_resource` (or leaves it unset
    under TF2 behaviour), a ref variable otherwise.

    Args:
        graph: Graph to look in and create in; the default graph if None.

    Returns:
        The int64 scalar tensor `fake_quantization_step/Identity:0`; the same
        tensor on every call for a given graph.
    """
    graph = graph or tf.compat.v1.get_default_graph()
    try:
        return graph.get_tensor_by_name(STEP_TENSOR_NAME)
    except KeyError:
        return _create_quantization_step(graph)


def _create_quantization_step(graph: tf.Graph) -> tf.Tensor:
    """Builds the counter variable and its increment at the graph's root."""
    # The counter is shared by every quantizer in the graph, so it must not
    # pick up the caller's control dependencies or control-flow context
    # (`control_dependencies(None)` clears both).
    with (graph.as_default(), graph.control_dependencies(None),
          graph.name_scope(None), graph_edit.root_variable_scope()):
        step = tf.compat.v1.get_variable(
            STEP_VARIABLE_NAME,
            shape=[],
            dtype=tf.int64,
            initializer=tf.compat.v1.zeros_initializer(),
            trainable=False,
            collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES],
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        with graph.name_scope(STEP_VARIABLE_NAME + '/'):
            return tf.identity(tf.compat.v1.assign_add(step, 1))
