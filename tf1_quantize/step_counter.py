"""The step that drives delayed quantization and the batch-norm freeze.

`tf.contrib.quantize` counts its own steps in the variable
`fake_quantization_step` instead of using the global step. Every session run
that evaluates a tensor depending on the counter advances it exactly once.
That is the default; a rewrite can compare its delays with the global step
instead (`GLOBAL_STEP`, see `delay_clock`).
"""

import contextlib
import dataclasses
from typing import Dict, Iterator, Optional

import tensorflow as tf

from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize import placement

STEP_VARIABLE_NAME = names.STEP_COUNTER
STEP_TENSOR_NAME = STEP_VARIABLE_NAME + '/Identity:0'
# The counters `quant_delay` and `freeze_bn_delay` can count in: contrib's
# private counter (the default) or the global step.
FAKE_QUANTIZATION_STEP = STEP_VARIABLE_NAME
GLOBAL_STEP = 'global_step'
DELAY_COUNTERS = (FAKE_QUANTIZATION_STEP, GLOBAL_STEP)
# The one read of the global step that every delay of a graph compares with,
# so that all of them see the same value within a session run.
GLOBAL_STEP_READ_NAME = 'quant_delay_global_step'


@dataclasses.dataclass(frozen=True)
class _Clock:
    counter: str = FAKE_QUANTIZATION_STEP
    device: str = ''


# The clock of each graph with a rewrite in progress (see `delay_clock`).
_CLOCKS: Dict[tf.Graph, _Clock] = {}


@contextlib.contextmanager
def delay_clock(graph: tf.Graph, counter: str = FAKE_QUANTIZATION_STEP,
                device: str = '') -> Iterator[None]:
    """Sets what `delay_step(graph)` returns during a rewrite of `graph`.

    Args:
        graph: the graph being rewritten.
        counter: `FAKE_QUANTIZATION_STEP` (contrib's counter of session runs)
            or `GLOBAL_STEP` (the graph's global step, which must exist).
        device: where a new `fake_quantization_step` variable goes, unless
            the graph has a global step (the counter then goes with it).

    Yields:
        Nothing.
    """
    _CLOCKS[graph] = _Clock(counter, device)
    try:
        yield
    finally:
        del _CLOCKS[graph]


def delay_step(graph: tf.Graph) -> tf.Tensor:
    """Returns the step that the delays of a rewrite of `graph` compare with.

    Outside `delay_clock`, contrib's counter, created on first use.

    Raises:
        ValueError: the clock counts global steps and `graph` has no global
            step (the rewrite checks this before it starts).
    """
    clock = _CLOCKS.get(graph, _Clock())
    if clock.counter == GLOBAL_STEP:
        return _global_step_read(graph)
    device = placement.global_step_device(graph) or clock.device
    return get_or_create_quantization_step(graph, device=device)


def get_or_create_quantization_step(graph: Optional[tf.Graph] = None,
                                    device: str = '') -> tf.Tensor:
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
        device: the device of a new variable (see `placement.variables_on`);
            '' leaves it to the active device scope.

    Returns:
        The int64 scalar tensor `fake_quantization_step/Identity:0`; the same
        tensor on every call for a given graph.
    """
    graph = graph or tf.compat.v1.get_default_graph()
    try:
        return graph.get_tensor_by_name(STEP_TENSOR_NAME)
    except KeyError:
        return _create_quantization_step(graph, device)


def _create_quantization_step(graph: tf.Graph, device: str) -> tf.Tensor:
    """Builds the counter variable and its increment at the graph's root."""
    # The counter is shared by every quantizer in the graph, so it must not
    # pick up the caller's control dependencies or control-flow context
    # (`control_dependencies(None)` clears both).
    with (graph.as_default(), graph.control_dependencies(None),
          graph.name_scope(None), graph_edit.root_variable_scope()):
        with placement.variables_on(device):
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


def _global_step_read(graph: tf.Graph) -> tf.Tensor:
    """The graph's one read of its global step for the delays (created at the
    root on first use; it reads, never increments)."""
    try:
        return graph.get_tensor_by_name(GLOBAL_STEP_READ_NAME + ':0')
    except KeyError:
        pass
    global_step = tf.compat.v1.train.get_global_step(graph)
    if global_step is None:
        raise ValueError('delay_counter=%r needs a global step; create it '
                         'before the rewrite.' % GLOBAL_STEP)
    with (graph.as_default(), graph.control_dependencies(None),
          graph.name_scope(None)):
        return tf.identity(global_step, name=GLOBAL_STEP_READ_NAME)
