"""How training quantizers update their range variables from a batch range.

`quant_ops` builds the range variables `<P>/min` and `<P>/max`; one of these
functions turns the batch range into the updated value the FakeQuant reads:

* `assign_last_value` (weights): the batch range itself;
* `assign_moving_average` (activations): a zero-debiased moving average.

The op and shadow-variable names are the checkpoint contract of
`tf.contrib.quantize` (spec §4).
"""

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tf1_quantize import names
from tf1_quantize import shared_constants

_GLOBAL_VARIABLES = tf.compat.v1.GraphKeys.GLOBAL_VARIABLES

# (range variable, new batch range, 'Min' or 'Max') -> updated range tensor.
RangeUpdate = Callable[[tf.Variable, tf.Tensor, str], tf.Tensor]


def assign_last_value(variable: tf.Variable,
                      value: tf.Tensor,
                      bound: str) -> tf.Tensor:
    """Assigns the batch range (`AssignMinLast` / `AssignMaxLast`)."""
    return _update_and_read(variable, 'assign', value,
                            names.RANGE_UPDATE % (bound, 'Last'))


def assign_moving_average(variable: tf.Variable,
                          value: tf.Tensor,
                          bound: str,
                          *,
                          ema_decay: float) -> tf.Tensor:
    """Updates a zero-debiased moving average (`AssignMinEma` / `...MaxEma`).

    The average (Kingma & Ba 2015, section 3) keeps a biased average and a
    step count in shadow variables named as TF1 named them, `<P>/<P>/min/
    biased` and `<P>/<P>/min/local_step`, so contrib checkpoints restore:

        biased <- biased - (biased - value) * (1 - d)
        local_step <- local_step + 1
        variable <- biased / (1 - d ** local_step)

    TF's own helper computes the same but scans every global variable of the
    scope for each shadow variable it creates, which makes large rewrites
    quadratic; the arithmetic below matches it op for op (float32 `1 - d`).
    """
    with tf.compat.v1.variable_scope(variable.op.name):
        biased = _shadow_variable('biased', variable.shape)
        local_step = _shadow_variable('local_step', [])
    with tf.name_scope(names.RANGE_UPDATE % (bound, 'Ema')) as scope:
        one_minus_decay = shared_constants.constant(1.0 - ema_decay,
                                                    name='decay')
        update_biased = _update_and_read(
            biased, 'assign_sub', (biased - value) * one_minus_decay)
        one = shared_constants.constant(1.0, name='one')
        update_step = _update_and_read(local_step, 'assign_add', one)
        # TF's helper computes `1 - (1 - d)` in float32 at run time; the
        # same float32 subtraction here gives the identical constant.
        decay = shared_constants.constant(
            np.float32(1.0) - np.float32(1.0 - ema_decay), name='ema_decay')
        bias_factor = one - tf.pow(decay, update_step)
        return _update_and_read(variable, 'assign',
                                update_biased / bias_factor, scope)


def _update_and_read(variable: tf.Variable,
                     method: str,
                     value,
                     name: Optional[str] = None) -> tf.Tensor:
    """`variable.<method>(value)`, then the updated value.

    A resource variable's own `read_value=True` builds a read that nothing
    consumes besides the read made where the value is used: two reads per
    update. This builds one, ordered after the update. A reference
    variable's update op returns the updated reference itself.
    """
    if not hasattr(variable, 'handle'):
        return getattr(tf.compat.v1, method)(variable, value, name=name)
    update = getattr(variable, method)(value, read_value=False, name=name)
    with tf.control_dependencies([update]):
        return variable.value()


def _shadow_variable(name: str, shape) -> tf.Variable:
    """A zero-initialised float32 shadow variable of a moving average."""
    return tf.compat.v1.get_variable(
        name,
        shape=shape,
        dtype=tf.float32,
        initializer=tf.compat.v1.zeros_initializer(),
        trainable=False,
        collections=[_GLOBAL_VARIABLES])
