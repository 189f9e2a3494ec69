"""The rewrite's conditionals: selects, or TF1-style `Switch`/`Merge` conds.

The delay and freeze switches choose between values that are computed
anyway (contrib's FakeQuant runs during the delay too), so `choose` builds a
`Select` on the step predicate: the same values and gradients as contrib's
v1 conds, without their control flow, which costs Grappler and the first
`session.run` dearly on large graphs. Inside `switch_merge_conds()`,
`choose` builds contrib's conds instead (op names such as
`<prefix>/delayed_quant/Switch_1` and `.../Merge`, for code that inspects
them).

`smart_cond` builds a real v1 cond (only the taken branch runs): TensorFlow
2.x builds `tf.compat.v1.cond` as a functional `StatelessIf` op unless
control flow v2 is switched off, so it switches it off for the duration of
a single call.
"""

import contextlib
import threading
from typing import Any, Callable, ContextManager, Iterator, Optional, Union

import tensorflow as tf
# The v2 switch is a module global with no public getter (the public
# `tf.compat.v1.control_flow_v2_enabled()` also reports True inside function
# graphs), so it is read and restored directly.
from tensorflow.python.ops import control_flow_util

from tf1_quantize import gradients

# Serialises flips of the process-wide switch so that concurrent callers
# cannot restore each other's state in the wrong order. Reentrant because a
# branch function may itself call `smart_cond`.
_CONTROL_FLOW_V1_LOCK = threading.RLock()
# Whether `choose` builds v1 conds, per thread (see `switch_merge_conds`).
_STYLE = threading.local()


@contextlib.contextmanager
def _set_in_block(owner: Any, attribute: str, value: Any) -> Iterator[None]:
    """Sets `owner.<attribute>` to `value` in the block, then restores it
    (unset reads as False)."""
    previous = getattr(owner, attribute, False)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, previous)


def switch_merge_conds(enabled: bool = True) -> ContextManager[None]:
    """Makes `choose` build contrib's `Switch`/`Merge` conds in the block
    (when `enabled`), in this thread."""
    return _set_in_block(_STYLE, 'switch_merge', enabled)


def choose(pred: Union[bool, tf.Tensor],
           true_fn: Callable[[], tf.Tensor],
           false_fn: Callable[[], tf.Tensor],
           name: str) -> tf.Tensor:
    """`true_fn()` where `pred` holds, else `false_fn()`; both are computed.

    Args:
        pred: A Python bool, or a scalar boolean tensor.
        true_fn: Callable returning the tensor to use when `pred` is true.
        false_fn: Callable returning the tensor to use when `pred` is false
            (same dtype and shape).
        name: Name of the `Select` op, or name scope of the v1 cond inside
            `switch_merge_conds()` (`<name>/Merge:0`).

    Returns:
        For a Python bool, what the chosen callable returns; otherwise the
        selected tensor.
    """
    if isinstance(pred, bool) or getattr(_STYLE, 'switch_merge', False):
        return smart_cond(pred, true_fn, false_fn, name=name)
    # `Select` with a scalar condition picks a whole tensor; its gradient is
    # three ops (SelectV2's also reduces over broadcast axes).
    x, y = true_fn(), false_fn()
    with gradients.shared_constant_gradients():
        return tf.raw_ops.Select(condition=pred, x=x, y=y, name=name)


@contextlib.contextmanager
def _control_flow_v1() -> Iterator[None]:
    """Makes `tf.compat.v1.cond` build `Switch`/`Merge` ops in the block."""
    with _CONTROL_FLOW_V1_LOCK, _set_in_block(
            control_flow_util, 'ENABLE_CONTROL_FLOW_V2', False):
        yield


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
