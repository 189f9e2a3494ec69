"""Conditionals that build TF1-style (`Switch`/`Merge`) control flow.

The rewrite reproduces the op names of `tf.contrib.quantize` (for example
`<prefix>/delayed_quant/Merge:0`), and parts of it recognise those names.
TensorFlow 2.x builds `tf.compat.v1.cond` as a functional `StatelessIf` op
unless control flow v2 is switched off, so `smart_cond` switches it off for
the duration of a single call.
"""

import contextlib
import threading
from typing import Callable, Iterator, Optional, Union

import tensorflow as tf
# The v2 switch is a module global with no public getter (the public
# `tf.compat.v1.control_flow_v2_enabled()` also reports True inside function
# graphs), so it is read and restored directly.
from tensorflow.python.ops import control_flow_util

# Serialises flips of the process-wide switch so that concurrent callers
# cannot restore each other's state in the wrong order. Reentrant because a
# branch function may itself call `smart_cond`.
_CONTROL_FLOW_V1_LOCK = threading.RLock()


@contextlib.contextmanager
def _control_flow_v1() -> Iterator[None]:
    """Makes `tf.compat.v1.cond` build `Switch`/`Merge` ops in the block."""
    with _CONTROL_FLOW_V1_LOCK:
        previous = control_flow_util.ENABLE_CONTROL_FLOW_V2
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = False
        try:
            yield
        finally:
            control_flow_util.ENABLE_CONTROL_FLOW_V2 = previous


def smart_cond(pred: Union[bool, tf.Tensor],
               true_fn: Callable[[], tf.Tensor],
               false_fn: Callable[[], tf.Tensor],
               name: Optional[str] = None) -> tf.Tensor:
    """Selects `true_fn()` or `false_fn()`, statically when `pred` allows it.

    Args:
        pred: A Python bool, or a scalar boolean tensor of the default graph.
        true_fn: Callable returning the tensor to use when `pred` is true.
        false_fn: Callable returning the tensor to use when `pred` is false.
        name: Name scope of the conditional; only used when `pred` is a
            tensor.

    Returns:
        For a Python bool, whatever the chosen callable returns; nothing else
        is built. For a tensor, the output of a v1 `cond` (`<name>/Merge:0`)
        built from `Switch`/`Merge` ops, through which gradients flow.

    Raises:
        TypeError: If `pred` is neither a Python bool nor a boolean tensor, or
            a branch is not callable.
        RuntimeError: If called in eager mode or while building a function
            graph, where TensorFlow only builds functional (v2) conditionals.
    """
    if not callable(true_fn) or not callable(false_fn):
        raise TypeError('smart_cond: true_fn and false_fn must be callable.')
    if isinstance(pred, bool):
        return true_fn() if pred else false_fn()
    if not isinstance(pred, tf.Tensor) or pred.dtype != tf.bool:
        raise TypeError('smart_cond: pred must be a Python bool or a boolean '
                        f'tensor, got {pred!r}.')
    if (tf.executing_eagerly()
            or tf.compat.v1.get_default_graph().building_function):
        raise RuntimeError(
            'smart_cond builds v1 control flow and needs a tf.compat.v1 '
            'graph; it cannot be used eagerly or inside a tf.function.')
    with _control_flow_v1():
        return tf.compat.v1.cond(pred, true_fn, false_fn, name=name)
