"""FakeQuant builders: last-value and moving-average ranges, delay switch.

`fake_quantize` creates the range variables `<P>/min` and `<P>/max` in a fresh
variable scope `<P>` (uniquified from `name_prefix`) and feeds them to a
FakeQuant op. In training, the range is first updated from the current batch
and the FakeQuant reads the *updated* values, so the batch is always inside
the range and the update runs whenever the FakeQuant runs:

* without `ema_decay` (weights) they are assigned the batch range
  (`<P>/AssignMinLast`, `<P>/AssignMaxLast`);
* with `ema_decay` (activations) they keep a zero-debiased exponential
  moving average (`<P>/AssignMinEma`, `<P>/AssignMaxEma`), whose shadow
  variables are `<P>/<P>/min/biased`, `<P>/<P>/min/local_step` and the same
  for `max`.

These names are the checkpoint contract of `tf.contrib.quantize`; the update
rules live in `range_updates`.
"""

import functools
import numbers
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf1_quantize import conditionals
from tf1_quantize import names
from tf1_quantize import range_updates
from tf1_quantize import shared_constants
from tf1_quantize import step_counter

_GLOBAL_VARIABLES = tf.compat.v1.GraphKeys.GLOBAL_VARIABLES
_MIN_BITS = 2
_MAX_BITS = 16
_PER_CHANNEL_RANKS = (1, 2, 3, 4)


def fake_quantize(
        inputs: tf.Tensor,
        *,
        name_prefix: str,
        is_training: bool,
        ema_decay: Optional[float] = None,
        num_bits: int = 8,
        narrow_range: bool = False,
        symmetric: bool = False,
        init_min: float = -6.0,
        init_max: float = 6.0,
        per_channel: bool = False,
        vars_collection: Optional[str] = _GLOBAL_VARIABLES) -> tf.Tensor:
    """Fake-quantizes `inputs` with a range learned from its batches.

    With `ema_decay` None the range is the current batch's (contrib's
    `LastValueQuantize`, for weights); otherwise it is a zero-debiased moving
    average of the batch ranges (`MovingAvgQuantize`, for activations), which
    after the first training step equals the first batch range exactly,
    whatever `init_min`/`init_max` are.

    Args:
        inputs: float32 tensor to quantize.
        name_prefix: Default name of the variable scope holding the range
            variables and ops; uniquified if already used.
        is_training: If True, update the range from the batch before
            quantizing; if False, quantize with the stored range only.
        ema_decay: None for the last batch range, or the decay of the
            moving average, in [0, 1).
        num_bits: Quantization bit width, 2 to 16.
        narrow_range: Use the range [1, 2^num_bits - 1] instead of
            [0, 2^num_bits - 1].
        symmetric: Make the batch range symmetric around zero (see
            `_batch_range`).
        init_min: Initial value of the `min` variable.
        init_max: Initial value of the `max` variable.
        per_channel: Keep one range per channel (the last axis) instead of
            one for the whole tensor.
        vars_collection: Collection that receives the `min` and `max`
            variables, besides `GLOBAL_VARIABLES`. The moving-average shadow
            variables go to `GLOBAL_VARIABLES` only.

    Returns:
        The FakeQuant output, with the shape of `inputs`.

    Raises:
        TypeError: If `inputs` is not float32.
        ValueError: If `ema_decay`, `num_bits`, the initial range or (with
            `per_channel`) the rank or channel count of `inputs` is invalid.
    """
    if ema_decay is None:
        update = range_updates.assign_last_value
    elif 0.0 <= ema_decay < 1.0:
        update = functools.partial(range_updates.assign_moving_average,
                                   ema_decay=ema_decay)
    else:
        raise ValueError(f'ema_decay must be in [0, 1), got {ema_decay!r}.')
    return _quantize(inputs, name_prefix, update if is_training else None,
                     num_bits, narrow_range, symmetric, (init_min, init_max),
                     per_channel, vars_collection)


def delay_quantization(quantized: tf.Tensor,
                       original: tf.Tensor,
                       quant_delay: Optional[int],
                       name_prefix: str) -> tf.Tensor:
    """Passes `original` through until the step counter reaches the delay.

    Builds `<name_prefix>/activate_quant` (step >= quant_delay, on the counter
    of `step_counter`) and `<name_prefix>/delayed_quant` choosing `quantized`
    once active and `original` before (`conditionals.choose`: a select, or
    contrib's v1 cond). Both inputs are built outside it, so range updates
    keep running during the delay.

    Args:
        quantized: The FakeQuant output.
        original: The tensor that was quantized.
        quant_delay: Number of counter steps before quantization takes
            effect; None or 0 for no delay.
        name_prefix: Name scope prefix of the new ops (the quantizer's).

    Returns:
        `quantized` itself when there is no delay (nothing is built),
        otherwise `<name_prefix>/delayed_quant:0` (`.../Merge:0` inside
        `conditionals.switch_merge_conds()`).

    Raises:
        TypeError: If `quant_delay` is not None or an integer.
        ValueError: If `quant_delay` is negative.
    """
    _check_quant_delay(quant_delay)
    if not quant_delay:
        return quantized
    step = step_counter.delay_step(quantized.graph)
    # The delay becomes the int64 constant `<name_prefix>/activate_quant/y`.
    activate = tf.math.greater_equal(step, quant_delay,
                                     name=name_prefix + '/' + names.ACTIVATE_QUANT)
    return conditionals.choose(
        activate, lambda: quantized, lambda: original,
        name=name_prefix + '/' + names.DELAYED_QUANT)


def _check_quant_delay(quant_delay: Optional[int]) -> None:
    """Raises unless `quant_delay` is None or a non-negative integer."""
    if quant_delay is None:
        return
    if (isinstance(quant_delay, bool)
            or not isinstance(quant_delay, numbers.Integral)):
        raise TypeError(
            f'quant_delay must be None or an integer, got {quant_delay!r}.')
    if quant_delay < 0:
        raise ValueError(f'quant_delay must be >= 0, got {quant_delay}.')


def _quantize(inputs: tf.Tensor,
              name_prefix: str,
              update_range: Optional[range_updates.RangeUpdate],
              num_bits: int,
              narrow_range: bool,
              symmetric: bool,
              init_range: Tuple[float, float],
              per_channel: bool,
              vars_collection: Optional[str]) -> tf.Tensor:
    """Builds the range variables, the optional update and the FakeQuant.

    `update_range` is None in eval mode: the FakeQuant then reads the
    variables directly and no update ops are built.
    """
    _check_quantizer_arguments(inputs, num_bits, init_range, per_channel)
    collections = list(dict.fromkeys(
        c for c in (vars_collection, _GLOBAL_VARIABLES) if c is not None))
    with tf.compat.v1.variable_scope(
            None, default_name=name_prefix, values=[inputs]) as scope:
        scope.set_partitioner(None)
        shape = [inputs.shape[-1]] if per_channel else []
        min_var = _range_variable('min', shape, init_range[0], collections)
        max_var = _range_variable('max', shape, init_range[1], collections)
        if update_range is None:
            range_min, range_max = min_var, max_var
        else:
            batch_min, batch_max = _batch_range(
                inputs, num_bits, narrow_range, symmetric, per_channel)
            range_min = update_range(min_var, batch_min, 'Min')
            range_max = update_range(max_var, batch_max, 'Max')
        return _fake_quant(inputs, range_min, range_max, num_bits,
                           narrow_range, per_channel)


def _check_quantizer_arguments(inputs: tf.Tensor,
                               num_bits: int,
                               init_range: Tuple[float, float],
                               per_channel: bool) -> None:
    """Raises a clear error for arguments the FakeQuant ops cannot take."""
    if inputs.dtype != tf.float32:
        raise TypeError(
            f'FakeQuant needs float32 inputs, got {inputs.dtype.name} for '
            f'{inputs.name}.')
    if (isinstance(num_bits, bool)
            or not isinstance(num_bits, numbers.Integral)
            or not _MIN_BITS <= num_bits <= _MAX_BITS):
        raise ValueError(f'num_bits must be an integer from {_MIN_BITS} to '
                         f'{_MAX_BITS}, got {num_bits!r}.')
    if init_range[0] > init_range[1]:
        raise ValueError(f'init_min ({init_range[0]}) must not exceed '
                         f'init_max ({init_range[1]}).')
    if per_channel:
        _check_per_channel_shape(inputs)


def _check_per_channel_shape(inputs: tf.Tensor) -> None:
    """Raises unless `inputs` has rank 1 to 4 and a known last dimension."""
    rank = inputs.shape.rank
    if rank not in _PER_CHANNEL_RANKS:
        raise ValueError(
            f'per_channel quantization needs an input of rank 1 to 4, got '
            f'rank {rank} for {inputs.name}.')
    if inputs.shape[-1] is None:
        raise ValueError(
            f'per_channel quantization needs a known channel count (last '
            f'dimension), got shape {inputs.shape} for {inputs.name}.')


def _range_variable(name: str,
                    shape: List[int],
                    initial_value: float,
                    collections: List[str]) -> tf.Variable:
    """Creates one non-trainable float32 range variable (`min` or `max`)."""
    return tf.compat.v1.get_variable(
        name,
        shape=shape,
        dtype=tf.float32,
        initializer=tf.compat.v1.constant_initializer(initial_value),
        trainable=False,
        collections=collections,
        aggregation=tf.VariableAggregation.MEAN)


def _batch_range(inputs: tf.Tensor,
                 num_bits: int,
                 narrow_range: bool,
                 symmetric: bool,
                 per_channel: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """Returns the range to quantize the current batch with.

    Asymmetric ranges are widened to contain 0. Symmetric ranges are widened
    until `max == -min * ratio`: with a narrow range `ratio` is 1 (so the
    range is exactly [-m, m]); otherwise it is (2^(b-1) - 1) / 2^(b-1), e.g.
    127/128, like two's-complement integers.
    """
    axis = _reduction_axes(inputs, per_channel)
    # Negative: maps a max to its min partner and a min to its max partner.
    ratio = shared_constants.constant(
        -1.0 if narrow_range else -(2**num_bits - 2) / 2**num_bits)
    if inputs.op.type in names.NON_NEGATIVE_ACTIVATION_TYPES:
        batch_max = tf.math.reduce_max(inputs, axis=axis, name='BatchMax')
        return _non_negative_range(batch_max, symmetric, ratio)
    batch_min = tf.math.reduce_min(inputs, axis=axis, name='BatchMin')
    batch_max = tf.math.reduce_max(inputs, axis=axis, name='BatchMax')
    if not symmetric:
        zero = shared_constants.constant(0.0)
        return (tf.math.minimum(batch_min, zero),
                tf.math.maximum(batch_max, zero))
    return (tf.math.minimum(batch_min, batch_max / ratio),
            tf.math.maximum(batch_max, batch_min * ratio))


def _reduction_axes(inputs: tf.Tensor, per_channel: bool):
    """The axes a batch range reduces: all, or (per channel) all but the
    last (none for rank 1); None where the rank is unknown."""
    rank = inputs.shape.rank
    if rank is None:
        return None
    return shared_constants.constant(
        np.arange(rank - 1 if per_channel else rank), tf.int32)


def _non_negative_range(batch_max: tf.Tensor,
                        symmetric: bool,
                        ratio: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`_batch_range` of a Relu/Relu6 output, without reducing its minimum.

    With `0 <= batch_min <= batch_max`, the widened minimum is 0 (asymmetric)
    or `batch_max / ratio` (symmetric), and the maximum is `batch_max`: the
    values the general formulas give, saving a full pass over the tensor.
    """
    if not symmetric:
        # A scalar, or one per channel (a known count, see
        # `_check_per_channel_shape`).
        zeros = np.zeros(batch_max.shape.as_list())
        return shared_constants.constant(zeros, name='ZeroMin'), batch_max
    return batch_max / ratio, batch_max


def _fake_quant(inputs: tf.Tensor,
                range_min: tf.Tensor,
                range_max: tf.Tensor,
                num_bits: int,
                narrow_range: bool,
                per_channel: bool) -> tf.Tensor:
    """Builds the per-tensor or per-channel FakeQuant op."""
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            inputs, range_min, range_max, num_bits=num_bits,
            narrow_range=narrow_range,
            name='FakeQuantWithMinMaxVarsPerChannel')
    return tf.quantization.fake_quant_with_min_max_vars(
        inputs, range_min, range_max, num_bits=num_bits,
        narrow_range=narrow_range, name='FakeQuantWithMinMaxVars')
